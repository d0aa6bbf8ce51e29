"""The timing harness: device synchronisation, best-of-N wall times, matmul peak and FLOP counts."""

from __future__ import annotations

import time

import numpy as np
import torch

from synthact.scan import matmul_precision


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn, device: torch.device, min_seconds: float, min_repeats: int = 1, max_repeats: int = 5):
    """Best wall time of fn over at least min_repeats runs (more while under min_seconds), and fn's output."""
    times = []
    while len(times) < min_repeats or (sum(times) < min_seconds and len(times) < max_repeats):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return min(times), out


def per_base(fn, inputs, device: torch.device) -> tuple[np.ndarray, float]:
    """Run fn base by base; return the stacked curves and the best time of one base."""
    curves, times = [], []
    for b in range(inputs[0].shape[0]):
        sync(device)
        t0 = time.perf_counter()
        out = fn(*(t[b : b + 1] for t in inputs))
        sync(device)
        times.append(time.perf_counter() - t0)
        curves.append(out if isinstance(out, np.ndarray) else next(iter(out.l2.values())).numpy())
    return np.concatenate(curves), min(times)


def matmul_peak(device: torch.device, dtype: str) -> float:
    """Peak matmul rate in TFLOP/s: best of a few square matmuls."""
    n = 8192 if device.type == "cuda" else 1024
    torch_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    a = torch.randn(n, n, device=device).to(torch_dtype)
    b = torch.randn(n, n, device=device).to(torch_dtype)
    reps = 10 if device.type == "cuda" else 3
    with matmul_precision(dtype):
        a @ b
        seconds, _ = best_time(lambda: [a @ b for _ in range(reps)], device, min_seconds=0.5, max_repeats=3)
    return 2 * n**3 * reps / seconds / 1e12


def flops_per_point(cfg, layer: int, last: int, n_ctx: int, js: bool) -> int:
    """Matmul FLOPs of one scan point: QKV, attention over n_ctx keys, O, MLP per block; unembedding if js."""
    d, hd = cfg.d_model, cfg.n_heads * cfg.d_head
    hd_kv = (cfg.n_key_value_heads or cfg.n_heads) * cfg.d_head  # grouped-query attention: fewer K/V heads
    mlp_matrices = 3 if cfg.gated_mlp else 2
    per_block = 2 * d * (hd + 2 * hd_kv) + 2 * 2 * hd * n_ctx + 2 * hd * d + mlp_matrices * 2 * d * cfg.d_mlp
    return (last - layer + 1) * per_block + (2 * d * cfg.d_vocab_out if js else 0)


def precisions(device: torch.device) -> list[str]:
    if device.type == "cuda":
        return ["float32", "tf32", "bfloat16"]
    return ["float32", "bfloat16"]


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"
