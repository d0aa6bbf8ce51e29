"""The one-screen summary printed at the end of `synthact run`: the headline per experiment, then where the rest is.

- the paper's design where the job has it (real bases pushed toward each kind of target, each against
  `toward:real`): one small table per experiment (scan), kind by kind;
- every other comparison folded to one line per kind: the KS statistic against real over its panels;
- the replication checks that compare two sides (structured vs baseline, gaussian vs real, plateaus vs
  real), counted over panels, with the paper-design panels' own lines;
- `synthact compare OUT` / `synthact report OUT` for every table, verdict and figure.
"""

from __future__ import annotations

import math

import pandas as pd

from synthact.analysis.aggregate import CHECK_GAUSSIAN, CHECK_PLATEAU, CHECK_STRUCTURE, panel_label
from synthact.run.plan import RunSummary

TWO_SIDED = (CHECK_STRUCTURE, CHECK_GAUSSIAN, CHECK_PLATEAU)
HEADLINE = ("max_slope_step", "plateau_len")
MAX_PAPER_PANELS = 4


def paper_design(comparison: pd.DataFrame) -> list[str]:
    """Per experiment of the paper's design (target axis, real bases): kind, n, mean+-std and KS of each headline metric."""
    rows = comparison[(comparison.axis == "target") & (comparison.base_kind == "real")
                      & comparison.metric.isin(HEADLINE)]
    lines = []
    keys = [k for k in ("model", "sae", "layer", "read_layer", "scan") if k in rows]
    for n, (_, panel) in enumerate(rows.groupby(keys, sort=True, dropna=False)):
        if n == MAX_PAPER_PANELS:
            lines.append(f"  ... and {rows.groupby(keys, dropna=False).ngroups - n} more experiments")
            break
        table = {}
        for r in panel.itertuples():
            entry = table.setdefault(r.variant, {"kind": r.variant, "n": r.n})
            short = "step" if r.metric == "max_slope_step" else "plateau"
            entry[short] = f"{r.mean:.3g}+-{r.std:.2g}" if not math.isnan(r.std) else f"{r.mean:.3g}"
            entry[f"real {short}"] = f"{r.mean_real:.3g}"
            entry[f"KS {short}"] = f"{r.ks_stat:.2f}"
        lines.append(f"[{panel_label(panel.iloc[0], 'target')}]")
        lines += ["  " + line for line in pd.DataFrame(list(table.values())).to_string(index=False).splitlines()]
    return lines


def kind_lines(comparison: pd.DataFrame) -> list[str]:
    """Outside the paper's design: per axis and kind, the KS statistic on max_slope_step against real over panels."""
    rows = comparison[~((comparison.axis == "target") & (comparison.base_kind == "real"))
                      & (comparison.metric == "max_slope_step")]
    lines = []
    for axis, subject in (("target", "target_kind"), ("base", "base_kind")):
        mine = rows[rows.axis == axis]
        if mine.empty:
            continue
        lines.append(f"{axis} axis, KS on max_slope_step against real (median [min, max] over panels):")
        for kind, group in mine.groupby(subject, sort=True):
            ks = group.ks_stat.astype(float)
            lines.append(f"  {kind:<22} {ks.median():.2f} [{ks.min():.2f}, {ks.max():.2f}] in {len(group)} panels")
    return lines


def check_lines(verdicts: pd.DataFrame) -> list[str]:
    """Each two-sided check: YES / NO / INCONCLUSIVE counted over panels, per axis."""
    lines = []
    for (axis, check), group in verdicts[verdicts.check.isin(TWO_SIDED)].groupby(["axis", "check"], sort=False):
        counts = group.verdict.value_counts()
        told = ", ".join(f"{v} {counts[v]}" for v in ("YES", "NO", "INCONCLUSIVE") if v in counts)
        lines.append(f"  {axis}: {check}: {told}")
    return lines


def render(summary: RunSummary, out: str, comparison: pd.DataFrame | None = None,
           verdicts: pd.DataFrame | None = None) -> str:
    """The text printed after a run (at most ~40 lines whatever the grid)."""
    lines = []
    if comparison is not None and not comparison.empty:
        paper = paper_design(comparison)
        if paper:
            lines += ["The paper's design: real bases toward each kind of target vs toward:real "
                      "(step = max_slope_step, plateau = plateau_len; KS smaller = closer to real):", *paper, ""]
        others = kind_lines(comparison)
        if others:
            lines += [*others, ""]
    if verdicts is not None and not verdicts.empty:
        checks = check_lines(verdicts)
        if checks:
            lines += ["Replication checks (YES = the paper's finding holds; panels counted):", *checks, ""]
    if comparison is not None:
        lines.append(f"Every comparison and verdict: synthact compare {out}; figures: synthact report {out}")
    s = summary
    lines.append(
        f"{s.cells} cells, {s.shards} shards ({s.shards_done} run now, {s.shards_skipped} already done, "
        f"{len(s.failures)} failed), {s.curves} curves in {s.wall_s:.1f} s ({s.curves_per_s:.1f} curves/s)."
    )
    lines.append(f"Results: {out}/results (Parquet, one row per curve)")
    for shard_id, error in s.failures[:5]:
        lines.append(f"FAILED {shard_id}: {error}")
    if len(s.failures) > 5:
        lines.append(f"... and {len(s.failures) - 5} more failures")
    if s.failures:
        lines.append("Rerun the same command to retry the failed shards; finished shards are kept.")
    return "\n".join(lines)
