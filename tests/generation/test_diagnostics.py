"""Diagnostics of codes (generation/diagnostics.py) against hand-computed values: every count comes from the
held-out part of the pool, none from the part the constructions draw from."""

from __future__ import annotations

import math

import numpy as np
import pytest

from synthact.generation import diagnostics
from tests.helpers import hand_context

W = [
    [1.0, 0.0, 0.0],
    [0.6, 0.8, 0.0],
    [0.0, 0.0, 1.0],
    [0.0, 1.0, 0.0],
]
FREQ = [0.1, 0.01, 0.001, 0.0]  # latent 3 is dead
# Statistics part (the first 4 codes, holdout 0.5): 0, 1 and 2 all fire together. Held-out part (the last 4):
# 0 and 1 fire together in 2 of 4 codes; 0 alone once; 2 alone once: 0 and 2, 1 and 2 never together.
CODES = [[0, 1, 2]] * 4 + [[0, 1], [0, 1], [0], [2]]


def test_each_diagnostic_equals_its_hand_computed_value_on_the_held_out_part():
    ctx = hand_context(W, FREQ, CODES)
    out = diagnostics.code_diagnostics([np.array([0, 1, 2])], [np.array([3.0, 1.0, 1.0])], ctx, [0], holdout=0.5)
    assert out["target_log_freq"][0] == pytest.approx((-1 - 2 - 3) / 3)
    # cos: (0,1) .6, (0,2) 0, (1,2) 0 -> mean .2; to the top latent 0: (.6 + 0) / 2
    assert out["target_pair_cos"][0] == pytest.approx(0.2)
    assert out["target_top_cos"][0] == pytest.approx(0.3)
    assert out["target_top_share"][0] == pytest.approx(3 / 5)
    assert out["target_mean_value"][0] == pytest.approx(5 / 3)
    # Held out: N = 4, fires n_0 = 3, n_1 = 2, n_2 = 1; (0,1) count 2; (0,2), (1,2) count 0 -> 0.5.
    expected = np.mean([math.log2(2 * 4 / 6), math.log2(0.5 * 4 / 3), math.log2(0.5 * 4 / 2)])
    assert out["target_pmi"][0] == pytest.approx(expected)
    assert out["target_cofire"][0] == pytest.approx(1 / 3)  # only (0, 1) fires together in a held-out code
    assert math.isnan(out["target_cos_error"][0])  # no template


def test_the_part_the_constructions_draw_from_never_counts():
    ctx = hand_context(W, FREQ, CODES)
    # With nothing held out there is nothing to count against.
    out = diagnostics.code_diagnostics([np.array([0, 2])], [np.ones(2)], ctx, [0], holdout=0.0)
    assert math.isnan(out["target_pmi"][0]) and math.isnan(out["target_cofire"][0])
    # Held out, (0, 2) never fired together, although it did in every code of the statistics part.
    out = diagnostics.code_diagnostics([np.array([0, 2])], [np.ones(2)], ctx, [0], holdout=0.5)
    assert out["target_cofire"][0] == 0 and out["target_pmi"][0] == pytest.approx(math.log2(0.5 * 4 / 3))


def test_dead_latents_use_the_floor_frequency_and_count():
    ctx = hand_context(W, FREQ, CODES)
    out = diagnostics.code_diagnostics([np.array([3, 0])], [np.array([2.0, 1.0])], ctx, [0], holdout=0.5)
    assert out["target_log_freq"][0] == pytest.approx((math.log10(0.5 / 8) + math.log10(0.1)) / 2)
    # 3 never fired: the pair's count 0 and 3's firing count 0 are floored at 0.5.
    assert out["target_pmi"][0] == pytest.approx(math.log2(0.5 * 4 / (0.5 * 3)))


def test_the_cosine_error_is_against_the_template_slot_by_slot():
    ctx = hand_context(W, FREQ, CODES)
    # Template (0, 1) has cosine .6; built (2, 3) has cosine 0: error .36. Built (0, 1) keeps it: 0.
    out = diagnostics.code_diagnostics([np.array([2, 3]), np.array([0, 1])], [np.ones(2), np.ones(2)], ctx, [0, 1],
                                       holdout=0.5, template_latents=[np.array([0, 1]), np.array([0, 1])])
    assert out["target_cos_error"].tolist() == pytest.approx([0.36, 0.0])


def test_value_quantiles_lie_in_the_values_rank_interval_among_held_out_values():
    values = [[1.0, 1.0, 1.0]] * 4 + [[1.0, 5.0], [2.0, 6.0], [3.0], [9.0]]
    ctx = hand_context(W, FREQ, CODES, values)
    out = diagnostics.code_diagnostics([np.array([0, 1, 2])] * 50, [np.array([2.0, 5.5, 9.0])] * 50, ctx,
                                       list(range(50)), holdout=0.5)
    q = np.stack(out["target_value_quantiles"])
    # 0's held-out values 1, 2, 3: 2.0 ties one, one below: q in [1/4, 3/4). 1's: 5, 6: q in [1/3, 2/3).
    # 2's: 9: a tie, q in [0, 1).
    assert ((q[:, 0] >= 0.25) & (q[:, 0] < 0.75)).all() and ((q[:, 1] >= 1 / 3) & (q[:, 1] < 2 / 3)).all()
    assert q[:, 0].std() > 0.05  # randomized by the seeds
    again = diagnostics.code_diagnostics([np.array([0, 1, 2])], [np.array([2.0, 5.5, 9.0])], ctx, [3], holdout=0.5)
    np.testing.assert_array_equal(again["target_value_quantiles"][0], q[3])  # a row's seed fixes its quantiles


def test_a_code_of_one_latent_has_no_pair_statistics():
    ctx = hand_context(W, FREQ, CODES)
    out = diagnostics.code_diagnostics([np.array([1])], [np.array([2.0])], ctx, [0], holdout=0.5)
    assert math.isnan(out["target_pmi"][0]) and math.isnan(out["target_pair_cos"][0])
    assert math.isnan(out["target_cofire"][0]) and out["target_top_share"][0] == 1.0
