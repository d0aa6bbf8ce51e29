"""`synthact compare OUT [--csv FILE]`: each kind against `real`, and the paper's findings as verdicts.

For each panel (model, SAE, layer, read layer, direction), each non-real cell and each of `max_slope`,
`plateau_len`, `early_slope_ratio`: KS statistic and p-value, Wasserstein distance, difference of
means with a bootstrap 95% CI. Printed as a table (saved as CSV with --csv FILE), then one
verdict line per replication target (science.md): which kind is closest to real, whether
synthetic_structured beats synthetic_baseline, whether synthetic plateaus are shorter, whether
gaussian is unlike real. YES means the paper's finding holds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from synthact import aggregate, results
from synthact.errors import SynthactError

PRINTED = ["layer", "read_layer", "direction", "variant", "metric", "n", "mean", "mean_real", "mean_diff",
           "diff_ci_low", "diff_ci_high", "ks_stat", "ks_pvalue", "wasserstein"]


def comparison_text(comparison: pd.DataFrame, verdicts: pd.DataFrame) -> str:
    """The table and the verdict lines, as printed."""
    if comparison.empty:
        return ("No comparison: no panel has both a `real` cell and another kind. Add `real` to base_kinds "
                "to compare kinds against it.")
    with pd.option_context("display.width", 250, "display.max_rows", 1000, "display.max_columns", 30,
                           "display.max_colwidth", 60, "display.float_format", "{:.4g}".format):
        table = comparison[PRINTED].to_string(index=False)
    lines = ["Each kind against real (diff = kind - real, CI = bootstrap 95%):", table, "",
             "Replication checks (YES = the paper's finding holds):", *aggregate.verdict_lines(verdicts)]
    return "\n".join(lines)


def compare(out: str | Path, csv: str | Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The comparison and verdicts of a results directory; the comparison is saved as CSV where `csv` says."""
    rows = results.read_rows(out)
    comparison = aggregate.compare_to_real(rows)
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
    parser.add_argument("--csv", metavar="FILE", help="also save the comparison table as CSV here")


def run(args: argparse.Namespace) -> int:
    comparison, verdicts = compare(args.out, args.csv)
    print(comparison_text(comparison, verdicts))
    if args.csv:
        print(f"\nSaved: {args.csv}")
    return 0
