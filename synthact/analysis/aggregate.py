"""Each kind against `real` (science.md, "Aggregates"), and the paper's findings as verdicts.

Works on a `cells.Sweep` (per-cell aggregates, one row per (cell_id, read_layer)). A *panel* is
(model, sae, layer, read_layer, scan, direction) on the base axis, or (..., scan, base_kind) on the
target axis: the kinds in one panel are compared, one panel at a time.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from synthact.analysis import paper
from synthact.analysis.cells import Sweep
from synthact.analysis.stats import distances, mean_difference
from synthact.results import COMPARED, SETTINGS, axes_of, axis_value, frame
from synthact.spec import SYNTHETIC_KINDS

# A panel holds the cells compared with each other. Base axis: the base kinds pushed along one direction,
# each against `real`. Target axis: one base kind pushed toward each target kind, each against `toward:real`.
PANELS = {"base": ("model", "sae", "layer", "read_layer", "scan", "direction"),
          "target": ("model", "sae", "layer", "read_layer", "scan", "base_kind")}
ALPHA = 0.05


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
    `axis`, `cell_id`, `variant`, `metric`, n / mean / std of the cell and of real (`*_real`), `mean_diff` with
    its 95% CI (stats.mean_difference), the two-sample KS statistic and p-value, the Wasserstein distance, and
    the paper's reported numbers where this is the paper's setting (`paper_*`, else NaN). Panel by panel:
    only one panel's values are read at a time.
    """
    out = [*_compare_axis(sweep, "target", metrics), *_compare_axis(sweep, "base", metrics)]
    return frame(out, [] if out else ["axis", *PANELS["base"], "base_kind", "target_kind", "cell_id", "variant",
                                      "metric", "n", "mean", "mean_real", "ks_stat"])


def _compare_axis(sweep: Sweep, axis: str, metrics) -> list[dict]:
    subject = "base_kind" if axis == "base" else "target_kind"
    out = []
    for panel, group in panels(sweep.aggregates, axis):
        records = group.to_dict("records")
        reals = [r for r in records if r[subject] == "real"]
        for first in records:
            if first[subject] in ("real", None):
                continue
            settings = {s: first[s] for s in SETTINGS if s in first}
            real = [r for r in reals if all(r.get(k) in (None, v) for k, v in settings.items())]
            if not real:
                continue
            base = {"axis": axis} | panel | {k: first[k] for k in ("base_kind", "direction", "target_kind")} | {
                "cell_id": first["cell_id"], "variant": variant_label(first, axis)} | {
                c: first.get(c) for c in paper.FRAMING_COLUMNS}
            base |= settings
            for metric in metrics:
                x = sweep.values(first["cell_id"], panel["read_layer"], metric)
                y = [sweep.values(r["cell_id"], panel["read_layer"], metric) for r in real]
                y = y[0] if len(y) == 1 else np.sort(np.concatenate(y))
                if x.size == 0 or y.size == 0:
                    continue
                ks_stat, ks_pvalue, wasserstein = distances(x, y)
                diff, low, high = mean_difference(x, y, sweep.seed)
                entry = base | {
                    "metric": metric, "n": x.size, "n_real": y.size, "mean": float(x.mean()), "std": _std(x),
                    "mean_real": float(y.mean()), "std_real": _std(y), "mean_diff": diff, "diff_ci_low": low,
                    "diff_ci_high": high, "ks_stat": ks_stat, "ks_pvalue": ks_pvalue, "wasserstein": wasserstein,
                }
                out.append(entry | paper.reported(entry))
    return out


def _std(x: np.ndarray) -> float:
    return float(x.std(ddof=1)) if x.size > 1 else math.nan


# --------------------------------------------------------------------------- verdicts


SLOPE_METRIC = "max_slope_step"  # the paper's headline metric (falls back to max_slope for older results)
CHECK_STRUCTURE = "synthetic_structured closer to real than synthetic_baseline (KS on max_slope_step)"
CHECK_PLATEAU = "plateaus shorter than real (mean plateau_len, 95% CI)"
CHECK_GAUSSIAN = "gaussian unlike real (KS on max_slope_step, p < 0.05)"
CHECK_CLOSEST = "closest to real (KS on max_slope_step)"
VERDICT_COLUMNS = ["axis", *PANELS["base"], "base_kind", "check", "subject", "verdict", "detail"]


def verdicts(comparison: pd.DataFrame) -> pd.DataFrame:
    """science.md's three findings (and which kind is closest to real), per panel of each axis.

    YES means the paper's finding holds. Slope checks use the sensitivity scan (mode interpolate) and the
    plateau check the plateau scan (mode step) where the sweep has one; otherwise every scan.
    Columns: `axis`, the panel axes, `check`, `subject`, `verdict` (YES / NO / INCONCLUSIVE, or the closest
    variant), `detail`.
    """
    if comparison.empty:
        return frame([], VERDICT_COLUMNS)
    slope_metric = SLOPE_METRIC if (comparison.metric == SLOPE_METRIC).any() else "max_slope"
    out = []
    for axis in ("target", "base"):
        rows = comparison[comparison.axis == axis]
        kind = "target_kind" if axis == "target" else "base_kind"
        slope = _experiment(rows, slope_metric, "interpolate")
        plateau = _experiment(rows, "plateau_len", "step")
        for panel, group in panels(pd.concat([slope, plateau]), axis):
            head = {"axis": axis} | panel
            s = group[group.metric == slope_metric].sort_values("ks_stat")
            if not s.empty:
                ranking = "KS " + " < ".join(f"{r.variant} {r.ks_stat:.3f}" for r in s.itertuples())
                out.append(head | {"check": CHECK_CLOSEST, "subject": "all kinds", "verdict": s.iloc[0]["variant"],
                                   "detail": ranking})
            structured = s[s[kind] == "synthetic_structured"]
            for b in s[s[kind] == "synthetic_baseline"].itertuples():
                for st in structured.itertuples():
                    if _same_shared_settings(st, b):
                        out.append(head | {"check": CHECK_STRUCTURE, "subject": f"{st.variant} vs {b.variant}",
                                           "verdict": "YES" if st.ks_stat < b.ks_stat else "NO",
                                           "detail": f"KS {st.ks_stat:.3f} vs {b.ks_stat:.3f}"})
            for g in s[s[kind] == "gaussian"].itertuples():
                out.append(head | {"check": CHECK_GAUSSIAN, "subject": g.variant,
                                   "verdict": "YES" if g.ks_pvalue < ALPHA else "NO",
                                   "detail": f"KS {g.ks_stat:.3f}, p={g.ks_pvalue:.2g}, Wasserstein {g.wasserstein:.3g}"})
            p = group[(group.metric == "plateau_len") & group[kind].isin(SYNTHETIC_KINDS)]
            for r in p.itertuples():
                verdict = "YES" if r.diff_ci_high < 0 else "NO" if r.diff_ci_low > 0 else "INCONCLUSIVE"
                out.append(head | {"check": CHECK_PLATEAU, "subject": r.variant, "verdict": verdict,
                                   "detail": f"{_plateau_framing(r)}: mean {r.mean:.2f} vs real {r.mean_real:.2f}, "
                                             f"diff {r.mean_diff:+.2f} [{r.diff_ci_low:+.2f}, {r.diff_ci_high:+.2f}]"})
    return frame(out, VERDICT_COLUMNS)


def _experiment(rows: pd.DataFrame, metric: str, mode: str) -> pd.DataFrame:
    """The comparison rows of `metric`, from the scans of `mode` where there are any."""
    picked = rows[rows.metric == metric]
    of_mode = picked[picked.scan_mode == mode]
    return of_mode if not of_mode.empty else picked


def _plateau_framing(row) -> str:
    """Which plateau the row measured: around T (scan from the target towards A) or around A."""
    return "plateau around T (scan from T to A)" if getattr(row, "scan_start", None) == "target" else \
        "plateau around A (scan from A to T)"


def _same_shared_settings(a, b) -> bool:
    """Whether two comparison rows agree on every generation setting both of them have."""
    for name in SETTINGS:
        x, y = axis_value(name, getattr(a, name, None)), axis_value(name, getattr(b, name, None))
        if x is not None and y is not None and x != y:
            return False
    return True


def verdict_lines(table: pd.DataFrame) -> list[str]:
    """A header line per panel, then '  check -- subject: VERDICT (detail)' per verdict."""
    lines = []
    for axis in ("target", "base"):
        for _, group in panels(table[table.axis == axis], axis):
            lines.append(f"[{axis}: {panel_label(group.iloc[0], axis)}]")
            lines += [f"  {r.check} -- {r.subject}: {r.verdict} ({r.detail})" for r in group.itertuples()]
    return lines
