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
MAX_LINES = 40


def paper_design(comparison: pd.DataFrame) -> list[list[str]]:
    """Per experiment of the paper's design (target axis, real bases), a block of lines: kind, n, mean+-std and
    KS of each headline metric."""
    rows = comparison[(comparison.axis == "target") & (comparison.base_kind == "real")
                      & comparison.metric.isin(HEADLINE)]
    blocks = []
    keys = [k for k in ("model", "sae", "layer", "read_layer", "scan") if k in rows]
    for _, panel in rows.groupby(keys, sort=True, dropna=False):
        table = {}
        for r in panel.itertuples():
            entry = table.setdefault(r.variant, {"kind": r.variant, "n": r.n})
            short = "step" if r.metric == "max_slope_step" else "plateau"
            entry[short] = f"{r.mean:.3g}+-{r.std:.2g}" if not math.isnan(r.std) else f"{r.mean:.3g}"
            entry[f"real {short}"] = f"{r.mean_real:.3g}"
            entry[f"KS {short}"] = f"{r.ks_stat:.2f}"
        lines = [f"[{panel_label(panel.iloc[0], 'target')}]"]
        shown = pd.DataFrame(list(table.values()))
        shown = shown.sort_values(shown.columns[4], kind="stable")  # closest to real (smallest KS) first
        lines += ["  " + line for line in shown.to_string(index=False).splitlines()]
        blocks.append(lines)
    return blocks


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
    """The text printed after a run: at most MAX_LINES lines whatever the grid (what does not fit is left to
    `synthact compare`, which the last lines point to)."""
    tail = totals(summary, out)
    if comparison is not None:
        tail.insert(0, f"Every comparison and verdict: synthact compare {out}; figures: synthact report {out}")
    checks = check_lines(verdicts) if verdicts is not None and not verdicts.empty else []
    checks = ["Replication checks (YES = the paper's finding holds; panels counted):", *checks, ""] if checks else []
    budget = MAX_LINES - len(tail) - len(checks)
    lines = []
    if comparison is not None and not comparison.empty:
        blocks = paper_design(comparison)
        head = "The paper's design: real bases toward each kind of target vs toward:real " \
               "(step = max_slope_step, plateau = plateau_len; KS smaller = closer to real):"
        shown = [head] if blocks else []
        for n, block in enumerate(blocks):
            if len(shown) + len(block) + 2 > budget:
                shown.append(f"  ... and {len(blocks) - n} more experiments (synthact compare)")
                break
            shown += block
        lines += [*shown, ""] if shown else []
        others = kind_lines(comparison)
        if others and len(lines) + len(others) + 1 <= budget:
            lines += [*others, ""]
        elif others:
            lines += ["Other panels' KS against real, per kind: synthact compare", ""]
    return "\n".join(lines + checks + tail)


def totals(summary: RunSummary, out: str) -> list[str]:
    """Cells, shards, curves, speed, where the results are, and failures (at most five named)."""
    s = summary
    lines = []
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
    return lines
