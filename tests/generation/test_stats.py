"""Reference statistics on the toy backend: content, determinism, save/load, PD repair."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch

from synthact.errors import SynthactError
from synthact.generation.stats import (
    ReferenceStats,
    _gaussian_fit,
    check_affine_decoder,
    compute_stats,
    stats_key,
)
from synthact.inputs.hooks import real_activations
from synthact.spec import (
    ReferenceSpec,
    derive_seed,
)
from tests.helpers import LAYER, N_CTX, toy_backend, toy_stats


def test_real_activations_are_resid_pre_at_the_last_position():
    model = toy_backend().model.model
    tokens = torch.as_tensor(toy_backend().corpus.docs[:4, :N_CTX])
    _, cache = model.run_with_cache(tokens, names_filter=f"blocks.{LAYER}.hook_resid_pre")
    expected = cache[f"blocks.{LAYER}.hook_resid_pre"][:, -1]
    torch.testing.assert_close(real_activations(model, tokens, LAYER), expected)


def test_pool_content_is_consistent():
    stats, sae = toy_stats(), toy_backend().saes[LAYER].sae
    n = stats.n
    assert n == 2048 and stats.acts.shape == (n, 64)
    # CSR codes are the SAE codes of the pool activations.
    with torch.no_grad():
        z = sae.encode(stats.acts[:50])
    for i in range(50):
        ids, vals = stats.code(i)
        nz = torch.nonzero(z[i]).flatten()
        assert np.array_equal(ids, nz.numpy())
        np.testing.assert_allclose(vals, z[i, nz].numpy(), rtol=1e-6)
    assert torch.equal(stats.l0, stats.code_offsets[1:] - stats.code_offsets[:-1])
    counts = torch.bincount(stats.code_latents.long(), minlength=stats.d_sae)
    # Frequencies: from every position of the pool's prompts (no SAE sparsity for a toy SAE).
    b = toy_backend()
    _, _, tokens = b.corpus.sample(np.random.default_rng(derive_seed("reference", 0, LAYER)), n, N_CTX)
    with torch.no_grad():
        every = b.model.model(torch.as_tensor(np.asarray(tokens)), stop_at_layer=LAYER)
        fired = (sae.encode(every.flatten(0, 1)) != 0).double().mean(0)
    torch.testing.assert_close(stats.freq, fired)
    assert stats.freq_source == "pool_all_positions" and stats.summary()["freq_source"] == "pool_all_positions"
    assert ((counts > 0) <= (stats.freq > 0)).all()
    # Value samples: positive, drawn from the latent's own pool values, up to V of them.
    v = ReferenceSpec().value_samples
    assert torch.equal(stats.value_counts, counts.clamp(max=v)) and stats.summary()["value_samples_per_latent"] == v
    assert stats.value_samples.shape == (int(stats.value_counts.sum()),)  # sparse: no [d_sae, V] matrix
    for j in stats.alive[:40].tolist():
        mine = stats.code_values[stats.code_latents == j].numpy()
        start = int(stats.value_offsets[j])
        kept = stats.value_samples[start: start + stats.value_counts[j]].numpy()
        assert (kept > 0).all() and np.isin(kept, mine).all()
    # Norms, code norms and the Gaussian fit.
    torch.testing.assert_close(stats.norms, stats.acts.norm(dim=-1))
    with torch.no_grad():
        code_norms = (sae.encode(stats.acts) @ sae.W_dec).norm(dim=-1)
    torch.testing.assert_close(stats.code_norms, code_norms, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats.mean, stats.acts.double().mean(0))
    torch.testing.assert_close(stats.cov, torch.cov(stats.acts.double().T) + stats.cov_jitter * torch.eye(64))
    torch.testing.assert_close(stats.chol @ stats.chol.T, stats.cov)
    summary = stats.summary()
    assert summary["n"] == n and summary["alive_latents"] == int((stats.freq > 0).sum())
    assert summary["mean_l0"] == pytest.approx(float(stats.l0.double().mean()))


def test_compute_stats_is_deterministic_for_a_seed():
    a, b, c = toy_stats(64, seed=1), _fresh_stats(64, seed=1), toy_stats(64, seed=2)
    for name in ("acts", "code_latents", "code_values", "value_samples", "cov"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.acts, c.acts)


def _fresh_stats(n_prompts: int, seed: int) -> ReferenceStats:
    b = toy_backend()
    return compute_stats(
        b.model.model, b.saes[LAYER].sae, b.corpus, LAYER, N_CTX, ReferenceSpec(n_prompts=n_prompts), seed, "cpu"
    )


def test_release_sparsity_gives_the_frequencies():
    b = toy_backend()
    sae = b.saes[LAYER].sae
    log_sparsity = torch.linspace(-12.0, -0.5, sae.W_dec.shape[0])
    stats = compute_stats(b.model.model, sae, b.corpus, LAYER, N_CTX, ReferenceSpec(n_prompts=64), 0, "cpu",
                          log_sparsity=log_sparsity)
    dead = log_sparsity <= -10
    assert stats.freq_source == "sae_lens" and (stats.freq[dead] == 0).all()
    torch.testing.assert_close(stats.freq[~dead], 10.0 ** log_sparsity[~dead].double())
    assert stats.summary()["alive_latents"] == int((~dead).sum())


def test_save_load_round_trip(tmp_path):
    stats = toy_stats(64, seed=1)
    where = tmp_path / "stats"
    stats.save(where)
    loaded = ReferenceStats.load(where)
    for name, value in vars(stats).items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(getattr(loaded, name), value), name
    assert loaded.layer == stats.layer and loaded.cov_jitter == stats.cov_jitter
    assert loaded.summary() == stats.summary()
    assert [p.name for p in tmp_path.iterdir()] == ["stats"]  # no temp directory left behind
    toy_stats(64, seed=2).save(where)  # an existing directory is kept (deterministic content)
    assert torch.equal(ReferenceStats.load(where).acts, stats.acts)


def test_load_refuses_a_directory_without_statistics(tmp_path):
    with pytest.raises(SynthactError, match="not a reference-statistics directory"):
        ReferenceStats.load(tmp_path)


def test_stats_key_names_every_input():
    spec = ReferenceSpec()
    key = stats_key("m", "s", 1, "c", 10, spec, 0)
    assert key == stats_key("m", "s", 1, "c", 10, spec, 0)
    others = [
        stats_key("m2", "s", 1, "c", 10, spec, 0),
        stats_key("m", "s2", 1, "c", 10, spec, 0),
        stats_key("m", "s", 2, "c", 10, spec, 0),
        stats_key("m", "s", 1, "c2", 10, spec, 0),
        stats_key("m", "s", 1, "c", 11, spec, 0),
        stats_key("m", "s", 1, "c", 10, ReferenceSpec(n_prompts=128), 0),
        stats_key("m", "s", 1, "c", 10, spec, 1),
    ]
    assert len({key, *others}) == 8


def test_gaussian_fit_repairs_a_singular_covariance():
    acts = torch.randn(20, 64, generator=torch.Generator().manual_seed(0))  # rank 19 < 64
    mean, cov, chol, jitter = _gaussian_fit(acts)
    assert jitter > 0
    torch.testing.assert_close(chol @ chol.T, cov)
    assert torch.linalg.eigvalsh(cov).min() > 0


def test_non_affine_decoders_are_refused():
    sae = copy.deepcopy(toy_backend().saes[LAYER].sae)
    check_affine_decoder(sae)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sae.cfg.normalize_activations = "layer_norm"
    with pytest.raises(SynthactError, match="layer_norm"):
        check_affine_decoder(sae)
