"""The ladder (generation/ladder.py): co-occurrence and geometry weights, quantile and permuted values, the
swapped-code and other-latents controls, the transplanted SAE error, the exact co-occurrence table
(generation/cooccurrence.py) and the value table (generation/values.py); hand-built SAEs and pools with known
answers, and the toy backend for what each rung delivers on held-out codes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig

from synthact.analysis.diagnostics import uniform_ks
from synthact.errors import SynthactError
from synthact.generation import codes, ladder
from synthact.generation.context import GenerationSettings
from synthact.generation.cooccurrence import cooccurrence, count_pairs
from synthact.generation.diagnostics import code_diagnostics
from synthact.generation.kinds import draw, from_provenance
from synthact.generation.matching import anchor
from synthact.generation.values import latent_values
from synthact.inputs.hooks import real_activations, stream_index
from synthact.run.worker import target_prompt_columns
from tests.helpers import hand_context, toy_context


def pick(construction, ctx, latents, values, settings, u=0.0):
    lat = torch.tensor([latents])
    return construction(ctx, lat, torch.tensor([values], dtype=torch.float32),
                        torch.full(lat.shape, u, dtype=torch.float64), settings)[0].tolist()


FREQ = [0.10, 0.20, 0.30, 0.42, 0.50, 0.63, 0.70, 0.90]
NO_HOLDOUT = GenerationSettings(holdout=0.0)
WINDOW = dataclasses.replace(NO_HOLDOUT, cooccur_window="nearest_k")  # R1's frequency window


def test_a_cooccurrence_table_with_one_partner_forces_that_partner():
    # Template [3, 7]. Slot 1, i = 3 (f .42), window of one: 4 (f .50, the nearest non-template latent).
    # Slot 2, i = 7 (f .70), window of four: 6, 5, 2, 1; of them only 1 ever fired with 4.
    ctx = hand_context(torch.eye(8).tolist(), FREQ, [[4, 1], [4, 1], [4, 1], [2, 6], [5, 6], [2, 5]])
    lat, ones = torch.tensor([[3, 7]]), torch.ones(1, 2)

    def run(settings, u):
        uniforms = torch.tensor([[0.0, u]], dtype=torch.float64)
        return ladder.cooccur(ctx, lat, ones, uniforms, settings)[0].tolist()

    s = dataclasses.replace(WINDOW, nearest_k=1)
    forced = dataclasses.replace(WINDOW, nearest_k=4)
    for u in (0.0, 0.3, 0.7, 0.999):
        assert run(s, u) == [4, 6]  # a window of one: frequency decides
        assert run(forced, u)[1] == 1  # the only partner of 4
    # Without the counts the second slot is uniform over its window.
    flat = dataclasses.replace(forced, cooccur="none")
    assert {run(flat, u)[1] for u in np.linspace(0, 0.999, 40)} == {6, 5, 2, 1}


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_every_partner_gets_its_exact_count_and_a_pair_that_never_fired_together_none(power):
    # Slot 1 takes 4 (window of one). 4 fired with 1 twice, with 2 and 5 once, never with 6: slot 2's window
    # (6, 5, 2, 1) weighs 1 by 2^p, 2 and 5 by 1, and never takes 6 (no chance count for unlisted partners).
    codes = [[4, 1], [4, 1], [4, 2], [4, 5], [0, 6], [0, 6]]
    ctx = hand_context(torch.eye(8).tolist(), FREQ, codes)
    s = dataclasses.replace(WINDOW, nearest_k=4, cooccur_power=power)
    weights = {1: 2.0**power, 2: 1.0, 5: 1.0, 6: 0.0}
    total = sum(weights.values())
    us = (np.arange(4000) + 0.5) / 4000
    lat = torch.tensor([[3, 7]] * us.size)
    uniforms = torch.stack([torch.zeros(us.size, dtype=torch.float64), torch.tensor(us)], 1)
    chosen = ladder.cooccur(ctx, lat, torch.ones(us.size, 2), uniforms, s)
    assert (chosen[:, 0] == 4).all()
    got = {j: float((chosen[:, 1] == j).float().mean()) for j in weights}
    for j, w in weights.items():
        assert got[j] == pytest.approx(w / total, abs=1e-3), (j, got)


def test_window_all_drops_frequency_matching():
    # 1 (f .20) is far from 7 (f .70) in frequency but the only latent that ever fired with 2.
    ctx = hand_context(torch.eye(8).tolist(), FREQ, [[2, 1], [2, 1], [4, 5]])
    s = dataclasses.replace(NO_HOLDOUT, nearest_k=1, cooccur_window="all")
    lat, ones = torch.tensor([[3, 7]]), torch.ones(1, 2)
    # Slot 1 is uniform over the allowed alive latents 0, 1, 2, 4, 5, 6: u = 0.4 takes the third, 2.
    for u in (0.01, 0.5, 0.99):
        assert ladder.cooccur(ctx, lat, ones, torch.tensor([[0.4, u]], dtype=torch.float64), s)[0].tolist() == [2, 1]
    # With a frequency window of one, slot 2 can only be 6, the latent nearest 7.
    window = dataclasses.replace(s, cooccur_window="nearest_k")
    assert ladder.cooccur(ctx, lat, ones, torch.tensor([[0.4, 0.5]], dtype=torch.float64), window)[0, 1] == 6


def test_the_challengers_window_draws_the_anchors_partners_or_falls_back_to_the_anchor_construction():
    # Template [0, 1], top latent 0 (largest value). Anchor pool of one: 2, the allowed latent nearest 0 in
    # frequency. 2 fired with 4, 5 and 6 (three partners for a code of two): the challenger draws its two
    # latents uniformly among them, without repeats.
    w = torch.eye(8).tolist()
    freq = [0.5, 0.45, 0.49, 0.1, 0.2, 0.3, 0.35, 0.9]
    codes = [[2, 4], [2, 5], [2, 6], [3, 7]]
    ctx = hand_context(w, freq, codes)
    s = dataclasses.replace(NO_HOLDOUT, cooccur="none", cooccur_window="anchor", anchor_pool=1)
    lat, vals = torch.tensor([[0, 1]]), torch.tensor([[2.0, 1.0]])
    drawn = {tuple(ladder.cooccur(ctx, lat, vals, torch.tensor([[a, b]], dtype=torch.float64), s)[0].tolist())
             for a in np.linspace(0, 0.99, 7) for b in np.linspace(0, 0.99, 7)}
    assert drawn == {(j, k) for j in (4, 5, 6) for k in (4, 5, 6) if j != k}
    # With a third template latent the partners no longer outnumber the code: the anchor construction.
    lat3, vals3 = torch.tensor([[0, 1, 3]]), torch.tensor([[2.0, 1.0, 1.0]])
    u = torch.tensor([[0.3, 0.6, 0.9]], dtype=torch.float64)
    assert ladder.cooccur(ctx, lat3, vals3, u, s).tolist() == anchor(ctx, lat3, vals3, u, s).tolist()


def test_geometry_weight_keeps_the_template_cosine():
    w = [
        [1.0, 0.0, 0.0],  # 0: template i_1
        [0.6, 0.8, 0.0],  # 1: template i_2, cos(i_1, i_2) = 0.6
        [0.0, 0.0, 1.0],  # 2: j_1 (forced)
        [0.0, 0.6, 0.8],  # 3: cos(2, 3) = 0.8
        [0.8, 0.0, 0.6],  # 4: cos(2, 4) = 0.6  <- keeps the template's cosine
        [1.0, 0.0, 0.0],  # 5: cos(2, 5) = 0
    ]
    ctx = hand_context(w, [0.5, 0.5, 0.49, 0.51, 0.52, 0.53], [[0], [1]])
    s = dataclasses.replace(WINDOW, nearest_k=3, cooccur="none", geometry_temp=1e-4)
    for u in (0.01, 0.5, 0.999):
        assert ladder.cooccur(ctx, torch.tensor([[0, 1]]), torch.ones(1, 2),
                              torch.tensor([[0.0, u]], dtype=torch.float64), s)[0].tolist() == [2, 4]
    # A flat temperature leaves the window uniform again.
    flat = dataclasses.replace(s, geometry_temp=1e6)
    seconds = {int(ladder.cooccur(ctx, torch.tensor([[0, 1]]), torch.ones(1, 2),
                                  torch.tensor([[0.0, u]], dtype=torch.float64), flat)[0, 1])
               for u in np.linspace(0, 0.999, 30)}
    assert seconds == {3, 4, 5}


def test_quantile_values_take_the_replacement_value_at_the_template_values_quantile():
    # Statistics part (holdout 0): latent 0 has values 1, 2, 2, 3; latent 1 has 10, 20; latent 2 has none.
    codes = [[0, 1], [0, 1], [0], [0]]
    ctx = hand_context(torch.eye(3).tolist(), [0.5, 0.4, 0.3], codes, [[1.0, 10.0], [2.0, 20.0], [2.0], [3.0]])
    s = dataclasses.replace(NO_HOLDOUT, value_source="quantile")

    def value(i, v, j, u):
        out = ladder.quantile_values(ctx, torch.tensor([[i]]), torch.tensor([[v]]), torch.tensor([[j]]),
                                     torch.tensor([[u]], dtype=torch.float64), s)
        return float(out[0, 0])

    # v = 1.5: one of 4 values below, q = (1 + u) / 5 < 0.5, so j = 1 takes its smallest (floor(2q) = 0);
    # v = 2.5: three below, q = (3 + u) / 5 >= 0.5: its largest.
    assert value(0, 1.5, 1, 0.0) == 10.0 and value(0, 1.5, 1, 0.99) == 10.0
    assert value(0, 2.5, 1, 0.0) == 20.0 and value(0, 2.5, 1, 0.99) == 20.0
    # v = 2 ties two values: q = (1 + 3u) / 5, so u < 0.5 gives q < 0.5 (10) and u >= 0.5 gives 20.
    assert value(0, 2.0, 1, 0.49) == 10.0 and value(0, 2.0, 1, 0.5) == 20.0
    # j without values keeps the template's value; i without values takes the uniform as its quantile.
    assert value(0, 2.5, 2, 0.3) == pytest.approx(2.5)
    assert value(2, 7.0, 1, 0.2) == 10.0 and value(2, 7.0, 1, 0.7) == 20.0


def test_randomized_quantiles_of_values_from_a_latents_own_distribution_are_uniform():
    # Integer values (many ties) of three latents with different distributions; fresh values from each latent's
    # own distribution have uniform randomized quantiles, values of another latent do not.
    rng = np.random.default_rng(0)
    scale = [1, 5, 20]
    codes = [[j] for j in range(3) for _ in range(300)]
    values = [[float(rng.poisson(scale[j]) + 1)] for j in range(3) for _ in range(300)]
    ctx = hand_context(torch.eye(3).tolist(), [0.3, 0.3, 0.3], codes, values)
    table = latent_values(ctx.stats, 0.0, "statistics")
    lat = torch.tensor([j for j in range(3) for _ in range(2000)])
    own = torch.tensor([rng.poisson(scale[j]) + 1.0 for j in lat.tolist()])
    u = torch.tensor(rng.random(lat.shape[0]))
    q = np.sort(table.quantile(lat, own, u).numpy())
    ks = np.abs(q - (np.arange(q.size) + 0.5) / q.size).max()
    assert ks < 0.03
    q_other = np.sort(table.quantile(lat, own[torch.randperm(lat.shape[0], generator=torch.Generator().manual_seed(0))],
                                     u).numpy())
    assert np.abs(q_other - (np.arange(q.size) + 0.5) / q.size).max() > 0.1
    torch.testing.assert_close(table.at_quantile(torch.tensor([1]), torch.tensor([0.0], dtype=torch.float64)),
                               table.values[table.indptr[1]: table.indptr[1] + 1])


def test_permuted_values_keep_the_multiset():
    template = torch.tensor([[0.2, 0.1, 0.9, 0.0], [4.0, 6.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    uv = torch.tensor([[0.9, 0.1, 0.5, 0.0], [0.3, 0.2, 0.0, 0.0]], dtype=torch.float64)
    # slot t takes the value of the slot with the t-th smallest uniform
    torch.testing.assert_close(ladder.permuted(template, mask, uv),
                               torch.tensor([[0.1, 0.9, 0.2, 0.0], [6.0, 4.0, 0.0, 0.0]]))


def test_swapped_control_replaces_the_most_or_least_cooccurring_latents_first():
    # Code [0, 1, 2]: 0 and 1 fire together three times, 2 with 0 once: scores 0: 4, 1: 3, 2: 1.
    codes = [[0, 1], [0, 1], [0, 1], [0, 2], [5], [6], [7]]
    ctx = hand_context(torch.eye(8).tolist(), [0.3, 0.31, 0.32, 0.4, 0.5, 0.6, 0.7, 0.8], codes)
    s = dataclasses.replace(WINDOW, nearest_k=1, swaps=1)
    scores = ladder.code_cooccurrence(ctx, torch.tensor([[0, 1, 2]]), s)[0].tolist()
    assert scores == [4.0, 3.0, 1.0]
    most = pick(ladder.swapped, ctx, [0, 1, 2], [1.0, 1.0, 1.0], s)
    assert most[1:] == [1, 2] and most[0] == 3  # 0 -> its nearest non-template latent in frequency, 3
    least = pick(ladder.swapped, ctx, [0, 1, 2], [1.0, 1.0, 1.0], dataclasses.replace(s, swap_order="least_cooccurring"))
    assert least == [0, 1, 3]
    assert pick(ladder.swapped, ctx, [0, 1, 2], [1.0, 1.0, 1.0], dataclasses.replace(s, swaps=0)) == [0, 1, 2]


@pytest.mark.parametrize("part", ["statistics", "heldout"])
def test_cooccurrence_table_counts_every_pair_of_its_part_exactly_by_brute_force(part):
    ctx = toy_context()
    stats = ctx.stats
    table = cooccurrence(stats, 0.25, part)
    cut = stats.n - round(0.25 * stats.n)
    rows = range(cut) if part == "statistics" else range(cut, stats.n)
    assert table.n_codes == len(rows)
    x = np.zeros((len(rows), stats.d_sae))
    for r, i in enumerate(rows):
        x[r, stats.code_latents[stats.code_offsets[i]: stats.code_offsets[i + 1]].numpy()] = 1
    c = x.T @ x
    np.testing.assert_array_equal(table.fires.numpy(), np.diag(c))
    np.fill_diagonal(c, 0)
    ids = torch.arange(stats.d_sae)
    np.testing.assert_array_equal(table.count(ids[:, None], ids[None, :]).numpy(), c)
    np.testing.assert_array_equal(table.indptr.diff().numpy(), (c > 0).sum(1))  # every partner kept
    # Counted a few codes at a time, the table is the same.
    small = count_pairs(stats.code_offsets, stats.code_latents, rows[0], rows[-1] + 1, stats.d_sae, chunk=3000)
    assert torch.equal(small.indptr, table.indptr) and torch.equal(small.partners, table.partners)
    assert torch.equal(small.counts, table.counts)


def dense_cooccur(ctx, lat, u, s):
    """synthetic_cooccur with `cooccur_window` all and no geometry, written densely: weights (sum of count(u, j))^p
    over every alive latent, from a brute-force count matrix of the statistics part."""
    stats = ctx.stats
    cut = stats.n - round(s.holdout * stats.n)
    x = np.zeros((cut, stats.d_sae))
    for i in range(cut):
        x[i, stats.code_latents[stats.code_offsets[i]: stats.code_offsets[i + 1]].numpy()] = 1
    c = torch.tensor(x.T @ x)
    c.fill_diagonal_(0)
    alive = stats.alive
    chosen = torch.zeros_like(lat)
    for b in range(lat.shape[0]):
        tally, used = torch.zeros(stats.d_sae, dtype=torch.float64), set(lat[b].tolist())
        for t, i in enumerate(lat[b].tolist()):
            allowed = torch.tensor([j not in used for j in alive.tolist()])
            w = tally[alive] ** s.cooccur_power * allowed
            if w.sum() <= 0:
                w = allowed.double()
            cdf = w.cumsum(0)
            j = int(alive[min(int((cdf <= u[b, t] * cdf[-1]).sum()), alive.shape[0] - 1)])
            chosen[b, t] = j
            used.add(j)
            tally += c[j]
    return chosen


def test_the_sparse_weights_draw_what_the_dense_weights_draw():
    ctx = toy_context()
    base = draw("real", [np.random.default_rng(i) for i in range(20)], ctx)
    with torch.no_grad():
        z = ctx.sae.encode(base.vectors)
    lat = torch.stack([torch.nonzero(r).flatten()[:12] for r in z if (r != 0).sum() >= 12][:6])  # 12 slots each
    u = torch.tensor(np.random.default_rng(1).random(lat.shape))
    s = GenerationSettings()
    assert s.cooccur_window == "all" and s.geometry_temp == 0  # R3: the sparse path
    torch.testing.assert_close(ladder.cooccur(ctx, lat, torch.ones(lat.shape), u, s), dense_cooccur(ctx, lat, u, s))


def held_out(ctx, acts, s=GenerationSettings()) -> dict:
    """Mean held-out PMI, co-fire rate and decoder-cosine error of a batch's codes, and their value-quantile KS."""
    if acts.latents is None:
        with torch.no_grad():
            z = ctx.sae.encode(acts.vectors)
        latents = [torch.nonzero(r).flatten().numpy() for r in z]
        values = [r[torch.as_tensor(i)].numpy() for r, i in zip(z, latents)]
    else:
        latents, values = acts.latents, acts.values
    d = code_diagnostics(latents, values, ctx, list(range(len(latents))), s.holdout, acts.template_latents)
    cos_error = np.nanmean(d["target_cos_error"]) if acts.template_latents is not None else None
    return {"pmi": np.nanmean(d["target_pmi"]), "cofire": np.nanmean(d["target_cofire"]), "cos_error": cos_error,
            "value_ks": uniform_ks(d["target_value_quantiles"])}


def test_the_rungs_deliver_their_claims_on_held_out_codes():
    """R3 closes at least half of R1's gap to real in held-out PMI and co-fire rate, R4 keeps that and lowers the
    error in decoder cosines below R3's, R5 gives values from each latent's own distribution (docs/science.md)."""
    ctx = toy_context()
    n = 60
    base = draw("real", [np.random.default_rng(i) for i in range(n)], ctx)

    def rung(kind, **settings):
        return draw(kind, [np.random.default_rng(1000 + i) for i in range(n)], ctx, GenerationSettings(**settings),
                    template=base)

    real = held_out(ctx, draw("real", [np.random.default_rng(5000 + i) for i in range(n)], ctx))
    r1 = held_out(ctx, rung("synthetic_baseline"))
    r3 = held_out(ctx, rung("synthetic_cooccur"))
    r4 = held_out(ctx, rung("synthetic_cooccur", geometry_temp=0.05))
    r5 = held_out(ctx, rung("synthetic_cooccur", geometry_temp=0.05, value_source="quantile"))
    for name in ("pmi", "cofire"):
        assert abs(r3[name] - real[name]) <= 0.5 * abs(r1[name] - real[name]), (name, real, r1, r3)
        assert abs(r4[name] - real[name]) <= 0.5 * abs(r1[name] - real[name]), (name, real, r1, r4)
    assert r4["cos_error"] < r3["cos_error"]
    assert r5["value_ks"] < r1["value_ks"] and r5["value_ks"] < 2 * real["value_ks"] + 0.02, (real, r1, r5)


def test_without_cooccurrence_the_construction_is_the_baseline_draw_for_draw():
    ctx = toy_context()
    rngs = [np.random.default_rng(i) for i in range(60)]
    base = draw("real", rngs, ctx)
    paper = draw("synthetic_baseline", [np.random.default_rng(100 + i) for i in range(60)], ctx, template=base)
    flat = draw("synthetic_cooccur", [np.random.default_rng(100 + i) for i in range(60)], ctx,
                GenerationSettings(cooccur="none", cooccur_window="nearest_k"), template=base)
    swapped_all = draw("control_swapped", [np.random.default_rng(100 + i) for i in range(60)], ctx,
                       GenerationSettings(swaps=10_000), template=base)
    for a, b, c in zip(paper.latents, flat.latents, swapped_all.latents):
        assert np.array_equal(a, b) and np.array_equal(a, c)


LADDER = {
    "R3": ("synthetic_cooccur", GenerationSettings()),
    "R3-nearest_k": ("synthetic_cooccur", GenerationSettings(cooccur_window="nearest_k")),
    "R4": ("synthetic_cooccur", GenerationSettings(geometry_temp=0.01)),
    "R5": ("synthetic_cooccur", GenerationSettings(geometry_temp=0.01, value_source="quantile")),
    "R4-sampled": ("synthetic_cooccur", GenerationSettings(geometry_temp=0.01, value_source="sampled")),
    "swap-2": ("control_swapped", GenerationSettings(swaps=2)),
    "permuted": ("control_swapped", GenerationSettings(swaps=0, value_source="permuted")),
}


@pytest.mark.parametrize("name", LADDER)
def test_every_rung_recomputes_from_its_row_and_has_distinct_alive_latents(name):
    ctx = toy_context()
    kind, settings = LADDER[name]
    base = draw("real", [np.random.default_rng(i) for i in range(30)], ctx)
    for add_error, source in ((False, "template"), (True, "template"), (True, "other")):
        s = dataclasses.replace(settings, add_error=add_error, error_source=source)
        built = draw(kind, [np.random.default_rng(50 + i) for i in range(30)], ctx, s, template=base)
        alive = ctx.stats.freq.numpy() > 0
        for b in range(30):
            j = built.latents[b]
            assert len(set(j.tolist())) == len(j) and np.array_equal(built.l0[b], base.l0[b])
            assert alive[j].all() or kind == "control_swapped"
            other = built.other_tokens[b] if built.other_tokens is not None else None
            rebuilt = from_provenance(kind, built.tokens[b], j, built.values[b], add_error, ctx, error_source=source,
                                      other_tokens=other)
            torch.testing.assert_close(rebuilt, built.vectors[b], rtol=1e-5, atol=1e-5)
        if settings.value_source in ("template", "permuted"):
            for b in range(30):
                np.testing.assert_allclose(np.sort(built.values[b]), np.sort(base_values(ctx, base, b)), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["control_swapped", "control_other_latents"])
def test_the_controls_refuse_value_sources_that_would_not_keep_the_templates_values(kind):
    ctx = toy_context()
    base = draw("real", [np.random.default_rng(i) for i in range(2)], ctx)
    for source in ("quantile", "sampled"):
        with pytest.raises(SynthactError, match="keeps the template's values"):
            draw(kind, [np.random.default_rng(7), np.random.default_rng(8)], ctx,
                 GenerationSettings(value_source=source), template=base)


def base_values(ctx, base, b):
    with torch.no_grad():
        z = ctx.sae.encode(base.vectors[b: b + 1])[0]
    return z[z != 0].numpy()


def test_the_expanded_cosine_error_for_every_latent_equals_the_direct_one():
    gen = torch.Generator().manual_seed(0)
    unit = torch.nn.functional.normalize(torch.randn(40, 8, generator=gen), dim=-1)
    chosen = torch.tensor([[3, 7, 11], [1, 2, 5]])
    target_cos = torch.rand(2, 3, generator=gen)
    cand = torch.tensor([[0, 4, 9, 30], [6, 8, 10, 39]])
    dirs = unit[chosen]
    squares = ((dirs @ unit.T) ** 2).sum(1)
    sae = StandardSAE(StandardSAEConfig(d_in=8, d_sae=40))
    with torch.no_grad():
        sae.W_dec.copy_(unit)
    direct = ladder._cosine_error(sae, cand, dirs, target_cos, None)
    torch.testing.assert_close(ladder._cosine_error(sae, cand, dirs, target_cos, squares), direct)


def test_other_latents_carry_the_template_values_by_rank_on_a_hand_built_code():
    # Template slots (latents 1, 3, 5) with values .5, 2, 1: ranks 2, 0, 1. The other code, by value: 3 (5.0, a
    # template latent), 4 (3.0), 6 (0.7), 0 (0.2), 2 (0.1).
    lat = torch.tensor([[1, 3, 5], [1, 3, -1]])
    values = torch.tensor([[0.5, 2.0, 1.0], [0.5, 2.0, 0.0]])
    other = torch.zeros(2, 8)
    other[0, [3, 4, 6, 0, 2]] = torch.tensor([5.0, 3.0, 0.7, 0.2, 0.1])
    other[1, [3, 7]] = torch.tensor([5.0, 1.0])  # only one latent once the template's 3 is left out
    chosen, kept = ladder.other_latents(lat, values, ladder.other_codes(lat, codes.sparse(other), True))
    assert chosen[0].tolist() == [0, 4, 6] and kept[0].all()
    # The second code has one usable latent: it takes the template's largest value; the rest are left out.
    assert kept[1].tolist() == [False, True, False] and chosen[1, 1] == 7
    # Without exclude_template the other code is used as it is: its largest latent is the template's own 3.
    chosen, kept = ladder.other_latents(lat, values, ladder.other_codes(lat, codes.sparse(other), False))
    assert chosen[0].tolist() == [6, 3, 4] and chosen[1, :2].tolist() == [7, 3] and kept[1].tolist() == [True, True, False]


def sae_error(ctx, tokens):
    with torch.no_grad():
        x = real_activations(ctx.model, torch.as_tensor(np.asarray(tokens)[None]), stream_index(ctx.sae, ctx.layer))
        return (x - ctx.sae.decode(ctx.sae.encode(x)))[0]


def test_other_latents_are_the_other_codes_top_latents_and_rebuild_from_the_row():
    ctx = toy_context()
    base = draw("real", [np.random.default_rng(i) for i in range(20)], ctx)
    s = GenerationSettings(add_error=True, error_source="other")
    built = draw("control_other_latents", [np.random.default_rng(70 + i) for i in range(20)], ctx, s, template=base)
    row = target_prompt_columns(built)
    for b in range(20):
        with torch.no_grad():
            z_a = ctx.sae.encode(base.vectors[b: b + 1])[0]
            z_o = ctx.sae.encode(real_activations(ctx.model, torch.as_tensor(built.other_tokens[b][None]),
                                                  stream_index(ctx.sae, ctx.layer)))[0]
        a_ids = torch.nonzero(z_a).flatten().numpy()
        o_ids = np.array([j for j in np.argsort(-z_o.numpy(), kind="stable") if z_o[j] > 0 and j not in a_ids])
        n = min(len(a_ids), len(o_ids))
        # A's n largest values, largest first, sit on the other code's n largest (non-template) latents.
        by_value = np.argsort(-built.values[b], kind="stable")
        np.testing.assert_array_equal(built.latents[b][by_value], o_ids[:n])
        np.testing.assert_allclose(built.values[b][by_value], -np.sort(-z_a[a_ids].numpy())[:n], rtol=1e-5, atol=1e-6)
        rebuilt = from_provenance("control_other_latents", built.tokens[b], built.latents[b], built.values[b], True,
                                  ctx, error_source="other", other_tokens=row["target_other_tokens"][b])
        torch.testing.assert_close(rebuilt, built.vectors[b], rtol=1e-5, atol=1e-5)
    assert np.mean(built.l0 == base.l0) > 0.8  # redrawn other prompts keep A's L0 almost always


def test_a_transplanted_error_is_the_other_prompts_sae_error_and_rebuilds_from_the_row():
    ctx = toy_context()
    base = draw("real", [np.random.default_rng(i) for i in range(12)], ctx)
    for kind in ("synthetic_baseline", "control_swapped"):
        s = GenerationSettings(add_error=True, error_source="other")
        built = draw(kind, [np.random.default_rng(90 + i) for i in range(12)], ctx, s, template=base)
        row = target_prompt_columns(built)
        assert row["target_other_doc"] is not None and len(row["target_other_tokens"]) == 12
        for b in range(12):
            code = from_provenance(kind, built.tokens[b], built.latents[b], built.values[b], False, ctx)
            other, own = sae_error(ctx, row["target_other_tokens"][b]), sae_error(ctx, base.tokens[b])
            torch.testing.assert_close(built.vectors[b] - code, other, rtol=1e-4, atol=1e-5)
            assert float((other - own).norm()) > 1e-3 * float(own.norm())
            rebuilt = from_provenance(kind, built.tokens[b], built.latents[b], built.values[b], True, ctx,
                                      error_source="other", other_tokens=row["target_other_tokens"][b])
            torch.testing.assert_close(rebuilt, built.vectors[b], rtol=1e-5, atol=1e-5)
    # Without the new setting nothing is drawn for it: the same latents as before it existed, and no other prompt.
    plain = draw("synthetic_baseline", [np.random.default_rng(90 + i) for i in range(12)], ctx, template=base)
    own = draw("synthetic_baseline", [np.random.default_rng(90 + i) for i in range(12)], ctx,
               GenerationSettings(add_error=True), template=base)
    assert plain.other_tokens is None and target_prompt_columns(plain)["target_other_tokens"] is None
    for a, b in zip(plain.latents, own.latents):
        assert np.array_equal(a, b)


def test_the_new_controls_leave_default_cell_ids_as_they_were():
    """The error_source axis is left out of ids where it is unused or at its default (docs/spec.md, "Resume")."""
    from synthact.spec import parse_job
    from tests.helpers import toy_job

    def ids(**generation):
        job = parse_job(toy_job(base_kinds=["real"], directions=["toward:synthetic_baseline"],
                                generation={"template": ["independent"], **generation}))
        return {c.add_error: (c.cell_id, c.error_source, c.base_settings()) for c in job.cells()}

    before = ids(add_error=[False, True])
    assert ids(add_error=[False, True], error_source=["template"]) == before
    assert before[False][1] is None and before[True][1] == "template"
    # The ids these cells had before error_source existed (computed with that code).
    assert (before[False][0], before[True][0]) == ("d01df73e4ddc", "bc3bdb11e94c")
    transplanted = ids(add_error=[False, True], error_source=["other"])
    assert transplanted[False] == before[False] and transplanted[True][0] != before[True][0]
