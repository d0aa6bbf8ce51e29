"""Diagnostics of codes (generation/diagnostics.py) against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from synthact.generation import diagnostics
from tests.generation.test_ladder import hand_context

W = [
    [1.0, 0.0, 0.0],
    [0.6, 0.8, 0.0],
    [0.0, 0.0, 1.0],
    [0.0, 1.0, 0.0],
]
FREQ = [0.1, 0.01, 0.001, 0.0]  # latent 3 is dead


def test_each_diagnostic_equals_its_hand_computed_value():
    # Pool (all statistics, holdout 0): 0 and 1 fire together in 2 of 4 codes; 0 alone once; 2 alone once.
    ctx = hand_context(W, FREQ, [[0, 1], [0, 1], [0], [2]])
    out = diagnostics.code_diagnostics([np.array([0, 1, 2])], [np.array([3.0, 1.0, 1.0])], ctx, top_m=8, holdout=0.0)
    assert out["target_log_freq"][0] == pytest.approx((-1 - 2 - 3) / 3)
    # cos: (0,1) .6, (0,2) 0, (1,2) 0 -> mean .2; to the top latent 0: (.6 + 0) / 2
    assert out["target_pair_cos"][0] == pytest.approx(0.2)
    assert out["target_top_cos"][0] == pytest.approx(0.3)
    assert out["target_top_share"][0] == pytest.approx(3 / 5)
    assert out["target_mean_value"][0] == pytest.approx(5 / 3)
    # PMI, N = 4, fires n_0 = 3, n_1 = 2, n_2 = 1: (0,1): log2(2*4/6); (0,2), (1,2): count 0 -> 0.5.
    expected = np.mean([math.log2(2 * 4 / 6), math.log2(0.5 * 4 / 3), math.log2(0.5 * 4 / 2)])
    assert out["target_pmi"][0] == pytest.approx(expected)


def test_dead_latents_use_the_floor_frequency_and_truncated_pairs_are_at_chance():
    ctx = hand_context(W, FREQ, [[0, 1], [0, 1], [0, 2], [2]])
    # m = 1: row 0 keeps 1 (count 2), truncated (partners 1 and 2); row 2 keeps 0 and is complete, so (0, 2)
    # is read from 2's row: count 1.
    out = diagnostics.code_diagnostics([np.array([0, 2]), np.array([3, 0])], [np.ones(2), np.array([2.0, 1.0])],
                                       ctx, top_m=1, holdout=0.0)
    assert out["target_pmi"][0] == pytest.approx(math.log2(1 * 4 / (3 * 2)))
    assert out["target_log_freq"][1] == pytest.approx((math.log10(0.5 / 4) + math.log10(0.1)) / 2)
    # 3 never fired: its (empty) partner list is complete, so the pair's count is 0, floored at 0.5, and
    # so is its firing count.
    assert out["target_pmi"][1] == pytest.approx(math.log2(0.5 * 4 / (0.5 * 3)))


def test_a_code_of_one_latent_has_no_pair_statistics():
    ctx = hand_context(W, FREQ, [[0, 1], [2]])
    out = diagnostics.code_diagnostics([np.array([1])], [np.array([2.0])], ctx, holdout=0.0)
    assert math.isnan(out["target_pmi"][0]) and math.isnan(out["target_pair_cos"][0])
    assert out["target_top_share"][0] == 1.0


def test_heldout_codes_are_the_last_codes_of_the_pool():
    ctx = hand_context(W, FREQ, [[0], [1], [0, 2], [2], [1, 2]])
    latents, _ = diagnostics.heldout_codes(ctx.stats, holdout=0.4)
    assert [x.tolist() for x in latents] == [[2], [1, 2]]
