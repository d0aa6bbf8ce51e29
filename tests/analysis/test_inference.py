"""inference: distances with intervals, paired differences, permutation p-values, Holm, KS power: against scipy."""

import numpy as np
import pytest
from scipy import stats

from synthact.analysis import inference


def _paired_triple(n, seed=0, shift=3.0):
    rng = np.random.default_rng(seed)
    real = rng.integers(40, 60, n).astype(float)
    a = np.round(real + rng.normal(shift, 4, n))
    b = np.round(real + rng.normal(0.0, 4, n))
    return real, a, b


def test_ks_and_wasserstein_equal_scipy_on_tied_integer_samples():
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 12, 57).astype(float), rng.integers(2, 15, 40).astype(float)
    out = inference.distance_to_real(x, y, n_boot=50, n_perm=50)
    assert out["ks"] == pytest.approx(stats.ks_2samp(x, y).statistic, abs=1e-12)
    assert out["wasserstein"] == pytest.approx(stats.wasserstein_distance(x, y), abs=1e-12)
    assert out["mean_diff"] == pytest.approx(x.mean() - y.mean())
    assert out["ks_lo"] <= out["ks"] <= out["ks_hi"] and out["mean_diff_lo"] < out["mean_diff"] < out["mean_diff_hi"]


def test_paired_permutation_p_equals_scipy_exact_enumeration():
    real, a, b = _paired_triple(9, seed=1)
    out = inference.paired_difference(real, a, b, n_boot=100, n_perm=2**9)

    def ks_diff(x, y):
        return stats.ks_2samp(y, real).statistic - stats.ks_2samp(x, real).statistic

    scipy_ks = stats.permutation_test((a, b), ks_diff, permutation_type="samples", vectorized=False,
                                      n_resamples=10_000)
    scipy_mean = stats.permutation_test((a, b), lambda x, y: np.mean(y - x), permutation_type="samples",
                                        vectorized=False, n_resamples=10_000)
    assert out["ks_diff"] == pytest.approx(scipy_ks.statistic)
    assert out["ks_diff_p"] == pytest.approx(scipy_ks.pvalue, abs=1e-12)
    assert out["mean_diff_p"] == pytest.approx(scipy_mean.pvalue, abs=1e-12)


def test_paired_bootstrap_interval_agrees_with_scipy_percentile_bootstrap():
    real, a, b = _paired_triple(60, seed=2)
    out = inference.paired_difference(real, a, b, n_boot=20_000, n_perm=100, seed=5)

    def stat(r, x, y, axis=-1):
        return np.mean(y - x, axis=axis)

    ref = stats.bootstrap((real, a, b), stat, paired=True, method="percentile", n_resamples=20_000,
                          random_state=np.random.default_rng(9)).confidence_interval
    width = ref.high - ref.low
    assert out["mean_diff_lo"] == pytest.approx(ref.low, abs=0.05 * width)
    assert out["mean_diff_hi"] == pytest.approx(ref.high, abs=0.05 * width)

    def ks_stat(r, x, y):
        return stats.ks_2samp(y, r).statistic - stats.ks_2samp(x, r).statistic

    ref = stats.bootstrap((real, a, b), ks_stat, paired=True, vectorized=False, method="percentile",
                          n_resamples=3000, random_state=np.random.default_rng(9)).confidence_interval
    width = ref.high - ref.low
    assert out["ks_diff_lo"] == pytest.approx(ref.low, abs=0.1 * width)
    assert out["ks_diff_hi"] == pytest.approx(ref.high, abs=0.1 * width)


def test_unpaired_ks_permutation_p_agrees_with_scipy_permutation_test():
    rng = np.random.default_rng(4)
    x, y = rng.integers(0, 20, 40).astype(float), rng.integers(3, 22, 35).astype(float)
    out = inference.distance_to_real(x, y, n_boot=10, n_perm=20_000, seed=1)
    ref = stats.permutation_test((x, y), lambda u, v: stats.ks_2samp(u, v).statistic, vectorized=False,
                                 n_resamples=5000, alternative="greater", random_state=np.random.default_rng(2))
    assert out["ks_p"] == pytest.approx(ref.pvalue, abs=0.025)


def test_paired_verdict_names_the_kind_closer_to_real_only_when_the_interval_excludes_zero():
    real, a, b = _paired_triple(400, seed=6, shift=6.0)
    out = inference.paired_difference(real, a, b, n_boot=1000, n_perm=1000)
    assert out["ks_diff_hi"] < 0 and out["ks_diff_p"] < 0.01 and out["verdict"].startswith("b closer")
    same = inference.paired_difference(real, b, b.copy(), n_boot=200, n_perm=200)
    assert same["ks_diff"] == 0 and same["verdict"].startswith("no detectable")


def test_paired_difference_drops_bases_with_a_missing_value_in_any_kind():
    real, a, b = _paired_triple(30, seed=7)
    a[3], b[10] = np.nan, np.inf
    assert inference.paired_difference(real, a, b, n_boot=20, n_perm=20)["n"] == 28


def test_holm_adjusts_like_the_hand_computed_step_down():
    p = [0.01, 0.04, 0.03, np.nan, 0.5]
    # sorted 0.01, 0.03, 0.04, 0.5 (m = 4): 4*0.01, max(., 3*0.03), max(., 2*0.04), max(., 1*0.5)
    np.testing.assert_allclose(inference.holm(p), [0.04, 0.09, 0.09, np.nan, 0.5])


def test_ks_power_agrees_with_a_direct_simulation_of_scipy_ks_test():
    rng = np.random.default_rng(11)
    d, n, sims = 0.15, 200, 400
    shift = 2 * stats.norm.ppf((1 + d) / 2)
    hits = sum(stats.ks_2samp(rng.normal(size=n), rng.normal(shift, size=n)).pvalue < 0.05 for _ in range(sims))
    assert inference.ks_power(d, n, n_sim=2000) == pytest.approx(hits / sims, abs=0.08)
    assert inference.ks_power(0.0, n, n_sim=2000) <= 0.07


def test_detectable_difference_has_the_asked_power_and_shrinks_like_one_over_root_n():
    d = inference.detectable_ks_difference(1000)
    assert inference.ks_power(d, 1000, n_sim=1000) >= 0.8 > inference.ks_power(d - 0.005, 1000, n_sim=1000)
    assert inference.detectable_ks_difference(4000) == pytest.approx(d / 2, rel=0.15)


def test_unpaired_difference_resamples_each_kind_on_its_own():
    rng = np.random.default_rng(12)
    real, a, b = rng.integers(40, 60, 70).astype(float), rng.integers(44, 64, 50).astype(float), \
        rng.integers(40, 60, 90).astype(float)
    out = inference.paired_difference(real, a, b, paired=False, n_boot=2000, n_perm=2000, labels=("A", "B"))
    assert out["ks_diff"] == pytest.approx(stats.ks_2samp(b, real).statistic - stats.ks_2samp(a, real).statistic)
    assert out["mean_diff"] == pytest.approx(b.mean() - a.mean()) and (out["n"], out["n_b"]) == (50, 90)
    ref = stats.permutation_test((a, b), lambda x, y: np.mean(y) - np.mean(x), n_resamples=5000,
                                 random_state=np.random.default_rng(3))
    assert out["mean_diff_p"] == pytest.approx(ref.pvalue, abs=0.03)
    assert out["ks_diff_lo"] < out["ks_diff"] < out["ks_diff_hi"] and "KS(B) - KS(A)" in out["verdict"]
