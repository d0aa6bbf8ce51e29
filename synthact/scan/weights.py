"""Reading a TransformerLens model's weights into one canonical layout for the fast kernel.

HookedTransformer already converts every family it serves (GPT-2, GPT-NeoX, Llama/Mistral/Qwen2,
Gemma/Gemma-2) into one set of parameter names; this module reads them once per (model, dtype,
rotary position), folds what the kernel needs (GQA key/value heads, rotary tables, soft caps, norms),
and says which models the kernel cannot run (`fast_path_unsupported`).
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
            flag("use_qk_norm") or getattr(model.blocks[0].attn, "q_norm", None) is not None or flag("clip_qkv"),
            "QK norm or QKV clipping",
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
    """One block's weights, flattened for single-position matmuls, in the compute dtype.

    Queries are pre-scaled by 1/attn_scale; on rotary models the query and key weights are
    pre-rotated for the scan position, so q and the position's own k come out of one matmul.
    """

    ln1: Norm
    w_qkv: torch.Tensor  # [d_model, (n_heads + 2 * n_kv_heads) * d_head]
    b_qkv: torch.Tensor
    w_o: torch.Tensor  # [n_heads * d_head, d_model]
    b_o: torch.Tensor
    ln2: Norm
    w_in: torch.Tensor  # [d_model, d_mlp], or [d_model, 2 * d_mlp] (gate, in) for gated MLPs
    b_in: torch.Tensor  # bias of that matmul (zeros for gated MLPs)
    b_gated: torch.Tensor | None  # gated MLPs: act(x W_gate) * (x W_in) + b_gated
    w_out: torch.Tensor
    b_out: torch.Tensor
    ln1_post: Norm | None  # Gemma-2: norms on the sublayer outputs
    ln2_post: Norm | None
    n_kv_heads: int
    window: int | None  # local attention: the query sees itself and window - 1 earlier positions


@dataclass
class Weights:
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
    """Cast copies of the model's weights for the fast path, cached per model, dtype, position and weight version.

    `position` (the scan position, n_ctx - 1) matters only for rotary models.
    """
    rotary = model.cfg.positional_embedding_type == "rotary"
    key = (dtype, position if rotary else None)
    signature = (key, tuple((p.data_ptr(), p._version) for p in model.parameters()))
    cached = _WEIGHT_CACHE.get(model)
    if cached is not None and cached[0] == signature:
        return cached[1]
    cdt = compute_dtype(dtype)
    cfg = model.cfg
    d = cfg.d_model

    def cast(t):
        return t.detach().to(cdt).contiguous()

    def heads_to_columns(w, b, rotation=None):  # [h, d_model, d_head] -> [d_model, h * d_head]
        w, b = w.detach().float(), b.detach().float()
        if rotation is not None:
            w, b = w @ rotation, b @ rotation
        return w.permute(1, 0, 2).reshape(d, -1), b.reshape(-1)

    blocks = []
    for block in model.blocks:
        a, m = block.attn, block.mlp
        rotation = _rotation(a, position) if rotary else None
        inv_scale = 1.0 / float(a.attn_scale)  # folded into the queries
        w_k, b_k, w_v, b_v = kv_weights(a)
        q = heads_to_columns(a.W_Q * inv_scale, a.b_Q * inv_scale, rotation)
        k = heads_to_columns(w_k, b_k, rotation)
        v = heads_to_columns(w_v, b_v)
        if cfg.gated_mlp:
            w_in, b_in, b_gated = torch.cat([m.W_gate, m.W_in], dim=1), torch.zeros(2 * m.b_in.shape[0]), m.b_in
        else:
            w_in, b_in, b_gated = m.W_in, m.b_in, None
        local = getattr(a, "attn_type", "global") == "local"
        blocks.append(
            Block(
                ln1=_norm(block.ln1),
                w_qkv=cast(torch.cat([q[0], k[0], v[0]], dim=1)),
                b_qkv=cast(torch.cat([q[1], k[1], v[1]])),
                w_o=cast(a.W_O.reshape(-1, d)),
                b_o=cast(a.b_O),
                ln2=_norm(block.ln2),
                w_in=cast(w_in),
                b_in=cast(b_in.to(m.b_in.device)),
                b_gated=None if b_gated is None else cast(b_gated),
                w_out=cast(m.W_out),
                b_out=cast(m.b_out),
                ln1_post=_norm(block.ln1_post) if cfg.use_normalization_before_and_after else None,
                ln2_post=_norm(block.ln2_post) if cfg.use_normalization_before_and_after else None,
                n_kv_heads=w_k.shape[0],
                window=int(cfg.window_size) if local else None,
            )
        )
    ln_final = getattr(model, "ln_final", None)
    weights = Weights(
        blocks=blocks,
        ln_final=_norm(ln_final) if ln_final is not None else Norm(None, None, None),
        w_u=cast(model.unembed.W_U),
        b_u=cast(model.unembed.b_U),
        act=_activation(model),
        eps=float(cfg.eps),
        parallel=bool(cfg.parallel_attn_mlp),
        score_cap=_cap(getattr(cfg, "attn_scores_soft_cap", None)),
        logit_cap=_cap(getattr(cfg, "output_logits_soft_cap", None)),
    )
    _WEIGHT_CACHE[model] = (signature, weights)
    return weights


