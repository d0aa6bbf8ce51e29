"""The one-screen summary printed at the end of `synthact run`."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
from scipy.stats import ks_2samp

from synthact.execute import RunSummary

AXES = ["layer", "read_layer", "base_kind", "direction", "tol", "candidates", "value_source", "add_error"]
METRICS = ["max_slope", "plateau_len", "early_slope_ratio"]


def cell_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per cell and read layer: curves, and mean / median of the headline metrics."""
    agg = {"curves": ("max_slope", "size")}
    for m in METRICS:
        agg[f"{m}_mean"] = (m, "mean")
        agg[f"{m}_median"] = (m, "median")
    return rows.groupby(AXES, dropna=False, sort=True).agg(**agg).reset_index()


def kind_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per kind: mean L0 and norm of the bases (synthetic kinds must match real)."""
    return (
        rows.drop_duplicates(["cell_id", "base_index"])
        .groupby(["layer", "base_kind"], sort=True)
        .agg(bases=("base_norm", "size"), mean_l0=("base_l0", "mean"), mean_norm=("base_norm", "mean"),
             std_norm=("base_norm", "std"))
        .reset_index()
    )


def ks_against_real(rows: pd.DataFrame) -> pd.DataFrame:
    """KS statistic of each kind's max_slope and plateau_len against `real` in the same layer, read layer, direction."""
    out = []
    keys = ["model", "sae", "layer", "read_layer", "direction"]
    for key, group in rows.groupby(keys, sort=True):
        real = group[group.base_kind == "real"]
        if real.empty:
            continue
        for setting, other in group[group.base_kind != "real"].groupby(["base_kind", "candidates", "tol"], dropna=False):
            entry = dict(zip(keys, key)) | {"kind": setting[0], "candidates": setting[1], "tol": setting[2]}
            for m in ("max_slope", "plateau_len"):
                entry[f"ks_{m}"] = ks_2samp(real[m], other[m]).statistic
            out.append(entry)
    return pd.DataFrame(out)


def render(summary: RunSummary, rows: pa.Table, out: str) -> str:
    """The text printed after a run."""
    lines = []
    if rows.num_rows:
        df = rows.select([c for c in rows.column_names if not c.endswith("_curve") and not c.endswith("tokens")
                          and "latent" not in c]).to_pandas()
        with pd.option_context("display.width", 200, "display.max_rows", 400, "display.max_columns", 30,
                               "display.float_format", "{:.3g}".format):
            lines += ["Per cell:", cell_table(df).to_string(index=False), ""]
            lines += ["Bases per kind (synthetic kinds should match real L0 and norm):",
                      kind_table(df).to_string(index=False), ""]
            ks = ks_against_real(df)
            if not ks.empty:
                lines += ["Each kind against real (two-sample KS statistic; smaller = closer to real):",
                          ks.drop(columns=["model", "sae"]).to_string(index=False), ""]
    s = summary
    lines.append(
        f"{s.cells} cells, {s.shards} shards ({s.shards_done} run now, {s.shards_skipped} already done, "
        f"{len(s.failures)} failed), {s.curves} curves in {s.wall_s:.1f} s ({s.curves_per_s:.1f} curves/s)."
    )
    lines.append(f"Results: {out}/results (Parquet, one row per curve)")
    for shard_id, error in s.failures[:10]:
        lines.append(f"FAILED {shard_id}: {error}")
    if len(s.failures) > 10:
        lines.append(f"... and {len(s.failures) - 10} more failures")
    if s.failures:
        lines.append("Rerun the same command to retry the failed shards; finished shards are kept.")
    return "\n".join(lines)
