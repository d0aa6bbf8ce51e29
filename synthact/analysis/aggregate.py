"""Per-cell aggregates and each kind against `real` (science.md, "Aggregates").

Pure functions over a pandas frame of result rows (one row per curve, the columns of the
Parquet dataset). A cell covers all read layers, so everything is per (cell_id, read_layer);
a *panel* is (model, sae, layer, read_layer, direction): the kinds in one panel are compared.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.stats import bootstrap, ks_2samp, wasserstein_distance

from synthact.analysis import paper
from synthact.results import AGGREGATED, AXES, COMPARED, SETTINGS, axes_of, axis_value, frame
from synthact.spec import SYNTHETIC_KINDS

# A panel holds the cells compared with each other. Base axis: the base kinds pushed along one direction,
# each against `real`. Target axis: one base kind pushed toward each target kind, each against `toward:real`.
PANELS = {"base": ("model", "sae", "layer", "read_layer", "scan", "direction"),
          "target": ("model", "sae", "layer", "read_layer", "scan", "base_kind")}
STATS = ("count", "mean", "median", "std", "q05", "q25", "q75", "q95", "ci_low", "ci_high")
BAND = ("mean", "q05", "q25", "median", "q75", "q95")
N_RESAMPLES = 2000
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


# --------------------------------------------------------------------------- per cell


def summarize(values, seed: int = 0, n_resamples: int = N_RESAMPLES) -> dict[str, float]:
    """count, mean, median, std (ddof=1), quantiles and a percentile-bootstrap 95% CI of the mean of finite values."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    out = {"count": int(x.size)}
    if x.size == 0:
        return out | {s: math.nan for s in STATS[1:]}
    q05, q25, q75, q95 = np.quantile(x, [0.05, 0.25, 0.75, 0.95])
    out |= {"mean": float(x.mean()), "median": float(np.median(x)), "std": float(x.std(ddof=1)) if x.size > 1 else math.nan,
            "q05": float(q05), "q25": float(q25), "q75": float(q75), "q95": float(q95)}
    if x.size > 1:
        ci = bootstrap((x,), np.mean, n_resamples=n_resamples, method="percentile",
                       rng=np.random.default_rng(seed)).confidence_interval
        out |= {"ci_low": float(ci.low), "ci_high": float(ci.high)}
    else:
        out |= {"ci_low": math.nan, "ci_high": math.nan}
    return out


def cell_aggregates(rows: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """One row per (cell_id, read_layer): every grid axis, `curves`, and `<metric>_<stat>` for each metric."""
    out = []
    for (cell_id, read_layer), group in rows.groupby(["cell_id", "read_layer"], sort=True):
        entry = {"cell_id": cell_id} | axes_of(group.iloc[0]) | {"curves": len(group)}
        for metric in AGGREGATED:
            if metric in group:
                for stat, value in summarize(group[metric], seed).items():
                    entry[f"{metric}_{stat}"] = value
        out.append(entry)
    return frame(out)


def curve_bands(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (cell_id, read_layer): axes and the mean curve with quantile bands (arrays in BAND columns)."""
    if "l2_curve" not in rows:
        return frame([], ["cell_id", *AXES, *BAND])
    out = []
    for (cell_id, read_layer), group in rows.groupby(["cell_id", "read_layer"], sort=True):
        curves = np.stack([np.asarray(c, dtype=np.float64) for c in group["l2_curve"]])
        q05, q25, median, q75, q95 = np.quantile(curves, [0.05, 0.25, 0.5, 0.75, 0.95], axis=0)
        out.append({"cell_id": cell_id} | axes_of(group.iloc[0])
                   | {"mean": curves.mean(axis=0), "q05": q05, "q25": q25, "median": median, "q75": q75, "q95": q95})
    return frame(out)


# --------------------------------------------------------------------------- against real


def mean_difference(x, y, seed: int = 0, n_resamples: int = N_RESAMPLES) -> tuple[float, float, float]:
    """mean(x) - mean(y) with a percentile-bootstrap 95% CI (independent samples)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    diff = float(x.mean() - y.mean())
    if x.size < 2 or y.size < 2:
        return diff, math.nan, math.nan
    ci = bootstrap((x, y), lambda a, b, axis: a.mean(axis) - b.mean(axis), n_resamples=n_resamples,
                   method="percentile", paired=False, vectorized=True, rng=np.random.default_rng(seed)).confidence_interval
    return diff, float(ci.low), float(ci.high)


def compare_kinds(rows: pd.DataFrame, metrics=COMPARED, seed: int = 0) -> pd.DataFrame:
    """Both axes of science.md's comparison, one row per (axis, compared cell, read layer, metric).

    axis "target": per base kind, each target kind's cell against the `toward:real` cell (the paper's design);
    axis "base": per direction, each base kind's cell against the `real` base's cell. The reference is the
    panel's real cell(s) whose generation settings, where both have one, match. Columns: the panel axes,
    `axis`, `cell_id`, `variant`, `metric`, n / mean / std of the cell and of real (`*_real`), `mean_diff` with
    its bootstrap 95% CI, the two-sample KS statistic and p-value, the Wasserstein distance, and the paper's
    reported numbers where this is the paper's setting (`paper_*`, else NaN).
    """
    out = [*_compare_axis(rows, "target", metrics, seed), *_compare_axis(rows, "base", metrics, seed)]
    return frame(out, [] if out else ["axis", *PANELS["base"], "base_kind", "target_kind", "cell_id", "variant",
                                      "metric", "n", "mean", "mean_real", "ks_stat"])


def _compare_axis(rows: pd.DataFrame, axis: str, metrics, seed: int) -> list[dict]:
    is_reference = (lambda g: g["base_kind"].iloc[0] == "real") if axis == "base" else \
        (lambda g: g["target_kind"].iloc[0] == "real")
    out = []
    for panel, group in panels(rows, axis):
        cells = dict(tuple(group.groupby("cell_id", sort=True)))
        reals = {cid: g for cid, g in cells.items() if is_reference(g)}
        for cell_id, cell in cells.items():
            first = cell.iloc[0]
            if cell_id in reals or (axis == "target" and axis_value("target_kind", first["target_kind"]) is None):
                continue
            real = _matching_real(reals, axes_of(first, [s for s in SETTINGS if s in first]))
            if real is None:
                continue
            base = {"axis": axis} | panel | axes_of(first, ("base_kind", "direction", "target_kind")) | {
                "cell_id": cell_id, "variant": variant_label(first, axis)} | {
                c: first.get(c) for c in paper.FRAMING_COLUMNS}
            base |= axes_of(first, [s for s in SETTINGS if s in first])
            for metric in metrics:
                if metric not in cell:
                    continue
                x, y = finite(cell[metric]), finite(real[metric])
                if x.size == 0 or y.size == 0:
                    continue
                ks = ks_2samp(x, y)
                diff, low, high = mean_difference(x, y, seed)
                entry = base | {
                    "metric": metric, "n": x.size, "n_real": y.size, "mean": float(x.mean()), "std": _std(x),
                    "mean_real": float(y.mean()), "std_real": _std(y), "mean_diff": diff, "diff_ci_low": low,
                    "diff_ci_high": high, "ks_stat": float(ks.statistic), "ks_pvalue": float(ks.pvalue),
                    "wasserstein": float(wasserstein_distance(x, y)),
                }
                out.append(entry | paper.reported(entry))
    return out


def _std(x: np.ndarray) -> float:
    return float(x.std(ddof=1)) if x.size > 1 else math.nan


def _matching_real(reals: dict[str, pd.DataFrame], settings: dict) -> pd.DataFrame | None:
    matches = [
        g for g in reals.values()
        if all(axis_value(k, g[k].iloc[0]) in (None, v) for k, v in settings.items())
    ]
    return pd.concat(matches) if matches else None


def finite(values) -> np.ndarray:
    """The finite values as a float64 array."""
    x = np.asarray(values, dtype=np.float64)
    return x[np.isfinite(x)]


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
