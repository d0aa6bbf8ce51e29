"""Intervals of means: scipy's bootstrap up to BOOTSTRAP_MAX_N, normal theory above, and the two
agree where they meet (so the switch moves no printed number beyond the bootstrap's own Monte Carlo noise)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import bootstrap, ks_2samp, wasserstein_distance

from synthact.analysis import stats


def scipy_mean_ci(x, seed=0):
    ci = bootstrap((x,), np.mean, n_resamples=stats.N_RESAMPLES, method="percentile",
                   rng=np.random.default_rng(seed)).confidence_interval
    return ci.low, ci.high


@pytest.mark.parametrize("n", [2, 30, stats.BOOTSTRAP_MAX_N])
def test_small_samples_get_scipys_percentile_bootstrap(n):
    x = np.random.default_rng(n).lognormal(0, 1, n)
    assert stats.mean_interval(x, seed=3) == pytest.approx(scipy_mean_ci(x, seed=3), rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_large_samples_get_a_normal_interval_that_matches_the_bootstrap(seed):
    """Just above the switch, on skewed (lognormal) and integer (step-like) data, each end of the normal-theory
    interval lies within a tenth of the interval's width of scipy's bootstrap."""
    rng = np.random.default_rng(seed)
    n = stats.BOOTSTRAP_MAX_N + 1
    x, y = rng.lognormal(0, 0.8, n), rng.integers(40, 70, n).astype(float)
    for got, want in ((stats.mean_interval(x), scipy_mean_ci(x)), (stats.mean_interval(y), scipy_mean_ci(y))):
        width = want[1] - want[0]
        assert abs(got[0] - want[0]) < 0.1 * width and abs(got[1] - want[1]) < 0.1 * width, (got, want)


def test_normal_interval_is_mean_plus_minus_z_standard_errors():
    x = np.arange(stats.BOOTSTRAP_MAX_N * 2, dtype=float)
    low, high = stats.mean_interval(x)
    half = 1.959963984540054 * x.std(ddof=1) / np.sqrt(x.size)
    assert (low, high) == pytest.approx((x.mean() - half, x.mean() + half), rel=1e-12)


@pytest.mark.parametrize("integer", [True, False])
def test_distances_of_large_samples_match_scipy(integer):
    rng = np.random.default_rng(5)
    n = stats.KS_EXACT_MAX_N + 1
    x = rng.integers(40, 70, n).astype(float) if integer else rng.lognormal(0, 1, n)
    y = rng.integers(42, 75, n + 7).astype(float) if integer else rng.lognormal(0.05, 1, n + 7)
    x, y = np.sort(x), np.sort(y)
    d, p, w = stats.distances(x, y)
    ks = ks_2samp(x, y)
    assert d == pytest.approx(ks.statistic, rel=1e-12) and p == pytest.approx(ks.pvalue, rel=1e-9, abs=1e-300)
    assert w == pytest.approx(wasserstein_distance(x, y), rel=1e-9)
