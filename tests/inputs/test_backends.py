"""Model + SAE loading: toy, local GPT-2 / SAE directories, compatibility checks, hub failures."""

import warnings

import numpy as np
import pytest
import torch

from synthact.errors import SynthactError
from synthact.inputs.backends import load_backend, load_model, load_sae, resolve_device
from synthact.spec import CorpusSpec, ModelSpec, SAESpec, ToyCorpusSpec, ToyModelSpec, ToySAESpec
from tests.helpers import network_attempts

D_MODEL = 64
VOCAB = 256


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """A tiny GPT-2 saved by transformers, plus its HF model for reference logits."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=D_MODEL, n_head=4, vocab_size=VOCAB, n_positions=32)).eval()
    with torch.no_grad():  # non-trivial LayerNorm weights, so folding them is tested
        for name, p in hf.named_parameters():
            if "ln" in name:
                p.add_(0.2 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("gpt2")
    hf.save_pretrained(path)
    return path, hf


def save_sae(path, hook="blocks.1.hook_resid_pre", d_in=D_MODEL, model_kwargs=None):
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(0)
    meta = SAEMetadata(hook_name=hook, model_name="tiny", model_from_pretrained_kwargs=model_kwargs or {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # sae_lens's advice about model_from_pretrained_kwargs
        StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=128, metadata=meta)).save_model(path)
    return str(path)


def refusal(fn) -> str:
    with pytest.raises(SynthactError) as e:
        fn()
    return str(e.value)


# --------------------------------------------------------------------------- local GPT-2


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False),
        dict(fold_ln=True, center_writing_weights=False, center_unembed=False, fold_value_biases=False),
        dict(fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True),
        {},  # from_pretrained's defaults
    ],
)
def test_local_gpt2_matches_hf_logits(gpt2_dir, kwargs):
    path, hf = gpt2_dir
    loaded = load_model(ModelSpec(local=str(path), from_pretrained_kwargs=kwargs), "cpu")
    assert (loaded.n_layers, loaded.d_model, loaded.d_vocab) == (3, D_MODEL, VOCAB)
    assert loaded.label == f"local:{path.name}" and loaded.path == path
    fold = kwargs.get("fold_ln", True)
    assert loaded.model.cfg.normalization_type == ("LNPre" if fold else "LN")
    tokens = torch.randint(0, VOCAB, (3, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, ref = loaded.model(tokens), hf(tokens).logits
    if kwargs.get("center_unembed", True):  # logits move by a per-position constant
        ours, ref = ours - ours.mean(-1, keepdim=True), ref - ref.mean(-1, keepdim=True)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


def test_local_model_errors(tmp_path, gpt2_dir):
    msg = refusal(lambda: load_model(ModelSpec(local=str(tmp_path / "nope")), "cpu"))
    assert "nope" in msg and "save_pretrained" in msg
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    msg = refusal(lambda: load_model(ModelSpec(local=str(tmp_path / "bert")), "cpu"))
    assert "'bert'" in msg and "GPT2LMHeadModel" in msg and "Gemma2ForCausalLM" in msg
    spec = ModelSpec(local=str(gpt2_dir[0]), from_pretrained_kwargs={"n_devices": 2})
    msg = refusal(lambda: load_model(spec, "cpu"))
    assert "n_devices" in msg and "fold_ln" in msg


# --------------------------------------------------------------------------- local SAE


def test_local_sae_with_layer_pattern_and_model_kwargs(gpt2_dir, tmp_path):
    """The SAE is read first; its model_from_pretrained_kwargs decide how the model is processed."""
    path, _ = gpt2_dir
    for layer in (1, 2):
        save_sae(tmp_path / f"sae-{layer}", hook=f"blocks.{layer}.hook_resid_pre", model_kwargs={"fold_ln": False})
    tokens = np.random.default_rng(0).integers(0, VOCAB, size=(8, 40))
    np.save(tmp_path / "tokens.npy", tokens)
    backend = load_backend(
        ModelSpec(local=str(path)),
        SAESpec(local=str(tmp_path / "sae-{layer}")),
        CorpusSpec(file=str(tmp_path / "tokens.npy")),
        [1, 2],
        "cpu",
        n_ctx=10,
    )
    assert backend.model.model.cfg.normalization_type == "LN"  # fold_ln: False came from the SAE
    assert sorted(backend.saes) == [1, 2]
    for layer, s in backend.saes.items():
        assert s.hook_name == s.sae.cfg.metadata.hook_name == f"blocks.{layer}.hook_resid_pre"
        assert s.d_sae == 128 and s.path == tmp_path / f"sae-{layer}" and s.layer == layer
    np.testing.assert_array_equal(backend.corpus.docs, tokens)


def test_sae_for_another_hook_or_width_is_refused(gpt2_dir, tmp_path):
    model = load_model(ModelSpec(local=str(gpt2_dir[0])), "cpu")
    other_hook = save_sae(tmp_path / "mlp", hook="blocks.1.hook_mlp_out")
    msg = refusal(lambda: load_sae(SAESpec(local=other_hook), 1, model, "cpu"))
    assert "blocks.1.hook_mlp_out" in msg and "blocks.1.hook_resid_pre" in msg
    wrong_layer = save_sae(tmp_path / "l2", hook="blocks.2.hook_resid_pre")
    msg = refusal(lambda: load_sae(SAESpec(local=wrong_layer), 1, model, "cpu"))
    assert "blocks.2.hook_resid_pre" in msg and "blocks.1.hook_resid_pre" in msg
    narrow = save_sae(tmp_path / "narrow", d_in=32)
    msg = refusal(lambda: load_sae(SAESpec(local=narrow), 1, model, "cpu"))
    assert "d_in=32" in msg and f"d_model={D_MODEL}" in msg


def test_missing_sae_and_bad_layer(gpt2_dir, tmp_path):
    model = load_model(ModelSpec(local=str(gpt2_dir[0])), "cpu")
    msg = refusal(lambda: load_sae(SAESpec(local=str(tmp_path / "sae-{layer}")), 1, model, "cpu"))
    assert "sae-1" in msg and "save_model" in msg
    good = save_sae(tmp_path / "good")
    msg = refusal(lambda: load_sae(SAESpec(local=good), 3, model, "cpu"))
    assert "layer 3" in msg and "valid: 0..2" in msg


# --------------------------------------------------------------------------- hub


@pytest.mark.timeout(600)  # catches a hang (library retries) only; what it checks is that nothing was fetched
def test_pretrained_without_hub_fails_fast_offline():
    with network_attempts() as attempts:
        msg = refusal(lambda: load_model(ModelSpec(pretrained="gpt2"), "cpu"))
        assert "model 'gpt2'" in msg and "model: {local: DIR}" in msg
        msg = refusal(lambda: load_backend(ModelSpec(pretrained="gpt2"), SAESpec(release="gpt2-small-res-jb"),
                                           CorpusSpec(file="x.npy"), [1], "cpu"))
        assert "gpt2-small-res-jb" in msg and "blocks.1.hook_resid_pre" in msg and "sae: {local: DIR}" in msg
    assert attempts == []  # offline: not one connection attempted


@pytest.mark.timeout(600)
def test_unreachable_hub_fails_fast_online(monkeypatch):
    """Not in offline mode, with a hub that refuses connections: one probe, no retries, a readable error."""
    import huggingface_hub.constants

    from synthact.inputs import hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    hub._hub_reachable.cache_clear()
    with network_attempts() as attempts:
        msg = refusal(lambda: load_model(ModelSpec(pretrained="gpt2"), "cpu"))
        assert "cannot be reached" in msg and "model: {local: DIR}" in msg and "HF_HUB_OFFLINE" in msg
        msg = refusal(lambda: load_corpus_hf())
        assert "corpus: {file: PATH}" in msg
    assert attempts and set(attempts) == {("127.0.0.1", 9)} and len(attempts) <= 2, attempts  # probes, no retries


def load_corpus_hf():
    from synthact.inputs.corpus import load_corpus

    return load_corpus(CorpusSpec(hf="some/dataset"), d_vocab=10, n_ctx=2)


# --------------------------------------------------------------------------- toy


def test_toy_backend():
    """The smoke job's toy model + SAE (shared test cache)."""
    backend = load_backend(
        ModelSpec(toy=ToyModelSpec()), SAESpec(toy=ToySAESpec()), CorpusSpec(toy=ToyCorpusSpec()), [1], "auto", n_ctx=10
    )
    m, s = backend.model, backend.saes[1]
    assert "toy" in m.label and "toy" in s.label and (m.n_layers, m.d_model, m.d_vocab) == (4, 64, 512)
    assert s.hook_name == "blocks.1.hook_resid_pre" and s.d_sae == 512
    assert 5 <= s.info["l0_mean"] <= 50 and s.info["explained_variance"] > 0.5
    assert backend.corpus.docs.shape == (2048, 64)
    tokens = torch.from_numpy(backend.corpus.docs[:2, :10])
    _, cache = m.model.run_with_cache(tokens, names_filter=s.hook_name)
    l0 = (s.sae.encode(cache[s.hook_name]) > 0).sum(-1).float().mean()
    assert 1 <= l0 <= 80


def test_toy_model_honours_processing_kwargs():
    spec = ToyModelSpec(n_layers=3, d_model=32, n_heads=2, d_mlp=64, d_vocab=64, n_ctx=16, train_steps=0)
    raw = load_model(ModelSpec(toy=spec), "cpu")
    folded = load_model(ModelSpec(toy=spec, from_pretrained_kwargs={"fold_ln": True, "center_unembed": True}), "cpu")
    assert raw.model.cfg.normalization_type == "LN" and folded.model.cfg.normalization_type == "LNPre"
    tokens = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = raw.model(tokens), folded.model(tokens)
    torch.testing.assert_close(a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True), atol=1e-4, rtol=0)


def test_toy_sae_needs_toy_model(gpt2_dir):
    model = load_model(ModelSpec(local=str(gpt2_dir[0])), "cpu")
    msg = refusal(lambda: load_sae(SAESpec(toy=ToySAESpec()), 1, model, "cpu"))
    assert "toy model" in msg


def test_resolve_device():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        msg = refusal(lambda: resolve_device("cuda:1"))
        assert "CUDA is not available" in msg


@pytest.mark.gpu
def test_toy_backend_on_cuda():
    backend = load_backend(
        ModelSpec(toy=ToyModelSpec()), SAESpec(toy=ToySAESpec()), CorpusSpec(toy=ToyCorpusSpec()), [1, 2], "cuda", n_ctx=10
    )
    tokens = torch.from_numpy(backend.corpus.docs[:4, :10]).cuda()
    _, cache = backend.model.model.run_with_cache(tokens)
    for layer, s in backend.saes.items():
        assert s.sae.W_dec.device.type == "cuda"
        z = s.sae.encode(cache[s.hook_name])
        assert z.device.type == "cuda" and 1 <= (z > 0).sum(-1).float().mean() <= 80


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_local_checkpoint_with_a_non_finite_weight_is_refused_before_any_shard(gpt2_dir, tmp_path, bad):
    """One paragraph naming the tensor and its first row, exit 2, and no shard run (issue 23, item 5)."""
    import shutil

    import yaml
    from safetensors.torch import load_file, save_file

    from tests.helpers import synthact, toy_job

    model = tmp_path / "model"
    shutil.copytree(gpt2_dir[0], model)
    tensors = load_file(model / "model.safetensors")
    tensors["transformer.h.1.mlp.c_fc.weight"][7, 3] = bad
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        meta = SAEMetadata(hook_name="blocks.1.hook_resid_pre", model_name="gpt2")
        StandardSAE(StandardSAEConfig(d_in=D_MODEL, d_sae=64, metadata=meta)).save_model(tmp_path / "sae")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(toy_job(model={"local": str(model)}, sae={"local": str(tmp_path / "sae")}, layers=[1],
                                          corpus={"toy": {"n_docs": 64, "doc_len": 16}}, base_kinds=["real"],
                                          directions=["isotropic"], device="cpu", wandb=False)))
    done = synthact("run", str(job), "--out", str(tmp_path / "out"), "--no-progress")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "1 NaN or infinite values in blocks.1.mlp.W_in (first in row 7)" in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and "holds no results" not in done.stderr
    assert not (tmp_path / "out" / "results").exists()
