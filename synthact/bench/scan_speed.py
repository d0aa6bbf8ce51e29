"""Scan speed: the paper's plain path vs the fast path at each precision, against a matmul probe.

All paths run in one process on the same inputs: a model with random weights (built locally, no
hub), real activations at blocks.L.hook_resid_pre as bases, random unit directions, N+1 scan points
per base, read at the last block.
"""

from __future__ import annotations

import datetime

import numpy as np
import torch

from synthact.bench.fixtures import FAMILIES, build_model, scan_inputs
from synthact.bench.timing import best_time, device_label, flops_per_point, matmul_peak, per_base, precisions
from synthact.errors import first_line
from synthact.scan import matmul_precision, scan_fast, scan_plain
from synthact.scan.metrics import curve_metrics


def plain_paper_way(model, layer, read_layer, tokens, base, direction, coeffs) -> np.ndarray:
    """The paper's loop: per direction, a hooked run_with_cache of all N+1 points, the cache copied to host."""
    M = coeffs.shape[1]
    curves = []
    with torch.inference_mode():
        for b in range(tokens.shape[0]):
            points = base[b] + coeffs[b, :, None] * direction[b]

            def patch(resid, hook, points=points):
                resid[:, -1, :] = points
                return resid

            with model.hooks(fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", patch)]):
                _, cache = model.run_with_cache(tokens[b].expand(M, -1))
            cache = cache.to("cpu")
            h = cache[f"blocks.{read_layer}.hook_resid_post"][:, -1]
            curves.append((h - h[0]).norm(dim=-1).numpy())
    return np.stack(curves)


def benchmark(model_name, layer, n_ctx, steps, device, n_bases, plain_bases, batch, js) -> dict:
    """Run every path on the same inputs and return the measured numbers (`synthact.bench.run` checked `layer`)."""
    model = build_model(model_name, n_ctx, device)
    cfg = model.cfg
    read = cfg.n_layers - 1
    plain_bases = min(plain_bases, n_bases)
    tokens, base, direction, coeffs = scan_inputs(model, layer, n_bases, n_ctx, steps)
    points = n_bases * (steps + 1)
    sub = (tokens[:plain_bases], base[:plain_bases], direction[:plain_bases], coeffs[:plain_bases])
    step = coeffs[:plain_bases, 1].cpu().double().numpy()

    with matmul_precision("float32"):
        plain_paper_way(model, layer, read, *(t[:1] for t in sub))  # warm-up
        reference, plain_seconds = per_base(lambda *t: plain_paper_way(model, layer, read, *t), sub, device)
        _, hooked_seconds = per_base(lambda *t: scan_plain(model, layer, [read], *t, js=js), sub, device)
    ref_slope = curve_metrics(reference, step)["max_slope"]

    peaks = {p: matmul_peak(device, p) for p in precisions(device)}
    flops = flops_per_point(cfg, layer, cfg.n_layers - 1 if js else read, n_ctx, js)
    plain_flops = n_ctx * flops_per_point(cfg, 0, cfg.n_layers - 1, n_ctx, True)  # every block and logit, every token
    fast = {}
    for precision in precisions(device):
        def run_fast(precision=precision, n=n_bases):
            inputs = (t[:n] for t in (tokens, base, direction, coeffs))
            return scan_fast(model, layer, [read], *inputs, js=js, dtype=precision, max_points=batch)

        try:
            run_fast(n=2)  # warm-up: weight copies for this precision
        except RuntimeError as e:  # e.g. bf16 matmuls unsupported on this CPU
            fast[precision] = {"error": first_line(str(e))}
            continue
        on_cuda = device.type == "cuda"  # CUDA: the first full-size run also grows the allocator
        seconds, result = best_time(
            run_fast, device, min_seconds=float(on_cuda), min_repeats=1 + on_cuda, max_repeats=3
        )
        curves = result.l2[read][:plain_bases].numpy()
        rate = points / seconds
        fast[precision] = {
            "points_per_s": rate,
            "speedup_vs_plain": rate / ((steps + 1) / plain_seconds),
            "tflops": rate * flops / 1e12,
            "fraction_of_peak": rate * flops / 1e12 / peaks[precision],
            "max_abs_dev_l2": float(np.abs(curves - reference).max()),
            "max_rel_dev_l2": float(np.abs(curves - reference).max() / reference.max()),  # x max d
            "max_abs_dev_max_slope": float(np.abs(curve_metrics(curves, step)["max_slope"] - ref_slope).max()),
        }

    fp32 = fast["float32"]
    return {
        "device": device_label(device),
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "model": model_name,
        "shape": FAMILIES[model_name][1] if model_name in FAMILIES else f"GPT-2 architecture, {cfg.n_layers} x {cfg.d_model}",
        "layer": layer,
        "read_layer": read,
        "n_ctx": n_ctx,
        "points_per_base": steps + 1,
        "bases": n_bases,
        "plain_bases": plain_bases,
        "js": js,
        "flops_per_point": flops,
        "plain_flops_per_point": plain_flops,
        "flop_ratio": plain_flops / flops,
        "plain_points_per_s": (steps + 1) / plain_seconds,
        "plain_hooked_points_per_s": (steps + 1) / hooked_seconds,
        "fast_points_per_s": fp32["points_per_s"],
        "speedup_vs_plain": fp32["speedup_vs_plain"],
        "fast_tflops": fp32["tflops"],
        "peak_tflops_fp32": peaks["float32"],
        "max_abs_dev_l2": fp32["max_abs_dev_l2"],
        "max_rel_dev_l2": fp32["max_rel_dev_l2"],
        "fraction_of_peak_fp32": fp32["fraction_of_peak"],
        "peak_tflops": peaks,
        "precisions": fast,
    }


def format_families(reports: list[dict]) -> str:
    """One line per family: fast fp32 against the plain path and the matmul probe."""
    r0 = reports[0]
    lines = [
        f"synthact bench --family all: L={r0['layer']}, n_ctx {r0['n_ctx']}, {r0['points_per_base']} points/base, "
        f"js={r0['js']}; device {r0['device']}, torch {r0['torch']}, {r0['date']}",
        f"{'family':<8}{'shape':<62}{'plain/s':>9}{'fast/s':>9}{'x plain':>9}{'x FLOPs':>9}{'% probe':>9}"
        f"{'dev/max d':>11}",
    ]
    for r in reports:
        lines.append(
            f"{r['model']:<8}{r['shape']:<62}{r['plain_points_per_s']:>9,.0f}{r['fast_points_per_s']:>9,.0f}"
            f"{r['speedup_vs_plain']:>9.1f}{r['flop_ratio']:>9.1f}{100 * r['fraction_of_peak_fp32']:>8.0f}%"
            f"{r['max_rel_dev_l2']:>11.1e}"
        )
    lines.append(f"fast = fast path fp32; % probe = its matmul rate / the fp32 matmul probe "
                 f"({r0['peak_tflops_fp32']:.3f} TFLOP/s); plain = the paper's loop (hook + run_with_cache); "
                 "x FLOPs = the plain loop's matmul FLOPs per point / the fast path's (every block and the logits "
                 "at every token, against one position from L on): the speed-up at equal matmul efficiency.")
    return "\n".join(lines)


def format_table(r: dict) -> str:
    """The report as a table a person reads."""
    lines = [
        f"synthact bench: {r['model']} ({r['shape']}), L={r['layer']}, read layer {r['read_layer']}, n_ctx {r['n_ctx']}, "
        f"{r['points_per_base']} points/base, js={r['js']}",
        f"device {r['device']}, torch {r['torch']}, {r['date']}; fast path: {r['bases']} bases, "
        f"plain paths: {r['plain_bases']} bases; {r['flops_per_point'] / 1e6:.1f} MFLOP per scan point",
        "",
        f"{'path':<28}{'points/s':>12}{'x plain':>9}{'TFLOP/s':>9}{'% peak':>8}{'max|dd|':>11}{'max|d slope|':>14}",
        f"{'plain (paper: cache->host)':<28}{r['plain_points_per_s']:>12,.0f}{1:>9.1f}",
        f"{'plain (scan_plain)':<28}{r['plain_hooked_points_per_s']:>12,.0f}"
        f"{r['plain_hooked_points_per_s'] / r['plain_points_per_s']:>9.1f}",
    ]
    for name, p in r["precisions"].items():
        if "error" in p:
            lines.append(f"{'fast ' + name:<28}  unavailable: {p['error']}")
            continue
        lines.append(
            f"{'fast ' + name:<28}{p['points_per_s']:>12,.0f}{p['speedup_vs_plain']:>9.1f}{p['tflops']:>9.3f}"
            f"{100 * p['fraction_of_peak']:>7.0f}%{p['max_abs_dev_l2']:>11.2e}{p['max_abs_dev_max_slope']:>14.2e}"
        )
    peaks = ", ".join(f"{k} {v:.3f}" for k, v in r["peak_tflops"].items())
    lines += ["", f"matmul probe peak (TFLOP/s): {peaks}", "deviations are against the plain path in float32."]
    g = r.get("generation")
    if g:
        lines += [
            "",
            f"generation (random SAE d_sae {g['d_sae']}, mean L0 {g['mean_l0']:.0f}): reference statistics of "
            f"{g['reference_prompts']} prompts {g['stats_seconds']:.1f} s; {g['bases']} bases + targets per kind "
            f"(fast fp32 scan of them: {g['scan_seconds_fast_fp32']:.2f} s)",
            f"peak RSS {g['peak_rss_gb']:.2f} GB ({g['peak_rss_gb_before']:.2f} GB before the generation context); "
            f"load average {' '.join(f'{x:.1f}' for x in g['load_average'])}",
            f"{'phase':<52}{'seconds':>9}{'':>10}{'':>9}{'peak RSS GB':>13}",
            *(f"{name:<52}{p['seconds']:>9.2f}{'':>19}{p['peak_rss_gb']:>13.2f}" for name, p in g["phases"].items()),
            f"{'kind':<52}{'seconds':>9}{'bases/s':>10}{'x scan':>9}{'peak RSS GB':>13}",
        ]
        for kind, k in g["kinds"].items():
            lines.append(f"{kind:<52}{k['seconds']:>9.2f}{k['bases_per_s']:>10,.0f}{k['fraction_of_scan']:>9.2f}"
                         f"{k['peak_rss_gb']:>13.2f}")
    return "\n".join(lines)
