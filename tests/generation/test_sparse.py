"""Sparse codes all the way: statistics and draws encode in batches sized from a memory budget and keep codes as
indices and values; the sparse forms give what the dense ones gave (docs/design.md, "sparse all the way")."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from synthact.generation import codes, ladder
from synthact.generation.context import GenerationSettings
from synthact.generation.kinds import draw
from synthact.generation.matching import Blocked, cosines_to_all, unit_rows
from synthact.generation.stats import compute_stats
from synthact.spec import KINDS, ReferenceSpec
from tests.helpers import LAYER, N_CTX, toy_backend, toy_context


@pytest.fixture(scope="module")
def ctx():
    return toy_context()


class EncodeRecorder:
    """Counts the rows of every call to a real sae_lens SAE's encode (the SAE keeps working as it is)."""

    def __init__(self, sae):
        self.sae, self.rows, self.encode = sae, [], sae.encode

    def __enter__(self):
        def encode(x):
            self.rows.append(x.shape[0])
            return self.encode(x)

        self.sae.encode = encode
        return self

    def __exit__(self, *exc):
        del self.sae.encode


def test_statistics_never_encode_more_than_the_budget_allows_at_once():
    b = toy_backend()
    sae = b.saes[LAYER].sae
    d_sae = sae.W_dec.shape[0]
    spec = ReferenceSpec(n_prompts=128)
    args = (b.model.model, sae, b.corpus, LAYER, N_CTX, spec, 0, "cpu")
    budget = codes.DENSE_COPIES * 4 * d_sae * 50  # 50 activations' dense codes
    with EncodeRecorder(sae) as small:
        tight = compute_stats(*args, budget=budget)
    with EncodeRecorder(sae) as default:
        loose = compute_stats(*args)
    assert max(small.rows) == 50 and max(default.rows) > 50
    assert sum(small.rows) == sum(default.rows) == 128 * (N_CTX + 1)  # every position once, the last ones again
    assert torch.equal(tight.freq, loose.freq) and torch.equal(tight.code_offsets, loose.code_offsets)
    assert torch.equal(tight.code_latents, loose.code_latents)
    torch.testing.assert_close(tight.code_values, loose.code_values)
    torch.testing.assert_close(tight.code_norms, loose.code_norms)


def test_draws_encode_within_the_budget_and_give_the_same_codes(ctx, monkeypatch):
    settings = GenerationSettings()
    reference = {kind: draw(kind, [np.random.default_rng([3, i]) for i in range(30)], ctx, settings)
                 for kind in KINDS}
    monkeypatch.setattr(codes, "ENCODE_BUDGET_BYTES", codes.DENSE_COPIES * 4 * ctx.sae.W_dec.shape[0] * 7)
    for kind in KINDS:
        with EncodeRecorder(ctx.sae) as calls:
            got = draw(kind, [np.random.default_rng([3, i]) for i in range(30)], ctx, settings)
        assert max(calls.rows, default=0) <= 7 and (calls.rows or kind == "single_latent"), kind
        assert np.array_equal(got.l0, reference[kind].l0) and np.array_equal(got.docs, reference[kind].docs), kind
        if got.latents is not None:
            assert all(np.array_equal(a, b) for a, b in zip(got.latents, reference[kind].latents)), kind
        torch.testing.assert_close(got.vectors, reference[kind].vectors)


def test_sparse_codes_encode_and_decode_as_the_dense_sae(ctx):
    x = ctx.stats.acts[:40]
    z = ctx.sae.encode(x)
    sparse = codes.encode(ctx.sae, x, budget=codes.DENSE_COPIES * 4 * ctx.sae.W_dec.shape[0] * 40)
    assert torch.equal(codes.dense(sparse, z.shape[1]), z)
    assert torch.equal(codes.decode(ctx.sae, sparse), ctx.sae.decode(z).float())
    lat, val = sparse.lists()
    assert all(np.array_equal(ids, torch.nonzero(row).flatten().numpy()) for ids, row in zip(lat, z))
    rows = torch.tensor([5, 0, 39])
    assert torch.equal(codes.dense(sparse.select(rows), z.shape[1]), z[rows])
    swapped = sparse.replace(torch.tensor([1, 2]), sparse.select(torch.tensor([7, 8])))
    expect = z.clone()
    expect[[1, 2]] = z[[7, 8]]
    assert torch.equal(codes.dense(swapped, z.shape[1]), expect)


def dense_blocked(lat, d_sae, exclude):
    """The former dense form: [B, d_sae + 1] bool, column d_sae absorbing padding."""
    blocked = torch.zeros(lat.shape[0], d_sae + 1, dtype=torch.bool)
    if exclude:
        blocked.scatter_(1, torch.where(lat >= 0, lat, d_sae), True)
    return blocked


def test_sparse_blocked_latents_answer_as_the_dense_mask():
    gen = torch.Generator().manual_seed(0)
    d_sae = 50
    lat = torch.randint(-1, d_sae, (6, 5), generator=gen)
    sparse, dense = Blocked(lat, d_sae, True), dense_blocked(lat, d_sae, True)
    for _ in range(4):
        cand = torch.randint(0, d_sae, (6, 9), generator=gen)
        assert torch.equal(sparse(cand), dense.gather(1, cand))
        rows, ids = torch.tensor([0, 3, 5]), torch.randint(0, d_sae, (3,), generator=gen)
        sparse.add(rows, ids)
        dense[rows, ids] = True
    sub = torch.tensor([1, 3, 4])
    cand = torch.randint(0, d_sae, (3, 9), generator=gen)
    assert torch.equal(sparse.select(sub)(cand), dense[sub].gather(1, cand))


def test_the_first_slot_of_r3_draws_as_the_dense_weights_did():
    """R3 with nothing chosen yet draws uniformly over every allowed alive latent: the same latent as the former
    dense [B, alive] float64 weights and their inverse CDF, from the excluded latents alone."""
    gen = torch.Generator().manual_seed(1)
    d_sae = 400
    alive = torch.unique(torch.randint(0, d_sae, (300,), generator=gen))
    for exclude in (True, False):
        lat = torch.randint(-1, d_sae, (64, 12), generator=gen)
        blocked = Blocked(lat, d_sae, exclude)
        blocked.add(torch.arange(64), alive[torch.randint(0, alive.shape[0], (64,), generator=gen)])
        i_t = lat[:, 0].clamp(min=0)
        u = torch.rand(64, dtype=torch.float64, generator=gen)
        u[:3] = torch.tensor([0.0, 1 - 2**-53, 0.5])
        cand = alive[None].expand(64, -1)
        valid = ~blocked(cand) & (cand != i_t[:, None])
        expect = cand.gather(1, ladder._inverse_cdf(valid.double(), u)[:, None])[:, 0]
        assert torch.equal(ladder._uniform_alive(i_t, blocked, alive, u), expect)


def dense_other_latents(lat, values, other_z, exclude):
    """The former dense construction of control_other_latents over [B, d_sae] codes."""
    if exclude:
        d_sae = other_z.shape[1]
        z = torch.cat([other_z, torch.zeros_like(other_z[:, :1])], 1)
        other_z = z.scatter(1, torch.where(lat >= 0, lat, d_sae), 0.0)[:, :d_sae]
    b, k = lat.shape
    live = lat >= 0
    low = torch.tensor(-math.inf)
    ranked = torch.sort(torch.where(other_z != 0, other_z.float(), low), dim=1, descending=True, stable=True)
    top, present = ranked.indices[:, :k], torch.isfinite(ranked.values[:, :k])
    slots = torch.sort(torch.where(live, values, low), dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(slots).scatter_(1, slots, torch.arange(k).expand(b, k).contiguous())
    kept = live & present.gather(1, rank)
    return torch.where(kept, top.gather(1, rank), 0), kept


@pytest.mark.parametrize("exclude", [True, False])
def test_other_latents_from_sparse_codes_equal_the_dense_construction(exclude):
    gen = torch.Generator().manual_seed(2)
    d_sae, b = 30, 40
    other_z = torch.where(torch.rand(b, d_sae, generator=gen) < 0.2,
                          torch.randint(1, 4, (b, d_sae), generator=gen).float(), 0.0)  # ties on purpose
    lat = torch.stack([torch.randperm(d_sae, generator=gen)[:6] for _ in range(b)])
    lat[::3, 4:] = -1
    values = torch.randint(1, 4, (b, 6), generator=gen).float()
    sparse = ladder.other_latents(lat, values, ladder.other_codes(lat, codes.sparse(other_z), exclude))
    expect = dense_other_latents(lat, values, other_z, exclude)
    assert torch.equal(sparse[0], expect[0]) and torch.equal(sparse[1], expect[1])


def test_decoder_cosines_without_a_normalised_copy_equal_the_full_one(ctx, monkeypatch):
    unit = torch.nn.functional.normalize(ctx.sae.W_dec.float(), dim=-1)
    ids = torch.tensor([[3, 1], [0, 7]])
    assert torch.equal(unit_rows(ctx.sae, ids), unit[ids])
    from synthact.generation import matching

    monkeypatch.setattr(matching, "UNIT_BUDGET_BYTES", 4 * ctx.sae.W_dec.shape[1] * 5)  # 5 latents a block
    v = unit[[2, 9, 4]]
    torch.testing.assert_close(cosines_to_all(ctx.sae, v), v @ unit.T, rtol=0, atol=1e-6)


def test_decoder_cosines_follow_a_change_of_the_decoder_weights(ctx):
    """The decoder's inverse row norms are kept per SAE; a weight written in place is seen at the next call."""
    v = torch.nn.functional.normalize(ctx.sae.W_dec[[2, 5]].float(), dim=-1)
    before = cosines_to_all(ctx.sae, v)
    saved = ctx.sae.W_dec.detach().clone()
    try:
        with torch.no_grad():
            ctx.sae.W_dec[7] *= 3.0  # the same direction, three times the norm: its cosines must not change
            ctx.sae.W_dec[4] = -ctx.sae.W_dec[4]
        after = cosines_to_all(ctx.sae, v)
    finally:
        with torch.no_grad():
            ctx.sae.W_dec.copy_(saved)
    torch.testing.assert_close(after[:, 7], before[:, 7], rtol=0, atol=1e-6)
    torch.testing.assert_close(after[:, 4], -before[:, 4], rtol=0, atol=1e-6)


def test_paired_targets_take_their_bases_codes_and_encode_no_base_again(ctx):
    """A real base's draw keeps its SAE codes; paired targets built on it read them (the bases are encoded once,
    whatever the number of paired kinds) and are the targets that encoding the bases again gives."""
    settings = GenerationSettings()
    bases = draw("real", [np.random.default_rng([5, i]) for i in range(12)], ctx)
    assert np.array_equal(bases.codes.l0.cpu().numpy(), bases.l0)
    without = dataclasses.replace(bases, codes=None)
    for kind in ("random_latents", "synthetic_baseline", "synthetic_structured", "synthetic_cooccur"):
        with EncodeRecorder(ctx.sae) as calls:
            reused = draw(kind, [np.random.default_rng([6, i]) for i in range(12)], ctx, settings, template=bases)
        with EncodeRecorder(ctx.sae) as again:
            encoded = draw(kind, [np.random.default_rng([6, i]) for i in range(12)], ctx, settings, template=without)
        assert sum(again.rows) == sum(calls.rows) + 12, kind  # the 12 bases, encoded only without their codes
        assert all(np.array_equal(a, b) for a, b in zip(reused.latents, encoded.latents)), kind
        assert all(np.array_equal(a, b) for a, b in zip(reused.values, encoded.values)), kind
        assert torch.equal(reused.vectors, encoded.vectors), kind


def test_replacing_draws_keeps_their_codes_aligned(ctx):
    drawn = draw("real", [np.random.default_rng([7, i]) for i in range(6)], ctx)
    drawn.replace_rows([1, 4], draw("real", [np.random.default_rng([8, i]) for i in range(2)], ctx))
    fresh = codes.encode(ctx.sae, drawn.vectors)
    assert torch.equal(drawn.codes.offsets, fresh.offsets) and torch.equal(drawn.codes.latents, fresh.latents)
    torch.testing.assert_close(drawn.codes.values, fresh.values)
    other = dataclasses.replace(draw("real", [np.random.default_rng(9)], ctx), codes=None)
    drawn.replace_rows([0], other)  # a draw without codes: the batch's codes are no longer whole, so none are kept
    assert drawn.codes is None
