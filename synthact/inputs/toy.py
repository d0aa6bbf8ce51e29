"""Toy model, toy corpus and toy SAE: small, seeded, trained, cached on disk (no network).

The toy model is a GPT-2-architecture HookedTransformer trained briefly on a Markov-chain
corpus; each toy SAE is an sae_lens SAE of the spec's architecture (standard ReLU + L1 by default;
JumpReLU, TopK, BatchTopK or gated) trained with sae_lens's `SAETrainer` on that model's
`blocks.{layer}.hook_resid_pre`. Both are written atomically
in standard formats (config.json + model.safetensors; sae_lens `save_inference_model`)
under `cache_dir()`, keyed by a digest of what built them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from synthact.errors import first_line
from synthact.integrity import record_problem
from synthact.layout import build_dir_once, cache_dir
from synthact.spec import ToyCorpusSpec, ToyModelSpec, ToySAESpec, digest
from synthact.spec.fields import TOY_SAE_SPARSITY

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import sae_lens
    from sae_lens import SAE, SAETrainer
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.sae import SAEMetadata
    from transformer_lens import HookedTransformer, HookedTransformerConfig

MODEL_BATCH = 16  # documents per toy-model training step
MODEL_LR = 3e-3
SAE_BATCH = 1024  # activations per SAE training step
SAE_LR = 3e-3
SAE_HELD_OUT = 4096  # activations kept aside to measure L0 / explained variance
# sae_lens's training config and SAE class per toy architecture (spec.fields.ToySAESpec; defaults measured on the
# default toy, layer 1: L0 26 standard, 14 jumprelu, 16 topk, 15 batchtopk, 20 gated; explained variance >= 0.86).
TRAINING_CLASSES = {
    "standard": ("StandardTrainingSAEConfig", "StandardTrainingSAE"),
    "jumprelu": ("JumpReLUTrainingSAEConfig", "JumpReLUTrainingSAE"),
    "topk": ("TopKTrainingSAEConfig", "TopKTrainingSAE"),
    "batchtopk": ("BatchTopKTrainingSAEConfig", "BatchTopKTrainingSAE"),  # saved for inference as a JumpReLU SAE
    "gated": ("GatedTrainingSAEConfig", "GatedTrainingSAE"),
}
BUILD_VERSION = 1  # part of every cache key: bump it when training changes, so old caches are not reused


# --------------------------------------------------------------------------- corpus


def toy_corpus(spec: ToyCorpusSpec, d_vocab: int) -> np.ndarray:
    """int64 [n_docs, doc_len] from a seeded Markov chain with occasional copies.

    Unigram frequencies follow Zipf's law; each token has four preferred successors
    (taken 80% of the time); 10% of tokens copy one seen earlier in the document, so
    attention has something to learn too.
    """
    rng = np.random.default_rng(spec.seed)
    zipf = 1.0 / np.arange(1, d_vocab + 1) ** 1.1
    unigram = np.empty(d_vocab)
    unigram[rng.permutation(d_vocab)] = zipf / zipf.sum()
    successors = rng.choice(d_vocab, size=(d_vocab, 4), p=unigram)
    successor_p = np.array([0.5, 0.25, 0.15, 0.1])

    n, length = spec.n_docs, spec.doc_len
    docs = np.empty((n, length), dtype=np.int64)
    docs[:, 0] = rng.choice(d_vocab, size=n, p=unigram)
    rows = np.arange(n)
    for t in range(1, length):
        follow = successors[docs[:, t - 1], rng.choice(4, size=n, p=successor_p)]
        fresh = rng.choice(d_vocab, size=n, p=unigram)
        copied = docs[rows, rng.integers(0, t, size=n)]
        u = rng.random(n)
        docs[:, t] = np.where(u < 0.8, follow, np.where(u < 0.9, copied, fresh))
    return docs


# --------------------------------------------------------------------------- model


def model_config(spec: ToyModelSpec) -> dict:
    """HookedTransformerConfig fields of the toy model (what config.json holds)."""
    return {
        "n_layers": spec.n_layers,
        "d_model": spec.d_model,
        "n_heads": spec.n_heads,
        "d_head": spec.d_model // spec.n_heads,
        "d_mlp": spec.d_mlp,
        "d_vocab": spec.d_vocab,
        "n_ctx": spec.n_ctx,
        "act_fn": "gelu_new",
        "normalization_type": "LN",
        "positional_embedding_type": "standard",
        "seed": spec.seed,
        "model_name": "toy-gpt2",
    }


def toy_model(spec: ToyModelSpec, corpus_spec: ToyCorpusSpec | None) -> tuple[HookedTransformer, Path]:
    """The trained toy model (CPU) and its cache directory; built and saved on first use."""
    corpus_spec = corpus_spec or ToyCorpusSpec()
    key = digest({"toy_model": spec.model_dump(), "corpus": corpus_spec.model_dump(), "version": BUILD_VERSION})
    path = cache_dir() / "models" / f"toy-{key[:16]}"
    return _load_cached(path, lambda tmp: _train_and_save_model(spec, corpus_spec, tmp), load_toy_model, "toy model"), path


def load_toy_model(path: Path) -> HookedTransformer:
    """Rebuild a toy model from config.json + model.safetensors.

    The seed is left out: HookedTransformerConfig would reseed the global RNGs with it,
    and the weights come from the file anyway.
    """
    fields = json.loads((path / "config.json").read_text())
    fields.pop("seed", None)
    cfg = HookedTransformerConfig(**fields, init_weights=False, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(cfg)
    model.load_state_dict(load_file(path / "model.safetensors"))
    model.eval()
    return model


def _train_and_save_model(spec: ToyModelSpec, corpus_spec: ToyCorpusSpec, out: Path) -> None:
    config = model_config(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(HookedTransformerConfig(**config, device="cpu"))
    docs = torch.from_numpy(toy_corpus(corpus_spec, spec.d_vocab))
    seq = min(spec.n_ctx, corpus_spec.doc_len)
    gen = torch.Generator().manual_seed(spec.seed)
    opt = torch.optim.Adam(model.parameters(), lr=MODEL_LR)
    losses = []
    start = time.perf_counter()
    model.train()
    for _ in range(spec.train_steps):
        idx = torch.randint(0, docs.shape[0], (MODEL_BATCH,), generator=gen)
        off = int(torch.randint(0, corpus_spec.doc_len - seq + 1, (1,), generator=gen))
        loss = model(docs[idx, off : off + seq], return_type="loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "training.json").write_text(
        json.dumps(
            {
                "train_steps": spec.train_steps,
                "first_loss": losses[0] if losses else None,
                "final_loss": float(np.mean(losses[-20:])) if losses else None,
                "uniform_loss": float(np.log(spec.d_vocab)),
                "seconds": time.perf_counter() - start,
                "corpus": corpus_spec.model_dump(),
            },
            indent=2,
        )
    )


# --------------------------------------------------------------------------- SAE


def toy_sae(
    spec: ToySAESpec, model: HookedTransformer, model_dir: Path, layer: int, corpus: np.ndarray
) -> tuple[SAE, Path]:
    """An SAE of `spec.architecture` on `blocks.{layer}.hook_resid_pre`, trained with sae_lens's SAETrainer.

    Cached under the model's directory, keyed by (SAE spec, layer, corpus digest).
    `training.json` beside it records L0, explained variance and MSE on held-out activations.
    """
    corpus_key = hashlib.sha256(np.ascontiguousarray(corpus, dtype=np.int64).tobytes()).hexdigest()
    key = digest({"toy_sae": spec.model_dump(), "layer": layer, "corpus": corpus_key, "version": BUILD_VERSION})
    path = model_dir / "saes" / f"L{layer}-{key[:16]}"

    def load(path: Path) -> SAE:
        json.loads((path / "training.json").read_text())  # what load_sae reports: must be readable too
        return SAE.load_from_disk(path, device="cpu")

    return _load_cached(path, lambda tmp: _train_and_save_sae(spec, model, model_dir, layer, corpus, tmp), load,
                        "toy SAE"), path


def read_training_info(path: Path) -> dict:
    """training.json of a toy model or SAE directory ({} if absent)."""
    f = Path(path) / "training.json"
    return json.loads(f.read_text()) if f.exists() else {}


@torch.no_grad()
def resid_pre_activations(model: HookedTransformer, layer: int, corpus: np.ndarray, batch: int = 256) -> torch.Tensor:
    """Activations at `blocks.{layer}.hook_resid_pre` for every position but the first, [N, d_model]."""
    hook = f"blocks.{layer}.hook_resid_pre"
    seq = min(model.cfg.n_ctx, corpus.shape[1])
    tokens = torch.from_numpy(np.ascontiguousarray(corpus[:, :seq], dtype=np.int64))
    device = next(model.parameters()).device
    out = []
    for i in range(0, tokens.shape[0], batch):
        _, cache = model.run_with_cache(tokens[i : i + batch].to(device), names_filter=hook, stop_at_layer=layer + 1)
        out.append(cache[hook][:, 1:].reshape(-1, model.cfg.d_model).float().cpu())
    return torch.cat(out)


def _activation_batches(acts: torch.Tensor, batch: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless shuffled batches (the SAETrainer's data provider)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(acts.shape[0], generator=gen)
        for i in range(0, acts.shape[0] - batch + 1, batch):
            yield acts[perm[i : i + batch]]


def _train_and_save_sae(
    spec: ToySAESpec, model: HookedTransformer, model_dir: Path, layer: int, corpus: np.ndarray, out: Path
) -> None:
    hook = f"blocks.{layer}.hook_resid_pre"
    start = time.perf_counter()
    acts = resid_pre_activations(model, layer, corpus)
    gen = torch.Generator().manual_seed(spec.seed)
    acts = acts[torch.randperm(acts.shape[0], generator=gen)]
    n_held_out = min(SAE_HELD_OUT, acts.shape[0] // 5)
    held_out, train = acts[:n_held_out], acts[n_held_out:]
    batch = min(SAE_BATCH, train.shape[0])

    torch.manual_seed(spec.seed)
    config_class, sae_class = TRAINING_CLASSES[spec.architecture]
    sparsity = TOY_SAE_SPARSITY[spec.architecture]  # l1_coefficient, l0_coefficient or k
    cfg = getattr(sae_lens, config_class)(
        d_in=model.cfg.d_model,
        d_sae=spec.d_sae,
        **{sparsity: getattr(spec, sparsity)},
        normalize_activations="expected_average_only_in",
        metadata=SAEMetadata(
            model_name=f"toy:{model_dir.name}",
            hook_name=hook,
            hook_head_index=None,
            context_size=model.cfg.n_ctx,
            prepend_bos=False,
            model_from_pretrained_kwargs={},
        ),
    )
    sae = getattr(sae_lens, sae_class)(cfg)
    steps = max(spec.training_tokens // batch, 1)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=steps * batch,
        train_batch_size_samples=batch,
        lr=SAE_LR,
        lr_end=SAE_LR,
        lr_warm_up_steps=steps // 20,
        lr_decay_steps=steps // 5,
        device="cpu",
        dead_feature_window=max(steps // 4, 1),
        feature_sampling_window=max(steps // 2, 1),
        n_batches_for_norm_estimate=16,
    )
    with _quiet():
        SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=_activation_batches(train, batch, spec.seed)).fit()
    sae.save_inference_model(out)
    info = {
        "hook_name": hook,
        "layer": layer,
        "d_sae": spec.d_sae,
        "training_tokens": steps * batch,
        "seconds": time.perf_counter() - start,
        **sae_quality(SAE.load_from_disk(out, device="cpu"), held_out),
    }
    (out / "training.json").write_text(json.dumps(info, indent=2))


@torch.no_grad()
def sae_quality(sae: SAE, acts: torch.Tensor) -> dict:
    """L0 (mean, std, min, max), explained variance, MSE and alive latents on `acts`."""
    z = sae.encode(acts)
    recon = sae.decode(z)
    l0 = (z != 0).sum(-1).float()
    resid = ((acts - recon) ** 2).sum(-1)
    total = ((acts - acts.mean(0)) ** 2).sum(-1)
    return {
        "l0_mean": float(l0.mean()),
        "l0_std": float(l0.std()),
        "l0_min": int(l0.min()),
        "l0_max": int(l0.max()),
        "explained_variance": float(1 - resid.sum() / total.sum()),
        "mse": float(resid.mean() / acts.shape[1]),
        "alive_latents": int((z != 0).any(0).sum()),
        "n_eval": int(acts.shape[0]),
    }


# --------------------------------------------------------------------------- cache


def _load_cached(path: Path, build: Callable[[Path], None], load: Callable[[Path], Any], what: str) -> Any:
    """`load(path)`, building the cache directory first if absent; a damaged one (its files not the ones its
    record.json lists, or unloadable) is rebuilt in place, file by file (a toy model's SAEs below it are kept),
    and loaded again. A cache built before records existed has none: it is rebuilt too (training is seeded)."""
    _build_once(path, build)
    try:
        if problem := record_problem(path):
            raise ValueError(problem)
        return load(path)
    except Exception as e:  # safetensors, JSON, state-dict and sae_lens errors come in many types
        print(f"synthact: the cached {what} in '{path}' is damaged ({type(e).__name__}: {first_line(str(e))}); "
              "rebuilding it", file=sys.stderr)
    fresh = path.parent / f".rebuild-{uuid.uuid4().hex[:8]}-{path.name}"
    _build_once(fresh, build)
    for f in path.iterdir():  # files the build does not make are not the cache's
        if f.is_file() and not (fresh / f.name).exists():
            f.unlink()
    for f in fresh.iterdir():
        os.replace(f, path / f.name)
    fresh.rmdir()
    return load(path)


def _build_once(path: Path, build: Callable[[Path], None]) -> None:
    """Build a cache directory atomically, on one thread, leaving the global RNGs as they were."""

    def build_quietly(tmp: Path) -> None:
        with _one_thread(), _global_rng_preserved():
            build(tmp)

    build_dir_once(path, build_quietly)


@contextlib.contextmanager
def _one_thread():
    """Train on one thread: these matmuls are tiny, and on a shared machine two
    threads were measured 10x slower than one (OpenMP threads waiting for each other)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _global_rng_preserved():
    """Seeded builds touch the global RNGs (TransformerLens reseeds them); give callers theirs back."""
    py, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        yield
    random.setstate(py)
    np.random.set_state(np_state)


@contextlib.contextmanager
def _quiet():
    """Silence sae_lens's progress bars (stderr) and warnings during toy training."""
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def main() -> None:
    """Benchmark: build (or load) the smoke job's toy model and SAEs, print seconds and quality."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    model_spec, corpus_spec, sae_spec = ToyModelSpec(), ToyCorpusSpec(), ToySAESpec()
    print(f"cache: {cache_dir()}  torch threads: {torch.get_num_threads()}")
    start = time.perf_counter()
    model, model_dir = toy_model(model_spec, corpus_spec)
    info = read_training_info(model_dir)
    print(
        f"model {model_dir.name}: {time.perf_counter() - start:.1f} s here (training took {info['seconds']:.1f} s), "
        f"loss {info['first_loss']:.3f} -> {info['final_loss']:.3f} (uniform {info['uniform_loss']:.3f})"
    )
    corpus = toy_corpus(corpus_spec, model_spec.d_vocab)
    for layer in args.layers:
        start = time.perf_counter()
        _, path = toy_sae(sae_spec, model, model_dir, layer, corpus)
        q = read_training_info(path)
        print(
            f"SAE layer {layer}: {time.perf_counter() - start:.1f} s here (training took {q['seconds']:.1f} s), "
            f"L0 {q['l0_mean']:.1f} +- {q['l0_std']:.1f}, explained variance {q['explained_variance']:.3f}, "
            f"MSE {q['mse']:.4f}, alive {q['alive_latents']}/{sae_spec.d_sae}"
        )


if __name__ == "__main__":
    main()
