"""`synthact compare OUT [--csv FILE] [--ray ADDRESS]`: each kind against real along both axes, and the paper's
findings as verdicts.

Target axis (the paper's design): per base kind, each target kind's curves against those toward `real`.
Base axis: per direction, each base kind's curves against the `real` base's. For each compared cell and
metric (`max_slope_step`, `plateau_len`, ...): mean +- std of both, the difference of means with a 95% CI
(percentile bootstrap up to 2000 curves, normal theory above), the two-sample KS statistic and p-value,
the Wasserstein distance, and, in the paper's own setting, the values the authors reported. Then one
verdict line per finding (docs/science.md). Per-cell aggregates are cached under OUT/analysis/, so a
rerun reads only the cells that changed.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

from synthact.analysis import aggregate
from synthact.analysis.cells import Sweep
from synthact.errors import SynthactError
from synthact.run.store import completion_note
from synthact.generation import diagnostics

# The comparison columns shown (printed here, and in the report's table), in order.
SHOWN = ["axis", "layer", "read_layer", "scan", "base_kind", "direction", "variant", "metric", "n", "mean", "std",
         "mean_real", "std_real", "mean_diff", "diff_ci_low", "diff_ci_high", "ks_stat", "ks_pvalue", "wasserstein",
         "paper_mean", "paper_std", "paper_ks"]
HEADINGS = {
    "target": "Target kinds against toward:real, per base kind (the paper's design; diff = kind - real, 95% CI):",
    "base": "Base kinds against real, per direction (diff = kind - real, 95% CI):",
}
PANEL_COLUMN = {"target": "base_kind", "base": "direction"}


def readable(comparison: pd.DataFrame, axis: str) -> pd.DataFrame:
    """One axis of the comparison as a compact table: mean +- std, diff [CI], KS, p, W1, and the paper's values."""
    rows = comparison[comparison.axis == axis]
    table = pd.DataFrame({
        "L": rows.layer, "R": rows.read_layer,
        **({"scan": rows.scan} if "scan" in rows and rows.scan.notna().any() else {}),
        PANEL_COLUMN[axis].replace("_kind", ""): rows[PANEL_COLUMN[axis]],
        "kind": rows.variant, "metric": rows.metric, "n": rows.n,
        "mean+-std": [_pm(m, s) for m, s in zip(rows["mean"], rows["std"])],
        "real": [_pm(m, s) for m, s in zip(rows.mean_real, rows.std_real)],
        "diff [95% CI]": [f"{d:+.3g} [{lo:+.3g}, {hi:+.3g}]" for d, lo, hi in
                          zip(rows.mean_diff, rows.diff_ci_low, rows.diff_ci_high)],
        "KS": rows.ks_stat.map("{:.3f}".format), "p": rows.ks_pvalue.map("{:.2g}".format),
        "W1": rows.wasserstein.map("{:.3g}".format),
    })
    if "paper_mean" in rows and rows.paper_mean.notna().any():
        table["paper (KS)"] = [
            "" if math.isnan(m) else _pm(m, s) + ("" if math.isnan(k) else f" ({k:.2f})") + f" vs real {_pm(mr, sr)}"
            for m, s, k, mr, sr in zip(rows.paper_mean, rows.paper_std, rows.paper_ks, rows.paper_mean_real,
                                       rows.paper_std_real)]
    return table


def _pm(mean: float, std: float) -> str:
    return f"{mean:.3g}" if math.isnan(std) else f"{mean:.3g}+-{std:.2g}"


def comparison_text(comparison: pd.DataFrame, verdicts: pd.DataFrame) -> str:
    """The tables of both axes and the verdict lines, as printed."""
    if comparison.empty:
        return ("No comparison: no panel holds both a real reference and another kind. Add `toward:real` to "
                "directions (target kinds) or `real` to base_kinds (base kinds) to compare against it.")
    lines = []
    with pd.option_context("display.width", 250, "display.max_rows", 2000, "display.max_columns", 30,
                           "display.max_colwidth", 70):
        for axis, heading in HEADINGS.items():
            table = readable(comparison, axis)
            if not table.empty:
                lines += [heading, table.to_string(index=False), ""]
    lines += ["Replication checks (YES = the paper's finding holds):", *aggregate.verdict_lines(verdicts)]
    return "\n".join(lines)


def compare(out: str | Path | Sweep, csv: str | Path | None = None, ray: str | None = None
            ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The comparison and verdicts of a results directory (or an open `Sweep`); saved as CSV where `csv` says."""
    sweep = out if isinstance(out, Sweep) else Sweep.open(out, ray=ray)
    if sweep.aggregates.empty:
        raise SynthactError(f"'{sweep.out}/results' holds no rows yet; wait for the first cell to finish, or rerun "
                            "the sweep")
    comparison = aggregate.compare_kinds(sweep)
    verdicts = aggregate.verdicts(comparison)
    if csv:
        path = Path(csv).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            comparison.to_csv(path, index=False)
        except OSError as e:
            raise SynthactError(f"cannot write the comparison to '{csv}' ({e.strerror or e}); pass a writable "
                                "--csv path, or leave --csv out to only print it") from None
    return comparison, verdicts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="output directory of a sweep (its results/ folder is read)")
    parser.add_argument("--csv", metavar="FILE", help="also save the comparison table (every column) as CSV here")
    add_ray_argument(parser)


def add_ray_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ray", metavar="ADDRESS",
                        help="aggregate the cells as Ray tasks ('auto', 'local' or a cluster address); the results "
                             "and OUT/analysis must be on storage every node reaches")


def run(args: argparse.Namespace) -> int:
    if note := completion_note(args.out):
        print(note + "\n")
    comparison, verdicts = compare(args.out, args.csv, args.ray)
    print(comparison_text(comparison, verdicts))
    print("\n" + diagnostics.diagnostics_text(args.out))
    if args.csv:
        print(f"\nSaved: {args.csv}")
    return 0
