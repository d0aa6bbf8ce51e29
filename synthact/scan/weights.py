"""Reading a TransformerLens model's weights into one canonical layout for the fast kernel.

HookedTransformer already converts every family it serves (GPT-2, GPT-NeoX, Llama/Mistral/Qwen2/Qwen3,
Gemma/Gemma-2) into one set of parameter names; this module reads them once per (model, dtype,
rotary position) and says which models the kernel cannot run (`fast_path_unsupported`).

The large matrices are views of the model's own parameters, in the model's own precision: no copy of the
weights is kept (a 9B-parameter model has no room for a second one). The kernel casts a matrix to the compute
dtype as it multiplies by it (a no-op when the precisions agree; `scan/fast.py`); only what is small is
prepared here: norm weights and biases in float32 or the compute dtype, and per block the rotary rotation of
the scan position, with the query scale and QK-norm weights folded in.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

_NORMS = {"LayerNorm": "ln", "LayerNormPre": "ln", "RMSNorm": "rms", "RMSNormPre": "rms", "Identity": None}


def fast_path_unsupported(model) -> str | None:
    """Why `scan_fast` cannot run this model, or None when it can."""
    from transformer_lens import HookedTransformer

    try:
        from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES
    except ImportError:  # older TransformerLens: no post-norm architectures
        POST_NORM_ARCHITECTURES = ()

    if not isinstance(model, HookedTransformer):
        return f"the model is a {type(model).__name__}, not a TransformerLens HookedTransformer"
    cfg = model.cfg

    def flag(name: str) -> bool:  # config fields that older TransformerLens versions lack
        value = getattr(cfg, name, None)
        return bool(value) and not (isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0)

    norms = [model.blocks[0].ln1, *(getattr(model.blocks[0], n, None) for n in ("ln2", "ln1_post", "ln2_post"))]
    norms.append(getattr(model, "ln_final", None))
    odd_norms = sorted({type(m).__name__ for m in norms if m is not None and type(m).__name__ not in _NORMS})
    layer_norm_activation = getattr(cfg, "is_layer_norm_activation", lambda: False)
    checks = [
        (
            cfg.positional_embedding_type not in ("standard", "rotary"),
            f"{cfg.positional_embedding_type} positional embeddings",
        ),
        (getattr(cfg, "original_architecture", None) in POST_NORM_ARCHITECTURES, "post-norm blocks"),
        (bool(odd_norms), f"normalization layers {', '.join(odd_norms)}"),
        (flag("attn_only"), "attention-only blocks"),
        (flag("num_experts"), "mixture-of-experts MLPs"),
        (cfg.act_fn is not None and layer_norm_activation(), f"activation {cfg.act_fn} with its own LayerNorm"),
        (getattr(cfg, "attention_dir", "causal") != "causal", "non-causal attention"),
        (
            (getattr(model.blocks[0].attn, "q_norm", None) is not None and not flag("use_qk_norm"))
            or flag("clip_qkv"),
            "QK norm over the whole query (OLMo) or QKV clipping",
        ),
        (flag("use_logn_attn") or flag("use_dynamic_ntk_rope"), "log-n attention scaling or dynamic NTK rotary"),
        (flag("use_attention_sinks"), "attention sinks"),
        (flag("load_in_4bit"), "4-bit weights"),
        (getattr(cfg, "n_devices", 1) != 1, "a model split over several devices"),
        (
            getattr(model, "tokenizer", None) is not None and model.tokenizer.padding_side == "left",
            "a left-padding tokenizer (TransformerLens masks pad tokens)",
        ),
    ]
    reasons = [why for bad, why in checks if bad]
    return "; ".join(reasons) if reasons else None


@dataclass
class Norm:
    """A LayerNorm ('ln') or RMSNorm ('rms'), its weight and bias (None when folded or absent)."""

    kind: str | None
    w: torch.Tensor | None
    b: torch.Tensor | None


@dataclass
class Block:
    """One block's weights for single-position matmuls. Matrices are views of the model's parameters (any
    dtype); biases are in the compute dtype.

    Queries and keys leave their projection unrotated: `q_post` / `k_post` [d_head, d_head] then apply, per head,
    the query scale 1/attn_scale, the QK-norm weight (after an unweighted RMS norm when `qk_norm`) and the rotary
    rotation of the scan position (identity without rotary).
    """

    ln1: Norm
    w_q: torch.Tensor  # [n_heads, d_model, d_head]
    w_k: torch.Tensor  # [n_kv_heads, d_model, d_head]
    w_v: torch.Tensor
    b_q: torch.Tensor  # [n_heads * d_head]
    b_k: torch.Tensor  # [n_kv_heads * d_head]
    b_v: torch.Tensor
    q_post: torch.Tensor  # [d_head, d_head] float32
    k_post: torch.Tensor
    qk_norm: bool  # Qwen3: RMS-normalise each query and key head before q_post / k_post
    w_o: torch.Tensor  # [n_heads, d_head, d_model]
    b_o: torch.Tensor
    ln2: Norm
    w_in: torch.Tensor  # [d_model, d_mlp]
    b_in: torch.Tensor
    w_gate: torch.Tensor | None  # gated MLPs: act(x W_gate) * (x W_in) + b_in
    w_out: torch.Tensor
    b_out: torch.Tensor
    ln1_post: Norm | None  # Gemma-2: norms on the sublayer outputs
    ln2_post: Norm | None
    window: int | None  # local attention: the query sees itself and window - 1 earlier positions


@dataclass
class Weights:
    cdt: torch.dtype  # the compute dtype the matmuls run in
    blocks: list[Block]
    ln_final: Norm
    w_u: torch.Tensor
    b_u: torch.Tensor
    act: Callable[[torch.Tensor], torch.Tensor]
    eps: float
    parallel: bool
    score_cap: float | None
    logit_cap: float | None


_WEIGHT_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def compute_dtype(dtype: str) -> torch.dtype:
    return torch.bfloat16 if dtype == "bfloat16" else torch.float32


def _activation(model) -> Callable[[torch.Tensor], torch.Tensor]:
    """The MLP activation; the fused tanh GELU for GPT-2's gelu_new (same function, one kernel)."""
    fused = {
        "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
        "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
        "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
        "gelu": F.gelu,
        "relu": F.relu,
        "silu": F.silu,
    }
    return fused.get(model.cfg.act_fn, model.blocks[0].mlp.act_fn)


def _cap(value) -> float | None:
    return float(value) if value is not None and value > 0 else None


def _norm(module) -> Norm:
    w, b = getattr(module, "w", None), getattr(module, "b", None)
    return Norm(
        kind=_NORMS[type(module).__name__],
        w=None if w is None else w.detach().float(),
        b=None if b is None else b.detach().float(),
    )


def kv_weights(attn):
    """Key and value weights and biases as the attention computes them: n_kv_heads heads under GQA."""
    grouped = hasattr(attn, "_W_K") and not attn.cfg.ungroup_grouped_query_attention
    if grouped:
        return attn._W_K, attn._b_K, attn._W_V, attn._b_V
    return attn.W_K, attn.b_K, attn.W_V, attn.b_V


def _rotation(attn, position: int) -> torch.Tensor:
    """[d_head, d_head] R with rotary(x at `position`) = x @ R, from TransformerLens's own apply_rotary."""
    d_head = attn.cfg.d_head
    eye = torch.eye(d_head, device=attn.rotary_sin.device, dtype=attn.rotary_sin.dtype)
    return attn.apply_rotary(eye.view(d_head, 1, 1, d_head), position).view(d_head, d_head).float()


def read_weights(model, dtype: str, position: int) -> Weights:
    """The model's weights for the fast path (views, see the module docstring), cached per model, dtype, position
    and weight version. `position` (the scan position, n_ctx - 1) matters only for rotary models."""
    rotary = model.cfg.positional_embedding_type == "rotary"
    key = (dtype, position if rotary else None)
    signature = (key, tuple((p.data_ptr(), p._version) for p in model.parameters()))
    cached = _WEIGHT_CACHE.get(model)
    if cached is not None and cached[0] == signature:
        return cached[1]
    cdt = compute_dtype(dtype)
    cfg = model.cfg

    def small(t):
        return t.detach().to(cdt).reshape(-1).contiguous()

    blocks = []
    for block in model.blocks:
        a, m = block.attn, block.mlp
        rotation = _rotation(a, position) if rotary else torch.eye(cfg.d_head, device=a.W_Q.device)
        w_k, b_k, w_v, b_v = kv_weights(a)
        q_norm, k_norm = getattr(a, "q_norm", None), getattr(a, "k_norm", None)
        qk_norm = q_norm is not None
        q_w = q_norm.w.detach().float() if qk_norm else torch.ones(cfg.d_head, device=rotation.device)
        k_w = k_norm.w.detach().float() if qk_norm else torch.ones(cfg.d_head, device=rotation.device)
        local = getattr(a, "attn_type", "global") == "local"
        blocks.append(
            Block(
                ln1=_norm(block.ln1),
                w_q=a.W_Q.detach(), w_k=w_k.detach(), w_v=w_v.detach(),
                b_q=small(a.b_Q), b_k=small(b_k), b_v=small(b_v),
                q_post=(q_w / float(a.attn_scale))[:, None] * rotation,
                k_post=k_w[:, None] * rotation,
                qk_norm=qk_norm,
                w_o=a.W_O.detach(),
                b_o=small(a.b_O),
                ln2=_norm(block.ln2),
                w_in=m.W_in.detach(),
                b_in=small(m.b_in),
                w_gate=m.W_gate.detach() if cfg.gated_mlp else None,
                w_out=m.W_out.detach(),
                b_out=small(m.b_out),
                ln1_post=_norm(block.ln1_post) if cfg.use_normalization_before_and_after else None,
                ln2_post=_norm(block.ln2_post) if cfg.use_normalization_before_and_after else None,
                window=int(cfg.window_size) if local else None,
            )
        )
    ln_final = getattr(model, "ln_final", None)
    weights = Weights(
        cdt=cdt,
        blocks=blocks,
        ln_final=_norm(ln_final) if ln_final is not None else Norm(None, None, None),
        w_u=model.unembed.W_U.detach(),
        b_u=small(model.unembed.b_U),
        act=_activation(model),
        eps=float(cfg.eps),
        parallel=bool(cfg.parallel_attn_mlp),
        score_cap=_cap(getattr(cfg, "attn_scores_soft_cap", None)),
        logit_cap=_cap(getattr(cfg, "output_logits_soft_cap", None)),
    )
    _WEIGHT_CACHE[model] = (signature, weights)
    return weights
