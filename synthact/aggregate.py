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

from synthact.results import AGGREGATED, AXES, COMPARED, SETTINGS, axes_of, axis_value, frame
from synthact.spec import SYNTHETIC_KINDS

PANEL = ("model", "sae", "layer", "read_layer", "direction")
STATS = ("count", "mean", "median", "std", "q05", "q25", "q75", "q95", "ci_low", "ci_high")
BAND = ("mean", "q05", "q25", "median", "q75", "q95")
N_RESAMPLES = 2000
ALPHA = 0.05


# --------------------------------------------------------------------------- labels


def variant_label(row: pd.Series | dict) -> str:
    """A kind with its generation settings, e.g. 'synthetic_structured C=16 tol=0.1 sampled'."""
    parts = [str(row["base_kind"])]
    settings = axes_of(row, SETTINGS)
    if settings["candidates"] is not None:
        parts.append(f"C={settings['candidates']}")
    if settings["tol"] is not None:
        parts.append(f"tol={settings['tol']:g}")
    if settings["value_source"] is not None:
        parts.append(settings["value_source"])
    if settings["add_error"]:
        parts.append("+error")
    return " ".join(parts)


def panel_label(row: pd.Series | dict) -> str:
    """'model | sae | L1->R3 | toward:same'."""
    return f"{row['model']} | {row['sae']} | L{int(row['layer'])}->R{int(row['read_layer'])} | {row['direction']}"


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


def compare_to_real(rows: pd.DataFrame, metrics=COMPARED, seed: int = 0) -> pd.DataFrame:
    """Per panel, non-real cell and metric: KS statistic and p-value, Wasserstein distance, and the
    difference of means (kind - real) with its bootstrap 95% CI. `real` is the panel's real cell(s) whose
    generation settings (where they have any) match the compared cell's."""
    out = []
    for panel, group in rows.groupby(list(PANEL), sort=True):
        cells = {cid: g for cid, g in group.groupby("cell_id", sort=True)}
        reals = {cid: g for cid, g in cells.items() if g["base_kind"].iloc[0] == "real"}
        for cell_id, cell in cells.items():
            if cell_id in reals:
                continue
            first = cell.iloc[0]
            real = _matching_real(reals, axes_of(first, SETTINGS))
            if real is None:
                continue
            base = dict(zip(PANEL, (axis_value(a, v) for a, v in zip(PANEL, panel))))
            base |= {"cell_id": cell_id, "variant": variant_label(first)} | axes_of(first, ("base_kind", "target_kind", *SETTINGS))
            for metric in metrics:
                x = finite(cell[metric])
                y = finite(real[metric])
                if x.size == 0 or y.size == 0:
                    continue
                ks = ks_2samp(x, y)
                diff, low, high = mean_difference(x, y, seed)
                out.append(base | {
                    "metric": metric, "n": x.size, "n_real": y.size, "mean": float(x.mean()), "mean_real": float(y.mean()),
                    "mean_diff": diff, "diff_ci_low": low, "diff_ci_high": high,
                    "ks_stat": float(ks.statistic), "ks_pvalue": float(ks.pvalue),
                    "wasserstein": float(wasserstein_distance(x, y)),
                })
    return frame(out)


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


CHECK_STRUCTURE = "synthetic_structured closer to real than synthetic_baseline (KS on max_slope)"
CHECK_PLATEAU = "plateaus shorter than real (mean plateau_len, 95% CI)"
CHECK_GAUSSIAN = "gaussian unlike real (KS on max_slope, p < 0.05)"
CHECK_CLOSEST = "closest to real (KS on max_slope)"


def verdicts(comparison: pd.DataFrame) -> pd.DataFrame:
    """science.md's replication targets, one line each per panel: YES means the paper's finding holds.

    Columns: panel axes, `check`, `subject`, `verdict` (YES / NO / INCONCLUSIVE, or the closest variant),
    `detail`.
    """
    out = []
    if comparison.empty:
        return frame([], [*PANEL, "check", "subject", "verdict", "detail"])
    for panel, group in comparison.groupby(list(PANEL), sort=True):
        base = dict(zip(PANEL, panel))
        slope = group[group.metric == "max_slope"].sort_values("ks_stat")
        if not slope.empty:
            ranking = "KS " + " < ".join(f"{r.variant} {r.ks_stat:.3f}" for r in slope.itertuples())
            out.append(base | {"check": CHECK_CLOSEST, "subject": "all kinds", "verdict": slope.iloc[0]["variant"],
                               "detail": ranking})
        structured = slope[slope.base_kind == "synthetic_structured"]
        baseline = slope[slope.base_kind == "synthetic_baseline"]
        for s in structured.itertuples():
            for b in baseline.itertuples():
                if all(axis_value(k, getattr(s, k)) == axis_value(k, getattr(b, k)) for k in ("tol", "value_source", "add_error")):
                    out.append(base | {"check": CHECK_STRUCTURE, "subject": f"{s.variant} vs {b.variant}",
                                       "verdict": "YES" if s.ks_stat < b.ks_stat else "NO",
                                       "detail": f"KS {s.ks_stat:.3f} vs {b.ks_stat:.3f}"})
        plateau = group[(group.metric == "plateau_len") & group.base_kind.isin(SYNTHETIC_KINDS)]
        for p in plateau.itertuples():
            verdict = "YES" if p.diff_ci_high < 0 else "NO" if p.diff_ci_low > 0 else "INCONCLUSIVE"
            out.append(base | {"check": CHECK_PLATEAU, "subject": p.variant, "verdict": verdict,
                               "detail": f"mean {p.mean:.2f} vs real {p.mean_real:.2f}, "
                                         f"diff {p.mean_diff:+.2f} [{p.diff_ci_low:+.2f}, {p.diff_ci_high:+.2f}]"})
        for g in slope[slope.base_kind == "gaussian"].itertuples():
            out.append(base | {"check": CHECK_GAUSSIAN, "subject": g.variant,
                               "verdict": "YES" if g.ks_pvalue < ALPHA else "NO",
                               "detail": f"KS {g.ks_stat:.3f}, p={g.ks_pvalue:.2g}, Wasserstein {g.wasserstein:.3g}"})
    return frame(out)


def verdict_lines(table: pd.DataFrame) -> list[str]:
    """A header line per panel, then '  check -- subject: VERDICT (detail)' per verdict."""
    lines = []
    for _, group in table.groupby(list(PANEL), sort=True):
        lines.append(f"[{panel_label(group.iloc[0])}]")
        lines += [f"  {r.check} -- {r.subject}: {r.verdict} ({r.detail})" for r in group.itertuples()]
    return lines
