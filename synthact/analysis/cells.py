"""Per-cell aggregates, computed once per cell and cached beside the results: the analysis's bounded path.

Every analysis (compare, report, the run summary, W&B) reads a sweep through a `Sweep`. A cell is read
once, by column (only `read_layer` and the metrics; `l2_curve` only for the report's bands), and its
grid axes once (from one row: they are constant in a cell). Per (cell, read layer) that gives
- the *metrics* part: the scan and metric settings (FRAMING), `curves`, `<metric>_<stat>` for each aggregated metric (stats.STATS), the
  sorted finite values of each compared metric (`values_<metric>`: what KS, Wasserstein, intervals and
  ECDFs need), and the same values per base (`by_base_<metric>`, NaN kept, in the order of `base_seeds`,
  the cell's base seeds sorted: what pairs two cells built for the same bases);
- the *bands* part: the mean L2 curve and its quantiles per scan step (aggregate.BAND).

Each part is cached as OUT/analysis/<part>/cell=<cell_id>.parquet, keyed by the shard ids, row counts and
the sha256 of the shards' checked bytes it was computed from (`CellRows.key`: the shards are checked before
any cache is consulted), so a cached part is never stale, the answer never depends on whether a cache
exists, and a rerun pays only for cells that changed. What an analysis computes from a panel's cells (the
intervals and permutation p-values of aggregate.py) is cached the same way, as
OUT/analysis/panels/<digest>.json keyed by those cells' keys (`Sweep.panel_rows`). Every cached file has a
record beside it (`<file>.record.json`: its key, size and sha256); one whose bytes differ from its record
is recomputed, never trusted. A read-only OUT just means no cache: parts are computed in
memory. With `ray=ADDRESS`, missing parts are computed by Ray tasks (which read the shards and write
the cache on shared storage; the driver then reads the cache, so the rows are the same). Memory holds
the small summaries of all cells and the values of at most `KEEP` cells.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from synthact import results
from synthact.analysis.stats import STATS, finite, summarize
from synthact.integrity import digest, known_digest, read_with_digest
from synthact.layout import join, resolve_location, write_file_atomic
from synthact.analysis.paper import FRAMING_COLUMNS
from synthact.results import AGGREGATED, AXES, COMPARED, CellRows, column_type

CACHE = "analysis"
VERSION = 6  # bump when what a part holds changes: older cached parts are then recomputed
RECORD = ".record.json"  # beside each cached file: the key it answers, its size and sha256
BAND = ("mean", "q05", "q25", "median", "q75", "q95")
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
KEEP = 8  # cells whose values are held in memory at once (a compared cell and its real references)
LIST_F64 = pa.list_(pa.float64())
LIST_I64 = pa.list_(pa.int64())
# Read once per cell, from one row: the grid axes and the scan and metric settings a paper value must match.
FRAMING = tuple(c for c in FRAMING_COLUMNS if c not in AXES)
CONSTANT = (*(a for a in AXES if a != "read_layer"), *FRAMING)


def _stat_type(stat: str):
    return pa.int64() if stat == "count" else pa.float64()


METRICS_SCHEMA = pa.schema(
    [("cell_id", pa.string()), *[(a, AXES[a][0]) for a in AXES], *[(c, column_type(c)) for c in FRAMING],
     ("curves", pa.int64())]
    + [(f"{m}_{s}", _stat_type(s)) for m in AGGREGATED for s in STATS]
    + [(f"values_{m}", LIST_F64) for m in COMPARED]
    + [("base_seeds", LIST_I64)] + [(f"by_base_{m}", LIST_F64) for m in COMPARED]
)
BANDS_SCHEMA = pa.schema([("cell_id", pa.string()), ("read_layer", pa.int32())] + [(b, LIST_F64) for b in BAND])
VALUE_COLUMNS = [n for n in METRICS_SCHEMA.names if n.startswith(("values_", "by_base_")) or n == "base_seeds"]
SUMMARY_COLUMNS = [n for n in METRICS_SCHEMA.names if n not in VALUE_COLUMNS]


# --------------------------------------------------------------------------- one cell


def metrics_part(cell: CellRows, seed: int = 0) -> tuple[pa.Table, int]:
    """The metrics part of a cell (one row per read layer, see the module docstring) and the rows it read."""
    table = cell.read(["read_layer", "base_seed", *AGGREGATED])
    axes = cell.axes(CONSTANT)
    out = []
    layers = _column(table, "read_layer")
    for read_layer in np.unique(layers[np.isfinite(layers)]) if table.num_rows else ():
        mine = layers == read_layer
        entry = {"cell_id": cell.cell_id} | axes | {"read_layer": int(read_layer), "curves": int(mine.sum())}
        if "base_seed" in table.column_names:
            seeds = table.column("base_seed").to_numpy(zero_copy_only=False)[mine]
            order = np.argsort(seeds, kind="stable")
            entry["base_seeds"] = seeds[order]
            for metric in COMPARED:
                if metric in table.column_names:
                    entry[f"by_base_{metric}"] = _column(table, metric)[mine][order]
        for metric in AGGREGATED:
            values = np.sort(finite(_column(table, metric)[mine])) if metric in table.column_names else np.empty(0)
            for stat, value in summarize(values, seed).items():
                entry[f"{metric}_{stat}"] = value
            if metric in COMPARED:
                entry[f"values_{metric}"] = values
        out.append(entry)
    return _table(out, METRICS_SCHEMA), table.num_rows


def bands_part(cell: CellRows) -> tuple[pa.Table, int]:
    """The bands part of a cell (per read layer, the mean L2 curve and its quantiles per step; none without
    curves) and the rows it read."""
    table = cell.read(["read_layer", "l2_curve"])
    if "l2_curve" not in table.column_names or table.num_rows == 0:
        return BANDS_SCHEMA.empty_table(), table.num_rows
    curves = _matrix(table.column("l2_curve"))
    layers = _column(table, "read_layer")
    out = []
    for read_layer in np.unique(layers):
        mine = curves if (layers == read_layer).all() else curves[layers == read_layer]
        entry = {"cell_id": cell.cell_id, "read_layer": int(read_layer), "mean": mine.mean(axis=0, dtype=np.float64)}
        quantiles = np.concatenate([np.quantile(mine[:, j:j + 16].astype(np.float64), QUANTILES, axis=0)
                                    for j in range(0, mine.shape[1], 16)], axis=1)
        entry |= dict(zip(("q05", "q25", "median", "q75", "q95"), quantiles))
        out.append(entry)
    return _table(out, BANDS_SCHEMA), table.num_rows


def _plain(value):
    """A numpy scalar as a Python one (for JSON)."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _column(table: pa.Table, name: str) -> np.ndarray:
    """A numeric column as float64 (nulls NaN)."""
    return table.column(name).to_numpy().astype(np.float64, copy=False)


def _matrix(column: pa.ChunkedArray) -> np.ndarray:
    """Equal-length list rows as one (rows, points) array, without a Python object per row."""
    array = column.combine_chunks()
    lengths = np.unique(array.value_lengths().to_numpy(zero_copy_only=False))
    if lengths.size != 1:  # curves of different lengths cannot share steps (a cell has one scan; defensive)
        width = int(np.nanmax(lengths))
        return np.stack([np.pad(np.asarray(c, np.float64), (0, width - len(c)), constant_values=np.nan)
                         for c in array.to_pylist()])
    return array.flatten().to_numpy().reshape(len(array), int(lengths[0]))


def _table(entries: list[dict], schema: pa.Schema) -> pa.Table:
    columns = {f.name: [e.get(f.name) for e in entries] for f in schema}
    return pa.table({f.name: pa.array(columns[f.name], type=f.type, from_pandas=True) for f in schema}, schema=schema)


# --------------------------------------------------------------------------- the cache


PARTS = {"metrics": metrics_part, "bands": lambda cell, seed: bands_part(cell)}


class Cache:
    """OUT/analysis/<part>/cell=<id>.parquet, each with its record beside it (`write_cached`): keyed by the checked
    bytes of the rows it came from (`CellRows.key`), and checked against its own size and sha256 when read."""

    def __init__(self, cell: CellRows, seed: int):
        self.fs, self.root, self.seed = cell.fs, cell.root, seed

    def path(self, part: str, cell_id: str) -> str:
        return join(self.root, CACHE, part, f"cell={cell_id}.parquet")

    def key(self, cell: CellRows) -> str:
        return json.dumps({"version": VERSION, "seed": self.seed, "shards": cell.key})

    def load(self, part: str, cell: CellRows, columns=None) -> pa.Table | None:
        """The cached part, or None when there is none, it came from other rows (stale) or is damaged."""
        path = self.path(part, cell.cell_id)
        try:
            checked = read_cached(self.fs, path, self.key(cell))
            if checked is None:
                return None
            return pq.read_table(checked if isinstance(checked, str) else pa.BufferReader(checked), columns=columns,
                                 filesystem=self.fs if isinstance(checked, str) else None)
        except (OSError, pa.ArrowException):
            return None

    def store(self, part: str, cell: CellRows, table: pa.Table) -> None:
        """Cache a part; quietly nothing where OUT is not writable (the part is then recomputed when needed)."""
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        write_cached(self.fs, self.path(part, cell.cell_id), sink.getvalue().to_pybytes(), self.key(cell))


def write_cached(fs, path: str, data: bytes, key: str) -> None:
    """Write a cache file, then its record `<path>.record.json` (the key it answers, its size and sha256), each
    atomically; quietly nothing where OUT is not writable."""
    size, sha = digest(data)
    try:
        write_file_atomic(fs, path, data)
        write_file_atomic(fs, path + RECORD, json.dumps({"key": key, "size": size, "sha256": sha}).encode())
    except OSError:
        pass


def read_cached(fs, path: str, key: str):
    """A cache file that answers `key` and whose bytes are the ones its record lists: its path where this process
    already checked it unchanged, else its bytes (read once, checked); None when missing, stale or damaged."""
    try:
        with fs.open_input_stream(path + RECORD) as f:
            record = json.loads(f.read())
        if record["key"] != key or not isinstance(record["size"], int) or not isinstance(record["sha256"], str):
            return None
        known = known_digest(fs, path)
        if known is not None:
            return path if known == (record["size"], record["sha256"]) else None
        data, size, sha = read_with_digest(fs, path)
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException):
        return None
    return data if (size, sha) == (record["size"], record["sha256"]) else None


def cell_part(cell: CellRows, part: str, seed: int = 0, columns=None) -> pa.Table:
    """A part of a cell: from the cache where it is current, else computed (and cached)."""
    cache = Cache(cell, seed)
    table = cache.load(part, cell, columns)
    if table is None:
        table, read = PARTS[part](cell, seed)
        if read == cell.num_rows:  # every shard was readable: the part is the cell's, worth keeping
            cache.store(part, cell, table)
        table = table.select(columns) if columns else table
    return table


# --------------------------------------------------------------------------- a sweep


class Sweep:
    """A sweep's per-cell aggregates: `aggregates` (one row per cell and read layer: cell_id, every grid axis,
    `curves`, `<metric>_<stat>`) held in memory, values and bands read per cell when a panel needs them."""

    def __init__(self, out, seed: int = 0):
        self.out, self.seed = out, seed
        self.cells: dict[str, CellRows] = {}
        self._summaries: dict[str, pd.DataFrame] = {}
        self._values: OrderedDict[str, pa.Table] = OrderedDict()
        self._aggregates: pd.DataFrame | None = None

    @classmethod
    def open(cls, out, seed: int = 0, ray: str | None = None, bands: bool = False) -> Sweep:
        """Every cell the manifest lists; missing or stale parts computed (by Ray tasks where `ray` is given)."""
        sweep = cls(out, seed)
        cells = results.sweep_cells(out)
        parts = ["metrics", "bands"] if bands else ["metrics"]
        if ray:
            compute_on_ray(out, [c for c in cells if any(Cache(c, seed).load(p, c, []) is None for p in parts)],
                           parts, seed, ray)
        for cell in cells:
            sweep.add(cell)
        return sweep

    def add(self, cell: CellRows) -> pd.DataFrame:
        """Add (or refresh) a cell; return its summary rows."""
        self.cells[cell.cell_id] = cell
        self._values.pop(cell.cell_id, None)
        summary = cell_part(cell, "metrics", self.seed, SUMMARY_COLUMNS)
        self._summaries[cell.cell_id] = results.frame(summary.to_pylist(), SUMMARY_COLUMNS)
        self._aggregates = None
        return self._summaries[cell.cell_id]

    @property
    def aggregates(self) -> pd.DataFrame:
        """One row per (cell, read layer), in cell id order (built when first asked for after a change)."""
        if self._aggregates is None:
            frames = [f for _, f in sorted(self._summaries.items()) if not f.empty]
            self._aggregates = pd.concat(frames, ignore_index=True) if frames else results.frame([], SUMMARY_COLUMNS)
        return self._aggregates

    @property
    def curves(self) -> int:
        return int(self.aggregates.curves.sum()) if not self.aggregates.empty else 0

    def values(self, cell_id: str, read_layer: int, metric: str) -> np.ndarray:
        """The sorted finite values of a compared metric in one cell and read layer."""
        return self._list(cell_id, read_layer, f"values_{metric}")

    def by_base(self, cell_id: str, read_layer: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """(base seeds sorted, the metric's value for each, NaN kept) of one cell and read layer: two cells
        are built for the same bases when their seeds are equal, and their values then align base by base."""
        return self._list(cell_id, read_layer, "base_seeds"), self._list(cell_id, read_layer, f"by_base_{metric}")

    def _list(self, cell_id: str, read_layer: int, column: str) -> np.ndarray:
        table = self._values.get(cell_id)
        if table is None:
            table = cell_part(self.cells[cell_id], "metrics", self.seed, ["read_layer", *VALUE_COLUMNS])
            self._values[cell_id] = table
            while len(self._values) > KEEP:
                self._values.popitem(last=False)
        self._values.move_to_end(cell_id)
        layers = table.column("read_layer").to_pylist()
        if read_layer not in layers or column not in table.column_names:
            return np.empty(0)
        value = table.column(column)[layers.index(read_layer)]
        return value.values.to_numpy(zero_copy_only=False) if value.is_valid else np.empty(0)

    def panel_rows(self, what: dict, cell_ids, compute) -> list[dict]:
        """`compute()`'s rows (dicts of plain values) for the panel `what` (what is computed, with its
        parameters) of these cells: from OUT/analysis/panels/ where they were computed from the same rows of
        the same cells and are whole (the cache's record, `read_cached`), else computed and cached there
        (quietly nothing where OUT is read-only)."""
        cells = [self.cells[c] for c in sorted(cell_ids)]
        if not cells:
            return compute()
        cache = Cache(cells[0], self.seed)
        name = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:32]
        path = join(cache.root, CACHE, "panels", f"{name}.json")
        key = json.dumps([cache.key(c) for c in cells])
        data = read_cached(cache.fs, path, key)
        if data is not None:
            try:
                with cache.fs.open_input_stream(data) if isinstance(data, str) else pa.BufferReader(data) as f:
                    stored = json.loads(f.read())
                rows = stored["rows"]
                if stored["key"] == key and isinstance(rows, list) and all(isinstance(r, dict) for r in rows):
                    return rows
            except (OSError, ValueError, KeyError, TypeError, pa.ArrowException):
                pass
        rows = compute()
        write_cached(cache.fs, path, json.dumps({"key": key, "rows": rows}, default=_plain).encode(), key)
        return rows

    def bands(self, cell_ids=None) -> pd.DataFrame:
        """Mean L2 curve and quantile bands per (cell, read layer) of these cells (all by default), with axes."""
        frames = []
        for cell_id in sorted(self.cells if cell_ids is None else cell_ids):
            table = cell_part(self.cells[cell_id], "bands", self.seed)
            if table.num_rows:
                frames.append(pd.DataFrame({"cell_id": table.column("cell_id").to_pylist(),
                                            "read_layer": table.column("read_layer").to_pylist(),
                                            **{b: [np.asarray(v, np.float64) for v in table.column(b).to_pylist()]
                                               for b in BAND}}))
        if not frames:
            return results.frame([], ["cell_id", *AXES, *BAND])
        bands = pd.concat(frames, ignore_index=True)
        axes = self.aggregates[["cell_id", *AXES]]
        axes = axes.assign(read_layer=axes.read_layer.astype("int64"))
        return bands.merge(axes, on=["cell_id", "read_layer"], how="left")[["cell_id", *AXES, *BAND]]


# --------------------------------------------------------------------------- on Ray


def compute_on_ray(out, cells: list[CellRows], parts: list[str], seed: int, address: str) -> None:
    """Compute and cache `parts` of these cells as Ray tasks, one per cell (`compare/report --ray ADDRESS`).

    The tasks read the shards and write OUT/analysis where every node reaches them (a shared filesystem or
    an object store URI); a part a task could not cache is computed again by the driver."""
    if not cells:
        return
    import ray

    from synthact.run.ray_executor import check_address, connect

    check_address(address)
    uri = resolve_location(out)[2]
    started_here = connect(address)
    try:
        task = ray.remote(num_cpus=1)(_cache_parts)
        ray.get([task.remote(uri, cell.cell_id, parts, seed) for cell in cells])
    finally:
        if started_here:
            ray.shutdown()


def _cache_parts(uri: str, cell_id: str, parts: list[str], seed: int) -> None:
    (cell,) = results.sweep_cells(uri, cell_id)
    for part in parts:
        cell_part(cell, part, seed, [])
