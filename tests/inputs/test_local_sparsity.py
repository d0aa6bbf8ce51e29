"""A local SAE directory's `sparsity.safetensors` (sae_lens's SPARSITY_FILENAME) gives the latents' firing frequencies,
as the hub release's does; without it they are estimated from the reference pool."""

from __future__ import annotations

import warnings

import pytest
import torch
from safetensors.torch import save_file

from synthact.errors import SynthactError
from synthact.generation.stats import load_or_compute_stats
from synthact.inputs.backends import load_backend
from synthact.spec import CorpusSpec, ModelSpec, SAESpec, ToyCorpusSpec, ToyModelSpec, parse_job
from tests.helpers import toy_job

D_SAE = 128


def save_sae(path, log_sparsity=None):
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.constants import SPARSITY_FILENAME
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(0)
    meta = SAEMetadata(hook_name="blocks.1.hook_resid_pre", model_name="toy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        StandardSAE(StandardSAEConfig(d_in=ToyModelSpec().d_model, d_sae=D_SAE, metadata=meta)).save_model(str(path))
    if log_sparsity is not None:
        save_file({"sparsity": log_sparsity}, str(path / SPARSITY_FILENAME))
    return path


def backend(path):
    return load_backend(ModelSpec(toy=ToyModelSpec()), SAESpec(local=str(path)), CorpusSpec(toy=ToyCorpusSpec()),
                        [1], "cpu", n_ctx=10)


def test_local_sparsity_file_gives_the_frequencies(tmp_path):
    log_sparsity = torch.linspace(-4.0, -1.0, D_SAE)
    log_sparsity[:3] = -12.0  # dead in the release's own count
    b = backend(save_sae(tmp_path / "sae", log_sparsity))
    torch.testing.assert_close(b.saes[1].log_sparsity, log_sparsity)
    assert b.saes[1].info["sparsity_file"].endswith("sparsity.safetensors")
    job = parse_job(toy_job(sae={"local": str(tmp_path / "sae")}, reference={"n_prompts": 64}))
    stats, _ = load_or_compute_stats(b, 1, job, str(tmp_path / "stats"), "cpu")
    assert stats.freq_source == "sae_lens"
    assert (stats.freq[:3] == 0).all()
    torch.testing.assert_close(stats.freq[3:], 10.0 ** log_sparsity[3:].double())


def test_without_the_file_frequencies_come_from_the_pool(tmp_path):
    b = backend(save_sae(tmp_path / "sae"))
    assert b.saes[1].log_sparsity is None and "sparsity_file" not in b.saes[1].info
    job = parse_job(toy_job(sae={"local": str(tmp_path / "sae")}, reference={"n_prompts": 64}))
    stats, _ = load_or_compute_stats(b, 1, job, str(tmp_path / "stats"), "cpu")
    assert stats.freq_source == "pool_all_positions"


def test_a_sparsity_file_of_another_width_is_refused(tmp_path):
    with pytest.raises(SynthactError, match="d_sae=128"):
        backend(save_sae(tmp_path / "sae", torch.zeros(D_SAE + 1)))


@pytest.mark.parametrize("value, named", [(float("nan"), "1 NaN"), (float("inf"), "1 +inf"), (0.5, "1 positive")])
def test_a_sparsity_file_that_holds_no_log_density_is_refused(tmp_path, value, named):
    """NaN, +inf and log10 densities above 0 (frequencies above 1) are refused in one paragraph (issue 23, item 11);
    -inf (a latent that never fired) is a density."""
    log_sparsity = torch.linspace(-4.0, -1.0, D_SAE)
    log_sparsity[5] = value
    with pytest.raises(SynthactError) as e:
        backend(save_sae(tmp_path / "sae", log_sparsity))
    msg = str(e.value)
    assert f"{named} values of {D_SAE}" in msg and "sparsity.safetensors" in msg and "\n" not in msg, msg
    dead = torch.linspace(-4.0, -1.0, D_SAE)
    dead[5] = float("-inf")
    assert backend(save_sae(tmp_path / "dead", dead)).saes[1].log_sparsity[5] == float("-inf")
