"""The one-screen summary printed at the end of `synthact run`: the study's answers, then where the rest is.

- the answers table (analysis/answers.py, the same as `synthact compare`'s first screen), as much as fits;
- on a toy model, that the toy checks the pipeline and is not expected to replicate the paper's numbers;
- `synthact compare OUT` / `synthact report OUT` for every table, verdict and figure;
- cells, shards, curves, speed, where the results are, and failures.
"""

from __future__ import annotations

import pandas as pd

from synthact.analysis import answers, text
from synthact.run.plan import RunSummary

MAX_LINES = 40
TOY_NOTE = "A toy model checks the pipeline, not the science: it is not expected to replicate the paper's numbers."


def render(summary: RunSummary, out: str, comparison: pd.DataFrame | None = None,
           verdicts: pd.DataFrame | None = None, differences: pd.DataFrame | None = None, toy: bool = False) -> str:
    """The text printed after a run: at most MAX_LINES lines of at most 120 characters whatever the grid (what
    does not fit is left to `synthact compare`, which the last lines point to), but for a failed shard's error,
    printed whole on its line."""
    tail = totals(summary, out)
    if comparison is not None:
        tail.insert(0, f"Every comparison and verdict: synthact compare {out}; figures: synthact report {out}")
    if toy:
        tail.insert(0, TOY_NOTE)
    lines = []
    if verdicts is not None and comparison is not None and not comparison.empty:
        table = answers.answers(verdicts, differences, comparison)
        room = MAX_LINES - sum(len(_wrapped(line)) for line in tail) - 1
        lines = answers.lines(table, limit=room, more="synthact compare OUT")
    tail = [part for line in tail for part in _wrapped(line)]
    return "\n".join([*lines, *([""] if lines else []), *tail])


def _wrapped(line: str) -> list[str]:
    """A line of the tail as printed: wrapped to text.WIDTH, but for a failed shard's error (whole)."""
    return [line] if line.startswith("FAILED") else text.paragraph(line)


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
        lines.append(f"FAILED {shard_id}: {error}")  # whole, on one line: the error is what to act on
    if len(s.failures) > 5:
        lines.append(f"... and {len(s.failures) - 5} more failures")
    if s.failures:
        lines.append("A rerun of the same command runs the failed shards again and keeps the finished ones: fix the "
                     "cause first where it is not transient (the same input fails the same way).")
    return lines
