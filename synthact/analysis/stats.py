"""Summary statistics and 95% intervals whose cost does not explode with n.

A mean's interval (per cell) is the percentile bootstrap (scipy, `N_RESAMPLES`
resamples, seeded) while the sample has at most `BOOTSTRAP_MAX_N` values, and the normal-theory
interval mean +- z * s / sqrt(n) above it. At that size the two agree to within the bootstrap's own
Monte Carlo noise (tests/analysis/test_stats.py checks it against scipy), and the normal interval
costs O(n) instead of N_RESAMPLES full resamples. KS and Wasserstein are O(n log n) (scipy).
Samples are passed sorted (the cache keeps them so), which makes every result independent of row order.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import bootstrap, ks_2samp, kstwo, norm, wasserstein_distance

N_RESAMPLES = 2000
BOOTSTRAP_MAX_N = 2000  # above this many values (per sample), normal-theory intervals
LEVEL = 0.95
STATS = ("count", "mean", "median", "std", "q05", "q25", "q75", "q95", "mean_lo", "mean_hi")
Z = float(norm.ppf(0.5 + LEVEL / 2))
KS_EXACT_MAX_N = 10_000  # scipy's own switch from the exact KS p-value to Smirnov's asymptotic one


def finite(values) -> np.ndarray:
    """The finite values as a float64 array."""
    x = np.asarray(values, dtype=np.float64)
    return x[np.isfinite(x)]


def summarize(values, seed: int = 0) -> dict[str, float]:
    """count, mean, median, std (ddof=1), quantiles and a 95% CI of the mean of the finite values."""
    x = finite(values)
    out = {"count": int(x.size)}
    if x.size == 0:
        return out | {s: math.nan for s in STATS[1:]}
    q05, q25, median, q75, q95 = np.quantile(x, [0.05, 0.25, 0.5, 0.75, 0.95])
    out |= {"mean": float(x.mean()), "median": float(median), "std": _std(x),
            "q05": float(q05), "q25": float(q25), "q75": float(q75), "q95": float(q95)}
    low, high = mean_interval(x, seed)
    return out | {"mean_lo": low, "mean_hi": high}


def mean_interval(x: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95% CI of the mean: percentile bootstrap up to BOOTSTRAP_MAX_N values, normal theory above (NaN below 2)."""
    if x.size < 2:
        return math.nan, math.nan
    if x.size <= BOOTSTRAP_MAX_N:
        ci = bootstrap((x,), np.mean, n_resamples=N_RESAMPLES, method="percentile",
                       rng=np.random.default_rng(seed)).confidence_interval
        return float(ci.low), float(ci.high)
    half = Z * _std(x) / math.sqrt(x.size)
    return float(x.mean() - half), float(x.mean() + half)


def _std(x: np.ndarray) -> float:
    return float(x.std(ddof=1)) if x.size > 1 else math.nan


def distances(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """(KS statistic, its two-sided p-value, Wasserstein-1 distance) of two sorted samples.

    Up to KS_EXACT_MAX_N values scipy's `ks_2samp` and `wasserstein_distance` themselves; above, the same
    quantities from one pass over the distinct values of the sorted samples (integer metrics have a few
    hundred) with scipy's asymptotic p-value (`kstwo.sf`, as ks_2samp uses there), instead of sorting again.
    """
    if max(x.size, y.size) <= KS_EXACT_MAX_N:
        ks = ks_2samp(x, y)
        return float(ks.statistic), float(ks.pvalue), float(wasserstein_distance(x, y))
    values = np.union1d(_distinct(x), _distinct(y))
    gap = np.searchsorted(x, values, side="right") / x.size - np.searchsorted(y, values, side="right") / y.size
    d = float(np.abs(gap).max())
    m, n = sorted([float(x.size), float(y.size)], reverse=True)
    p = float(np.clip(kstwo.sf(d, np.round(m * n / (m + n))), 0, 1))
    return d, p, float(np.sum(np.abs(gap[:-1]) * np.diff(values)))


def _distinct(x: np.ndarray) -> np.ndarray:
    """The distinct values of a sorted array, in O(n)."""
    return x[np.concatenate([[True], x[1:] != x[:-1]])] if x.size else x
