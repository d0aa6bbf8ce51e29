"""The authors' replacement rules (exclude_template false: template latents allowed, never the latent replaced, never
one chosen twice), and what their baseline loop does as written (bench/authors_loops.py)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from synthact.bench.authors_loops import as_written, measure
from synthact.generation.context import GenerationSettings
from synthact.generation.kinds import draw
from tests.helpers import toy_context

AUTHORS = GenerationSettings(exclude_template=False)


@pytest.fixture(scope="module")
def ctx():
    return toy_context()


def rngs(n, offset=0):
    return [np.random.default_rng(offset + i) for i in range(n)]


@pytest.mark.parametrize("kind", ["synthetic_baseline", "synthetic_structured"])
def test_template_latents_may_be_chosen_but_never_the_latent_itself_nor_twice(ctx, kind):
    acts = draw(kind, rngs(100), ctx, AUTHORS)
    from_template = 0
    for i_ids, j_ids in zip(acts.template_latents, acts.latents):
        assert len(j_ids) == len(i_ids) == len(set(j_ids.tolist()))  # one replacement per latent, all distinct
        assert (i_ids != j_ids).all()
        from_template += len(set(j_ids.tolist()) & set(i_ids.tolist()))
    assert from_template > 0  # on the 512-latent toy SAE the nearest latents are often the template's own


def test_the_default_still_excludes_template_latents(ctx):
    assert GenerationSettings().exclude_template
    acts = draw("synthetic_baseline", rngs(50), ctx)
    assert all(not set(i.tolist()) & set(j.tolist()) for i, j in zip(acts.template_latents, acts.latents))


def test_the_loop_as_written_repeats_choices_and_loses_latents():
    # 11 latents at one frequency, all active: each one's 10 nearest are the 10 others, all template latents
    code, freq = torch.arange(1.0, 12.0), torch.full((11,), 0.01)
    out, template_picks, repeats = as_written(code, freq, random.Random(0))
    assert template_picks == 11 and repeats > 0
    assert int((out != 0).sum()) < 11  # in-place edits overwrote latents
    m = measure(torch.stack([code] * 20), freq)
    assert m["template_pick_share"] == 1.0 and m["codes_losing_latents"] > 0.5


def test_the_loop_as_written_keeps_a_code_whose_neighbours_are_not_in_it():
    freq = torch.tensor([0.5] + [0.01] * 30 + [0.9] * 30)  # latent 1's ten nearest: 2..11; latent 40's: 31..39, 41
    code = torch.zeros(61)
    code[[1, 40]] = torch.tensor([2.0, 3.0])
    out, template_picks, repeats = as_written(code, freq, random.Random(1))
    assert (template_picks, repeats) == (0, 0) and out[[1, 40]].eq(0).all()
    assert sorted(out[out != 0].tolist()) == [2.0, 3.0]
