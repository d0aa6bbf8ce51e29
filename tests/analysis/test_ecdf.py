"""ecdf: codes on a grid, and the Gaussian limits of resampled ECDFs against resampling itself."""

import numpy as np
import pytest

from synthact.analysis import ecdf


def _paired(n, seed=0):
    rng = np.random.default_rng(seed)
    z = np.sqrt(0.5) * rng.standard_normal(n) + np.sqrt(0.5) * rng.standard_normal((3, n))
    return z[0], np.round(z[1] * 4 + 1) / 4, z[2] * 2  # b continuous, a with ties


def test_codes_give_the_exact_ecdf_at_every_grid_point_with_or_without_a_cap():
    real, a, b = _paired(500)
    for cap in (None, 64):
        (cy, ca, cb), grid = ecdf.codes(real, a, b, max_points=cap)
        distinct = np.unique(np.concatenate([real, a, b])).size
        assert grid.size == distinct if cap is None else 32 < grid.size <= cap  # tied quantiles merge
        for x, c in ((real, cy), (a, ca), (b, cb)):
            np.testing.assert_allclose(ecdf.cdf(np.bincount(c, minlength=grid.size)),
                                       np.searchsorted(np.sort(x), grid, side="right") / x.size)


def test_paired_gap_covariance_is_the_covariance_of_bootstrap_gaps():
    real, a, b = _paired(300, seed=1)
    (cy, ca, cb), grid = ecdf.codes(real, a, b, max_points=16)
    size = grid.size
    rng = np.random.default_rng(2)
    index = rng.integers(0, real.size, (20_000, real.size))
    fy = ecdf.cdf(ecdf.counts(cy, size, index))
    gaps = np.concatenate([ecdf.cdf(ecdf.counts(ca, size, index)) - fy, ecdf.cdf(ecdf.counts(cb, size, index)) - fy], 1)
    cov = ecdf.paired_gap_covariance(cy, ca, cb, size)
    np.testing.assert_allclose(cov, np.cov(gaps.T), atol=0.05 * cov.diagonal().max())
    draws = ecdf.gaussian(cov, 20_000, rng)
    np.testing.assert_allclose(np.cov(draws.T), cov, atol=0.05 * cov.diagonal().max())


def test_paired_null_covariance_is_the_covariance_of_gaps_under_random_swaps():
    real, a, _ = _paired(300, seed=3)
    (cx, cy), grid = ecdf.codes(a, real, max_points=16)
    size = grid.size
    flip = np.random.default_rng(4).random((20_000, a.size)) < 0.5
    gaps = ecdf.cdf(ecdf.counts(cx, size, weights=~flip) + ecdf.counts(cy, size, weights=flip)) - \
        ecdf.cdf(ecdf.counts(cx, size, weights=flip) + ecdf.counts(cy, size, weights=~flip))
    cov = ecdf.paired_null_covariance(cx, cy, size)
    np.testing.assert_allclose(cov, np.cov(gaps.T), atol=0.05 * cov.diagonal().max())


def test_ecdf_noise_has_the_multinomial_covariance():
    p = np.random.default_rng(5).dirichlet(np.ones(12))
    draws = ecdf.ecdf_noise(p, 50, 100_000, np.random.default_rng(6))
    f = np.cumsum(p)
    np.testing.assert_allclose(np.cov(draws.T), (np.minimum.outer(f, f) - np.outer(f, f)) / 50, atol=2e-4)


def test_cholesky_of_a_rank_deficient_covariance_reproduces_it():
    rng = np.random.default_rng(7)
    factor = rng.standard_normal((40, 6))
    cov = factor @ factor.T
    root = ecdf._cholesky(cov)
    assert root @ root.T == pytest.approx(cov, abs=1e-8) and (np.abs(np.diagonal(root)) > 0).sum() == 6
