"""The result rows: their schema, which columns are grid axes and which are metrics, and reading them back.

One row per curve (one base, one read layer). This module is the one place that names the columns;
it needs pyarrow and pandas only, so `compare`, `report` and W&B read results without torch.
docs/results.md explains every column.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from synthact.errors import SynthactError, first_line
from synthact.integrity import RULE
from synthact.layout import MANIFEST, RESULTS, cell_dir, join, resolve_location, unreachable
from synthact.manifest import (ShardRecord, check_shard, read_claim, read_manifest, read_record, record_path,
                               result_files)

F64, I32, I64, STR = pa.float64(), pa.int32(), pa.int64(), pa.string()
LIST_I32, LIST_F32 = pa.list_(I32), pa.list_(pa.float32())

# Every column: name -> (type, what it holds). Grouped; the groups below name the columns of each role.
IDS = {
    "cell_id": (STR, "Hash of the cell's settings (the partition `results/cell=<cell_id>/`)."),
    "shard_id": (STR, "`<cell_id>-<shard index>`: the unit of work and of resume."),
}
# The grid axes of a row: the cell's settings and the read layer, in display order.
AXES = {
    "model": (STR, "Model label (pretrained name, `local:<dir>` or `toy-<hash>`)."),
    "sae": (STR, "SAE label (`<release>/<id>`, `local:<path>` or `toy-<hash>`)."),
    "layer": (I32, "Perturbation layer L."),
    "read_layer": (I32, "Read layer R (`blocks.R.hook_resid_post`, resolved block index)."),
    "base_kind": (STR, "Kind of the base activation A."),
    "direction": (STR, "Direction spec: `toward:<kind>`, `isotropic`, `latent:<id>`, `latent:random`, `toward_recon`."),
    "target_kind": (STR, "Kind of the target T of `toward:<kind>`; null for directions without a target."),
    "scan": (STR, "The scan's name (e.g. `sensitivity`, `plateaus`; default its mode): one experiment of the job."),
    "template": (STR, "Template of an SAE-built target: `base` (the base's own code, paired: the paper) or `independent`."),
    "match": (STR, "Frequency matching of `synthetic_baseline`: `nearest_k` (the paper) or `tol`."),
    "nearest_k": (I32, "k of match `nearest_k`: random among the k allowed latents nearest in frequency."),
    "tol": (F64, "Frequency tolerance |log10 f(j) - log10 f(i)| of match `tol` / structure `pairwise` (null if unused)."),
    "structure": (STR, "Construction of `synthetic_structured`: `anchor` (the paper) or `pairwise`."),
    "anchor_cos": (F64, "Anchor: target decoder cosine between anchor and top latent (the paper: 0.42)."),
    "anchor_pool": (I32, "Anchor: chosen among this many latents nearest the top latent in frequency (the paper: 100)."),
    "candidates": (I32, "C, frequency-matched candidates per latent of structure `pairwise`."),
    "value_source": (STR, "Values of built codes: `template` (the paper), `sampled`, `quantile` or `permuted`."),
    "exclude_template": (pa.bool_(), "Whether replacements avoid every latent of the template's code."),
    "match_norm": (pa.bool_(), "Whether built codes were rescaled to the template's norm."),
    "add_error": (pa.bool_(), "Whether an SAE error was added to built activations (the template's, or another prompt's: "
                              "`error_source`)."),
    "cooccur": (STR, "`synthetic_cooccur`: candidates weighted by co-occurrence `counts` with the latents already chosen, or `none`."),
    "cooccur_power": (F64, "`synthetic_cooccur` with `counts`: p of the weight (summed co-occurrence counts)^p."),
    "cooccur_window": (STR, "`synthetic_cooccur` candidates: `all` alive latents, the `nearest_k` in frequency, or the "
                            "`anchor`'s partners (the authors' challenger)."),
    "geometry_temp": (F64, "`synthetic_cooccur`: temperature of the weight favouring kept decoder cosines (0 = off)."),
    "holdout": (F64, "Fraction of the reference pool (its last codes) held out of the ladder's statistics (what "
                     "`synthetic_cooccur`, `control_swapped` and `value_source` quantile draw from) for the diagnostics."),
    "swaps": (I32, "`control_swapped`: latents of the template's code replaced (>= its L0: all)."),
    "swap_order": (STR, "`control_swapped`: `most_cooccurring` or `least_cooccurring` latents swapped first."),
    "error_source": (STR, "With `add_error`: the SAE error of the `template`'s prompt, or of an `other` real prompt "
                          "(`target_other_tokens`); null without an error, and in rows written before it existed "
                          "(then: `template`)."),
}
# The axes that only SAE-built generation has (null elsewhere).
SETTINGS = ("template", "match", "nearest_k", "tol", "structure", "anchor_cos", "anchor_pool", "candidates",
            "value_source", "exclude_template", "match_norm", "add_error", "cooccur", "cooccur_power", "cooccur_window",
            "geometry_temp", "holdout", "swaps", "swap_order", "error_source")
# What recomputes a row: ids, seeds, scan settings.
PROVENANCE = {
    "base_index": (I32, "Index of the base within its cell (0..bases_per_cell-1)."),
    "seed": (I64, "The job's seed."),
    "base_seed": (I64, "Seed of the base draw (derived from seed, the base settings and base_index)."),
    "target_seed": (I64, "Seed of the target / direction draw (derived from seed, cell_id and base_index)."),
    "scan_mode": (STR, "`step` (A + n s D) or `interpolate` (A + (n/N)(T - A))."),
    "scan_start": (STR, "Where the scan starts: `base` (at A, towards T) or `target` (at T in A's prompt, towards A: "
                        "the authors' plateau code); d_n is measured from that start."),
    "steps": (I32, "N: the scan has points n = 0..N."),
    "step_size": (F64, "Distance between scan points (s in step mode, ||T - A|| / N when interpolating)."),
    "stop_at_target": (pa.bool_(), "Whether metrics stop at the target (step mode): they read d_0..d_min(target_step, N)."),
    "target_distance": (F64, "||T - A|| (null without a target)."),
    "target_step": (I32, "The scan point reaching the target (A, with scan_start `target`): floor(||T - A|| / s) in "
                         "step mode, N when interpolating."),
    # The job's metric settings (spec.MetricsSpec), so that a row's metrics recompute from the row alone.
    "slope_threshold": (F64, "metrics.slope_threshold: max_slope_step's fallback applies if no slope exceeds it."),
    "plateau_threshold": (F64, "metrics.plateau_threshold of plateau_len."),
    "plateau_mode": (STR, "metrics.plateau_mode: `absolute` (the paper) or `relative` (threshold * d_last)."),
    "cut": (STR, "metrics.cut: a scan stopping at the target is read through it (`through_target`) or up to the point "
                 "before it (`before_target`, the authors' `l2s[:target_step]`)."),
    "fallback": (STR, "metrics.fallback: no crossing gives the last point read (`last`) or the authors' constants 99 / "
                      "100 (`constant`)."),
}
# Per-curve metrics (docs/science.md, "Curve metrics"); JS twins carry the `js_` prefix.
METRICS = {
    "max_slope_step": (I32, "The paper's blow-up step: argmax_n s_n, s_n = d_n - d_{n-1}, s_0 := s_1 (latest on ties); "
                            "the last point if no s_n exceeds metrics.slope_threshold."),
    "max_slope": (F64, "Largest slope (d_{n+1} - d_n) / step_size of the L2 curve."),
    "max_slope_start": (I32, "The n of that largest slope's step d_n -> d_{n+1} (first on ties; no threshold). Called "
                             "`blowup_step` before; older results are read under this name."),
    "plateau_len": (I32, "First n with d_n >= the plateau threshold (absolute, or relative to d_last), else the "
                         "number of points looked at (fallback `last`) or 100 (fallback `constant`)."),
    "early_slope_ratio": (F64, "Mean slope over the first 10% of steps / max_slope."),
    "final_l2": (F64, "d at the last point the metrics look at (the target's, when the scan stops there)."),
}
JS_METRICS = {
    "js_max_slope_step": (I32, "max_slope_step of the sqrt-JS curve."),
    "js_max_slope": (F64, "max_slope of the sqrt-JS curve (next-token distributions)."),
    "js_max_slope_start": (I32, "max_slope_start of the sqrt-JS curve."),
    "js_plateau_len": (I32, "plateau_len of the sqrt-JS curve."),
    "js_early_slope_ratio": (F64, "early_slope_ratio of the sqrt-JS curve."),
    "js_final": (F64, "sqrt-JS distance at the last scan point."),
}
# Columns renamed since: old name -> new name (older result directories are read under the new names).
RENAMED = {"blowup_step": "max_slope_start", "js_blowup_step": "js_max_slope_start"}
# The metrics whose distributions are aggregated, and those compared across kinds.
AGGREGATED = ("max_slope_step", "max_slope", "plateau_len", "early_slope_ratio", "final_l2")
COMPARED = ("max_slope_step", "max_slope", "plateau_len", "early_slope_ratio")
# What rebuilds the base and the target or direction (kinds.from_provenance, directions.direction_from_provenance).
ACTIVATIONS = {
    "base_norm": (F64, "||A||."),
    "target_norm": (F64, "||T|| (null without a target)."),
    "base_l0": (I32, "Active latents of the base (its built code, or its SAE code)."),
    "target_l0": (I32, "Active latents of the target's built or SAE code."),
    "target_log_freq": (F64, "Diagnostic of the target's code (built, or its SAE code): mean log10 firing frequency of its latents."),
    "target_pmi": (F64, "Diagnostic: mean log2 PMI of the pairs of its latents (exact co-occurrence in the pool's "
                        "held-out part over chance)."),
    "target_cofire": (F64, "Diagnostic: fraction of the pairs of its latents that fire together in a held-out code."),
    "target_pair_cos": (F64, "Diagnostic: mean decoder cosine of the pairs of its latents."),
    "target_cos_error": (F64, "Diagnostic of a code built from a template: mean over its pairs of the squared error in "
                              "the template's decoder cosines (null for other codes)."),
    "target_top_cos": (F64, "Diagnostic: mean decoder cosine of its latents to its top latent (largest value)."),
    "target_top_share": (F64, "Diagnostic: the top latent's share of the sum of its values."),
    "target_mean_value": (F64, "Diagnostic: mean value of its latents."),
    "target_value_quantiles": (LIST_F32, "Diagnostic: each value's randomized quantile within its latent's held-out "
                                         "values (null where it has none); uniform for real codes."),
    "direction_latent": (I32, "Latent of `latent:<id>` / `latent:random`."),
    "base_doc": (I64, "Corpus document of the base's prompt (or context prompt)."),
    "base_offset": (I64, "Token offset of that prompt in its document."),
    "base_tokens": (LIST_I32, "The base's prompt (or context prompt) tokens."),
    "target_doc": (I64, "Corpus document of a prompt-based target."),
    "target_offset": (I64, "Token offset of the target's prompt."),
    "target_tokens": (LIST_I32, "The target's prompt tokens."),
    "target_other_doc": (I64, "Corpus document of the other real prompt a built target takes its latents "
                              "(`control_other_latents`) or its SAE error (`error_source` other) from."),
    "target_other_offset": (I64, "Token offset of that other prompt."),
    "target_other_tokens": (LIST_I32, "That other prompt's tokens (they rebuild a transplanted error)."),
    "base_latents": (LIST_I32, "Latent ids of an SAE-built base."),
    "base_latent_values": (LIST_F32, "Their values."),
    "target_latents": (LIST_I32, "Latent ids of an SAE-built target."),
    "target_latent_values": (LIST_F32, "Their values."),
}
CURVES = {
    "l2_curve": (LIST_F32, "d_n = ||h_R(A_n) - h_R(A_0)||, n = 0..N (with keep_curves)."),
    "js_curve": (LIST_F32, "sqrt-JS distance of next-token distributions per scan point (with js and keep_curves)."),
}


def result_schema(js: bool, keep_curves: bool) -> pa.Schema:
    """The columns of every result row of a job with these readouts."""
    fields = IDS | AXES | PROVENANCE | METRICS | (JS_METRICS if js else {}) | ACTIVATIONS
    if keep_curves:
        fields |= {name: CURVES[name] for name in ("l2_curve", "js_curve") if name == "l2_curve" or js}
    return pa.schema([(name, kind) for name, (kind, _) in fields.items()])


def column_reference() -> str:
    """Every result column with its type and meaning, as Markdown (docs/results.md)."""
    lines = ["# Result columns", "", "One Parquet row per curve (one base, one read layer) under",
             "`OUT/results/cell=<cell_id>/<shard_id>.parquet`. Generated by `python -m synthact.results`",
             "from `synthact/results.py`, where every column is declared.", "",
             "**The manifest, not the folder, defines a sweep's rows.** `OUT/manifest/<shard_id>.json` holds one",
             "record per finished shard: its file, row count, size and sha256. Every reader (`synthact run`'s",
             "resume, `verify`, `compare`, `report`, the run summary, W&B, `read_table`) takes exactly the files the",
             "records name; any other file under `results/` (a copied shard, another job's file) is a stray: named,",
             "never read. Reading Parquet directly (pyarrow, pandas, DuckDB) sees the folder instead.", "",
             *RULE, ""]
    for title, group in (("Ids", IDS), ("Grid axes", AXES), ("Provenance", PROVENANCE), ("Metrics", METRICS),
                         ("JS metrics (with `js: true`)", JS_METRICS), ("Activations", ACTIVATIONS),
                         ("Curves", CURVES)):
        lines += [f"## {title}", "", "| column | type | meaning |", "|---|---|---|"]
        lines += [f"| `{name}` | {kind} | {text.replace('|', chr(92) + '|')} |" for name, (kind, text) in group.items()]
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- axis values


def axis_value(name: str, value):
    """A grid-axis (or other declared column's) value as a plain Python value: None for null, int / float / bool /
    str by the column's declared type."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    kind = column_type(name) or STR
    if pa.types.is_integer(kind):
        return int(value)
    if pa.types.is_floating(kind):
        return float(value)
    if pa.types.is_boolean(kind):
        return bool(value)
    return str(value)


def axes_of(row, names=tuple(AXES)) -> dict:
    """The named axes of a row (Series or dict) as plain values."""
    return {a: axis_value(a, row[a]) for a in names}


def frame(records: list[dict], columns=()) -> pd.DataFrame:
    """A frame whose grid-axis columns hold plain Python values and None (not NaN) for nulls."""
    df = pd.DataFrame(records, columns=list(columns) or None)
    for a in AXES:
        if a in df:
            df[a] = pd.Series([axis_value(a, v) for v in df[a]], index=df.index, dtype=object)
    return df


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class CellRows:
    """One cell's rows, read lazily: exactly its shards that passed `check_shard`, only the columns asked for.

    Nothing is read until `read` is called, so passing a `CellRows` around costs nothing; grid axes are
    constant in a cell, so `axes` reads them from one row of one shard.
    """

    fs: pafs.FileSystem
    root: str
    cell_id: str
    records: tuple[ShardRecord, ...]
    digests: tuple[str, ...] = ()  # the sha256 of each shard's bytes as checked
    spec_hash: str | None = None

    @property
    def num_rows(self) -> int:
        return sum(r.rows for r in self.records)

    @property
    def key(self) -> list:
        """What the cell's rows are: each shard's id, row count, time written and the sha256 of its checked bytes
        (so a cache keyed by it is invalid once a shard is rewritten, whatever its record says)."""
        return [[r.shard_id, r.rows, r.finished, d] for r, d in zip(self.records, self.digests, strict=True)]

    def read(self, columns) -> pa.Table:
        """The cell's rows, only `columns` (those the files have); a shard that no longer passes its check (rewritten
        since) is named and skipped."""
        tables, bad = [], []
        for record, sha in zip(self.records, self.digests, strict=True):
            path = join(self.root, record.file)
            checked = check_shard(self.fs, self.root, record, self.spec_hash)
            if checked.problem or checked.sha256 != sha:
                bad.append(checked.problem or f"{path} changed since it was checked")
                continue
            try:
                file = pq.ParquetFile(path, filesystem=self.fs)
                current = {RENAMED.get(c, c): c for c in file.schema_arrow.names}  # current name -> name in file
                table = file.read(columns=[current[c] for c in columns if c in current])
                tables.append(table.rename_columns([RENAMED.get(c, c) for c in table.column_names]))
            except (pa.ArrowException, OSError) as e:
                bad.append(f"{path} cannot be read ({first_line(str(e)) or type(e).__name__})")
        name_skipped(self.root, bad)
        if not tables:
            return pa.table({c: pa.array([], type=column_type(c)) for c in columns if column_type(c) is not None})
        return pa.concat_tables(tables, promote_options="default")

    def axes(self, names=tuple(a for a in AXES if a != "read_layer")) -> dict:
        """Columns constant in a cell (by default its grid axes but read_layer) as plain values, from the first
        row of its first readable shard."""
        for record in self.records:
            try:
                file = pq.ParquetFile(join(self.root, record.file), filesystem=self.fs)
                have = [a for a in names if a in file.schema_arrow.names]
                first = next(file.iter_batches(batch_size=1, columns=have)).to_pylist()[0]
            except (pa.ArrowException, OSError, StopIteration):
                continue
            return {a: axis_value(a, first.get(a)) for a in names}
        return {}


def column_type(column: str):
    """The Arrow type a result column is declared with, or None for an unknown name."""
    for group in (IDS, AXES, PROVENANCE, METRICS, JS_METRICS, ACTIVATIONS, CURVES):
        if column in group:
            return group[column][0]
    return None


_named: set[str] = set()  # what this process has already said it skipped


def name_skipped(root: str, problems: list[str]) -> None:
    """Say, in one line on stderr, which files a reader skipped and why; each only once per process."""
    new = [p for p in dict.fromkeys(problems) if p not in _named]
    if not new:
        return
    _named.update(new)
    shown = "; ".join(p.replace(join(root, ""), "") for p in new[:3]) + (f"; and {len(new) - 3} more" if len(new) > 3
                                                                         else "")
    print(f"synthact: skipped {len(new)} file(s) of {root}: {shown}. Rerun the same `synthact run` to redo damaged "
          f"shards; `synthact verify {root}` lists every problem.", file=sys.stderr)


def open_sweep(out) -> tuple[pafs.FileSystem, str, str, dict]:
    """(filesystem, root, URI, job.json) of a sweep with results; a SynthactError when it has none, has no
    job.json (so no job to check its rows against) or cannot be reached."""
    fs, root, uri = resolve_location(out)
    try:
        claim = read_claim(fs, root, uri)
        has_results = fs.get_file_info(join(root, RESULTS)).type == pafs.FileType.Directory
    except OSError as e:
        raise unreachable(uri, e) from None
    if not has_results:
        raise SynthactError(
            f"'{uri}' holds no results (no results/ directory); run `synthact run JOB --out {uri}` first, "
            "or pass the --out directory of a finished or partial sweep"
        )
    if claim is None:
        raise SynthactError(f"'{uri}' holds results but no job.json, so it is unknown which job they belong to and "
                            "none can be checked; pass the --out directory `synthact run` wrote")
    return fs, root, uri, claim


def sweep_cells(out, cell_id: str | None = None) -> list[CellRows]:
    """Every cell the manifest lists (or just `cell_id`), in id order, each read lazily (`CellRows`).

    The manifest, not the folder, defines the rows, and each shard is checked (`check_shard`) before any of its
    rows is used: damaged records, shards that fail their check and files no record names (strays) are named
    in one line (`name_skipped`) and never read.
    """
    fs, root, uri, claim = open_sweep(out)
    try:
        manifest = read_manifest(fs, root)
        folder = join(root, RESULTS) if cell_id is None else cell_dir(root, cell_id)
        named = manifest.files(root)
        strays = [path for path in result_files(fs, folder) if path not in named]
    except OSError as e:
        raise unreachable(uri, e) from None
    by_cell = manifest.by_cell()
    if cell_id is not None:
        by_cell = {cell_id: by_cell.get(cell_id, [])}
    bad = [f"{join(root, MANIFEST, shard_id + '.json')} ({problem})" for shard_id, problem in manifest.damaged
           if cell_id is None or shard_id.startswith(f"{cell_id}-")]
    cells = [_checked_cell(fs, root, cid, records, claim["spec_hash"], bad) for cid, records in sorted(by_cell.items())]
    name_skipped(root, bad + [f"{path} (no manifest record: not read)" for path in strays])
    return [c for c in cells if c.records or cell_id is not None]


def _checked_cell(fs, root: str, cell_id: str, records, spec_hash: str, bad: list[str]) -> CellRows:
    """A cell's rows from the records whose shards pass their check (the others' problems added to `bad`)."""
    good, digests = [], []
    for record in records:
        checked = check_shard(fs, root, record, spec_hash)
        if checked.problem:
            bad.append(checked.problem)
        else:
            good.append(record)
            digests.append(checked.sha256)
    return CellRows(fs, root, cell_id, tuple(good), tuple(digests), spec_hash)


def cell_rows(out, cell_id: str, shard_ids) -> CellRows:
    """One cell's rows from the manifest records of these shards only (missing, damaged or failing ones left out
    and named): what a driver that knows the cell's shards uses, without listing the whole manifest."""
    fs, root, _, claim = open_sweep(out)
    records, bad = [], []
    for shard_id in sorted(shard_ids):
        try:
            record = read_record(fs, record_path(root, shard_id))
        except (OSError, ValueError):
            continue
        if record.shard_id == shard_id and record.cell_id == cell_id:
            records.append(record)
    cell = _checked_cell(fs, root, cell_id, records, claim["spec_hash"], bad)
    name_skipped(root, bad)
    return cell


def read_table(out, columns=None, cell_id: str | None = None) -> pa.Table:
    """Every row the manifest lists (or one cell's), all columns or only `columns`, in one table.

    Eager: for tests and small sweeps. The analysis reads cell by cell (`sweep_cells`), never this.
    """
    tables = []
    for cell in sweep_cells(out, cell_id):
        names = columns or _all_columns(cell)
        table = cell.read(names)
        if table.num_rows:
            tables.append(table)
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables, promote_options="default")


def read_rows(out, curves: bool = False) -> pd.DataFrame:
    """The result rows as one pandas frame: ids, axes, provenance scalars and metrics, plus `l2_curve` if asked.

    Eager, like `read_table`: for notebooks and small sweeps; the analysis never calls it."""
    wanted = ["cell_id", *AXES, *PROVENANCE, *METRICS, *JS_METRICS] + (["l2_curve"] if curves else [])
    table = read_table(out, wanted)
    if table.num_rows == 0:
        raise SynthactError(f"'{out}/results' holds no rows yet; wait for the first cell to finish, or rerun the sweep")
    return table.to_pandas()


def _all_columns(cell: CellRows) -> list[str]:
    for record in cell.records:
        try:
            return [RENAMED.get(c, c) for c in pq.read_schema(join(cell.root, record.file), filesystem=cell.fs).names]
        except (pa.ArrowException, OSError):
            continue
    return []


if __name__ == "__main__":
    print(column_reference())
