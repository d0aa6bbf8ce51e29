"""Curve metrics against their definitions in science.md."""

import numpy as np

from synthact.metrics import curve_metrics


def test_plateau_then_blowup():
    n = np.arange(101, dtype=float)
    flat_then_jump = 10.0 / (1.0 + np.exp(-(n - 40.5)))  # a plateau, then a blow-up between n = 40 and 41
    linear = 2.0 * n
    m = curve_metrics(np.stack([flat_then_jump, linear]), np.array([0.5, 0.5]))
    assert m["blowup_step"][0] == 40
    assert np.isclose(m["max_slope"][0], np.diff(flat_then_jump).max() / 0.5)
    assert np.isclose(m["max_slope"][1], 2.0 / 0.5)
    final = flat_then_jump[-1]
    assert m["plateau_len"][0] == np.argmax(flat_then_jump >= 0.1 * final)
    assert m["plateau_len"][1] == 10  # 2n >= 0.1 * 200
    assert m["early_slope_ratio"][0] < 0.01 and np.isclose(m["early_slope_ratio"][1], 1.0)
    assert np.allclose(m["final_l2"], [final, 200.0])


def test_per_curve_step_and_prefix():
    curves = np.array([[0.0, 1.0, 3.0], [0.0, 1.0, 3.0]])
    m = curve_metrics(curves, np.array([1.0, 2.0]), prefix="js_")
    assert np.allclose(m["js_max_slope"], [2.0, 1.0])
    assert set(m) == {"js_max_slope", "js_blowup_step", "js_plateau_len", "js_early_slope_ratio", "js_final"}


def test_constant_curve_has_no_ratio():
    m = curve_metrics(np.zeros((1, 11)), np.array([0.5]))
    assert m["max_slope"][0] == 0 and np.isnan(m["early_slope_ratio"][0]) and m["plateau_len"][0] == 0
