"""The scan: push A_n = A + c_n D through the model from the SAE's hook and measure how the read layers move.

Two paths, one result. `scan_plain` is the reference: a full forward of the prompt with a hook
that replaces the last position of the SAE's hook point (`blocks.{L}.hook_resid_pre` or
`.hook_resid_post`, see `synthact.inputs.hooks`). `scan_fast` uses that attention is causal and only the
last position changes: the prefix keys/values at every later block are those of the unperturbed
prompt, so they are computed once per prompt and every scan point is a single position pushed
through the blocks up to R, all points of many bases in one large batch. The fast path implements
every block TransformerLens builds for GPT-2, GPT-NeoX, Llama/Mistral/Qwen2 and Gemma/Gemma-2
(`fast_path_unsupported` names what it does not).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from synthact.errors import SynthactError
from synthact.inputs.hooks import resid_post, resid_pre

DTYPES = ("float32", "tf32", "bfloat16")


@dataclass
class ScanResult:
    """Curves of one scan: `l2[r]` per read layer and optionally `js`, each `[B, N+1]` float32 on CPU."""

    l2: dict[int, torch.Tensor]
    js: torch.Tensor | None


# ----------------------------------------------------------------------------- shared pieces


def check_inputs(model, layer, read_layers, tokens, base, direction, coeffs, dtype="float32", hook=None) -> str:
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


def model_device(model) -> torch.device:
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
    hook = check_inputs(model, layer, read_layers, tokens, base, direction, coeffs, hook=hook)
    device = model_device(model)
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


