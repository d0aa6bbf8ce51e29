"""The six kinds on the toy backend: statistics, frequency matching, structure, determinism, provenance."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp

from synthact.errors import SynthactError
from synthact.generation import kinds, matching
from synthact.generation.context import GenContext, GenerationSettings
from synthact.generation.kinds import draw, from_provenance
from synthact.generation.matching import cosine_structure_error
from synthact.generation.stats import ReferenceStats, compute_stats
from synthact.spec import CONTROL_KINDS, KINDS, SYNTHETIC_KINDS, TEMPLATE_KINDS, ReferenceSpec
from tests.helpers import LAYER, N_CTX, toy_backend, toy_context

SETTINGS = GenerationSettings()  # the paper's constructions
# synthact's own: log-frequency windows, pairwise cosine search among C candidates, sampled values
PAIRWISE = GenerationSettings(match="tol", structure="pairwise", tol=0.1, candidates=16, value_source="sampled")


def rngs(n: int, start: int = 0) -> list[np.random.Generator]:
    return [np.random.default_rng(start + i) for i in range(n)]


@pytest.fixture(scope="module")
def ctx():
    return toy_context()


@pytest.mark.parametrize("kind", TEMPLATE_KINDS)
def test_synthetic_l0_matches_real_templates(ctx, kind):
    acts = draw(kind, rngs(600), ctx, SETTINGS)
    assert ks_2samp(acts.l0, ctx.stats.l0.numpy()).statistic < 0.1
    assert np.array_equal(acts.l0, [len(ids) for ids in acts.latents])
    assert np.array_equal(acts.l0, [len(ids) for ids in acts.template_latents])


def test_cosine_structure_error_falls_with_candidates(ctx):
    w_dec = ctx.sae.W_dec
    base = draw("synthetic_baseline", rngs(200), ctx, PAIRWISE)
    errors = [np.nanmean(cosine_structure_error(base.template_latents, base.latents, w_dec))]
    for c in (4, 16, 64):
        acts = draw("synthetic_structured", rngs(200), ctx, dataclasses.replace(PAIRWISE, candidates=c))
        errors.append(np.nanmean(cosine_structure_error(acts.template_latents, acts.latents, w_dec)))
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.5 * errors[0], errors


def test_structured_with_one_candidate_is_the_baseline(ctx):
    settings = dataclasses.replace(PAIRWISE, candidates=1)
    a = draw("synthetic_baseline", rngs(20), ctx, settings)
    b = draw("synthetic_structured", rngs(20), ctx, settings)
    assert all(np.array_equal(x, y) for x, y in zip(a.latents, b.latents))
    torch.testing.assert_close(a.vectors, b.vectors)


@pytest.mark.parametrize("tol", [0.1, 0.3])
@pytest.mark.parametrize("kind", SYNTHETIC_KINDS)
def test_replacements_are_frequency_matched_distinct_and_sampled(ctx, kind, tol):
    stats = ctx.stats
    with np.errstate(divide="ignore"):
        logf = np.log10(stats.freq.numpy())
    samples, counts, starts = stats.value_samples.numpy(), stats.value_counts.numpy(), stats.value_offsets.numpy()
    # Template latents stay allowed here (their exclusion is tested below): on the toy SAE, where codes are
    # long and many latents share a frequency, excluding them would empty many windows.
    settings = dataclasses.replace(PAIRWISE, tol=tol, candidates=4, exclude_template=False)
    acts = draw(kind, rngs(100), ctx, settings)
    with torch.no_grad():
        template_codes = ctx.sae.encode(kinds._forward(ctx, acts.tokens)).numpy()
    checked = within = fallback = 0
    for b, (i_ids, j_ids, values) in enumerate(zip(acts.template_latents, acts.latents, acts.values)):
        assert len(set(j_ids.tolist())) == len(j_ids)
        assert (j_ids != i_ids).all()  # never the latent it replaces
        assert (stats.freq.numpy()[j_ids] > 0).all()
        seen = stats.freq.numpy()[i_ids] > 0  # template latents that fired in the pool
        within += (np.abs(logf[j_ids[seen]] - logf[i_ids[seen]]) <= tol + 1e-9).sum()
        checked += seen.sum()
        assert (values > 0).all()
        # From j's own pool values; a latent that fired only at other positions keeps the template's value.
        assert all(
            v in samples[starts[j]: starts[j] + counts[j]] if counts[j] else v == np.float32(template_codes[b, i])
            for i, j, v in zip(i_ids, j_ids, values)
        )
        fallback += (counts[j_ids] == 0).sum()
    # Within tol unless used latents fill the window (then the nearest allowed latent).
    assert checked > 500 and within / checked > 0.9, within / checked
    assert fallback < 0.1 * checked, fallback


def test_exhausted_windows_fall_back_to_unused_latents(ctx, monkeypatch):
    # tol = 0 leaves only latents of exactly equal pool frequency; WALK = 1 exhausts the walk often.
    monkeypatch.setattr(matching, "WALK", 1)
    calls = []
    exact = matching._unused_near
    monkeypatch.setattr(matching, "_unused_near", lambda *a: calls.append(a) or exact(*a))
    freq = ctx.stats.freq.numpy()
    acts = draw("synthetic_structured", rngs(60), ctx, dataclasses.replace(PAIRWISE, tol=0.0, candidates=2))
    assert calls, "the exact fallback was not exercised"
    gaps = []
    for i_ids, j_ids in zip(acts.template_latents, acts.latents):
        assert len(set(j_ids.tolist())) == len(j_ids)
        seen = freq[i_ids] > 0
        # Exact fallback: equal frequency where the window still has an allowed latent, else the nearest.
        assert (freq[j_ids] > 0).all() and not set(j_ids.tolist()) & set(i_ids.tolist())
        gaps.extend(np.abs(np.log10(freq[j_ids[seen]]) - np.log10(freq[i_ids[seen]])))
    assert np.median(gaps) < 0.05, np.median(gaps)


def test_template_values_and_norm_matching(ctx):
    sae = ctx.sae
    plain = draw("synthetic_baseline", rngs(50), ctx, GenerationSettings())
    matched = draw("synthetic_baseline", rngs(50), ctx, GenerationSettings(match_norm=True))
    real = draw("real", rngs(50), ctx)  # the same RNGs draw the same template prompts
    assert np.array_equal(plain.tokens, real.tokens)
    with torch.no_grad():
        z = sae.encode(real.vectors)
    for b in range(50):
        ids = plain.template_latents[b]
        np.testing.assert_allclose(plain.values[b], z[b, torch.as_tensor(ids, dtype=torch.long)].numpy(), rtol=1e-6)
        ratio = matched.values[b] / plain.values[b]
        np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)  # one common scale per draw
    torch.testing.assert_close(matched.vectors.norm(dim=-1), real.vectors.norm(dim=-1), rtol=1e-4, atol=1e-4)


def test_gaussian_has_the_pool_moments(ctx):
    n = 4000
    x = draw("gaussian", rngs(n), ctx).vectors.double()
    mu, sigma = ctx.stats.mean, ctx.stats.cov
    tr, fro2 = float(sigma.trace()), float((sigma**2).sum())
    # E||mean_hat - mu||^2 = tr(S)/n; E||S_hat - S||_F^2 ~= (tr(S)^2 + ||S||_F^2) / n.
    assert float((x.mean(0) - mu).norm()) < 2 * np.sqrt(tr / n)
    assert float((torch.cov(x.T) - sigma).norm()) < 2 * np.sqrt((tr**2 + fro2) / n)
    assert float((torch.cov(x.T) - sigma).norm()) < 0.2 * float(sigma.norm())


def test_real_sae_recon_and_single_latent_are_what_they_say(ctx):
    sae, stats = ctx.sae, ctx.stats
    real = draw("real", rngs(8), ctx)
    recon = draw("sae_recon", rngs(8), ctx)
    model = toy_backend().model.model
    with torch.no_grad():
        x = model(torch.as_tensor(real.tokens), stop_at_layer=LAYER)[:, -1]
        z = sae.encode(x)
    torch.testing.assert_close(real.vectors, x)
    torch.testing.assert_close(recon.vectors, sae.decode(z).detach())
    assert np.array_equal(real.l0, (z > 0).sum(-1).numpy()) and np.array_equal(recon.l0, real.l0)
    assert real.prompt_based and recon.prompt_based

    single = draw("single_latent", rngs(50), ctx)
    assert not single.prompt_based and (single.l0 == 1).all()
    ids = np.concatenate(single.latents)
    assert (stats.freq.numpy()[ids] > 0).all()
    code_norm = (single.vectors - sae.b_dec).norm(dim=-1).detach().numpy()
    pool = stats.code_norms.numpy()
    assert all(np.isclose(pool, c, rtol=1e-4).any() for c in code_norm)


def test_synthetic_norms_match_their_real_templates(ctx):
    real = draw("real", rngs(200, 10_000), ctx).vectors.norm(dim=-1)  # the same RNGs draw the same templates
    for kind in SYNTHETIC_KINDS:
        for add_error in (False, True):
            built = draw(kind, rngs(200, 10_000), ctx, dataclasses.replace(SETTINGS, add_error=add_error, match_norm=True))
            torch.testing.assert_close(built.vectors.norm(dim=-1), real, rtol=1e-4, atol=1e-4)
    unmatched = draw("synthetic_baseline", rngs(200, 10_000), ctx, dataclasses.replace(SETTINGS, match_norm=False))
    assert float((unmatched.vectors.norm(dim=-1) - real).abs().mean()) > 1e-2  # the scaling is what matches them


@pytest.mark.parametrize("kind", KINDS)
def test_a_draw_depends_only_on_its_own_rng(ctx, kind):
    seeds = [11, 22, 33]
    batch = draw(kind, [np.random.default_rng(s) for s in seeds], ctx, SETTINGS)
    alone = draw(kind, [np.random.default_rng(22)], ctx, SETTINGS)
    torch.testing.assert_close(batch.vectors[1:2], alone.vectors, rtol=1e-5, atol=1e-5)
    assert np.array_equal(batch.tokens[1], alone.tokens[0])
    assert batch.docs[1] == alone.docs[0] and batch.offsets[1] == alone.offsets[0]
    if batch.latents is not None:
        assert np.array_equal(batch.latents[1], alone.latents[0])
        np.testing.assert_allclose(batch.values[1], alone.values[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("kind", "add_error"), [(k, False) for k in KINDS] + [(k, True) for k in TEMPLATE_KINDS])
def test_from_provenance_rebuilds_each_draw(ctx, kind, add_error):
    seeds = [5, 6, 7]
    settings = dataclasses.replace(SETTINGS, add_error=add_error)
    acts = draw(kind, [np.random.default_rng(s) for s in seeds], ctx, settings)
    for b, seed in enumerate(seeds):
        rebuilt = from_provenance(
            kind, acts.tokens[b], acts.latents[b] if acts.latents else None, acts.values[b] if acts.values else None,
            add_error, ctx, seed=seed,
        )
        rel = float((rebuilt - acts.vectors[b]).norm() / acts.vectors[b].norm())
        assert rel <= 1e-5, (kind, rel)


def test_empty_templates_are_redrawn_or_refused(ctx):
    b = toy_backend()
    quiet = copy.deepcopy(ctx.sae)
    with torch.no_grad():
        z = quiet.encode(ctx.stats.acts)
        # Shift encoder biases so that about half of the prompts have an empty code.
        top = z.max(dim=1).values
        quiet.b_enc -= float(top.median())
        assert 0.2 < float((quiet.encode(ctx.stats.acts) > 0).any(-1).float().mean()) < 0.8
    stats = compute_stats(b.model.model, quiet, b.corpus, LAYER, N_CTX, ReferenceSpec(n_prompts=512), 0, "cpu")
    quiet_ctx = dataclasses.replace(ctx, sae=quiet, stats=stats)
    acts = draw("synthetic_baseline", rngs(40), quiet_ctx, SETTINGS)
    assert (acts.l0 > 0).all()
    with torch.no_grad():
        quiet.b_enc -= 1e6  # now every code is empty
    with pytest.raises(SynthactError, match="empty SAE code"):
        draw("synthetic_baseline", rngs(2), quiet_ctx, SETTINGS)


def test_bad_input_is_refused(ctx):
    with pytest.raises(SynthactError, match="unknown kind"):
        draw("imaginary", rngs(1), ctx)
    with pytest.raises(SynthactError, match="value_source"):
        draw("synthetic_baseline", rngs(1), ctx, GenerationSettings(value_source="median"))
    with pytest.raises(SynthactError, match="seed"):
        from_provenance("gaussian", None, None, None, False, ctx)
    assert N_CTX == ctx.n_ctx


@pytest.mark.parametrize("settings", [SETTINGS, PAIRWISE], ids=["paper", "pairwise"])
@pytest.mark.parametrize("kind", [k for k in TEMPLATE_KINDS if k not in CONTROL_KINDS])  # controls keep latents
def test_replacements_are_never_the_replaced_or_template_latents(ctx, kind, settings):
    acts = draw(kind, rngs(200), ctx, settings)
    alive = ctx.stats.freq.numpy() > 0
    for i_ids, j_ids in zip(acts.template_latents, acts.latents):
        assert len(set(j_ids.tolist())) == len(j_ids) and alive[j_ids].all()
        assert not set(j_ids.tolist()) & set(i_ids.tolist())
    kept = draw(kind, rngs(200), ctx, dataclasses.replace(settings, exclude_template=False))
    assert all((i != j).all() for i, j in zip(kept.template_latents, kept.latents))


@pytest.mark.parametrize("kind", [k for k in TEMPLATE_KINDS if k != "control_other_latents"])  # L0 may fall short
def test_paired_target_shares_the_base_l0_and_values(ctx, kind):
    base = draw("real", rngs(40), ctx)
    target = draw(kind, rngs(40, 500), ctx, SETTINGS, template=base)
    with torch.no_grad():
        z = ctx.sae.encode(base.vectors)
    assert np.array_equal(target.l0, base.l0) and np.array_equal(target.tokens, base.tokens)
    for b in range(40):
        ids = torch.nonzero(z[b]).flatten()
        assert np.array_equal(target.template_latents[b], ids.numpy())  # ascending ids: the authors' order
        np.testing.assert_allclose(target.values[b], z[b, ids].numpy(), rtol=1e-6)


# --------------------------------------------------------------------------- a hand-built SAE


def hand_context(w_dec: list[list[float]], freq: list[float]):
    """A sae_lens SAE with decoder rows `w_dec` (normalised) and statistics with firing frequencies `freq`."""
    from sae_lens import StandardSAE, StandardSAEConfig

    w = torch.nn.functional.normalize(torch.tensor(w_dec, dtype=torch.float32), dim=-1)
    d_sae, d_model = w.shape
    sae = StandardSAE(StandardSAEConfig(d_in=d_model, d_sae=d_sae))
    with torch.no_grad():
        sae.W_dec.copy_(w)
    empty = torch.zeros(0)
    stats = ReferenceStats(
        layer=0, acts=torch.zeros(1, d_model), code_offsets=torch.zeros(2, dtype=torch.int64),
        code_latents=empty.int(), code_values=empty, freq=torch.tensor(freq, dtype=torch.float64),
        value_samples=torch.zeros(0), value_counts=torch.zeros(d_sae, dtype=torch.int64),
        l0=torch.zeros(1, dtype=torch.int64), mean=torch.zeros(d_model, dtype=torch.float64),
        cov=torch.eye(d_model, dtype=torch.float64), chol=torch.eye(d_model, dtype=torch.float64),
        norms=torch.ones(1), code_norms=torch.ones(1),
    )
    return GenContext(model=None, sae=sae, stats=stats, corpus=None, layer=0, n_ctx=1, device="cpu")


FREQ = [0.10, 0.20, 0.30, 0.42, 0.50, 0.63, 0.70, 0.90]


def pick(construction, ctx, latents, values, settings, u=0.0):
    lat = torch.tensor([latents])
    return construction(ctx, lat, torch.tensor([values]), torch.full(lat.shape, u, dtype=torch.float64),
                        settings)[0].tolist()


def test_nearest_k_has_one_answer_on_a_hand_built_sae():
    ctx = hand_context(torch.eye(8).tolist(), FREQ)
    k1 = GenerationSettings(nearest_k=1)
    # i = 3 (f .42): 3 and 4 are template latents -> 2 (.30); i = 4 (.50): 2 used -> 5 (.63).
    assert pick(matching.nearest_k, ctx, [3, 4], [1.0, 1.0], k1) == [2, 5]
    # Without exclude_template: 3 -> 4 (.08 away); 4 -> 3 (4 is itself).
    assert pick(matching.nearest_k, ctx, [3, 4], [1.0, 1.0], dataclasses.replace(k1, exclude_template=False)) == [4, 3]
    # k = 2: the two allowed nearest to 3 are 2 (.12) then 5 (.21); u picks uniformly among them.
    k2 = GenerationSettings(nearest_k=2)
    assert pick(matching.nearest_k, ctx, [3, 4], [1.0, 1.0], k2, u=0.4)[0] == 2
    assert pick(matching.nearest_k, ctx, [3, 4], [1.0, 1.0], k2, u=0.6)[0] == 5


def test_anchor_has_one_answer_on_a_hand_built_sae():
    w = [
        [1.0, 0.0, 0.0, 0.0],  # 0: the top latent i*
        [0.8, 0.6, 0.0, 0.0],  # 1: cos(i*, 1) = 0.8
        [0.4, 0.0, 0.9165, 0.0],  # 2: cos to i* 0.40
        [0.9, 0.0, 0.0, 0.4359],  # 3: cos to i* 0.90
        [0.0, 0.0, 1.0, 0.0],  # 4: cos to 2 0.9165
        [0.0, 1.0, 0.0, 0.0],  # 5: cos to 2 and 3: 0
    ]
    ctx = hand_context(w, [0.50, 0.10, 0.45, 0.56, 0.20, 0.30])
    paper = GenerationSettings(anchor_pool=2)  # pool: the 2 non-template latents nearest i* in frequency: 2, 3
    # Anchor 2 (cos .40 is closest to .42); i* -> 2 (cos 1); 1 -> the unused latent with cos to 2 closest to .8: 4.
    assert pick(matching.anchor, ctx, [0, 1], [5.0, 2.0], paper) == [2, 4]
    # Anchor cosine .9: anchor 3; i* -> 3; 1 -> closest to .8 among 2 (.36), 4 (0), 5 (0): 2.
    assert pick(matching.anchor, ctx, [0, 1], [5.0, 2.0], dataclasses.replace(paper, anchor_cos=0.9)) == [3, 2]
    # The top latent is the largest value: here 1 (f .10), whose nearest non-template latent in frequency is
    # 4, the anchor. 0 (cos(1, 0) = .8) -> 2 (cos .92 to 4); then the top latent 1 -> the anchor 4 (cos 1).
    assert pick(matching.anchor, ctx, [0, 1], [1.0, 2.0], dataclasses.replace(paper, anchor_pool=1)) == [2, 4]
