"""power: the KS test's power and the smallest detectable KS distance, against scipy."""

import numpy as np
import pytest
from scipy import stats

from synthact.analysis import power


def test_ks_power_agrees_with_a_direct_simulation_of_scipy_ks_test():
    rng = np.random.default_rng(11)
    d, n, sims = 0.15, 200, 400
    shift = 2 * stats.norm.ppf((1 + d) / 2)
    hits = sum(stats.ks_2samp(rng.normal(size=n), rng.normal(shift, size=n)).pvalue < 0.05 for _ in range(sims))
    assert power.ks_power(d, n, n_sim=2000) == pytest.approx(hits / sims, abs=0.08)
    assert power.ks_power(0.0, n, n_sim=2000) <= 0.07


def test_detectable_difference_has_the_asked_power_and_shrinks_like_one_over_root_n():
    d = power.detectable_ks_difference(1000)
    assert power.ks_power(d, 1000, n_sim=1000) >= 0.8 > power.ks_power(d - 0.005, 1000, n_sim=1000)
    assert power.detectable_ks_difference(4000) == pytest.approx(d / 2, rel=0.15)
