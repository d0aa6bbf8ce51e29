"""Every SAE architecture synthact serves, each a small SAE saved by sae_lens in the test from the toy model's own
activations: standard (ReLU), JumpReLU (Gemma Scope), TopK (OpenAI-style, decoder-norm rescaling), BatchTopK (as
sae_lens saves it: a JumpReLU SAE) and gated. Each loads in synthact's canonical form, its active latents are the
ones its encode makes active, and a sweep of the smoke job's kinds on the fast path recomputes row by row."""

import warnings

import numpy as np
import pytest
import torch
import yaml

from synthact.errors import SynthactError
from synthact.generation.stats import compute_stats
from synthact.inputs.backends import load_model, load_sae
from synthact.inputs.corpus import Corpus
from synthact.results import read_table
from synthact.run.local_executor import run_local
from synthact.run.recompute import recompute
from synthact.run.store import Store
from synthact.spec import ModelSpec, ReferenceSpec, SAESpec, ToyModelSpec, parse_job
from tests.helpers import ROOT, toy_job

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

LAYER, D_SAE, K = 1, 256, 8
ARCHITECTURES = ["standard", "jumprelu", "topk", "batchtopk", "gated"]
LOADED_AS = {"batchtopk": "jumprelu"}  # sae_lens saves a trained BatchTopK SAE as a JumpReLU SAE


@pytest.fixture(scope="module")
def toy():
    return load_model(ModelSpec(toy=ToyModelSpec()), "cpu")


@pytest.fixture(scope="module")
def acts(toy):
    hook = f"blocks.{LAYER}.hook_resid_pre"
    tokens = torch.randint(0, toy.d_vocab, (256, 10), generator=torch.Generator().manual_seed(0))
    _, cache = toy.model.run_with_cache(tokens, names_filter=hook)
    return cache[hook][:, 1:].reshape(-1, toy.d_model)


def save_sae(arch: str, acts: torch.Tensor, path) -> str:
    """An sae_lens SAE of `arch` whose latents are random unit directions, biased so that about 10% of them fire on
    the toy's activations (TopK: exactly K), saved with sae_lens's own save method."""
    import sae_lens
    from sae_lens.saes.sae import SAEMetadata

    gen = torch.Generator().manual_seed(ARCHITECTURES.index(arch))
    d = acts.shape[1]
    w_dec = torch.nn.functional.normalize(torch.randn(D_SAE, d, generator=gen), dim=-1)
    pre = (acts - acts.mean(0)) @ w_dec.T
    cut = pre.quantile(0.9, dim=0)  # per latent
    common = dict(d_in=d, d_sae=D_SAE, metadata=SAEMetadata(hook_name=f"blocks.{LAYER}.hook_resid_pre", model_name="toy"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if arch == "batchtopk":
            sae = sae_lens.BatchTopKTrainingSAE(sae_lens.BatchTopKTrainingSAEConfig(k=K, **common))
        else:
            names = {"standard": "StandardSAE", "jumprelu": "JumpReLUSAE", "topk": "TopKSAE", "gated": "GatedSAE"}
            extra = {"k": K, "rescale_acts_by_decoder_norm": True} if arch == "topk" else {}
            sae = getattr(sae_lens, names[arch])(getattr(sae_lens, names[arch] + "Config")(**common, **extra))
    with torch.no_grad():
        sae.W_enc.copy_(w_dec.T)
        sae.b_dec.copy_(acts.mean(0))
        if arch == "topk":  # decoder rows of assorted norms: the rescaling matters
            sae.W_dec.copy_(w_dec * torch.empty(D_SAE, 1).uniform_(0.5, 2.0, generator=gen))
            sae.b_enc.fill_(1.0)  # every one of the top K pre-activations is positive
        else:
            sae.W_dec.copy_(w_dec)
        if arch == "jumprelu":  # ReLU passes every positive pre-activation; the threshold only the top 10%
            sae.b_enc.zero_()
            sae.threshold.copy_(cut)
        if arch == "standard":
            sae.b_enc.copy_(-cut)
        if arch == "gated":
            sae.b_gate.copy_(-cut)
            sae.b_mag.fill_(0.1)
            sae.r_mag.copy_(0.1 * torch.randn(D_SAE, generator=gen))
    if arch == "batchtopk":
        sae.topk_threshold.fill_(float(cut.mean()))
        sae.save_inference_model(path)
    else:
        sae.save_model(path)
    return str(path)


@pytest.fixture(scope="module")
def saved(acts, tmp_path_factory):
    return {arch: save_sae(arch, acts, tmp_path_factory.mktemp(arch)) for arch in ARCHITECTURES}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_each_architecture_loads_and_decodes_codes_as_it_does(arch, saved, toy, acts):
    """Codes decode as z @ W_dec + b_dec (the form every SAE-built kind uses) to what the SAE itself reconstructs."""
    from sae_lens import SAE

    loaded = load_sae(SAESpec(local=saved[arch]), LAYER, toy, "cpu")
    assert loaded.architecture == LOADED_AS.get(arch, arch)
    original = SAE.load_from_disk(saved[arch], device="cpu")
    with torch.no_grad():
        z = loaded.sae.encode(acts)
        torch.testing.assert_close(z @ loaded.sae.W_dec + loaded.sae.b_dec, original.decode(original.encode(acts)),
                                   atol=1e-4, rtol=1e-4)
        assert ((z != 0) == (original.encode(acts) != 0)).float().mean() > 0.999  # the same latents fire
    l0 = (z != 0).sum(-1).float()
    if arch == "topk":
        assert (l0 == K).all()
    else:
        assert 0 < l0.mean() < D_SAE / 4


def test_jumprelu_thresholds_decide_which_latents_are_in_the_reference_codes(saved, toy):
    """A latent whose pre-activation is positive but at or below its threshold is not active in the pool's codes."""
    loaded = load_sae(SAESpec(local=saved["jumprelu"]), LAYER, toy, "cpu")
    sae = loaded.sae
    corpus = Corpus(docs=np.random.default_rng(0).integers(0, toy.d_vocab, (128, 16)), label="random")
    stats = compute_stats(toy.model, sae, corpus, LAYER, 10, ReferenceSpec(n_prompts=64), 0, "cpu")
    with torch.no_grad():
        pre = (stats.acts - sae.b_dec) @ sae.W_enc + sae.b_enc
    below = (pre > 0) & (pre <= sae.threshold)
    assert below.sum() > stats.l0.sum()  # thresholds remove most positive pre-activations
    for i in range(stats.n):
        latents, _ = stats.code(i)
        expected = torch.nonzero(pre[i] > sae.threshold).flatten().numpy()
        assert np.array_equal(np.sort(latents), expected)


def test_an_architecture_synthact_does_not_serve_is_one_paragraph(acts, toy, tmp_path):
    from sae_lens import AbsTopKSAE, AbsTopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    meta = SAEMetadata(hook_name=f"blocks.{LAYER}.hook_resid_pre", model_name="toy")
    AbsTopKSAE(AbsTopKSAEConfig(d_in=acts.shape[1], d_sae=D_SAE, k=K, metadata=meta)).save_model(tmp_path / "abs")
    with pytest.raises(SynthactError) as e:
        load_sae(SAESpec(local=str(tmp_path / "abs")), LAYER, toy, "cpu")
    msg = str(e.value)
    assert "'abstopk' SAE" in msg and "jumprelu" in msg and "topk" in msg and "\n" not in msg


def test_every_architecture_runs_the_smoke_kinds_and_recomputes(saved, tmp_path):
    smoke = yaml.safe_load((ROOT / "jobs" / "smoke.yaml").read_text())
    job = parse_job(toy_job(
        name="architectures", sae=[{"local": saved[arch]} for arch in ARCHITECTURES], layers=[LAYER],
        read_layers=[-1], base_kinds=smoke["base_kinds"], directions=["toward:same", "latent:random"],
        scan={"steps": 8, "step_size": 0.5}, bases_per_cell=2, shard_size=2, reference={"n_prompts": 256},
        generation={"nearest_k": [4], "anchor_pool": [16]}, device="cpu", wandb=False,
    ))
    summary = run_local(job, Store(tmp_path / "out", job), progress=False)
    assert summary.ok, summary.failures
    rows = read_table(tmp_path / "out", ["sae", "base_kind", "base_l0"]).to_pandas()
    assert rows.groupby("sae").base_kind.nunique().eq(len(smoke["base_kinds"])).all()
    assert rows.sae.nunique() == len(ARCHITECTURES)
    topk = rows[rows.sae == f"local:{saved['topk']}"]
    built = topk.base_kind.str.startswith(("synthetic_", "control_", "random_latents", "sae_recon"))
    assert (topk[built].base_l0 == K).all()  # TopK codes keep L0 = K: "keep the base's L0" holds by construction
    checks = recompute(tmp_path / "out")
    assert len(checks) == len(job.cells()) and all(c.ok for c in checks), [c.mismatches for c in checks if not c.ok]
