"""`synthact compare OUT [--csv FILE] [--all] [--ray ADDRESS]`: the study's answers first, then each kind against
real along both axes, the differences between rungs of the ladder and the diagnostics of the target codes.

The first screen is the answers table (analysis/answers.py). Then, in the one order (analysis/order.py), panel by
panel: target axis (the paper's design: per base kind, each target kind's curves against those toward `real`),
then base axis (per direction, each base kind's curves against the `real` base's). For each compared cell and
metric: mean +- std, the difference of means with its 95% t interval (paired over bases where the kind and real
were built for the same bases) and p, the KS distance with the permutation p-value of "same distribution", the
Wasserstein distance; the values the authors reported beside ours where the framing is theirs. Then the
differences between rungs (KS(b) - KS(a) with its interval, p and Holm p across the grid) and the diagnostics
per cell. Text shows each experiment's headline metric (`--all`: every metric), every line at most 120
characters; --csv FILE saves every column: the comparison there, FILE-differences.csv and FILE-verdicts.csv
beside it. Interval columns are named `<estimate>_lo` / `<estimate>_hi` in every table.
Per-cell aggregates and per-panel intervals are cached under OUT/analysis/, so a rerun reads only the
cells that changed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from synthact.analysis import aggregate, answers, diagnostics, paper, rungs, text
from synthact.analysis.cells import Sweep
from synthact.analysis.order import direction_rank, kind_rank, scan_rank, variant_rank
from synthact.errors import SynthactError
from synthact.results import COMPARED

# The comparison columns of the report's table, in order.
SHOWN = ["axis", "layer", "read_layer", "scan", "base_kind", "direction", "variant", "metric", "n", "mean", "std",
         "mean_real", "std_real", "mean_diff", "mean_diff_lo", "mean_diff_hi", "mean_diff_p", "ks_stat", "ks_pvalue",
         "ks_perm_p", "wasserstein", "paired", "paper_mean", "paper_std", "paper_ks", "paper_match"]
HEADINGS = {
    "target": "Each target kind against toward:real, per base kind (the paper's design)",
    "base": "Each base kind against the real base, per direction",
}
AGAINST_REAL = ("diff = mean(kind) - mean(real) [95% CI, paired over bases where marked p], its t-test p; KS with its "
                "permutation p of \"same distribution\"; W1 = Wasserstein distance (KS and W1 have no interval: none "
                "is calibrated)")
DIFFERENCES_HEADING = ("Differences between rungs, b against a: KS(b) - KS(a) < 0: b closer to real [95% CI, paired over "
                       "bases where marked p], p of no difference, Holm p adjusted over the grid per metric; "
                       "mean(b) - mean(a): --csv")
PAPER_HEADING = "The authors' reported values beside ours (mean+-std, their KS in parentheses, their real targets)"
PANEL_COLUMN = {"target": "base_kind", "base": "direction"}
PANEL_SUBJECT = {"target": "target_kind", "base": "base_kind"}
HEADLINE = {"interpolate": "max_slope_step", "step": "plateau_len"}  # per scan mode, the metric the text shows
METRIC_NOTE = "(each experiment's headline metric; every metric: --all, every column: --csv)"


def headline(rows: pd.DataFrame, every_metric: bool = False) -> pd.DataFrame:
    """The rows of each scan's headline metric (HEADLINE; max_slope for older results), or all with every_metric."""
    if every_metric or rows.empty or "scan_mode" not in rows:
        return rows
    slope = "max_slope_step" if (rows.metric == "max_slope_step").any() else "max_slope"
    wanted = rows.scan_mode.map(lambda m: slope if m == "interpolate" else HEADLINE.get(m, slope))
    return rows[rows.metric == wanted]


def panel_groups(rows: pd.DataFrame, axis: str):
    """(label, rows) of each panel of `axis` in the one order: model, SAE, layers, experiment, base kind/direction."""
    groups = list(aggregate.panels(rows, axis))
    column = PANEL_COLUMN[axis]

    def rank(item):
        panel, group = item
        what = kind_rank(panel[column]) if axis == "target" else direction_rank(panel[column])
        mode = group.scan_mode.iloc[0] if "scan_mode" in group else None
        return (str(panel["model"]), str(panel["sae"]), panel["layer"], panel["read_layer"],
                scan_rank(mode, panel.get("scan")), what)

    for panel, group in sorted(groups, key=rank):
        yield aggregate.panel_label(group.iloc[0], axis), group


def _in_kind_order(rows: pd.DataFrame, subject: str, label: str) -> pd.DataFrame:
    records = rows.to_dict("records")
    order = sorted(range(len(rows)), key=lambda i: (variant_rank(records[i], subject, str(records[i][label]))))
    return rows.iloc[order]


def readable(rows: pd.DataFrame, axis: str) -> pd.DataFrame:
    """One panel's comparison as a compact table, real first per metric, then each kind in the one order."""
    rows = _in_kind_order(rows, PANEL_SUBJECT[axis], "variant")
    out = []
    for metric in dict.fromkeys(rows.metric):
        mine = rows[rows.metric == metric]
        r0 = mine.iloc[0]
        out.append({"kind": "real", "metric": metric, "n": r0.n_real, "mean+-std": _pm(r0.mean_real, r0.std_real)})
        for r in mine.itertuples():
            out.append({"kind": answers.short(r.variant), "metric": metric,
                        "n": f"{r.n}{' p' if r.paired else ''}", "mean+-std": _pm(r.mean, r.std),
                        "diff [95% CI]": f"{r.mean_diff:+.3g} [{r.mean_diff_lo:+.3g}, {r.mean_diff_hi:+.3g}]",
                        "p": f"{r.mean_diff_p:.2g}", "KS": f"{r.ks_stat:.3f}", "perm p": f"{r.ks_perm_p:.2g}",
                        "W1": f"{r.wasserstein:.3g}"})
    return pd.DataFrame(out)


def paper_values(rows: pd.DataFrame) -> pd.DataFrame:
    """A panel's rows that have the authors' reported values beside them (framing-only values marked *)."""
    if "paper_mean" not in rows:
        return pd.DataFrame()
    rows = rows[rows.paper_mean.notna()]
    return pd.DataFrame({
        "kind": rows.variant.map(answers.short), "metric": rows.metric, "ours": [
            _pm(m, s) for m, s in zip(rows["mean"], rows["std"])],
        "paper (KS)": [_pm(m, s) + ("" if math.isnan(k) else f" ({k:.2f})") + ("*" if match == "framing" else "")
                       for m, s, k, match in zip(rows.paper_mean, rows.paper_std, rows.paper_ks, rows.paper_match)],
        "ours real": [_pm(m, s) for m, s in zip(rows.mean_real, rows.std_real)],
        "paper real": [_pm(m, s) for m, s in zip(rows.paper_mean_real, rows.paper_std_real)],
    })


def paper_note(table: pd.DataFrame) -> list[str]:
    """The footnote of a paper-values table whose values are framing-only (marked *), else nothing."""
    marked = "paper (KS)" in table and table["paper (KS)"].str.endswith("*").any()
    return [paper.FRAMING_NOTE] if marked else []


def _pm(mean: float, std: float) -> str:
    return f"{mean:.3g}" if math.isnan(std) else f"{mean:.3g}+-{std:.2g}"


def readable_differences(rows: pd.DataFrame, sentences: bool = False) -> pd.DataFrame:
    """One panel's differences between rungs as a compact table: the step, the pair, the answer by the KS
    difference's interval (* where Holm's p is above 0.05), KS(b) - KS(a) with its interval, p, Holm p, n; with
    `sentences` (the report) also the verdict sentence and mean(b) - mean(a) with its interval, p and Holm p."""
    order = {m: i for i, m in enumerate(COMPARED)}
    steps = [f"{a} -> {b}" for a, b in rungs.STEPS] + [rungs.CONTROL_STEP]
    rows = rows.iloc[sorted(range(len(rows)), key=lambda i: (
        order.get(rows.metric.iloc[i], len(order)), steps.index(rows.step.iloc[i]) if rows.step.iloc[i] in steps
        else len(steps)))]
    return pd.DataFrame({
        "metric": rows.metric, "step": rows.step,
        "b vs a": [answers.pair_label(b, a) for a, b in zip(rows.variant_a, rows.variant_b)],
        "answer": [answers.rung_answer(r, *r.step.split(" -> ")) for r in rows.itertuples()],
        "KS(b) - KS(a) [95% CI]": [f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]" for d, lo, hi in
                                   zip(rows.ks_diff, rows.ks_diff_lo, rows.ks_diff_hi)],
        "p": rows.ks_diff_p.map("{:.2g}".format), "Holm p": rows.ks_diff_p_holm.map("{:.2g}".format),
        "n": [f"{n}{' p' if paired else ''}" for n, paired in zip(rows.n, rows.paired)],
        **({"verdict": rows.verdict, "mean(b) - mean(a) [95% CI], p (Holm)": [
            f"{d:+.3g} [{lo:+.3g}, {hi:+.3g}], {p:.2g} ({ph:.2g})" for d, lo, hi, p, ph in
            zip(rows.mean_diff, rows.mean_diff_lo, rows.mean_diff_hi, rows.mean_diff_p, rows.mean_diff_p_holm)]}
           if sentences else {}),
    })


def _one_metric(table: pd.DataFrame, label: str) -> tuple[pd.DataFrame, str]:
    """A panel's table and its heading '[label]': a metric column of one value moves into the heading."""
    if "metric" in table and table.metric.nunique() == 1:
        return table.drop(columns="metric"), f"[{label} | {table.metric.iloc[0]}]"
    return table, f"[{label}]"


def comparison_text(comparison: pd.DataFrame, verdicts: pd.DataFrame, differences: pd.DataFrame | None = None,
                    every_metric: bool = False) -> str:
    """What `synthact compare` prints, every line at most text.WIDTH characters: the answers first (one screen),
    then each kind against real per panel (both axes), the authors' values beside ours, and the differences
    between rungs; each experiment's headline metric only unless `every_metric`."""
    if comparison.empty:
        return ("No comparison: no panel holds both a real reference and another kind. Add `toward:real` to "
                "directions (target kinds) or `real` to base_kinds (base kinds) to compare against it.")
    lines = answers.lines(answers.answers(verdicts, differences, comparison)) + [""]
    shown = headline(comparison, every_metric)
    papers, marked = [], False
    for axis, heading in HEADINGS.items():
        rows = shown[shown.axis == axis]
        if rows.empty:
            continue
        lines += [*text.paragraph(f"{heading} {'' if every_metric else METRIC_NOTE}:"),
                  *text.paragraph(AGAINST_REAL, indent="  ")]
        for label, group in panel_groups(rows, axis):
            table, label = _one_metric(readable(group, axis), label)
            lines += ["", label, *text.table(table, keys=("kind",), cell={"kind": 40}, indent="  ")]
            if not (values := paper_values(_in_kind_order(group, PANEL_SUBJECT[axis], "variant"))).empty:
                values, label = _one_metric(values, label.split(" | ")[0] + label[len(label.split(" | ")[0]):])
                papers += ["", label, *text.table(values, cell={"kind": 40}, indent="  ")]
                marked = marked or bool(paper_note(values))
        lines.append("")
    if papers:
        lines += [*text.paragraph(PAPER_HEADING + ":"), *papers, *(text.paragraph(paper.FRAMING_NOTE) if marked else []),
                  ""]
    if differences is not None and not differences.empty:
        lines += text.paragraph(DIFFERENCES_HEADING + ("" if every_metric else f" {METRIC_NOTE}") + ":")
        for axis in HEADINGS:
            rows = headline(differences[differences.axis == axis], every_metric)
            for label, group in panel_groups(rows, axis) if not rows.empty else ():
                table, label = _one_metric(readable_differences(group), label)
                lines += ["", label, *text.table(table, keys=("step",), cell={"b vs a": 40}, indent="  ")]
        lines.append("")
    return "\n".join(lines).rstrip("\n")


@dataclass
class Analysis:
    """What `synthact compare` shows of a sweep: the comparison against real (aggregate.compare_kinds), the
    differences between rungs (aggregate.differences), the verdicts, and the diagnostics per cell."""

    comparison: pd.DataFrame
    differences: pd.DataFrame
    verdicts: pd.DataFrame
    diagnostics: pd.DataFrame

    def text(self, every_metric: bool = False) -> str:
        """Everything, as `synthact compare` prints it (every metric with `every_metric`)."""
        shown = diagnostics.diagnostics_text(self.diagnostics)
        return (comparison_text(self.comparison, self.verdicts, self.differences, every_metric)
                + ("\n\n" + shown if shown else ""))


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


def differences_path(csv: str | Path, what: str = "differences") -> Path:
    """Where --csv FILE puts the differences (FILE-differences.csv) or another table (FILE-<what>.csv): beside it."""
    path = Path(csv).expanduser()
    return path.with_name(f"{path.stem}-{what}{path.suffix or '.csv'}")
