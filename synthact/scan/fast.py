"""The fast scan kernel: prefix keys/values once per prompt, then every scan point is one position pushed
through blocks L..R, all points of many bases in one large batch (docs/architecture.md, "The fast path")."""

from __future__ import annotations

import contextlib
import logging

import torch
import torch.nn.functional as F

from synthact.errors import SynthactError
from synthact.inputs.hooks import blocks_before
from synthact.inputs.memory import bytes_per_point, max_points
from synthact.scan.plain import ScanResult, check_inputs, js_distance, matmul_precision, model_device
from synthact.scan.weights import Block, Norm, Weights, compute_dtype, fast_path_unsupported, kv_weights, read_weights

log = logging.getLogger(__name__)



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
            h_kv, dh = kv_weights(model.blocks[l].attn)[0].shape[0], model.cfg.d_head
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


def _normed(x: torch.Tensor, norm: Norm, eps: float) -> torch.Tensor:
    """LayerNorm or RMSNorm of x in float32 (as TransformerLens computes them)."""
    if norm.kind == "ln":
        return F.layer_norm(x.float(), (x.shape[-1],), norm.w, norm.b, eps)
    if norm.kind == "rms":  # x / sqrt(mean(x^2) + eps) * w, in one kernel
        return F.rms_norm(x.float(), (x.shape[-1],), norm.w, eps)
    return x


# A weight of another dtype is cast as it is used, at most this many elements at once (16 MiB in float32), into one
# buffer: a whole cast of a 2B model's MLP matrix (85 MB) was the scan's peak above the weights.
CAST_ELEMENTS = 2**22


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, cdt: torch.dtype) -> torch.Tensor:
    """x @ w (+ b) in the compute dtype `cdt`; a weight of another dtype (a view of the model's parameter) is
    cast as it is used, column slices of at most CAST_ELEMENTS into one buffer, so no copy of the weights stays."""
    x = x.to(cdt)
    if w.dtype == cdt or w.numel() <= CAST_ELEMENTS:
        w = w.to(cdt)
        return torch.addmm(b, x, w) if b is not None else x @ w
    step = max(1, CAST_ELEMENTS // w.shape[0])
    cast = torch.empty(w.shape[0], min(step, w.shape[1]), dtype=cdt, device=w.device)
    out = torch.empty(x.shape[0], w.shape[1], dtype=cdt, device=x.device)
    for i in range(0, w.shape[1], step):
        part = cast[:, : min(step, w.shape[1] - i)]
        part.copy_(w[:, i : i + step])
        out[:, i : i + part.shape[1]] = x @ part
    return out.add_(b) if b is not None else out


def _qkv(blk: Block) -> tuple[torch.Tensor, torch.Tensor]:
    """The query, key and value weights side by side, [d_model, (n_heads + 2 n_kv_heads) d_head], and their biases:
    one matmul for all three, from a copy made for this call only."""
    w = torch.cat([blk.w_q.permute(1, 0, 2), blk.w_k.permute(1, 0, 2), blk.w_v.permute(1, 0, 2)], dim=1)
    return w.reshape(w.shape[0], -1), torch.cat([blk.b_q, blk.b_k, blk.b_v])


def _softcap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    return x if cap is None else cap * torch.tanh(x / cap)


def _rotated(x: torch.Tensor, post: torch.Tensor, qk_norm: bool, eps: float) -> torch.Tensor:
    """Per head [..., d_head], in float32: (an unweighted RMS norm with QK norm, then) @ post (the query scale, the
    QK-norm weight and the rotary rotation of the scan position)."""
    x = x.float()
    if qk_norm:
        x = x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    return x @ post


def _attention(blk: Block, h: torch.Tensor, k_pre: torch.Tensor, v_pre: torch.Tensor, weights: Weights):
    """Attention output for single positions h [nb, m, d_model] (normalised) attending to their base's prefix."""
    nb, m, d = h.shape
    cdt = weights.cdt
    Hk, dh, T = k_pre.shape[1], k_pre.shape[2], k_pre.shape[3]
    H = blk.w_q.shape[0]
    g = H // Hk  # query heads per key/value head (1 without GQA)
    qkv = _linear(h.reshape(nb * m, d), *_qkv(blk), cdt)
    q = _rotated(qkv[:, : H * dh].reshape(-1, dh), blk.q_post, blk.qk_norm, weights.eps)
    k = _rotated(qkv[:, H * dh : (H + Hk) * dh].reshape(-1, dh), blk.k_post, blk.qk_norm, weights.eps)
    v = qkv[:, (H + Hk) * dh :]
    q = q.to(cdt).reshape(nb, m, Hk, g, dh).permute(0, 2, 3, 1, 4)  # [nb, Hk, g, m, dh]
    k = k.to(cdt).reshape(nb, m, Hk, dh).permute(0, 2, 1, 3).unsqueeze(2)  # [nb, Hk, 1, m, dh]
    v = v.reshape(nb, m, Hk, dh).permute(0, 2, 1, 3).unsqueeze(2)
    scores_prefix = torch.matmul(q.reshape(nb, Hk, g * m, dh), k_pre)  # [nb, Hk, g*m, T]
    score_self = (q * k).sum(-1).reshape(nb, Hk, g * m, 1)
    scores = _softcap(torch.cat([scores_prefix, score_self], dim=-1), weights.score_cap)
    pattern = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    z = torch.matmul(pattern[..., :T], v_pre).view(nb, Hk, g, m, dh) + pattern[..., T:].view(nb, Hk, g, m, 1) * v
    z = z.permute(0, 3, 1, 2, 4).reshape(nb * m, H * dh)
    return _linear(z, blk.w_o.reshape(H * dh, d), blk.b_o, cdt).view(nb, m, d)


def _block_forward(blk: Block, x: torch.Tensor, k_pre, v_pre, weights: Weights) -> torch.Tensor:
    """One block for single positions x [nb, m, d_model] (float32 residual)."""
    nb, m, d = x.shape
    eps, cdt = weights.eps, weights.cdt
    attn_out = _attention(blk, _normed(x, blk.ln1, eps), k_pre, v_pre, weights)
    if blk.ln1_post is not None:
        attn_out = _normed(attn_out, blk.ln1_post, eps)
    mid = x + attn_out  # float32 residual (type promotion)
    normed = _normed(x if weights.parallel else mid, blk.ln2, eps).reshape(nb * m, d)
    if blk.w_gate is None:
        hidden = weights.act(_linear(normed, blk.w_in, blk.b_in, cdt))
    else:  # as TransformerLens's gated MLP: the bias after the product
        hidden = weights.act(_linear(normed, blk.w_gate, None, cdt)) * _linear(normed, blk.w_in, None, cdt) + blk.b_in
    mlp_out = _linear(hidden, blk.w_out, blk.b_out, cdt).view(nb, m, d)
    if blk.ln2_post is not None:
        mlp_out = _normed(mlp_out, blk.ln2_post, eps)
    return mid + mlp_out


def _run_chunk(weights: Weights, start: int, read_layers, kv, points: torch.Tensor, js: bool):
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
        logits = _softcap(_linear(normed, weights.w_u, weights.b_u, weights.cdt).float(), weights.logit_cap)
        logits = logits.view(nb, m, -1)
        js_d = js_distance(logits, logits[:, :1])
    return dists, js_d


def _default_max_points(model, device: torch.device, n_read: int, n_ctx: int, js: bool) -> int:
    """Chunk size (inputs/memory.py's rule): from free device memory on CUDA, a fixed budget on CPU."""
    cfg = model.cfg
    per_point = bytes_per_point(cfg.d_model, cfg.d_mlp, cfg.n_heads, cfg.d_vocab_out, n_read, n_ctx, js)
    return max_points(per_point, torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None)


def scan_fast(
    model, layer, read_layers, tokens, base, direction, coeffs, js=False, dtype: str = "float32",
    max_points: int | None = None, hook: str | None = None,
) -> ScanResult:
    """Fast scan (same result as `scan_plain`): prefix K/V once per prompt, scan points as single positions.

    dtype: 'float32' (full fp32 matmuls), 'tf32' (CUDA TF32 matmuls; same as float32 on CPU) or
    'bfloat16' (bf16 weights and matmuls, float32 residual stream and distances).
    max_points: scan points per batch; default from free device memory. Halved on CUDA out-of-memory.
    hook: the perturbed point (see `synthact.inputs.hooks`): blocks.{layer}.hook_resid_pre (default) or .hook_resid_post.
    """
    hook = check_inputs(model, layer, read_layers, tokens, base, direction, coeffs, dtype, hook)
    start = blocks_before(hook)  # the first block that sees the perturbed point
    why = fast_path_unsupported(model)
    if why:
        raise SynthactError(f"the fast scan path cannot run this model ({why}); use scan() or scan_plain()")
    if max_points is not None and max_points < 2:
        raise SynthactError(f"max_points must be at least 2 (A_0 and one more point), got {max_points}")
    device = model_device(model)
    tokens, base, direction = tokens.to(device), base.to(device).float(), direction.to(device).float()
    coeffs = coeffs.to(device).float()
    B, M = coeffs.shape
    read_set = set(read_layers)
    last = model.cfg.n_layers - 1 if js else max(read_layers)
    if max_points is None:
        max_points = _default_max_points(model, device, len(read_set), tokens.shape[1], js)
    l2 = {r: torch.zeros(B, M, device=device) for r in read_set}
    js_out = torch.zeros(B, M, device=device) if js else None
    cdt = compute_dtype(dtype)

    with torch.inference_mode(), matmul_precision(dtype):
        weights = read_weights(model, dtype, tokens.shape[1] - 1)
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

