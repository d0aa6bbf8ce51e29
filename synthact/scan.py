"""The scan: push A_n = A + c_n D through the model from the SAE's hook and measure how the read layers move.

Two paths, one result. `scan_plain` is the reference: a full forward of the prompt with a hook
that replaces the last position of the SAE's hook point (`blocks.{L}.hook_resid_pre` or
`.hook_resid_post`, see `synthact.hooks`). `scan_fast` uses that attention is causal and only the
last position changes: the prefix keys/values at every later block are those of the unperturbed
prompt, so they are computed once per prompt and every scan point is a single position pushed
through the blocks up to R, all points of many bases in one large batch. The fast path implements
every block TransformerLens builds for GPT-2, GPT-NeoX, Llama/Mistral/Qwen2 and Gemma/Gemma-2
(`fast_path_unsupported` names what it does not).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
import weakref
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from synthact.errors import SynthactError
from synthact.hooks import blocks_before, resid_post, resid_pre

log = logging.getLogger(__name__)

DTYPES = ("float32", "tf32", "bfloat16")
CPU_MAX_POINTS = 4096  # largest batch of scan points on CPU
CPU_MEMORY_BUDGET = 512 * 2**20  # bytes a CPU chunk may use
CUDA_MAX_POINTS = 131072  # measured on an H200: 3% faster than 65536
CUDA_MEMORY_FRACTION = 0.5  # of the free device memory a chunk may use


@dataclass
class ScanResult:
    """Curves of one scan: `l2[r]` per read layer and optionally `js`, each `[B, N+1]` float32 on CPU."""

    l2: dict[int, torch.Tensor]
    js: torch.Tensor | None


# ----------------------------------------------------------------------------- shared pieces


def _check_inputs(model, layer, read_layers, tokens, base, direction, coeffs, dtype="float32", hook=None) -> str:
    """The perturbed hook (default resid_pre `layer`); SynthactError when the scan inputs do not fit together."""
    n_layers = model.cfg.n_layers
    hook = hook or resid_pre(layer)
    problems = []
    if not 0 <= layer < n_layers:
        problems.append(f"layer {layer} is outside the model's blocks 0..{n_layers - 1}")
    if hook not in (resid_pre(layer), resid_post(layer)):
        problems.append(f"hook '{hook}' is not {resid_pre(layer)} or {resid_post(layer)}")
    if not read_layers:
        problems.append("read_layers is empty")
    bad = [r for r in read_layers if not layer <= r < n_layers]
    if bad:
        problems.append(f"read layers {bad} are not resolved block indices in {layer}..{n_layers - 1}")
    if tokens.ndim != 2 or tokens.shape[1] < 1:
        problems.append(f"tokens must be [B, n_ctx] with n_ctx >= 1, got shape {tuple(tokens.shape)}")
    B, d = tokens.shape[0], model.cfg.d_model
    for name, t in (("base", base), ("direction", direction)):
        if tuple(t.shape) != (B, d):
            problems.append(f"{name} must be [B, d_model] = [{B}, {d}], got {tuple(t.shape)}")
    if coeffs.ndim != 2 or coeffs.shape[0] != B or coeffs.shape[1] < 1:
        problems.append(f"coeffs must be [B, N+1] with B = {B}, got {tuple(coeffs.shape)}")
    if dtype not in DTYPES:
        problems.append(f"dtype '{dtype}' is not one of {DTYPES}")
    if problems:
        raise SynthactError(
            "scan inputs do not fit together: " + "; ".join(problems) + ". Pass tokens [B, n_ctx], base and "
            "direction [B, d_model], coeffs [B, N+1] and read layers resolved to block indices >= layer."
        )
    return hook


def _device(model) -> torch.device:
    return model.W_E.device


@contextlib.contextmanager
def matmul_precision(dtype: str):
    """Full fp32 matmuls on CUDA unless dtype is 'tf32' (CPU matmuls are always full fp32)."""
    matmul = torch.backends.cuda.matmul
    use_tf32 = dtype == "tf32"
    if hasattr(matmul, "fp32_precision"):
        previous = matmul.fp32_precision
        matmul.fp32_precision = "tf32" if use_tf32 else "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision = previous
    else:
        previous = matmul.allow_tf32
        matmul.allow_tf32 = use_tf32
        try:
            yield
        finally:
            matmul.allow_tf32 = previous


def js_distance(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """sqrt of the base-2 Jensen-Shannon divergence between softmax(logits) and softmax(ref_logits), float32.

    Written with d = log q - log p so that identical inputs give exactly 0.
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    logq = F.log_softmax(ref_logits.float(), dim=-1)
    d = logq - logp
    ln2 = torch.log(torch.tensor(2.0, device=d.device))
    # log m - log p = softplus(d) - ln2 ;  log m - log q = softplus(-d) - ln2
    kl_pm = -(logp.exp() * (F.softplus(d) - ln2)).sum(-1)
    kl_qm = -(logq.exp() * (F.softplus(-d) - ln2)).sum(-1)
    js_bits = (0.5 * (kl_pm + kl_qm) / ln2).clamp(0.0, 1.0)
    return js_bits.sqrt()


# ----------------------------------------------------------------------------- plain path


def scan_plain(model, layer, read_layers, tokens, base, direction, coeffs, js=False, hook=None) -> ScanResult:
    """Reference scan: per base, one batch of N+1 full forwards with the last position of `hook` replaced.

    `hook` is the SAE's hook point, blocks.{layer}.hook_resid_pre (the default) or .hook_resid_post.
    """
    hook = _check_inputs(model, layer, read_layers, tokens, base, direction, coeffs, hook=hook)
    device = _device(model)
    tokens, base, direction = tokens.to(device), base.to(device).float(), direction.to(device).float()
    coeffs = coeffs.to(device).float()
    B, M = coeffs.shape
    l2 = {r: torch.zeros(B, M) for r in read_layers}
    js_out = torch.zeros(B, M) if js else None
    names = [resid_post(r) for r in read_layers]
    stop = None if js else max(read_layers) + 1
    with torch.inference_mode(), matmul_precision("float32"):
        for b in range(B):
            points = base[b] + coeffs[b, :, None] * direction[b]  # [M, d_model]

            def set_last_position(resid, hook, points=points):
                resid[:, -1, :] = points.to(resid.dtype)
                return resid

            with model.hooks(fwd_hooks=[(hook, set_last_position)]):
                out, cache = model.run_with_cache(
                    tokens[b].expand(M, -1), names_filter=names, stop_at_layer=stop
                )
            for r in read_layers:
                h = cache[resid_post(r)][:, -1].float()
                l2[r][b] = (h - h[:1]).norm(dim=-1).cpu()
            if js:
                last = out[:, -1]
                js_out[b] = js_distance(last, last[:1]).cpu()
    return ScanResult(l2=l2, js=js_out)


# ----------------------------------------------------------------------------- fast path

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
class _Norm:
    """A LayerNorm ('ln') or RMSNorm ('rms'), its weight and bias (None when folded or absent)."""

    kind: str | None
    w: torch.Tensor | None
    b: torch.Tensor | None


@dataclass
class _Block:
    """One block's weights, flattened for single-position matmuls, in the compute dtype.

    Queries are pre-scaled by 1/attn_scale; on rotary models the query and key weights are
    pre-rotated for the scan position, so q and the position's own k come out of one matmul.
    """

    ln1: _Norm
    w_qkv: torch.Tensor  # [d_model, (n_heads + 2 * n_kv_heads) * d_head]
    b_qkv: torch.Tensor
    w_o: torch.Tensor  # [n_heads * d_head, d_model]
    b_o: torch.Tensor
    ln2: _Norm
    w_in: torch.Tensor  # [d_model, d_mlp], or [d_model, 2 * d_mlp] (gate, in) for gated MLPs
    b_in: torch.Tensor  # bias of that matmul (zeros for gated MLPs)
    b_gated: torch.Tensor | None  # gated MLPs: act(x W_gate) * (x W_in) + b_gated
    w_out: torch.Tensor
    b_out: torch.Tensor
    ln1_post: _Norm | None  # Gemma-2: norms on the sublayer outputs
    ln2_post: _Norm | None
    n_kv_heads: int
    window: int | None  # local attention: the query sees itself and window - 1 earlier positions


@dataclass
class _Weights:
    blocks: list[_Block]
    ln_final: _Norm
    w_u: torch.Tensor
    b_u: torch.Tensor
    act: Callable[[torch.Tensor], torch.Tensor]
    eps: float
    parallel: bool
    score_cap: float | None
    logit_cap: float | None


_WEIGHT_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _compute_dtype(dtype: str) -> torch.dtype:
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


def _norm(module) -> _Norm:
    w, b = getattr(module, "w", None), getattr(module, "b", None)
    return _Norm(
        kind=_NORMS[type(module).__name__],
        w=None if w is None else w.detach().float(),
        b=None if b is None else b.detach().float(),
    )


def _kv_weights(attn):
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


def _weights(model, dtype: str, position: int) -> _Weights:
    """Cast copies of the model's weights for the fast path, cached per model, dtype, position and weight version.

    `position` (the scan position, n_ctx - 1) matters only for rotary models.
    """
    rotary = model.cfg.positional_embedding_type == "rotary"
    key = (dtype, position if rotary else None)
    signature = (key, tuple((p.data_ptr(), p._version) for p in model.parameters()))
    cached = _WEIGHT_CACHE.get(model)
    if cached is not None and cached[0] == signature:
        return cached[1]
    cdt = _compute_dtype(dtype)
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
        w_k, b_k, w_v, b_v = _kv_weights(a)
        q = heads_to_columns(a.W_Q * inv_scale, a.b_Q * inv_scale, rotation)
        k = heads_to_columns(w_k, b_k, rotation)
        v = heads_to_columns(w_v, b_v)
        if cfg.gated_mlp:
            w_in, b_in, b_gated = torch.cat([m.W_gate, m.W_in], dim=1), torch.zeros(2 * m.b_in.shape[0]), m.b_in
        else:
            w_in, b_in, b_gated = m.W_in, m.b_in, None
        local = getattr(a, "attn_type", "global") == "local"
        blocks.append(
            _Block(
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
    weights = _Weights(
        blocks=blocks,
        ln_final=_norm(ln_final) if ln_final is not None else _Norm(None, None, None),
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


def _prefix_kv(model, tokens: torch.Tensor, first: int, last: int, cdt: torch.dtype):
    """Keys and values of the prompt prefix (all but the last position) at blocks first..last.

    Returns per layer (K [B, H_kv, d_head, T], V [B, H_kv, T, d_head]) in the compute dtype; keys
    after rotary; for local attention only the prefix positions the last position can see.
    """
    B, n_ctx = tokens.shape
    if first > last:
        return {}
    if n_ctx == 1:
        out = {}
        for l in range(first, last + 1):
            h_kv, dh = _kv_weights(model.blocks[l].attn)[0].shape[0], model.cfg.d_head
            out[l] = (
                torch.zeros(B, h_kv, dh, 0, device=tokens.device, dtype=cdt),
                torch.zeros(B, h_kv, 0, dh, device=tokens.device, dtype=cdt),
            )
        return out
    k_hook = "hook_rot_k" if model.cfg.positional_embedding_type == "rotary" else "hook_k"
    names = {f"blocks.{l}.attn.{h}" for l in range(first, last + 1) for h in (k_hook, "hook_v")}
    # bfloat16 scans take the prefix in TF32: faster than fp32 and still far more precise than bf16
    with matmul_precision("tf32") if cdt == torch.bfloat16 else contextlib.nullcontext():
        _, cache = model.run_with_cache(tokens[:, :-1], names_filter=lambda n: n in names, stop_at_layer=last + 1)
    out = {}
    for l in range(first, last + 1):
        k = cache[f"blocks.{l}.attn.{k_hook}"]  # [B, T, H_kv, dh]
        v = cache[f"blocks.{l}.attn.hook_v"]
        attn = model.blocks[l].attn
        if getattr(attn, "attn_type", "global") == "local":  # keys at positions > T - window
            keep = max(int(model.cfg.window_size) - 1, 0)
            k, v = k[:, k.shape[1] - min(keep, k.shape[1]) :], v[:, v.shape[1] - min(keep, v.shape[1]) :]
        out[l] = (k.permute(0, 2, 3, 1).to(cdt).contiguous(), v.permute(0, 2, 1, 3).to(cdt).contiguous())
    return out


def _normed(x: torch.Tensor, norm: _Norm, eps: float) -> torch.Tensor:
    """LayerNorm or RMSNorm of x in float32 (as TransformerLens computes them)."""
    if norm.kind == "ln":
        return F.layer_norm(x.float(), (x.shape[-1],), norm.w, norm.b, eps)
    if norm.kind == "rms":
        x = x.float()
        x = x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
        return x if norm.w is None else x * norm.w
    return x


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.addmm(b, x.to(w.dtype), w)


def _softcap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    return x if cap is None else cap * torch.tanh(x / cap)


def _attention(blk: _Block, h: torch.Tensor, k_pre: torch.Tensor, v_pre: torch.Tensor, cap: float | None):
    """Attention output for single positions h [nb, m, d_model] (normalised) attending to their base's prefix."""
    nb, m, d = h.shape
    Hk, dh, T = k_pre.shape[1], k_pre.shape[2], k_pre.shape[3]
    qkv = _linear(h.reshape(nb * m, d), blk.w_qkv, blk.b_qkv)
    H = qkv.shape[1] // dh - 2 * Hk
    g = H // Hk  # query heads per key/value head (1 without GQA)
    q = qkv[:, : H * dh].reshape(nb, m, Hk, g, dh).permute(0, 2, 3, 1, 4)  # [nb, Hk, g, m, dh]
    k, v = qkv[:, H * dh :].reshape(nb, m, 2, Hk, dh).permute(2, 0, 3, 1, 4).unsqueeze(3)  # each [nb, Hk, 1, m, dh]
    scores_prefix = torch.matmul(q.reshape(nb, Hk, g * m, dh), k_pre)  # [nb, Hk, g*m, T]
    score_self = (q * k).sum(-1).reshape(nb, Hk, g * m, 1)
    scores = _softcap(torch.cat([scores_prefix, score_self], dim=-1), cap)
    pattern = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    z = torch.matmul(pattern[..., :T], v_pre).view(nb, Hk, g, m, dh) + pattern[..., T:].view(nb, Hk, g, m, 1) * v
    z = z.permute(0, 3, 1, 2, 4).reshape(nb * m, H * dh)
    return _linear(z, blk.w_o, blk.b_o).view(nb, m, d)


def _block_forward(blk: _Block, x: torch.Tensor, k_pre, v_pre, weights: _Weights) -> torch.Tensor:
    """One block for single positions x [nb, m, d_model] (float32 residual)."""
    nb, m, d = x.shape
    eps = weights.eps
    attn_out = _attention(blk, _normed(x, blk.ln1, eps), k_pre, v_pre, weights.score_cap)
    if blk.ln1_post is not None:
        attn_out = _normed(attn_out, blk.ln1_post, eps)
    mid = x + attn_out  # float32 residual (type promotion)
    pre = _linear(_normed(x if weights.parallel else mid, blk.ln2, eps).reshape(nb * m, d), blk.w_in, blk.b_in)
    if blk.b_gated is not None:
        gate, lin = pre.chunk(2, dim=-1)
        hidden = weights.act(gate) * lin + blk.b_gated
    else:
        hidden = weights.act(pre)
    mlp_out = _linear(hidden, blk.w_out, blk.b_out).view(nb, m, d)
    if blk.ln2_post is not None:
        mlp_out = _normed(mlp_out, blk.ln2_post, eps)
    return mid + mlp_out


def _run_chunk(weights: _Weights, start: int, read_layers, kv, points: torch.Tensor, js: bool):
    """Push points [nb, m, d_model] (column 0 = A_0) through blocks start..; distances to column 0 on the device.

    A read layer start - 1 (hook_resid_post of the block before) is the perturbed point itself.
    """
    last = len(weights.blocks) - 1 if js else max(read_layers)
    x = points
    dists = {}
    if start - 1 in read_layers:
        dists[start - 1] = (x - x[:, :1]).norm(dim=-1)
    for l in range(start, last + 1):
        k_pre, v_pre = kv[l]
        x = _block_forward(weights.blocks[l], x, k_pre, v_pre, weights)
        if l in read_layers:
            dists[l] = (x - x[:, :1]).norm(dim=-1)
    js_d = None
    if js:
        nb, m, d = x.shape
        normed = _normed(x, weights.ln_final, weights.eps).reshape(nb * m, d)
        logits = _softcap(_linear(normed, weights.w_u, weights.b_u).float(), weights.logit_cap).view(nb, m, -1)
        js_d = js_distance(logits, logits[:, :1])
    return dists, js_d


def _bytes_per_point(model, n_read: int, n_ctx: int, js: bool) -> int:
    """A generous estimate of the device memory one scan point needs during a chunk."""
    cfg = model.cfg
    per = 4 * (16 * cfg.d_model + 5 * cfg.d_mlp + 4 * cfg.n_heads * (n_ctx + 1) + n_read)
    return per + (48 * cfg.d_vocab_out if js else 0)  # logits and the JS temporaries


def _default_max_points(model, device: torch.device, n_read: int, n_ctx: int, js: bool) -> int:
    """Chunk size: from free device memory on CUDA, a fixed budget on CPU."""
    per_point = _bytes_per_point(model, n_read, n_ctx, js)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(2, min(CUDA_MAX_POINTS, int(free * CUDA_MEMORY_FRACTION) // per_point))
    return max(2, min(CPU_MAX_POINTS, CPU_MEMORY_BUDGET // per_point))


def scan_fast(
    model, layer, read_layers, tokens, base, direction, coeffs, js=False, dtype: str = "float32",
    max_points: int | None = None, hook: str | None = None,
) -> ScanResult:
    """Fast scan (same result as `scan_plain`): prefix K/V once per prompt, scan points as single positions.

    dtype: 'float32' (full fp32 matmuls), 'tf32' (CUDA TF32 matmuls; same as float32 on CPU) or
    'bfloat16' (bf16 weights and matmuls, float32 residual stream and distances).
    max_points: scan points per batch; default from free device memory. Halved on CUDA out-of-memory.
    hook: the perturbed point (see `synthact.hooks`): blocks.{layer}.hook_resid_pre (default) or .hook_resid_post.
    """
    hook = _check_inputs(model, layer, read_layers, tokens, base, direction, coeffs, dtype, hook)
    start = blocks_before(hook)  # the first block that sees the perturbed point
    why = fast_path_unsupported(model)
    if why:
        raise SynthactError(f"the fast scan path cannot run this model ({why}); use scan() or scan_plain()")
    if max_points is not None and max_points < 2:
        raise SynthactError(f"max_points must be at least 2 (A_0 and one more point), got {max_points}")
    device = _device(model)
    tokens, base, direction = tokens.to(device), base.to(device).float(), direction.to(device).float()
    coeffs = coeffs.to(device).float()
    B, M = coeffs.shape
    read_set = set(read_layers)
    last = model.cfg.n_layers - 1 if js else max(read_layers)
    if max_points is None:
        max_points = _default_max_points(model, device, len(read_set), tokens.shape[1], js)
    l2 = {r: torch.zeros(B, M, device=device) for r in read_set}
    js_out = torch.zeros(B, M, device=device) if js else None
    cdt = _compute_dtype(dtype)

    with torch.inference_mode(), matmul_precision(dtype):
        weights = _weights(model, dtype, tokens.shape[1] - 1)
        b0 = 0
        while b0 < B:
            whole_bases = max_points >= M
            nb = min(max_points // M, B - b0) if whole_bases else 1
            bases = slice(b0, b0 + nb)
            try:
                kv = _prefix_kv(model, tokens[bases], start, last, cdt)
                if whole_bases:
                    column_sets = [torch.arange(M, device=device)]
                else:  # one base in slices of columns, each led by column 0 (the reference A_0)
                    step = max_points - 1
                    column_sets = [
                        torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(s, min(s + step, M))]).to(device)
                        for s in range(1, M, step)
                    ] or [torch.zeros(1, dtype=torch.long, device=device)]
                for cols in column_sets:
                    c = coeffs[bases][:, cols]
                    points = base[bases, None, :] + c[..., None] * direction[bases, None, :]
                    dists, js_d = _run_chunk(weights, start, read_set, kv, points, js)
                    for r, d in dists.items():
                        l2[r][bases, cols] = d.float()
                    if js:
                        js_out[bases, cols] = js_d
            except torch.OutOfMemoryError:
                if max_points <= 2:
                    raise
                max_points //= 2
                log.warning("scan_fast: out of memory; retrying with %d points per batch", max_points)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            b0 += nb
    return ScanResult(
        l2={r: l2[r].cpu() for r in read_layers},
        js=js_out.cpu() if js else None,
    )


def scan(
    model, layer, read_layers, tokens, base, direction, coeffs, js=False, dtype="float32", hook=None
) -> ScanResult:
    """The fast path when the model allows it, else the plain path with a logged warning."""
    why = fast_path_unsupported(model)
    if why is None:
        return scan_fast(model, layer, read_layers, tokens, base, direction, coeffs, js=js, dtype=dtype, hook=hook)
    log.warning("fast scan path unsupported (%s); using the plain path (much slower)", why)
    if dtype != "float32":
        warnings.warn(f"the plain scan path runs in the model's own precision; dtype '{dtype}' is ignored")
    return scan_plain(model, layer, read_layers, tokens, base, direction, coeffs, js=js, hook=hook)
