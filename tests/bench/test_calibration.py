"""`synthact bench --calibration`: a small seeded run of the calibration simulation, whose rates must fall
within binomial bounds of their nominal values (the sign-flip permutation the differences used before
rejected 21% of equal-distance, different-shape nulls at n = 100 and fails these)."""

from __future__ import annotations

import numpy as np
import pytest

from synthact.bench import calibration
from tests.helpers import command

REPLICATES = 200
TYPE_I = (0.005, 0.105)  # 99.9% binomial range of 200 draws at 5%
COVERAGE = 0.90  # 99.95% lower binomial bound of 200 draws at 95%


def test_the_scenarios_are_tuned_to_the_distances_they_state():
    for data in ("continuous", "integer"):
        (ta, sa), (tb, sb) = calibration.kinds("equal-ks", data, 100)
        kind = "integer" if data == "integer" else "continuous"
        assert calibration._ks_to_real(kind, ta, sa) == pytest.approx(0.2, abs=1e-9)
        assert calibration._ks_to_real(kind, tb, sb) == pytest.approx(0.2, abs=1e-9)
    assert calibration.truth("apart", "continuous", 100)["ks_diff"] == pytest.approx(0.15, abs=1e-9)
    real, a, b = calibration.draw("mass-vs-shift", "integer", 200_000, True, np.random.default_rng(0))
    assert set(np.unique(real)) <= set(range(100))
    assert abs(np.mean(a == 99) - np.mean(real == 99) - calibration.kinds("mass-vs-shift", "integer", 100)[0][1]
               * (1 - calibration.P99)) < 0.01
    real, a, b = calibration.draw("equal-ks", "continuous", 200_000, True, np.random.default_rng(0))
    assert np.corrcoef(real, b)[0, 1] == pytest.approx(calibration.RHO, abs=0.01)  # a base's values correlate
    real, a, b = calibration.draw("equal-ks", "continuous", 200_000, False, np.random.default_rng(0))
    assert abs(np.corrcoef(real, b)[0, 1]) < 0.01


@pytest.mark.parametrize("scenario, data, design, n", [
    ("equal-ks", "continuous", "paired", 100),
    ("equal-ks", "integer", "unpaired", 100),
    ("equal-ks", "continuous", "paired", 3000),  # the large-sample (Gaussian) path
])
def test_the_ks_difference_holds_its_level_where_distances_are_equal_and_shapes_differ(scenario, data, design, n):
    row = calibration.run_config(scenario, data, design, n, REPLICATES, seed=1)[0]
    assert row["path"] == ("gaussian" if n > 2000 else "bootstrap")
    assert TYPE_I[0] <= row["ks_type_i"] <= TYPE_I[1], row
    assert row["ks_coverage"] >= COVERAGE and row["mean_coverage"] >= COVERAGE, row


def test_permutation_p_and_mean_tests_hold_their_level_where_every_kind_is_real():
    (row,) = calibration.run_config("zero", "integer", "paired", 100, REPLICATES, seed=2)
    assert TYPE_I[0] <= row["perm_type_i"] <= TYPE_I[1] and TYPE_I[0] <= row["mean_type_i"] <= TYPE_I[1], row
    assert row["real_mean_coverage"] >= COVERAGE and row["ks_type_i"] <= TYPE_I[1], row


def test_an_interval_of_a_nonzero_difference_covers_it_and_skewed_data_shares_the_draws():
    continuous, skewed = calibration.run_config("apart", "continuous", "unpaired", 100, REPLICATES, seed=3)
    assert continuous["ks_type_i"] is None and continuous["ks_coverage"] >= COVERAGE, continuous
    assert continuous["mean_coverage"] >= COVERAGE and continuous["real_mean_coverage"] >= COVERAGE, continuous
    assert skewed["data"] == "skewed" and skewed["ks_coverage"] == continuous["ks_coverage"]
    assert skewed["mean_coverage"] != continuous["mean_coverage"]  # the means are those of the skewed values


def test_the_table_marks_every_rate_outside_its_target():
    rows = [{"scenario": "zero", "data": "integer", "design": "paired", "n": 100, "replicates": 200, "ks_type_i": 0.01,
             "ks_coverage": 0.99, "mean_type_i": 0.05, "mean_coverage": 0.95, "perm_type_i": 0.05,
             "real_mean_coverage": 0.95}]
    assert calibration.misses(rows[0]) == ["ks_type_i", "ks_coverage"]
    text = calibration.format_calibration(rows)
    assert "| integer | paired | 100 | zero | 1.0 (!) | 99.0 (!) | 5.0 | 95.0 | 5.0 | 95.0 |" in text
    assert "the 2 rates outside them" in text


def test_the_command_refuses_too_few_replicates(capsys):
    with pytest.raises(SystemExit) as refused:
        command("bench", "--calibration", "5")
    assert refused.value.code == 2 and "below the minimum 10" in capsys.readouterr().err
