"""Each kind against `real` with intervals, the differences between rungs (science.md, "Aggregates" and
"Beyond the paper"), and the paper's findings as verdicts.

Works on a `cells.Sweep` (per-cell aggregates, one row per (cell_id, read_layer)). A *panel* is
(model, sae, layer, read_layer, scan, direction) on the base axis, or (..., scan, base_kind) on the
target axis: the kinds in one panel are compared, one panel at a time. Two cells are *paired* when they
were built for the same bases (equal base seeds: every target kind of one base kind on the target axis);
paired cells are resampled base by base (inference.py), others each on its own.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pandas as pd

from synthact.analysis import paper, rungs
from synthact.analysis.cells import Sweep
from synthact.analysis.inference import distance_to_real, holm, paired_difference
from synthact.analysis.stats import distances
from synthact.results import COMPARED, SETTINGS, axes_of, axis_value, frame
from synthact.spec import SYNTHETIC_KINDS

# A panel holds the cells compared with each other. Base axis: the base kinds pushed along one direction,
# each against `real`. Target axis: one base kind pushed toward each target kind, each against `toward:real`.
PANELS = {"base": ("model", "sae", "layer", "read_layer", "scan", "direction"),
          "target": ("model", "sae", "layer", "read_layer", "scan", "base_kind")}
ALPHA = 0.05
# Resamples (at most inference.EXACT_MAX_N values a sample; above, their Gaussian limit): N_BOOT bootstrap
# resamples give the standard error of a KS difference between rungs (to about 2%; its p-value is normal, so
# Holm is not limited by a resample count), N_PERM permutations the p-value of a kind's KS to real.
N_BOOT = 1000
N_PERM = 2000
PANEL_VERSION = 2  # bump when what a panel's cached rows (cells.Sweep.panel_rows) hold changes


# --------------------------------------------------------------------------- panels and labels


def panel_axes(rows: pd.DataFrame, axis: str) -> list[str]:
    """The columns that fix a panel of `axis` ("base" or "target") and that `rows` has (older results lack `scan`)."""
    return [a for a in PANELS[axis] if a in rows]


def panels(rows: pd.DataFrame, axis: str = "base"):
    """(panel axes as plain values, rows) for each panel of `axis`, in a stable order."""
    keys = panel_axes(rows, axis)
    for key, group in rows.groupby(keys, sort=True, dropna=False):
        yield {a: axis_value(a, v) for a, v in zip(keys, key)}, group


def settings_label(row) -> str:
    """The generation settings a row has, e.g. 'anchor' or 'pairwise C=16 tol=0.1 sampled' ('' for none).

    The paper's own choices (paired templates, template values, the anchor's 0.42 and 100, excluding the
    template's latents, no rescaling) go unsaid, so a label names what is there and every departure."""
    parts = []
    names = [*(n for n in SETTING_LABELS if n in SETTINGS), *(n for n in SETTINGS if n not in SETTING_LABELS)]
    for name, value in axes_of(row, [n for n in names if n in row]).items():
        if value is not None:
            parts.append(SETTING_LABELS.get(name, lambda v, n=name: f"{n}={v}")(value))
    return " ".join(p for p in parts if p)


SETTING_LABELS = {  # in the order labels show them
    "template": lambda v: "" if v == "base" else "independent",
    "structure": str,
    "anchor_cos": lambda v: "" if v == 0.42 else f"cos={v:g}",
    "anchor_pool": lambda v: "" if v == 100 else f"pool={v}",
    "candidates": lambda v: f"C={v}",
    "match": lambda v: "",  # nearest_k or tol says it
    "nearest_k": lambda v: f"k={v}",
    "tol": lambda v: f"tol={v:g}",
    "value_source": lambda v: "" if v == "template" else v,
    "exclude_template": lambda v: "" if v else "reuse-template",
    "match_norm": lambda v: "norm-matched" if v else "",
    "add_error": lambda v: "+error" if v else "",
    "error_source": lambda v: "" if v == "template" else "(other prompt's)",
    "cooccur": lambda v: "counts" if v == "counts" else "no-counts",
    "cooccur_power": lambda v: "" if v == 2 else f"p={v:g}",
    "cooccur_window": lambda v: "" if v == "all" else f"window={v}",
    "geometry_temp": lambda v: f"geo={v:g}" if v else "",
    "holdout": lambda v: "" if v == 0.25 else f"holdout={v:g}",
    "swaps": lambda v: f"swaps={v}",
    "swap_order": lambda v: "most-first" if v == "most_cooccurring" else "least-first",
}


def variant_label(row, axis: str = "base") -> str:
    """What a comparison row varies: the base kind (base axis) or the target (target axis), with its settings."""
    subject = str(row["base_kind"]) if axis == "base" else f"toward:{row['target_kind']}"
    return " ".join(p for p in (subject, settings_label(row)) if p)


def panel_label(row, axis: str = "base") -> str:
    """'model | sae | L1->R3 | scan | toward:same' (base axis) or '... | base real' (target axis)."""
    parts = [str(row["model"]), str(row["sae"]), f"L{int(row['layer'])}->R{int(row['read_layer'])}"]
    if row.get("scan") is not None:
        parts.append(str(row["scan"]))
    parts.append(str(row["direction"]) if axis == "base" else f"base {row['base_kind']}")
    return " | ".join(parts)


# --------------------------------------------------------------------------- against real


def compare_kinds(sweep: Sweep, metrics=COMPARED) -> pd.DataFrame:
    """Both axes of science.md's comparison, one row per (axis, compared cell, read layer, metric).

    axis "target": per base kind, each target kind's cell against the `toward:real` cell (the paper's design);
    axis "base": per direction, each base kind's cell against the `real` base's cell. The reference is the
    panel's real cell(s) whose generation settings, where both have one, match. Columns: the panel axes,
    `axis`, `cell_id`, `variant`, `metric`, n / mean / std of the cell and of real (`*_real`), the two-sample
    KS statistic and its p-value (scipy, `ks_pvalue`: exact only for independent samples), the Wasserstein
    distance, and from inference.distance_to_real the permutation p-value of "same distribution"
    (`ks_perm_p`) and `mean_diff` = mean - mean_real with its 95% t interval `mean_diff_lo/hi` and p
    `mean_diff_p`, paired over bases where `paired`; and the paper's reported numbers where this is the
    paper's setting (`paper_*`, else NaN). The KS and Wasserstein distances have no interval: none we
    measured is calibrated (docs/science.md, "Statistics"). Panel by panel: only one panel's values are read
    at a time.
    """
    out = [*_compare_axis(sweep, "target", metrics), *_compare_axis(sweep, "base", metrics)]
    return frame(out, [] if out else ["axis", *PANELS["base"], "base_kind", "target_kind", "cell_id", "variant",
                                      "metric", "n", "mean", "mean_real", "ks_stat", "ks_perm_p", "mean_diff",
                                      "mean_diff_lo", "mean_diff_hi", "mean_diff_p", "paired"])


def _subject(axis: str) -> str:
    return "base_kind" if axis == "base" else "target_kind"


def _references(reals: list[dict], cell: dict) -> list[dict]:
    """The real cells a cell is compared with: those whose generation settings, where both have one, match."""
    settings = {s: cell[s] for s in SETTINGS if s in cell}
    return [r for r in reals if all(r.get(k) in (None, v) for k, v in settings.items())]


def _by_base(sweep: Sweep, cell_ids: list[str], read_layer: int, metric: str) -> list[np.ndarray] | None:
    """The cells' values aligned base by base, when they were built for the same bases (else None)."""
    seeds, values = zip(*(sweep.by_base(c, read_layer, metric) for c in cell_ids))
    if seeds[0].size == 0 or any(s.shape != seeds[0].shape or (s != seeds[0]).any() for s in seeds[1:]):
        return None
    return list(values)


def _compare_axis(sweep: Sweep, axis: str, metrics) -> list[dict]:
    out = []
    for panel, group in panels(sweep.aggregates, axis):
        records = group.to_dict("records")
        what = {"rows": "comparison", "version": PANEL_VERSION, "axis": axis, "cells": records, "metrics": list(metrics),
                "n_perm": N_PERM}
        out += sweep.panel_rows(what, group.cell_id, partial(_compare_panel, sweep, axis, panel, records, metrics))
    return out


def _compare_panel(sweep: Sweep, axis: str, panel: dict, records: list[dict], metrics) -> list[dict]:
    subject = _subject(axis)
    reals = [r for r in records if r[subject] == "real"]
    out = []
    for first in records:
        if first[subject] in ("real", None):
            continue
        real = _references(reals, first)
        if not real:
            continue
        base = {"axis": axis} | panel | {k: first[k] for k in ("base_kind", "direction", "target_kind")} | {
            "cell_id": first["cell_id"], "variant": variant_label(first, axis)} | {
            c: first.get(c) for c in paper.FRAMING_COLUMNS}
        base |= {s: first[s] for s in SETTINGS if s in first}
        for metric in metrics:
            x = sweep.values(first["cell_id"], panel["read_layer"], metric)
            y = [sweep.values(r["cell_id"], panel["read_layer"], metric) for r in real]
            y = y[0] if len(y) == 1 else np.sort(np.concatenate(y))
            if x.size == 0 or y.size == 0:
                continue
            ks_stat, ks_pvalue, wasserstein = distances(x, y)
            pair = _by_base(sweep, [first["cell_id"], real[0]["cell_id"]], panel["read_layer"], metric) \
                if len(real) == 1 else None
            d = distance_to_real(*(pair or (x, y)), paired=pair is not None, n_perm=N_PERM, seed=sweep.seed)
            entry = base | {
                "metric": metric, "n": x.size, "n_real": y.size, "mean": float(x.mean()), "std": _std(x),
                "mean_real": float(y.mean()), "std_real": _std(y), "ks_stat": ks_stat, "ks_pvalue": ks_pvalue,
                "ks_perm_p": d["ks_p"], "wasserstein": wasserstein, "mean_diff": d["mean_diff"],
                "mean_diff_lo": d["mean_diff_lo"], "mean_diff_hi": d["mean_diff_hi"], "mean_diff_p": d["mean_diff_p"],
                "paired": pair is not None,
            }
            out.append(entry | paper.reported(entry))
    return out


# --------------------------------------------------------------------------- between rungs


DIFFERENCE_COLUMNS = ["axis", *PANELS["base"], "base_kind", "scan_mode", "step", "rung_a", "rung_b", "variant_a",
                      "variant_b", "cell_a", "cell_b", "metric", "paired", "n", "n_b", "n_real", "ks_a", "ks_b",
                      "ks_diff", "ks_diff_se", "ks_diff_lo", "ks_diff_hi", "ks_diff_p", "ks_diff_p_holm", "mean_diff",
                      "mean_diff_se", "mean_diff_lo", "mean_diff_hi", "mean_diff_p", "mean_diff_p_holm", "se_method",
                      "verdict"]


def differences(sweep: Sweep, metrics=COMPARED) -> pd.DataFrame:
    """The differences between rungs (rungs.pairs), one row per (axis, panel, pair of cells, metric).

    For cells a and b of a panel and the real cell they are both compared with: KS(b, real) - KS(a, real)
    (`ks_diff`, negative: b is closer to real; `ks_a`, `ks_b` the two distances) and mean(b) - mean(a)
    (`mean_diff`), each with its standard error (`*_se`), 95% interval (`*_lo`, `*_hi`) and the p-value of
    "no difference" from the same computation (`*_p`; inference.paired_difference: paired over bases where
    the three cells were built for the same bases, `paired`; else each sample on its own; `se_method` says
    whether the KS standard error came from drawn resamples or their Gaussian limit), the p-values
    Holm-adjusted over the whole grid (`*_p_holm`: every panel's pairs on both axes together, one family per
    metric and statistic), and the verdict sentence with its interval. Panel by panel, like compare_kinds."""
    out = []
    for axis in ("target", "base"):
        for panel, group in panels(sweep.aggregates, axis):
            records = group.to_dict("records")
            what = {"rows": "differences", "version": PANEL_VERSION, "axis": axis, "cells": records,
                    "metrics": list(metrics), "n_boot": N_BOOT}
            out += sweep.panel_rows(what, group.cell_id,
                                    partial(_differences_panel, sweep, axis, panel, records, metrics))
    table = frame(out, DIFFERENCE_COLUMNS)
    for column in ("ks_diff_p", "mean_diff_p"):
        for _, rows in table.groupby("metric", sort=False):
            table.loc[rows.index, f"{column}_holm"] = holm(rows[column].astype(float))
    if not table.empty:
        table["verdict"] = [grid_verdict(v, p) for v, p in zip(table.verdict, table.ks_diff_p_holm.astype(float))]
    return table


def grid_verdict(verdict: str, p_holm: float) -> str:
    """A pair's verdict (its interval and p) with the KS difference's Holm-adjusted p; a difference that the
    interval shows but that does not survive Holm's correction across the grid says so."""
    if not math.isfinite(p_holm):
        return verdict
    claims = not verdict.startswith(("no detectable", "too few"))
    return f"{verdict}, Holm p = {p_holm:.2g}" + (" (not significant across the grid)" if claims and p_holm > ALPHA
                                                  else "")


def _differences_panel(sweep: Sweep, axis: str, panel: dict, records: list[dict], metrics) -> list[dict]:
    subject = _subject(axis)
    reals = [r for r in records if r[subject] == "real"]
    out = []
    for step, a, b in rungs.pairs(records, subject):
        real = [r for r in _references(reals, a) if r in _references(reals, b)]
        if real:
            out += _difference_rows(sweep, axis, panel, step, a, b, real, metrics)
    return out


def _difference_rows(sweep: Sweep, axis: str, panel: dict, step: str, a: dict, b: dict, real: list[dict],
                     metrics) -> list[dict]:
    subject = _subject(axis)
    low, high = step.split(" -> ")
    names = (low, high if high in rungs.RUNGS else rungs.rung_of(b, subject) or b[subject])
    head = {"axis": axis} | panel | {"base_kind": a["base_kind"], "scan_mode": a.get("scan_mode"), "step": step,
                                     "rung_a": low, "rung_b": names[1] if names[1] in rungs.RUNGS else None,
                                     "variant_a": variant_label(a, axis), "variant_b": variant_label(b, axis),
                                     "cell_a": a["cell_id"], "cell_b": b["cell_id"]}
    out = []
    for metric in metrics:
        layer = panel["read_layer"]
        pair = _by_base(sweep, [real[0]["cell_id"], a["cell_id"], b["cell_id"]], layer, metric) \
            if len(real) == 1 else None
        samples = pair or [np.concatenate([sweep.values(r["cell_id"], layer, metric) for r in real]),
                           sweep.values(a["cell_id"], layer, metric), sweep.values(b["cell_id"], layer, metric)]
        if min(s.size for s in samples) == 0:
            continue
        d = paired_difference(*samples, paired=pair is not None, n_boot=N_BOOT, seed=sweep.seed, labels=names)
        out.append(head | {"metric": metric} | d)
    return out


def _std(x: np.ndarray) -> float:
    return float(x.std(ddof=1)) if x.size > 1 else math.nan


# --------------------------------------------------------------------------- verdicts


SLOPE_METRIC = "max_slope_step"  # the paper's headline metric (falls back to max_slope for older results)
CHECK_STRUCTURE = "synthetic_structured closer to real than synthetic_baseline (KS on max_slope_step, 95% CI)"
STRUCTURE_STEP = "R1 -> R2"  # rungs.STEPS: synthetic_baseline -> synthetic_structured
CHECK_PLATEAU = "plateaus shorter than real (mean plateau_len, 95% CI)"
CHECK_GAUSSIAN = "gaussian unlike real (KS on max_slope_step, permutation p < 0.05)"
CHECK_CLOSEST = "closest to real (KS on max_slope_step)"
SLOPE_SCAN, PLATEAU_SCAN = "interpolate", "step"  # the scan mode of the paper's sensitivity and plateau experiments
VERDICT_COLUMNS = ["axis", *PANELS["base"], "base_kind", "check", "subject", "verdict", "metric", "scan_mode",
                   "estimate", "lo", "hi", "p", "p_holm", "n", "detail"]


def verdicts(comparison: pd.DataFrame, differences: pd.DataFrame) -> pd.DataFrame:
    """science.md's three findings (and which kind is closest to real), per panel of each axis.

    YES means the paper's finding holds. "Structured closer to real than baseline" reads the R1 -> R2 rows of
    `differences`: YES when the 95% interval of KS(structured) - KS(baseline) lies below 0, NO when above,
    INCONCLUSIVE when it covers 0 (paired where the kinds share their bases, else the unpaired interval).
    The slope checks (closest, structure, gaussian) read only the scans of the sensitivity experiment (mode
    interpolate, the paper's max-slope framing) and the plateau check only the plateau scans (mode step):
    a sweep without such a scan gets no such verdict, rather than one from another experiment's scan.
    Columns: `axis`, the panel axes, `check`, `subject`, `verdict` (YES / NO / INCONCLUSIVE, or the closest
    variant), and what it rests on: `metric`, `scan_mode`, `estimate` (the KS difference, the KS distance
    or the difference of means the check reads), its 95% interval `lo`, `hi` (NaN where the check has
    none), `p` and `p_holm` (NaN where none), `n` (values of the subject), and the `detail` sentence.
    """
    if comparison.empty:
        return frame([], VERDICT_COLUMNS)
    slope_metric = SLOPE_METRIC if (comparison.metric == SLOPE_METRIC).any() else "max_slope"
    out = []
    for axis in ("target", "base"):
        rows = comparison[comparison.axis == axis]
        kind = _subject(axis)
        slope = _experiment(rows, slope_metric, SLOPE_SCAN)
        plateau = _experiment(rows, "plateau_len", PLATEAU_SCAN)
        steps = _experiment(differences[(differences.axis == axis) & (differences.step == STRUCTURE_STEP)],
                            slope_metric, SLOPE_SCAN)
        for panel, group in panels(pd.concat([slope, plateau]), axis):
            head = {"axis": axis} | panel
            s = group[group.metric == slope_metric].sort_values("ks_stat")
            if not s.empty:
                ranking = "KS " + " < ".join(f"{r.variant} {r.ks_stat:.3f}" for r in s.itertuples())
                first = s.iloc[0]
                out.append(head | _basis(first, first["ks_stat"]) | {
                    "check": CHECK_CLOSEST, "subject": "all kinds", "verdict": first["variant"], "detail": ranking})
            for d in _of_panel(steps, panel).itertuples():
                verdict = "YES" if d.ks_diff_hi < 0 else "NO" if d.ks_diff_lo > 0 else "INCONCLUSIVE"
                out.append(head | _basis(d._asdict(), d.ks_diff, d.ks_diff_lo, d.ks_diff_hi, d.ks_diff_p,
                                         d.ks_diff_p_holm) | {
                    "check": CHECK_STRUCTURE, "subject": f"{d.variant_b} vs {d.variant_a}", "verdict": verdict,
                    "detail": f"KS {d.ks_b:.3f} vs {d.ks_a:.3f}, difference {d.ks_diff:+.3f} "
                              f"[{d.ks_diff_lo:+.3f}, {d.ks_diff_hi:+.3f}] (95% CI, "
                              f"{'paired' if d.paired else 'unpaired'}), p={d.ks_diff_p:.2g}, "
                              f"Holm p={d.ks_diff_p_holm:.2g}"})
            for g in s[s[kind] == "gaussian"].itertuples():
                out.append(head | _basis(g._asdict(), g.ks_stat, p=g.ks_perm_p) | {
                    "check": CHECK_GAUSSIAN, "subject": g.variant, "verdict": "YES" if g.ks_perm_p < ALPHA else "NO",
                    "detail": f"KS {g.ks_stat:.3f}, permutation p={g.ks_perm_p:.2g}, Wasserstein {g.wasserstein:.3g}"})
            p = group[(group.metric == "plateau_len") & group[kind].isin(SYNTHETIC_KINDS)]
            for r in p.itertuples():
                verdict = "YES" if r.mean_diff_hi < 0 else "NO" if r.mean_diff_lo > 0 else "INCONCLUSIVE"
                out.append(head | _basis(r._asdict(), r.mean_diff, r.mean_diff_lo, r.mean_diff_hi, r.mean_diff_p) | {
                    "check": CHECK_PLATEAU, "subject": r.variant, "verdict": verdict,
                    "detail": f"{_plateau_framing(r)}: mean {r.mean:.2f} vs real {r.mean_real:.2f}, "
                              f"diff {r.mean_diff:+.2f} [{r.mean_diff_lo:+.2f}, {r.mean_diff_hi:+.2f}], "
                              f"p={r.mean_diff_p:.2g}"})
    return frame(out, VERDICT_COLUMNS)


def _basis(row, estimate, lo=math.nan, hi=math.nan, p=math.nan, p_holm=math.nan) -> dict:
    """The numbers a verdict rests on (VERDICT_COLUMNS), from its comparison or differences row."""
    return {"metric": row["metric"], "scan_mode": row.get("scan_mode"), "estimate": float(estimate), "lo": float(lo),
            "hi": float(hi), "p": float(p), "p_holm": float(p_holm), "n": int(row["n"])}


def _of_panel(rows: pd.DataFrame, panel: dict) -> pd.DataFrame:
    """The rows of one panel (its axes as plain values)."""
    keep = np.ones(len(rows), dtype=bool)
    for name, value in panel.items():
        keep &= np.array([axis_value(name, v) == value for v in rows[name]], dtype=bool)
    return rows[keep]


def _experiment(rows: pd.DataFrame, metric: str, mode: str) -> pd.DataFrame:
    """The rows of `metric` from the scans of `mode` (none where the sweep has no such scan)."""
    return rows[(rows.metric == metric) & (rows.scan_mode == mode)]


def _plateau_framing(row) -> str:
    """Which plateau the row measured: around T (scan from the target towards A) or around A."""
    return "plateau around T (scan from T to A)" if getattr(row, "scan_start", None) == "target" else \
        "plateau around A (scan from A to T)"
