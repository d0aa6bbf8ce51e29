"""What the benchmarks run on, built locally without a hub: random-weight models of realistic shapes
(GPT-2 architecture, or a checkpoint of each family written with `transformers`), scan inputs, a random
sparse SAE and a generation context over random tokens."""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch

from synthact.bench.timing import sync
from synthact.errors import SynthactError

MODEL_SHAPES = {
    "toy": dict(n_layers=4, d_model=64, n_heads=4, d_head=16, d_mlp=256, d_vocab=512),
    "gpt2-small-shape": dict(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50257),
}
# Realistic shapes per family (random weights): HF config kwargs for `transformers`.
# Vocabularies above 50k are cut to 32000 (they only matter with --js).
_BLOCKS_768 = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=2048)
FAMILIES = {
    "gpt2": ("GPT2Config", "GPT-2 small", dict(n_embd=768, n_layer=12, n_head=12, vocab_size=50257)),
    "neox": ("GPTNeoXConfig", "Pythia-160m", dict(**_BLOCKS_768, intermediate_size=3072, vocab_size=50304,
                                                  rotary_pct=0.25)),
    "llama": ("LlamaConfig", "12 x 768 Llama, GQA 12/4, gated MLP 2048", dict(
        **_BLOCKS_768, num_key_value_heads=4, intermediate_size=2048, vocab_size=32000)),
    "gemma2": ("Gemma2Config", "12 x 768 Gemma-2, GQA 12/4, gated 3072, post-norms, soft caps", dict(
        **_BLOCKS_768, num_key_value_heads=4, head_dim=64, query_pre_attn_scalar=64, intermediate_size=3072,
        vocab_size=32000)),
    "mistral": ("MistralConfig", "12 x 768 Mistral, GQA 12/4, gated MLP 2048, sliding window", dict(
        **_BLOCKS_768, num_key_value_heads=4, intermediate_size=2048, vocab_size=32000, sliding_window=4096)),
    "qwen2": ("Qwen2Config", "12 x 768 Qwen2, GQA 12/2, QKV biases, gated MLP 2048", dict(
        **_BLOCKS_768, num_key_value_heads=2, intermediate_size=2048, vocab_size=32000)),
    "qwen3": ("Qwen3Config", "12 x 768 Qwen3, GQA 12/4, QK norm, gated MLP 2048", dict(
        **_BLOCKS_768, num_key_value_heads=4, head_dim=64, intermediate_size=2048, vocab_size=32000)),
}
SCAN_SPAN = 5.0  # the scan runs from A to A + SCAN_SPAN * ||A|| * D
GEN_D_SAE = 24576  # gpt2-small-res-jb's width
GEN_TARGET_L0 = 32  # the random SAE's encoder bias is set for about this many active latents


def n_layers(name: str) -> int:
    """Blocks of a named model shape or family."""
    if name in MODEL_SHAPES:
        return MODEL_SHAPES[name]["n_layers"]
    shape = FAMILIES[name][2]
    return shape.get("n_layer") or shape["num_hidden_layers"]


def family_model(family: str, device: torch.device):
    """A random-weight checkpoint of the family written with transformers, loaded through model.local."""
    import tempfile

    import transformers

    from synthact.inputs.backends import load_model
    from synthact.spec import ModelSpec

    config_class, _, shape = FAMILIES[family]
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix=f"synthact-bench-{family}-") as path:
        hf = transformers.AutoModelForCausalLM.from_config(getattr(transformers, config_class)(**shape))
        hf.save_pretrained(path)
        del hf
        return load_model(ModelSpec(local=path), str(device)).model


def build_model(name: str, n_ctx: int, device: torch.device):
    """Random-weight model of the named shape or family, processed like from_pretrained (LayerNorm folded)."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    if name in FAMILIES:
        return family_model(name, device)
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        **MODEL_SHAPES[name], n_ctx=max(n_ctx, 64), act_fn="gelu_new", normalization_type="LN",
        seed=0, device=str(device),
    )
    model = HookedTransformer(cfg)
    model.load_and_process_state_dict(
        model.state_dict(), fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True
    )
    return model.eval()


def scan_inputs(model, layer: int, n_bases: int, n_ctx: int, steps: int, seed: int = 0):
    """Random prompts, their real activations at resid_pre L as bases, random unit directions, coefficients."""
    device = model.W_E.device
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, model.cfg.d_vocab, (n_bases, n_ctx), generator=gen).to(device)
    bases = []
    with torch.inference_mode():
        for chunk in tokens.split(1024):
            resid = model(chunk, stop_at_layer=layer)  # residual entering block L
            bases.append(resid[:, -1].float())
    base = torch.cat(bases)
    direction = torch.randn(n_bases, model.cfg.d_model, generator=gen).to(device)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    step = SCAN_SPAN * base.norm(dim=-1, keepdim=True) / steps
    coeffs = torch.arange(steps + 1, device=device).float() * step
    return tokens, base, direction, coeffs


def random_sae(model, layer: int, d_sae: int, device: torch.device):
    """An sae_lens StandardSAE of the given width with random weights and realistic sparsity (L0 ~ 32)."""
    from sae_lens import StandardSAE, StandardSAEConfig

    if d_sae < 4 * GEN_TARGET_L0:
        raise SynthactError(f"--d-sae {d_sae} is too small for a sparse random SAE; use at least {4 * GEN_TARGET_L0}")
    d = model.cfg.d_model
    gen = torch.Generator().manual_seed(layer)
    tokens = torch.randint(0, model.cfg.d_vocab, (64, 10), generator=gen).to(device)
    with torch.inference_mode():
        typical_norm = model(tokens, stop_at_layer=layer)[:, -1].norm(dim=-1).mean().item()
    # Built on the meta device and given its weights once (as sae_lens's own load_from_disk does): sae_lens's
    # initialisation would hold W_dec, a transposed clone of it and that clone made contiguous at once (three
    # copies of one weight: 9.6 GB at d_sae 1,048,576).
    sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=d_sae, device="meta"))
    threshold = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1 - GEN_TARGET_L0 / d_sae)))
    w_enc = torch.empty(d, d_sae, device=device)
    w_dec = torch.empty(d_sae, d, device=device)
    with torch.no_grad():  # in place, a block of latents at a time: no second copy of the weights
        if device.type == "cpu":
            torch.randn(d, d_sae, generator=gen, out=w_enc)
        else:
            w_enc.copy_(torch.randn(d, d_sae, generator=gen))
        w_enc /= typical_norm  # pre-activations ~ N(0, 1)
        for a in range(0, d_sae, 1 << 16):  # F.normalize's arithmetic, written into W_dec (no block temporaries)
            rows = w_enc[:, a: a + (1 << 16)].T
            w_dec[a: a + (1 << 16)].copy_(rows).div_(rows.norm(dim=-1, keepdim=True).clamp_min(1e-12))
    weights = dict(W_enc=w_enc, W_dec=w_dec, b_enc=torch.full((d_sae,), -threshold, device=device),
                   b_dec=torch.zeros(d, device=device))
    sae.load_state_dict(weights, assign=True)
    return sae.to(device=device)  # the SAE's own record of its device; the weights are there already


def generation_context(model_name, layer, n_ctx, device, d_sae: int, n_prompts: int | None = None):
    """Model and generation context (random SAE, random-token corpus, reference statistics of `n_prompts`, default
    the spec's), statistics seconds."""
    from synthact.generation.context import GenContext
    from synthact.generation.stats import compute_stats
    from synthact.inputs.corpus import Corpus
    from synthact.spec import ReferenceSpec

    model = build_model(model_name, n_ctx, device)
    sae = random_sae(model, layer, d_sae, device)
    rng = np.random.default_rng(0)
    corpus = Corpus(docs=rng.integers(0, model.cfg.d_vocab, (512, 256), dtype=np.int64), label="bench-random")
    sync(device)
    t1 = time.perf_counter()
    spec = ReferenceSpec() if n_prompts is None else ReferenceSpec(n_prompts=n_prompts)
    stats = compute_stats(model, sae, corpus, layer, n_ctx, spec, seed=0, device=str(device))
    sync(device)
    t2 = time.perf_counter()
    ctx = GenContext(model=model, sae=sae, stats=stats, corpus=corpus, layer=layer, n_ctx=n_ctx, device=str(device))
    return model, ctx, t2 - t1
