"""The one-screen summary printed at the end of `synthact run`."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

from synthact.analysis.aggregate import verdict_lines
from synthact.results import AXES, COMPARED
from synthact.run.plan import RunSummary

ALWAYS = ("layer", "read_layer", "base_kind", "direction")  # shown even when they do not vary
MAX_CHECK_LINES = 30


SHORT = {"max_slope_step": "step", "max_slope": "slope", "plateau_len": "plateau", "early_slope_ratio": "early"}


def cell_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per cell and read layer: curves, and mean / median of the headline metrics."""
    axes = [a for a in AXES if a in ALWAYS or (a not in ("model", "sae", "target_kind") and rows[a].nunique(dropna=True) > 1)]
    agg = {"curves": ("cell_id", "size")}
    for m in (m for m in COMPARED if m in rows):
        agg[f"{SHORT.get(m, m)}_mean"] = (m, "mean")
        agg[f"{SHORT.get(m, m)}_med"] = (m, "median")
    table = rows.groupby(axes, dropna=False, sort=True).agg(**agg).reset_index()
    return table.rename(columns={"read_layer": "read", "base_kind": "kind"})


def kind_table(rows: pd.DataFrame, role: str = "base") -> pd.DataFrame:
    """Per kind of base (or of target): how many, mean L0 and norm (synthetic kinds should match real)."""
    kind, l0, norm = f"{role}_kind", f"{role}_l0", f"{role}_norm"
    drawn = rows[rows[kind].notna()].drop_duplicates(["cell_id", "base_index"])
    return (drawn.groupby(["layer", kind], sort=True)
            .agg(**{f"{role}s": (norm, "size"), "mean_l0": (l0, "mean"), "mean_norm": (norm, "mean"),
                    "std_norm": (norm, "std")})
            .reset_index())


def ks_table(comparison: pd.DataFrame) -> pd.DataFrame:
    """KS statistic of each kind against real, per panel of each axis, one column per metric."""
    panel = [f"base {b}" if a == "target" else d for a, b, d in
             zip(comparison.axis, comparison.base_kind, comparison.direction)]
    keys = ["axis", "layer", "read_layer", *(["scan"] if comparison.get("scan", pd.Series()).notna().any() else []),
            "panel", "variant"]
    table = comparison.assign(panel=panel).pivot_table(index=keys, columns="metric", values="ks_stat", sort=True)
    table = table.reset_index().sort_values("axis", ascending=False, kind="stable")
    table.columns.name = None
    return table.rename(columns={"read_layer": "read", "variant": "kind", **{m: f"ks_{SHORT.get(m, m)}" for m in COMPARED}})


def render(summary: RunSummary, rows: pa.Table, out: str, comparison: pd.DataFrame | None = None,
           verdicts: pd.DataFrame | None = None) -> str:
    """The text printed after a run: cells, kinds, each kind against real, replication checks, totals."""
    lines = []
    if rows.num_rows:
        df = rows.select([c for c in rows.column_names if not c.endswith("_curve") and not c.endswith("tokens")
                          and "latent" not in c]).to_pandas()
        with pd.option_context("display.width", 200, "display.max_rows", 400, "display.max_columns", 30,
                               "display.float_format", "{:.3g}".format):
            lines += ["Per cell (slope = max_slope, plateau = plateau_len, early = early_slope_ratio):",
                      cell_table(df).to_string(index=False), ""]
            lines += ["Bases per kind (synthetic kinds should match real L0 and norm):",
                      kind_table(df).to_string(index=False), ""]
            targets = kind_table(df, "target")
            if not targets.empty:
                lines += ["Targets per kind:", targets.to_string(index=False), ""]
            if comparison is not None and not comparison.empty:
                lines += ["Each kind against real (two-sample KS statistic; smaller = closer to real; target axis = "
                          "the paper's design, toward each kind vs toward:real):",
                          ks_table(comparison).to_string(index=False), ""]
            if verdicts is not None and not verdicts.empty:
                checks = verdict_lines(verdicts)
                lines += ["Replication checks (YES = the paper's finding holds):", *checks[:MAX_CHECK_LINES]]
                if len(checks) > MAX_CHECK_LINES:
                    lines.append(f"  ... {len(checks) - MAX_CHECK_LINES} more lines: synthact compare {out}")
                lines.append("")
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
