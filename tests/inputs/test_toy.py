"""Toy corpus, toy model and toy SAE: structure, formats, cache reuse, atomic builds."""

import json

import numpy as np
import pytest
import torch

from synthact.inputs import toy
from synthact.layout import cache_dir
from synthact.spec import ToyCorpusSpec, ToyModelSpec, ToySAESpec

SMALL_MODEL = ToyModelSpec(n_layers=3, d_model=32, n_heads=2, d_mlp=64, d_vocab=64, n_ctx=16, train_steps=40, seed=1)
SMALL_CORPUS = ToyCorpusSpec(n_docs=256, doc_len=16, seed=1)


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTHACT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_cache_dir_follows_env(fresh_cache):
    assert cache_dir() == fresh_cache


def test_toy_corpus_is_seeded_and_has_structure():
    a = toy.toy_corpus(ToyCorpusSpec(n_docs=512, doc_len=32, seed=3), 128)
    assert a.dtype == np.int64 and a.shape == (512, 32)
    assert a.min() >= 0 and a.max() < 128
    np.testing.assert_array_equal(a, toy.toy_corpus(ToyCorpusSpec(n_docs=512, doc_len=32, seed=3), 128))
    assert not np.array_equal(a, toy.toy_corpus(ToyCorpusSpec(n_docs=512, doc_len=32, seed=4), 128))
    # Markov structure: a token's most frequent successor is far likelier than chance.
    prev, nxt = a[:, :-1].ravel(), a[:, 1:].ravel()
    counts = np.zeros((128, 128))
    np.add.at(counts, (prev, nxt), 1)
    top_share = counts.max(1).sum() / counts.sum()
    assert top_share > 0.3


def test_toy_model_round_trip_and_cache_reuse(fresh_cache):
    model, path = toy.toy_model(SMALL_MODEL, SMALL_CORPUS)
    assert {"config.json", "model.safetensors", "training.json"} <= {p.name for p in path.iterdir()}
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["act_fn"] == "gelu_new" and cfg["normalization_type"] == "LN" and cfg["d_head"] == 16
    info = toy.read_training_info(path)
    assert info["final_loss"] < info["first_loss"]  # it learned something

    tokens = torch.from_numpy(toy.toy_corpus(SMALL_CORPUS, SMALL_MODEL.d_vocab)[:4])
    reloaded = toy.load_toy_model(path)
    with torch.no_grad():
        assert torch.equal(model(tokens), reloaded(tokens))

    mtime = (path / "model.safetensors").stat().st_mtime_ns
    again, path2 = toy.toy_model(SMALL_MODEL, SMALL_CORPUS)
    assert path2 == path and (path / "model.safetensors").stat().st_mtime_ns == mtime
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp dirs left behind
    with torch.no_grad():
        assert torch.equal(again(tokens), model(tokens))


def test_toy_model_key_depends_on_spec_and_corpus(fresh_cache):
    _, a = toy.toy_model(SMALL_MODEL.model_copy(update={"train_steps": 0}), SMALL_CORPUS)
    _, b = toy.toy_model(SMALL_MODEL.model_copy(update={"train_steps": 0, "seed": 2}), SMALL_CORPUS)
    _, c = toy.toy_model(SMALL_MODEL.model_copy(update={"train_steps": 0}), SMALL_CORPUS.model_copy(update={"seed": 9}))
    assert len({a, b, c}) == 3


def test_killed_build_leaves_no_cache(fresh_cache):
    target = fresh_cache / "thing"

    def crash(tmp):
        (tmp / "half.bin").write_bytes(b"x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        toy._build_once(target, crash)
    assert not target.exists() and list(fresh_cache.iterdir()) == []


def test_lost_race_keeps_the_winner(fresh_cache):
    target = fresh_cache / "thing"

    def build_while_another_wins(tmp):
        target.mkdir(parents=True)
        (target / "who").write_text("winner")
        (tmp / "who").write_text("loser")

    toy._build_once(target, build_while_another_wins)
    assert (target / "who").read_text() == "winner"
    assert [p.name for p in fresh_cache.iterdir()] == ["thing"]


def test_toy_sae_is_sparse_reconstructs_and_is_cached():
    """The smoke job's default toy model and SAE (shared test cache): L0 in [5, 50], EV > 0.5."""
    from sae_lens import SAE

    model, model_dir = toy.toy_model(ToyModelSpec(), ToyCorpusSpec())
    corpus = toy.toy_corpus(ToyCorpusSpec(), ToyModelSpec().d_vocab)
    sae, path = toy.toy_sae(ToySAESpec(), model, model_dir, 1, corpus)
    assert sae.cfg.metadata.hook_name == "blocks.1.hook_resid_pre"
    assert sae.cfg.d_in == 64 and sae.cfg.d_sae == 512

    info = toy.read_training_info(path)
    assert 5 <= info["l0_mean"] <= 50 and info["explained_variance"] > 0.5 and info["mse"] > 0
    assert info["l0_std"] > 0  # ReLU + L1: L0 varies between samples

    # Recompute from the saved SAE rather than trusting training.json.
    acts = toy.resid_pre_activations(model, 1, corpus[-64:])
    q = toy.sae_quality(SAE.load_from_disk(path), acts)
    assert 5 <= q["l0_mean"] <= 50 and q["explained_variance"] > 0.5

    mtime = (path / "sae_weights.safetensors").stat().st_mtime_ns
    _, path2 = toy.toy_sae(ToySAESpec(), model, model_dir, 1, corpus)
    assert path2 == path and (path / "sae_weights.safetensors").stat().st_mtime_ns == mtime


def test_building_and_loading_leave_global_rngs_alone(fresh_cache):
    spec = SMALL_MODEL.model_copy(update={"train_steps": 5, "seed": 11})
    for _ in range(2):  # build, then load from the cache
        torch.manual_seed(123)
        np.random.seed(123)
        expected = torch.rand(3), np.random.rand(3)
        torch.manual_seed(123)
        np.random.seed(123)
        toy.toy_model(spec, SMALL_CORPUS)
        assert torch.equal(torch.rand(3), expected[0])
        np.testing.assert_array_equal(np.random.rand(3), expected[1])


@pytest.mark.timeout(600)  # catches a hang only
def test_toy_sae_on_a_tiny_corpus(fresh_cache):
    """Fewer activations than one default batch: training still runs and saves a loadable SAE."""
    from sae_lens import SAE

    corpus_spec = ToyCorpusSpec(n_docs=16, doc_len=8, seed=2)
    spec = SMALL_MODEL.model_copy(update={"train_steps": 5})
    model, model_dir = toy.toy_model(spec, corpus_spec)
    corpus = toy.toy_corpus(corpus_spec, spec.d_vocab)
    sae, path = toy.toy_sae(ToySAESpec(d_sae=32, training_tokens=2000), model, model_dir, 2, corpus)
    assert SAE.load_from_disk(path).cfg.metadata.hook_name == "blocks.2.hook_resid_pre"
    info = toy.read_training_info(path)
    assert info["n_eval"] == 16 * 7 // 5 and np.isfinite(info["explained_variance"])
