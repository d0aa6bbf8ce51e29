"""The ladder (generation/ladder.py): co-occurrence and geometry weights, ranked and permuted values, the
swapped-code and other-latents controls, the transplanted SAE error, the co-occurrence table; hand-built SAEs
and pools with known answers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from synthact.generation import ladder
from synthact.generation.context import GenContext, GenerationSettings
from synthact.generation.kinds import draw, from_provenance
from synthact.generation.stats import ReferenceStats, cooccurrence
from synthact.inputs.hooks import real_activations, stream_index
from synthact.run.worker import target_prompt_columns
from tests.helpers import toy_context


def hand_context(w_dec, freq, codes):
    """A sae_lens SAE with decoder rows `w_dec` (normalised), frequencies `freq`, and a pool of `codes`
    (lists of latent ids, all values 1)."""
    from sae_lens import StandardSAE, StandardSAEConfig

    w = torch.nn.functional.normalize(torch.tensor(w_dec, dtype=torch.float32), dim=-1)
    d_sae, d_model = w.shape
    sae = StandardSAE(StandardSAEConfig(d_in=d_model, d_sae=d_sae))
    with torch.no_grad():
        sae.W_dec.copy_(w)
    n = len(codes)
    offsets = torch.tensor(np.cumsum([0, *map(len, codes)]), dtype=torch.int64)
    latents = torch.tensor([j for c in codes for j in c], dtype=torch.int32)
    stats = ReferenceStats(
        layer=0, acts=torch.zeros(n, d_model), code_offsets=offsets, code_latents=latents,
        code_values=torch.ones(latents.shape[0]), freq=torch.tensor(freq, dtype=torch.float64),
        value_samples=torch.zeros(d_sae, 1), value_counts=torch.zeros(d_sae, dtype=torch.int64),
        l0=torch.tensor([len(c) for c in codes]), mean=torch.zeros(d_model, dtype=torch.float64),
        cov=torch.eye(d_model, dtype=torch.float64), chol=torch.eye(d_model, dtype=torch.float64),
        norms=torch.ones(n), code_norms=torch.ones(n),
    )
    return GenContext(model=None, sae=sae, stats=stats, corpus=None, layer=0, n_ctx=1, device="cpu")


def pick(construction, ctx, latents, values, settings, u=0.0):
    lat = torch.tensor([latents])
    return construction(ctx, lat, torch.tensor([values], dtype=torch.float32),
                        torch.full(lat.shape, u, dtype=torch.float64), settings)[0].tolist()


FREQ = [0.10, 0.20, 0.30, 0.42, 0.50, 0.63, 0.70, 0.90]
NO_HOLDOUT = GenerationSettings(holdout=0.0)


def test_a_cooccurrence_table_with_one_partner_forces_that_partner():
    # Template [3, 7]. Slot 1, i = 3 (f .42), window of one: 4 (f .50, the nearest non-template latent).
    # Slot 2, i = 7 (f .70), window of four: 6, 5, 2, 1; of them only 1 ever fired with 4.
    ctx = hand_context(torch.eye(8).tolist(), FREQ, [[4, 1], [4, 1], [4, 1], [2, 6], [5, 6], [2, 5]])
    lat, ones = torch.tensor([[3, 7]]), torch.ones(1, 2)

    def run(settings, u):
        uniforms = torch.tensor([[0.0, u]], dtype=torch.float64)
        return ladder.cooccur(ctx, lat, ones, uniforms, settings)[0].tolist()

    s = dataclasses.replace(NO_HOLDOUT, nearest_k=1)
    forced = dataclasses.replace(NO_HOLDOUT, nearest_k=4)
    for u in (0.0, 0.3, 0.7, 0.999):
        assert run(s, u) == [4, 6]  # a window of one: frequency decides
        assert run(forced, u)[1] == 1  # the only partner of 4
    # Without the counts the second slot is uniform over its window.
    flat = dataclasses.replace(forced, cooccur="none")
    assert {run(flat, u)[1] for u in np.linspace(0, 0.999, 40)} == {6, 5, 2, 1}


def test_truncated_rows_fall_back_to_chance_counts_f_u_f_j_n():
    # Slot 1 takes 4 (window of one). 4 has three partners (1 twice, 2 and 5 once); with m = 1 only 1 is
    # stored and the row is truncated, so the weights of slot 2's window (6, 5, 2, 1) are 2 for 1 and the
    # chance counts f_4 f_j N (N = 6 codes) for the others.
    codes = [[4, 1], [4, 1], [4, 2], [4, 5], [0], [0]]
    ctx = hand_context(torch.eye(8).tolist(), FREQ, codes)
    s = dataclasses.replace(NO_HOLDOUT, nearest_k=4, cooccur_top_m=1)
    table = cooccurrence(ctx.stats, 1, 0.0)
    assert table.partners[4].tolist() == [1] and table.counts[4].tolist() == [2.0] and bool(table.truncated[4])
    assert table.fires[4] == 4 and table.row_totals[4] == 4
    weights = {1: 2.0, **{j: FREQ[4] * FREQ[j] * 6 for j in (6, 5, 2)}}
    total = sum(weights.values())
    us = (np.arange(4000) + 0.5) / 4000
    lat = torch.tensor([[3, 7]] * us.size)
    uniforms = torch.stack([torch.zeros(us.size, dtype=torch.float64), torch.tensor(us)], 1)
    chosen = ladder.cooccur(ctx, lat, torch.ones(us.size, 2), uniforms, s)
    # Slot 1 with u = 0: the nearest of its window, 4.
    assert (chosen[:, 0] == 4).all()
    # The window lists 6, 5, 2, 1 nearest first; the inverse CDF gives each its share of [0, 1).
    got = {j: float((chosen[:, 1] == j).float().mean()) for j in weights}
    for j, w in weights.items():
        assert got[j] == pytest.approx(w / total, abs=1e-3), (j, got)


def test_window_all_drops_frequency_matching_as_the_challenger():
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
    s = GenerationSettings(holdout=0.0, nearest_k=3, cooccur="none", geometry_temp=1e-4)
    for u in (0.01, 0.5, 0.999):
        assert ladder.cooccur(ctx, torch.tensor([[0, 1]]), torch.ones(1, 2),
                              torch.tensor([[0.0, u]], dtype=torch.float64), s)[0].tolist() == [2, 4]
    # A flat temperature leaves the window uniform again.
    flat = dataclasses.replace(s, geometry_temp=1e6)
    seconds = {int(ladder.cooccur(ctx, torch.tensor([[0, 1]]), torch.ones(1, 2),
                                  torch.tensor([[0.0, u]], dtype=torch.float64), flat)[0, 1])
               for u in np.linspace(0, 0.999, 30)}
    assert seconds == {3, 4, 5}


def test_values_by_rank_follow_the_template_order_and_permuted_keeps_the_multiset():
    drawn = torch.tensor([[1.0, 5.0, 3.0, 0.0], [2.0, 7.0, 0.0, 0.0]])
    template = torch.tensor([[0.2, 0.1, 0.9, 0.0], [4.0, 6.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    assert ladder.by_rank(drawn, template, mask).tolist() == [[3.0, 1.0, 5.0, 0.0], [2.0, 7.0, 0.0, 0.0]]
    uv = torch.tensor([[0.9, 0.1, 0.5, 0.0], [0.3, 0.2, 0.0, 0.0]], dtype=torch.float64)
    # slot t takes the value of the slot with the t-th smallest uniform
    torch.testing.assert_close(ladder.permuted(template, mask, uv),
                               torch.tensor([[0.1, 0.9, 0.2, 0.0], [6.0, 4.0, 0.0, 0.0]]))


def test_swapped_control_replaces_the_most_or_least_cooccurring_latents_first():
    # Code [0, 1, 2]: 0 and 1 fire together three times, 2 with 0 once: scores 0: 4, 1: 3, 2: 1.
    codes = [[0, 1], [0, 1], [0, 1], [0, 2], [5], [6], [7]]
    ctx = hand_context(torch.eye(8).tolist(), [0.3, 0.31, 0.32, 0.4, 0.5, 0.6, 0.7, 0.8], codes)
    s = dataclasses.replace(NO_HOLDOUT, nearest_k=1, swaps=1)
    scores = ladder.code_cooccurrence(ctx, torch.tensor([[0, 1, 2]]), s)[0].tolist()
    assert scores == [4.0, 3.0, 1.0]
    most = pick(ladder.swapped, ctx, [0, 1, 2], [1.0, 1.0, 1.0], s)
    assert most[1:] == [1, 2] and most[0] == 3  # 0 -> its nearest non-template latent in frequency, 3
    least = pick(ladder.swapped, ctx, [0, 1, 2], [1.0, 1.0, 1.0], dataclasses.replace(s, swap_order="least_cooccurring"))
    assert least == [0, 1, 3]
    assert pick(ladder.swapped, ctx, [0, 1, 2], [1.0, 1.0, 1.0], dataclasses.replace(s, swaps=0)) == [0, 1, 2]


def test_cooccurrence_table_is_the_pool_statistics_part_by_brute_force():
    ctx = toy_context()
    stats = ctx.stats
    table = cooccurrence(stats, 16, 0.25)
    n = stats.n - round(0.25 * stats.n)
    assert table.n_codes == n
    x = np.zeros((n, stats.d_sae))
    for i in range(n):
        x[i, stats.code_latents[stats.code_offsets[i]: stats.code_offsets[i + 1]].numpy()] = 1
    c = x.T @ x
    np.testing.assert_array_equal(table.fires.numpy(), np.diag(c))
    np.fill_diagonal(c, 0)
    np.testing.assert_array_equal(table.row_totals.numpy(), c.sum(1))
    top = -np.sort(-c, 1)[:, :16]
    np.testing.assert_array_equal(table.counts.numpy(), top)
    for j in np.flatnonzero(top[:, 0] > 0)[:50]:
        stored = table.partners[j][table.partners[j] >= 0].numpy()
        np.testing.assert_array_equal(c[j, stored], table.counts[j, : stored.size].numpy())
    np.testing.assert_array_equal(table.truncated.numpy(), (c > 0).sum(1) > 16)


def test_without_cooccurrence_the_construction_is_the_baseline_draw_for_draw():
    ctx = toy_context()
    rngs = [np.random.default_rng(i) for i in range(60)]
    base = draw("real", rngs, ctx)
    paper = draw("synthetic_baseline", [np.random.default_rng(100 + i) for i in range(60)], ctx, template=base)
    flat = draw("synthetic_cooccur", [np.random.default_rng(100 + i) for i in range(60)], ctx,
                GenerationSettings(cooccur="none"), template=base)
    swapped_all = draw("control_swapped", [np.random.default_rng(100 + i) for i in range(60)], ctx,
                       GenerationSettings(swaps=10_000), template=base)
    for a, b, c in zip(paper.latents, flat.latents, swapped_all.latents):
        assert np.array_equal(a, b) and np.array_equal(a, c)


LADDER = {
    "R3": ("synthetic_cooccur", GenerationSettings()),
    "R3-all": ("synthetic_cooccur", GenerationSettings(cooccur_window="all")),
    "R4": ("synthetic_cooccur", GenerationSettings(geometry_temp=0.01)),
    "R5-ranked": ("synthetic_cooccur", GenerationSettings(geometry_temp=0.01, value_source="ranked")),
    "R5-sampled": ("synthetic_cooccur", GenerationSettings(geometry_temp=0.01, value_source="sampled")),
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
    direct = ladder._cosine_error(unit, cand, dirs, target_cos, None)
    torch.testing.assert_close(ladder._cosine_error(unit, cand, dirs, target_cos, squares), direct)


def test_other_latents_carry_the_template_values_by_rank_on_a_hand_built_code():
    # Template slots (latents 1, 3, 5) with values .5, 2, 1: ranks 2, 0, 1. The other code, by value: 3 (5.0, a
    # template latent), 4 (3.0), 6 (0.7), 0 (0.2), 2 (0.1).
    lat = torch.tensor([[1, 3, 5], [1, 3, -1]])
    values = torch.tensor([[0.5, 2.0, 1.0], [0.5, 2.0, 0.0]])
    other = torch.zeros(2, 8)
    other[0, [3, 4, 6, 0, 2]] = torch.tensor([5.0, 3.0, 0.7, 0.2, 0.1])
    other[1, [3, 7]] = torch.tensor([5.0, 1.0])  # only one latent once the template's 3 is left out
    chosen, kept = ladder.other_latents(lat, values, ladder.other_codes(lat, other, True))
    assert chosen[0].tolist() == [0, 4, 6] and kept[0].all()
    # The second code has one usable latent: it takes the template's largest value; the rest are left out.
    assert kept[1].tolist() == [False, True, False] and chosen[1, 1] == 7
    # Without exclude_template the other code is used as it is: its largest latent is the template's own 3.
    chosen, kept = ladder.other_latents(lat, values, ladder.other_codes(lat, other, False))
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
