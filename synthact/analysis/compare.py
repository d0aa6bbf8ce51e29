"""`synthact compare OUT [--csv FILE] [--ray ADDRESS]`: each kind against real along both axes, the differences
between rungs of the ladder, the paper's findings as verdicts, and the diagnostics of the target codes.

Target axis (the paper's design): per base kind, each target kind's curves against those toward `real`.
Base axis: per direction, each base kind's curves against the `real` base's. For each compared cell and
metric (`max_slope_step`, `plateau_len`, ...): mean +- std of both, the difference of means with its 95%
t interval (paired over bases where the kind and real were built for the same bases), the KS distance with
its p-value (scipy) and the permutation p-value of "same distribution", the Wasserstein distance, and, in
the paper's own setting, the values the authors reported. Then the differences between rungs (KS(b) -
KS(a) and mean(b) - mean(a), each with its interval and the p-value of "no difference", paired over bases,
and Holm-adjusted p-values across the grid), one verdict line per finding (docs/science.md), and the
diagnostics per cell.
Per-cell aggregates and per-panel intervals are cached under OUT/analysis/, so a rerun reads only the
cells that changed. --csv FILE saves the comparison there and the differences beside it
(FILE-differences.csv).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from synthact.analysis import aggregate, diagnostics, paper
from synthact.analysis.cells import Sweep
from synthact.errors import SynthactError
from synthact.results import COMPARED

# The comparison columns shown (printed here, and in the report's table), in order.
SHOWN = ["axis", "layer", "read_layer", "scan", "base_kind", "direction", "variant", "metric", "n", "mean", "std",
         "mean_real", "std_real", "mean_diff", "mean_diff_lo", "mean_diff_hi", "mean_diff_p", "ks_stat", "ks_pvalue",
         "ks_perm_p", "wasserstein", "paired", "paper_mean", "paper_std", "paper_ks", "paper_match"]
HEADINGS = {
    "target": "Target kinds against toward:real, per base kind (the paper's design; diff = kind - real; 95% CIs "
              "paired over bases; perm p: permutation p of the KS):",
    "base": "Base kinds against real, per direction (diff = kind - real; 95% CIs; perm p: permutation p of the KS):",
}
DIFFERENCES_HEADING = ("Differences between rungs, kind b against kind a (KS(b) - KS(a) < 0: b closer to real; "
                       "95% CIs paired over bases where both share them; p: of no difference, from the same "
                       "standard error; Holm: adjusted over the grid per metric):")
PANEL_COLUMN = {"target": "base_kind", "base": "direction"}


def readable(comparison: pd.DataFrame, axis: str) -> pd.DataFrame:
    """One axis of the comparison as a compact table: mean +- std, diff [CI], KS, p, W1, and the paper's values
    (the KS and Wasserstein distances without intervals: none is calibrated, docs/science.md)."""
    rows = comparison[comparison.axis == axis]
    table = pd.DataFrame({
        "L": rows.layer, "R": rows.read_layer,
        **({"scan": rows.scan} if "scan" in rows and rows.scan.notna().any() else {}),
        PANEL_COLUMN[axis].replace("_kind", ""): rows[PANEL_COLUMN[axis]],
        "kind": rows.variant, "metric": rows.metric, "n": rows.n,
        "mean+-std": [_pm(m, s) for m, s in zip(rows["mean"], rows["std"])],
        "real": [_pm(m, s) for m, s in zip(rows.mean_real, rows.std_real)],
        "diff [95% CI]": [f"{d:+.3g} [{lo:+.3g}, {hi:+.3g}]" for d, lo, hi in
                          zip(rows.mean_diff, rows.mean_diff_lo, rows.mean_diff_hi)],
        "KS": rows.ks_stat.map("{:.3f}".format),
        "p": rows.ks_pvalue.map("{:.2g}".format), "perm p": rows.ks_perm_p.map("{:.2g}".format),
        "W1": rows.wasserstein.map("{:.3g}".format),
    })
    if "paper_mean" in rows and rows.paper_mean.notna().any():  # framing-only values marked * (paper.FRAMING_NOTE)
        table["paper (KS)"] = [
            "" if math.isnan(m) else _pm(m, s) + ("" if math.isnan(k) else f" ({k:.2f})") + f" vs real {_pm(mr, sr)}"
            + ("*" if match == "framing" else "")
            for m, s, k, mr, sr, match in zip(rows.paper_mean, rows.paper_std, rows.paper_ks, rows.paper_mean_real,
                                              rows.paper_std_real, rows.paper_match)]
    return table


def paper_note(table: pd.DataFrame) -> list[str]:
    """The footnote of a readable table whose paper values are framing-only (marked *), else nothing."""
    marked = "paper (KS)" in table and table["paper (KS)"].str.endswith("*").any()
    return [paper.FRAMING_NOTE] if marked else []


def _pm(mean: float, std: float) -> str:
    return f"{mean:.3g}" if math.isnan(std) else f"{mean:.3g}+-{std:.2g}"


def readable_differences(differences: pd.DataFrame) -> pd.DataFrame:
    """The differences between rungs as a compact table, metric by metric: the pair, the verdict sentence (KS
    difference with its interval, p and Holm-adjusted p), and the difference of means with its interval."""
    order = {m: i for i, m in enumerate(COMPARED)}
    rows = differences.iloc[sorted(range(len(differences)), key=lambda i: (
        differences.axis.iloc[i] != "target", order.get(differences.metric.iloc[i], len(order))))]
    return pd.DataFrame({
        "axis": rows.axis, "L": rows.layer, "R": rows.read_layer,
        **({"scan": rows.scan} if "scan" in rows and rows.scan.notna().any() else {}),
        "metric": rows.metric, "step": rows.step, "a": rows.variant_a, "b": rows.variant_b, "n": rows.n,
        "paired": rows.paired.map({True: "yes", False: "no"}),
        "KS(b) - KS(a) [95% CI], p, Holm p": rows.verdict,
        "mean(b) - mean(a) [95% CI], p (Holm)": [
            f"{d:+.3g} [{lo:+.3g}, {hi:+.3g}], {p:.2g} ({ph:.2g})" for d, lo, hi, p, ph in
            zip(rows.mean_diff, rows.mean_diff_lo, rows.mean_diff_hi, rows.mean_diff_p, rows.mean_diff_p_holm)],
    })


def comparison_text(comparison: pd.DataFrame, verdicts: pd.DataFrame, differences: pd.DataFrame | None = None) -> str:
    """The tables of both axes, the differences between rungs (when given) and the verdict lines, as printed."""
    if comparison.empty:
        return ("No comparison: no panel holds both a real reference and another kind. Add `toward:real` to "
                "directions (target kinds) or `real` to base_kinds (base kinds) to compare against it.")
    lines = []
    with pd.option_context("display.width", 250, "display.max_rows", 2000, "display.max_columns", 30,
                           "display.max_colwidth", 200):
        for axis, heading in HEADINGS.items():
            table = readable(comparison, axis)
            if not table.empty:
                lines += [heading, table.to_string(index=False), *paper_note(table), ""]
        if differences is not None and not differences.empty:
            lines += [DIFFERENCES_HEADING, readable_differences(differences).to_string(index=False), ""]
    lines += ["Replication checks (YES = the paper's finding holds):", *aggregate.verdict_lines(verdicts)]
    return "\n".join(lines)


@dataclass
class Analysis:
    """What `synthact compare` shows of a sweep: the comparison against real (aggregate.compare_kinds), the
    differences between rungs (aggregate.differences), the verdicts, and the diagnostics per cell."""

    comparison: pd.DataFrame
    differences: pd.DataFrame
    verdicts: pd.DataFrame
    diagnostics: pd.DataFrame

    def text(self) -> str:
        """Everything, as `synthact compare` prints it."""
        shown = diagnostics.diagnostics_text(self.diagnostics)
        return comparison_text(self.comparison, self.verdicts, self.differences) + ("\n\n" + shown if shown else "")


def analyse(out: str | Path | Sweep, ray: str | None = None) -> Analysis:
    """The comparison, differences, verdicts and diagnostics of a results directory (or an open `Sweep`)."""
    sweep = out if isinstance(out, Sweep) else Sweep.open(out, ray=ray)
    if sweep.aggregates.empty:
        raise SynthactError(f"'{sweep.out}/results' holds no rows yet; wait for the first cell to finish, or rerun "
                            "the sweep")
    comparison = aggregate.compare_kinds(sweep)
    differences = aggregate.differences(sweep)
    return Analysis(comparison, differences, aggregate.verdicts(comparison, differences),
                    diagnostics.diagnostics(sweep))


def compare(out: str | Path | Sweep, csv: str | Path | None = None, ray: str | None = None
            ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The comparison and verdicts of a results directory (or an open `Sweep`); saved as CSV where `csv` says."""
    analysis = analyse(out, ray)
    if csv:
        save_csv(analysis.comparison, csv, "comparison")
    return analysis.comparison, analysis.verdicts


def save_csv(table: pd.DataFrame, csv: str | Path, what: str) -> Path:
    """Write a table as CSV (its folder made); a clear error where it cannot be written."""
    path = Path(csv).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(path, index=False)
    except OSError as e:
        raise SynthactError(f"cannot write the {what} to '{csv}' ({e.strerror or e}); pass a writable --csv path, "
                            "or leave --csv out to only print it") from None
    return path


def differences_path(csv: str | Path) -> Path:
    """Where --csv FILE puts the differences: FILE-differences.csv beside it."""
    path = Path(csv).expanduser()
    return path.with_name(f"{path.stem}-differences{path.suffix or '.csv'}")
