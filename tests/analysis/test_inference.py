"""inference: distances and permutation p-values, differences between kinds with their standard error, interval
and p, Holm: against scipy, and the large-sample path against the resampling one."""

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


def _correlated(n, seed, shift_a=0.5, scale_b=2.4, rho=0.5):
    """real, a (shifted), b (scaled), n bases, each base's three values correlated."""
    rng = np.random.default_rng(seed)
    z = np.sqrt(rho) * rng.standard_normal(n) + np.sqrt(1 - rho) * rng.standard_normal((3, n))
    return z[0], z[1] + shift_a, z[2] * scale_b


def test_ks_and_mean_difference_equal_scipy_on_tied_integer_samples():
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 12, 57).astype(float), rng.integers(2, 15, 40).astype(float)
    out = inference.distance_to_real(x, y, n_perm=50)
    assert out["ks"] == pytest.approx(stats.ks_2samp(x, y).statistic, abs=1e-12)
    welch = stats.ttest_ind(x, y, equal_var=False)
    assert out["mean_diff"] == pytest.approx(x.mean() - y.mean()) and out["mean_diff_p"] == pytest.approx(welch.pvalue)
    ci = welch.confidence_interval(0.95)
    assert (out["mean_diff_lo"], out["mean_diff_hi"]) == pytest.approx((ci.low, ci.high))
    assert set(out) == {"n", "n_real", *inference.DISTANCE_KEYS}  # no interval of the KS distance itself


def test_paired_mean_difference_is_the_paired_t_test():
    real, a, b = _paired_triple(40, seed=8)
    out = inference.paired_difference(real, a, b, n_boot=50)
    ref = stats.ttest_rel(b, a)
    ci = ref.confidence_interval(0.95)
    assert out["mean_diff"] == pytest.approx(np.mean(b - a)) and out["mean_diff_p"] == pytest.approx(ref.pvalue)
    assert (out["mean_diff_lo"], out["mean_diff_hi"]) == pytest.approx((ci.low, ci.high))


def test_paired_permutation_p_equals_scipy_exact_enumeration():
    real, a, _ = _paired_triple(9, seed=1)
    out = inference.distance_to_real(a, real, paired=True, n_perm=2**9)
    ref = stats.permutation_test((a, real), lambda x, y: stats.ks_2samp(x, y).statistic, permutation_type="samples",
                                 vectorized=False, n_resamples=10_000, alternative="greater")
    assert out["ks_p"] == pytest.approx(ref.pvalue, abs=1e-12)


def test_unpaired_ks_permutation_p_agrees_with_scipy_permutation_test():
    rng = np.random.default_rng(4)
    x, y = rng.integers(0, 20, 40).astype(float), rng.integers(3, 22, 35).astype(float)
    out = inference.distance_to_real(x, y, n_perm=20_000, seed=1)
    ref = stats.permutation_test((x, y), lambda u, v: stats.ks_2samp(u, v).statistic, vectorized=False,
                                 n_resamples=5000, alternative="greater", random_state=np.random.default_rng(2))
    assert out["ks_p"] == pytest.approx(ref.pvalue, abs=0.025)


def test_ks_difference_se_is_the_paired_bootstrap_sd_and_its_p_inverts_the_interval():
    real, a, b = _correlated(80, seed=2)
    out = inference.paired_difference(real, a, b, n_boot=4000, seed=5)

    def ks_diff(r, x, y):
        return stats.ks_2samp(y, r).statistic - stats.ks_2samp(x, r).statistic

    ref = stats.bootstrap((real, a, b), ks_diff, paired=True, vectorized=False, n_resamples=2000,
                          random_state=np.random.default_rng(9)).standard_error
    assert out["ks_diff"] == pytest.approx(ks_diff(real, a, b))
    assert out["ks_diff_se"] == pytest.approx(ref, rel=0.08) and out["se_method"] == "bootstrap"
    z = stats.norm.ppf(0.975)
    assert (out["ks_diff_lo"], out["ks_diff_hi"]) == pytest.approx((out["ks_diff"] - z * out["ks_diff_se"],
                                                                    out["ks_diff"] + z * out["ks_diff_se"]))
    assert out["ks_diff_p"] == pytest.approx(2 * stats.norm.sf(abs(out["ks_diff"]) / out["ks_diff_se"]))


def test_verdict_names_the_kind_closer_to_real_exactly_when_p_is_below_the_level():
    real, a, b = _paired_triple(400, seed=6, shift=6.0)
    out = inference.paired_difference(real, a, b, n_boot=500)
    assert out["ks_diff_hi"] < 0 and out["ks_diff_p"] < 0.01 and out["verdict"].startswith("b closer")
    same = inference.paired_difference(real, b, b.copy(), n_boot=200)
    assert same["ks_diff"] == 0 and same["ks_diff_p"] == 1 and same["verdict"].startswith("no detectable")
    for seed in range(6):  # the interval excludes 0 exactly when p < 0.05
        d = inference.paired_difference(*_correlated(60, seed, shift_a=0.3 + 0.1 * seed), n_boot=300, seed=seed)
        assert (d["ks_diff_p"] < 0.05) == (d["ks_diff_lo"] > 0 or d["ks_diff_hi"] < 0)


def test_paired_difference_drops_bases_with_a_missing_value_in_any_kind():
    real, a, b = _paired_triple(30, seed=7)
    a[3], b[10] = np.nan, np.inf
    assert inference.paired_difference(real, a, b, n_boot=20)["n"] == 28


def test_unpaired_difference_resamples_each_kind_on_its_own():
    rng = np.random.default_rng(12)
    real, a, b = rng.integers(40, 60, 70).astype(float), rng.integers(44, 64, 50).astype(float), \
        rng.integers(40, 60, 90).astype(float)
    out = inference.paired_difference(real, a, b, paired=False, n_boot=3000, labels=("A", "B"))
    assert out["ks_diff"] == pytest.approx(stats.ks_2samp(b, real).statistic - stats.ks_2samp(a, real).statistic)
    assert out["mean_diff"] == pytest.approx(b.mean() - a.mean()) and (out["n"], out["n_b"]) == (50, 90)
    assert out["mean_diff_p"] == pytest.approx(stats.ttest_ind(b, a, equal_var=False).pvalue)

    def ks_diff(r, x, y):
        return stats.ks_2samp(y, r).statistic - stats.ks_2samp(x, r).statistic

    ref = stats.bootstrap((real, a, b), ks_diff, vectorized=False, n_resamples=2000,
                          random_state=np.random.default_rng(3)).standard_error  # each sample on its own
    assert out["ks_diff_se"] == pytest.approx(ref, rel=0.08) and "KS(B) - KS(A)" in out["verdict"]


@pytest.mark.parametrize("paired", [True, False])
def test_large_sample_path_agrees_with_the_resampling_path(monkeypatch, paired):
    n = 3000
    for shift_a, scale_b in ((0.5, 2.4), (0.0, 1.0)):  # distances 0.2, and 0 (every point a candidate)
        real, a, b = _correlated(n, seed=11, shift_a=shift_a, scale_b=scale_b)
        b = np.round(b * 10) / 10  # ties on one sample
        large = inference.paired_difference(real, a, b, paired=paired, n_boot=2000, seed=1)
        one_large = inference.distance_to_real(b, real, paired=paired, n_perm=2000, seed=1)
        monkeypatch.setattr(inference, "EXACT_MAX_N", n)
        exact = inference.paired_difference(real, a, b, paired=paired, n_boot=2000, seed=1)
        one_exact = inference.distance_to_real(b, real, paired=paired, n_perm=2000, seed=1)
        monkeypatch.undo()
        assert (large["se_method"], exact["se_method"]) == ("gaussian", "bootstrap")
        assert large["ks_diff"] == exact["ks_diff"] and large["ks_diff_se"] == pytest.approx(exact["ks_diff_se"], rel=0.1)
        assert one_large["ks"] == one_exact["ks"] and one_large["ks_p"] == pytest.approx(one_exact["ks_p"], abs=0.05)


def test_holm_adjusts_like_the_hand_computed_step_down():
    p = [0.01, 0.04, 0.03, np.nan, 0.5]
    # sorted 0.01, 0.03, 0.04, 0.5 (m = 4): 4*0.01, max(., 3*0.03), max(., 2*0.04), max(., 1*0.5)
    np.testing.assert_allclose(inference.holm(p), [0.04, 0.09, 0.09, np.nan, 0.5])
