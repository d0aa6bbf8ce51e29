"""Generation and end-to-end timings: reference statistics, drawing each kind, each construction of the
SAE-built kinds against the fast scan of the same bases, and the paper job's volume phase by phase."""

from __future__ import annotations

import datetime
import os
import resource
import sys
import time

import numpy as np
import torch

from synthact.bench.fixtures import GEN_D_SAE, generation_context
from synthact.bench.timing import device_label, sync
from synthact.scan.metrics import curve_metrics

# The constructions of template-built kinds timed by --generation, each as the paper's paired target
# of real bases: name -> (kind, GenerationSettings overrides); the bare kind is the paper's construction.
# Every rung and control of the ladder (docs/science.md, "Beyond the paper: the ladder") is one of them.
OTHER_ERROR = {"add_error": True, "error_source": "other"}
CONSTRUCTIONS = {
    "random_latents (R0)": ("random_latents", {}),
    "synthetic_baseline (R1)": ("synthetic_baseline", {}),
    "synthetic_baseline/tol": ("synthetic_baseline", {"match": "tol"}),
    "synthetic_structured (R2)": ("synthetic_structured", {}),
    "synthetic_structured/pairwise": ("synthetic_structured", {"structure": "pairwise", "candidates": 16}),
    "synthetic_cooccur/none/geometry": ("synthetic_cooccur", {"cooccur": "none", "geometry_temp": 0.01}),
    "synthetic_cooccur (R3)": ("synthetic_cooccur", {}),
    "synthetic_cooccur/nearest_k": ("synthetic_cooccur", {"cooccur_window": "nearest_k"}),
    "synthetic_cooccur/geometry (R4)": ("synthetic_cooccur", {"geometry_temp": 0.01}),
    "synthetic_cooccur/geometry/quantile (R5)": ("synthetic_cooccur", {"geometry_temp": 0.01, "value_source": "quantile"}),
    "synthetic_cooccur/geometry/sampled": ("synthetic_cooccur", {"geometry_temp": 0.01, "value_source": "sampled"}),
    "control_swapped/4": ("control_swapped", {"swaps": 4}),
    "control_swapped/0/permuted": ("control_swapped", {"swaps": 0, "value_source": "permuted"}),
    "control_other_latents": ("control_other_latents", {}),
    "synthetic_baseline/+other error": ("synthetic_baseline", OTHER_ERROR),
    "synthetic_cooccur/geometry/+other error": ("synthetic_cooccur", {"geometry_temp": 0.01, **OTHER_ERROR}),
    "control_other_latents/+other error": ("control_other_latents", OTHER_ERROR),
}


def _draw_kind(kind: str, ctx, n_bases: int):
    """Bases of `kind` and toward-targets of the same kind, at the default (the paper's) generation settings."""
    from synthact.generation.context import GenerationSettings
    from synthact.generation.directions import make_directions
    from synthact.generation.kinds import draw

    settings = GenerationSettings()
    with torch.inference_mode():
        base = draw(kind, [np.random.default_rng([0, i]) for i in range(n_bases)], ctx, settings)
        dirs = make_directions(
            f"toward:{kind}", kind, base, [np.random.default_rng([1, i]) for i in range(n_bases)], ctx, settings
        )
    return base, dirs


def peak_rss_gb() -> float:
    """This process's peak resident memory so far, GB (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def _progress(name: str, done: dict) -> None:
    """One line on stderr per finished phase (long runs at large d_sae show where they are)."""
    print(f"synthact bench: {name}: {done['seconds']:.2f} s, peak RSS {done['peak_rss_gb']:.2f} GB", file=sys.stderr,
          flush=True)


def generation_timing(
    model_name, layer, n_ctx, n_bases, device, scan_points_per_s, steps, d_sae: int = GEN_D_SAE,
    n_prompts: int | None = None,
) -> dict:
    """Seconds and the peak RSS so far for each phase: reference statistics (of `n_prompts`, default the spec's),
    the statistics part's co-occurrence table, the held-out part's tables, drawing n_bases bases + toward-targets of
    each kind, and the held-out diagnostics of a batch of codes.

    Each kind's time is also given as a fraction of the time the fast fp32 scan takes for those bases;
    so is each construction of CONSTRUCTIONS, timed as paired targets built from real bases' codes.
    """
    from synthact.generation.context import GenerationSettings
    from synthact.generation.cooccurrence import cooccurrence
    from synthact.generation.diagnostics import target_columns
    from synthact.generation.kinds import draw
    from synthact.generation.values import latent_values
    from synthact.spec import KINDS, ReferenceSpec

    rss_before = peak_rss_gb()
    _, ctx, stats_seconds = generation_context(model_name, layer, n_ctx, device, d_sae, n_prompts)
    holdout = GenerationSettings().holdout
    scan_seconds = n_bases * (steps + 1) / scan_points_per_s
    phases = {"statistics": {"seconds": stats_seconds, "peak_rss_gb": peak_rss_gb()}}
    kinds = {}

    def timed(name, work, *args, **kwargs):
        t0 = time.perf_counter()
        work(*args, **kwargs)
        sync(device)
        seconds = time.perf_counter() - t0
        kinds[name] = {"seconds": seconds, "bases_per_s": n_bases / seconds, "fraction_of_scan": seconds / scan_seconds,
                       "peak_rss_gb": peak_rss_gb()}
        _progress(name, kinds[name])

    def phase(name, work):
        t0 = time.perf_counter()
        out = work()
        sync(device)
        phases[name] = {"seconds": time.perf_counter() - t0, "peak_rss_gb": peak_rss_gb()}
        _progress(name, phases[name])
        return out

    _progress("statistics", phases["statistics"])

    phase("co-occurrence table", lambda: cooccurrence(ctx.stats, holdout, "statistics"))
    phase("held-out tables", lambda: (cooccurrence(ctx.stats, holdout, "heldout"),
                                      latent_values(ctx.stats, holdout, "heldout"),
                                      latent_values(ctx.stats, holdout, "statistics")))
    for kind in KINDS:
        timed(kind, _draw_kind, kind, ctx, n_bases)
    with torch.inference_mode():
        real = draw("real", [np.random.default_rng([0, i]) for i in range(n_bases)], ctx)
        for name, (kind, overrides) in CONSTRUCTIONS.items():
            rngs = [np.random.default_rng([1, i]) for i in range(n_bases)]
            timed(f"paired {name}", draw, kind, rngs, ctx, GenerationSettings(**overrides), template=real)
        built = draw("synthetic_cooccur", [np.random.default_rng([2, i]) for i in range(n_bases)], ctx, template=real)
        phase("diagnostics", lambda: target_columns(built, ctx, list(range(n_bases))))
    return {
        "d_sae": d_sae,
        "reference_prompts": n_prompts or ReferenceSpec().n_prompts,
        "mean_l0": float(ctx.stats.l0.float().mean()),
        "stats_seconds": stats_seconds,
        "bases": n_bases,
        "scan_seconds_fast_fp32": scan_seconds,
        "peak_rss_gb_before": rss_before,
        "peak_rss_gb": peak_rss_gb(),
        "load_average": list(os.getloadavg()),
        "phases": phases,
        "kinds": kinds,
    }


def end_to_end(model_name, layer, n_ctx, steps, n_bases, device, d_sae: int = GEN_D_SAE) -> dict:
    """The paper job's volume (n_bases x 6 kinds, toward:same, N+1 points, fp32) with wall time by phase."""
    import tempfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    from synthact.scan import scan
    from synthact.spec import KINDS, ScanSpec

    t_start = time.perf_counter()
    model, ctx, stats_s = generation_context(model_name, layer, n_ctx, device, d_sae)
    load_s = time.perf_counter() - t_start - stats_s  # imports, model, SAE, corpus
    read = model.cfg.n_layers - 1
    step_size = ScanSpec().step_size
    seconds = {"load": load_s, "statistics": stats_s, "generation": 0.0, "scan": 0.0, "write": 0.0}
    with tempfile.TemporaryDirectory() as out:
        for kind in KINDS:
            t0 = time.perf_counter()
            base, dirs = _draw_kind(kind, ctx, n_bases)
            sync(device)
            t1 = time.perf_counter()
            coeffs = (step_size * torch.arange(steps + 1, device=device).float()).expand(n_bases, -1)
            tokens = torch.as_tensor(base.tokens, device=device)
            result = scan(model, layer, [read], tokens, base.vectors, dirs.vectors, coeffs)
            sync(device)
            t2 = time.perf_counter()
            curves = result.l2[read].numpy()
            metrics = curve_metrics(curves, np.full(n_bases, step_size))
            columns = {"kind": [kind] * n_bases, "base_index": np.arange(n_bases), **metrics}
            columns["curve"] = pa.FixedSizeListArray.from_arrays(pa.array(curves.reshape(-1)), steps + 1)
            pq.write_table(pa.table(columns), f"{out}/{kind}.parquet")
            seconds["generation"] += t1 - t0
            seconds["scan"] += t2 - t1
            seconds["write"] += time.perf_counter() - t2
    total = time.perf_counter() - t_start
    points = n_bases * len(KINDS) * (steps + 1)
    return {
        "device": device_label(device),
        "date": datetime.date.today().isoformat(),
        "model": model_name,
        "layer": layer,
        "bases_per_kind": n_bases,
        "d_sae": d_sae,
        "kinds": len(KINDS),
        "points": points,
        "seconds": seconds,
        "total_seconds": total,
        "scan_points_per_s": points / seconds["scan"],
        "curves_per_s": n_bases * len(KINDS) / total,
    }


def format_e2e(r: dict) -> str:
    """The end-to-end report as lines a person reads."""
    lines = [
        f"synthact bench --e2e: {r['model']}, L={r['layer']}, {r['bases_per_kind']} bases x {r['kinds']} kinds, "
        f"{r['points']:,} scan points, device {r['device']}, {r['date']}",
        f"{'phase':<12}{'seconds':>10}{'share':>8}",
    ]
    for phase, s in r["seconds"].items():
        lines.append(f"{phase:<12}{s:>10.1f}{100 * s / r['total_seconds']:>7.0f}%")
    lines.append(
        f"{'total':<12}{r['total_seconds']:>10.1f}   "
        f"({r['curves_per_s']:.1f} curves/s, scan {r['scan_points_per_s']:,.0f} points/s)"
    )
    return "\n".join(lines)
