"""The result rows: their schema, which columns are grid axes and which are metrics, and reading them back.

One row per curve (one base, one read layer). This module is the one place that names the columns;
it needs pyarrow and pandas only, so `compare`, `report` and W&B read results without torch.
docs/results.md explains every column.
"""

from __future__ import annotations

import math
import warnings

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from synthact.errors import SynthactError

F64, I32, I64, STR = pa.float64(), pa.int32(), pa.int64(), pa.string()

# The grid axes of a row: the cell's settings and the read layer, in display order.
AXES: dict[str, pa.DataType] = {
    "model": STR, "sae": STR, "layer": I32, "read_layer": I32, "base_kind": STR, "direction": STR,
    "target_kind": STR, "tol": F64, "candidates": I32, "value_source": STR, "add_error": pa.bool_(),
}
# The axes that only synthetic generation has (null elsewhere).
SETTINGS = ("tol", "candidates", "value_source", "add_error")

# Per-curve metrics (science.md, "Curve metrics"); JS twins carry the `js_` prefix.
METRICS: dict[str, pa.DataType] = {
    "max_slope": F64, "blowup_step": I32, "plateau_len": I32, "early_slope_ratio": F64, "final_l2": F64,
}
JS_METRICS: dict[str, pa.DataType] = {
    "js_max_slope": F64, "js_blowup_step": I32, "js_plateau_len": I32, "js_early_slope_ratio": F64, "js_final": F64,
}
# The metrics whose distributions are aggregated and compared across kinds.
AGGREGATED = ("max_slope", "plateau_len", "early_slope_ratio", "final_l2")
COMPARED = ("max_slope", "plateau_len", "early_slope_ratio")

# What recomputes a row: ids, seeds, scan settings, the activations' provenance.
PROVENANCE: dict[str, pa.DataType] = {
    "base_index": I32, "seed": I64, "base_seed": I64, "target_seed": I64, "scan_mode": STR, "steps": I32,
    "step_size": F64,
}
ACTIVATIONS: dict[str, pa.DataType] = {
    "base_norm": F64, "target_norm": F64, "base_l0": I32, "target_l0": I32, "direction_latent": I32,
    "base_doc": I64, "base_offset": I64, "base_tokens": pa.list_(I32),
    "target_doc": I64, "target_offset": I64, "target_tokens": pa.list_(I32),
    "base_latents": pa.list_(I32), "base_latent_values": pa.list_(pa.float32()),
    "target_latents": pa.list_(I32), "target_latent_values": pa.list_(pa.float32()),
}
CURVES = ("l2_curve", "js_curve")


def result_schema(js: bool, keep_curves: bool) -> pa.Schema:
    """The columns of every result row of a job with these readouts."""
    fields = {"cell_id": STR, "shard_id": STR, **AXES, **PROVENANCE, **METRICS}
    if js:
        fields |= JS_METRICS
    fields |= ACTIVATIONS
    if keep_curves:
        fields["l2_curve"] = pa.list_(pa.float32())
        if js:
            fields["js_curve"] = pa.list_(pa.float32())
    return pa.schema(list(fields.items()))


# --------------------------------------------------------------------------- axis values


def axis_value(name: str, value):
    """A grid-axis value as a plain Python value: None for null, int / float / bool / str by the axis's type."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    kind = AXES.get(name, STR)
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


class UnreadableResultsWarning(UserWarning):
    """Files under results/ that are not readable Parquet were skipped (a rerun regenerates their shards)."""


def results_location(out) -> tuple[pafs.FileSystem, str]:
    """The filesystem and path of OUT/results."""
    from synthact.store import resolve_location

    fs, root, _ = resolve_location(out)
    return fs, root.rstrip("/") + "/results"


def read_table(out, columns=None, cell_id: str | None = None) -> pa.Table:
    """Every readable row under OUT/results, or of one cell (only `columns` that exist, when given).

    Unreadable files (truncated, corrupt, stray) are skipped with one `UnreadableResultsWarning`
    naming them; a rerun of the sweep regenerates their shards.
    """
    fs, results = results_location(out)
    if fs.get_file_info(results).type != pafs.FileType.Directory:
        raise SynthactError(
            f"'{out}' holds no results (no results/ directory); run `synthact run JOB --out {out}` first, "
            "or pass the --out directory of a finished or partial sweep"
        )
    folder = results if cell_id is None else f"{results}/cell={cell_id}"
    files = [i.path for i in fs.get_file_info(pafs.FileSelector(folder, recursive=True, allow_not_found=True))
             if i.type == pafs.FileType.File and not i.base_name.startswith((".", "_"))]
    tables, bad = [], []
    for path in sorted(files):
        try:
            table = pq.read_table(path, filesystem=fs)
        except (pa.ArrowException, OSError):
            bad.append(path)
            continue
        tables.append(table.select([c for c in columns if c in table.column_names]) if columns else table)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        warnings.warn(f"skipped {len(bad)} unreadable file(s) under {results}: {shown}; rerun the same "
                      "`synthact run` to regenerate their shards", UnreadableResultsWarning, stacklevel=2)
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables, promote_options="default")


def read_rows(out, curves: bool = False) -> pd.DataFrame:
    """The result rows as a frame: ids, axes, provenance scalars and metrics, plus `l2_curve` if asked."""
    wanted = ["cell_id", *AXES, *PROVENANCE, *METRICS, *JS_METRICS] + (["l2_curve"] if curves else [])
    table = read_table(out, wanted)
    if table.num_rows == 0:
        raise SynthactError(f"'{out}/results' holds no rows yet; wait for the first cell to finish, or rerun the sweep")
    return table.to_pandas()
