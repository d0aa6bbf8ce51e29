"""Measure scan speed: the paper's plain path vs the fast path at each precision, against a matmul probe.

All paths run in one process on the same inputs: a model with random weights (built locally, no
hub), real activations at blocks.L.hook_resid_pre as bases, random unit directions, N+1 scan points
per base, read at the last block. `--model` builds a GPT-2-architecture HookedTransformer directly;
`--family` writes a realistic-shape random checkpoint of that family with `transformers` and loads it
through `model: {local: DIR}`, as a user's checkpoint would be (`--family all`: one table of all).
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import time
import warnings

import numpy as np
import torch

from synthact.errors import SynthactError
from synthact.metrics import curve_metrics
from synthact.scan import matmul_precision, scan_fast, scan_plain

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
}
SCAN_SPAN = 5.0  # the scan runs from A to A + SCAN_SPAN * ||A|| * D
GEN_D_SAE = 24576  # gpt2-small-res-jb's width
GEN_TARGET_L0 = 32  # the random SAE's encoder bias is set for about this many active latents
# The constructions of template-built kinds timed by --generation, each as the paper's paired target
# of real bases: name -> (kind, GenerationSettings overrides); the bare kind is the paper's construction.
CONSTRUCTIONS = {
    "synthetic_baseline": ("synthetic_baseline", {}),
    "synthetic_baseline/tol": ("synthetic_baseline", {"match": "tol"}),
    "synthetic_structured": ("synthetic_structured", {}),
    "synthetic_structured/pairwise": ("synthetic_structured", {"structure": "pairwise", "candidates": 16}),
    "random_latents": ("random_latents", {}),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", choices=sorted(MODEL_SHAPES), default="gpt2-small-shape", help="model shape (random weights)"
    )
    parser.add_argument(
        "--family", choices=[*FAMILIES, "all"],
        help="instead of --model: a realistic-shape random checkpoint of this family, loaded via model.local",
    )
    parser.add_argument("--layer", type=at_least(0), default=1, help="perturbation layer L (default 1)")
    parser.add_argument("--n-ctx", type=at_least(2), default=10, help="prompt length (default 10)")
    parser.add_argument("--steps", type=at_least(2), default=100, help="N: N+1 scan points per base (default 100)")
    parser.add_argument("--bases", type=at_least(1), help="bases for the fast path (default: 40 on CPU, 4000 on CUDA)")
    parser.add_argument("--plain-bases", type=at_least(1), default=3, help="bases for the plain paths (default 3)")
    parser.add_argument("--batch", type=at_least(1), help="scan points per fast-path batch (default: from free memory)")
    parser.add_argument("--js", action="store_true", help="also compute the JS distance (runs the unembedding)")
    parser.add_argument("--device", type=device_name, help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.add_argument(
        "--generation", type=at_least(1), nargs="?", const=200, metavar="BASES",
        help="also time reference statistics and drawing BASES (default 200) bases + targets of each kind",
    )
    parser.add_argument(
        "--d-sae", type=at_least(16), default=GEN_D_SAE, help=f"random SAE width for --generation/--e2e (default {GEN_D_SAE})"
    )
    parser.add_argument(
        "--e2e", type=at_least(1), nargs="?", const=1000, metavar="BASES",
        help="instead: the paper job's volume end to end, BASES (default 1000) bases x every kind, wall time by phase",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def at_least(low: int):
    """An argparse type: an integer >= low (argparse prints the message and exits 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum {low}")
        return value

    return parse


def device_name(text: str) -> str:
    """An argparse type: cpu, cuda or cuda:N."""
    if not re.fullmatch(r"cpu|cuda(:[0-9]{1,2})?", text):
        raise argparse.ArgumentTypeError(f"unknown device '{text}'; use cpu, cuda or cuda:N")
    return text


def run(args: argparse.Namespace) -> int:
    n_layers = MODEL_SHAPES[args.model]["n_layers"]
    if args.layer >= n_layers:
        raise SynthactError(f"--layer {args.layer} is out of range for {args.model} ({n_layers} blocks: 0..{n_layers - 1})")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SynthactError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    if args.e2e:
        report = end_to_end(args.model, args.layer, args.n_ctx, args.steps, args.e2e, device, args.d_sae)
        print(json.dumps(report, indent=2) if args.json else format_e2e(report))
        return 0
    if args.family == "all":
        reports = [_family_benchmark(args, family, device) for family in FAMILIES]
        print(json.dumps(reports, indent=2) if args.json else format_families(reports))
        return 0
    report = benchmark(
        model_name=args.family or args.model, layer=args.layer, n_ctx=args.n_ctx, steps=args.steps, device=device,
        n_bases=args.bases or (4000 if device.type == "cuda" else 40), plain_bases=args.plain_bases,
        batch=args.batch, js=args.js,
    )
    if args.generation:
        report["generation"] = generation_timing(
            args.model, args.layer, args.n_ctx, args.generation, device, report["fast_points_per_s"], args.steps,
            args.d_sae,
        )
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0


# ----------------------------------------------------------------------------- setup


def _family_benchmark(args, family: str, device: torch.device) -> dict:
    return benchmark(
        model_name=family, layer=args.layer, n_ctx=args.n_ctx, steps=args.steps, device=device,
        n_bases=args.bases or (4000 if device.type == "cuda" else 40), plain_bases=args.plain_bases,
        batch=args.batch, js=args.js,
    )


def family_model(family: str, device: torch.device):
    """A random-weight checkpoint of the family written with transformers, loaded through model.local."""
    import tempfile

    import transformers

    from synthact.backends import load_model
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_time(fn, device: torch.device, min_seconds: float, min_repeats: int = 1, max_repeats: int = 5):
    """Best wall time of fn over at least min_repeats runs (more while under min_seconds), and fn's output."""
    times = []
    while len(times) < min_repeats or (sum(times) < min_seconds and len(times) < max_repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return min(times), out


def _per_base(fn, inputs, device: torch.device) -> tuple[np.ndarray, float]:
    """Run fn base by base; return the stacked curves and the best time of one base."""
    curves, times = [], []
    for b in range(inputs[0].shape[0]):
        _sync(device)
        t0 = time.perf_counter()
        out = fn(*(t[b : b + 1] for t in inputs))
        _sync(device)
        times.append(time.perf_counter() - t0)
        curves.append(out if isinstance(out, np.ndarray) else next(iter(out.l2.values())).numpy())
    return np.concatenate(curves), min(times)


# ----------------------------------------------------------------------------- the paths


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


def matmul_peak(device: torch.device, dtype: str) -> float:
    """Peak matmul rate in TFLOP/s: best of a few square matmuls."""
    n = 8192 if device.type == "cuda" else 1024
    torch_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    a = torch.randn(n, n, device=device).to(torch_dtype)
    b = torch.randn(n, n, device=device).to(torch_dtype)
    reps = 10 if device.type == "cuda" else 3
    with matmul_precision(dtype):
        a @ b
        seconds, _ = _best_time(lambda: [a @ b for _ in range(reps)], device, min_seconds=0.5, max_repeats=3)
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


def benchmark(model_name, layer, n_ctx, steps, device, n_bases, plain_bases, batch, js) -> dict:
    """Run every path on the same inputs and return the measured numbers."""
    model = build_model(model_name, n_ctx, device)
    cfg = model.cfg
    if not 0 <= layer < cfg.n_layers:
        raise SynthactError(f"--layer {layer} is outside the model's blocks 0..{cfg.n_layers - 1}")
    read = cfg.n_layers - 1
    plain_bases = min(plain_bases, n_bases)
    tokens, base, direction, coeffs = scan_inputs(model, layer, n_bases, n_ctx, steps)
    points = n_bases * (steps + 1)
    sub = (tokens[:plain_bases], base[:plain_bases], direction[:plain_bases], coeffs[:plain_bases])
    step = coeffs[:plain_bases, 1].cpu().double().numpy()

    with matmul_precision("float32"):
        plain_paper_way(model, layer, read, *(t[:1] for t in sub))  # warm-up
        reference, plain_seconds = _per_base(lambda *t: plain_paper_way(model, layer, read, *t), sub, device)
        _, hooked_seconds = _per_base(lambda *t: scan_plain(model, layer, [read], *t, js=js), sub, device)
    ref_slope = curve_metrics(reference, step)["max_slope"]

    peaks = {p: matmul_peak(device, p) for p in precisions(device)}
    flops = flops_per_point(cfg, layer, cfg.n_layers - 1 if js else read, n_ctx, js)
    fast = {}
    for precision in precisions(device):
        def run_fast(precision=precision, n=n_bases):
            inputs = (t[:n] for t in (tokens, base, direction, coeffs))
            return scan_fast(model, layer, [read], *inputs, js=js, dtype=precision, max_points=batch)

        try:
            run_fast(n=2)  # warm-up: weight copies for this precision
        except RuntimeError as e:  # e.g. bf16 matmuls unsupported on this CPU
            fast[precision] = {"error": str(e).splitlines()[0]}
            continue
        on_cuda = device.type == "cuda"  # CUDA: the first full-size run also grows the allocator
        seconds, result = _best_time(
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
        "device": _device_name(device),
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
    sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=d_sae, device=str(device)))
    w_enc = torch.randn(d, d_sae, generator=gen) / typical_norm  # pre-activations ~ N(0, 1)
    threshold = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1 - GEN_TARGET_L0 / d_sae)))
    with torch.no_grad():
        sae.W_enc.copy_(w_enc)
        sae.b_enc.fill_(-threshold)
        sae.W_dec.copy_(torch.nn.functional.normalize(w_enc.T, dim=-1))
        sae.b_dec.zero_()
    return sae


def _generation_context(model_name, layer, n_ctx, device, d_sae: int):
    """Model and generation context (random SAE, random-token corpus, reference statistics), statistics seconds."""
    from synthact.corpus import Corpus
    from synthact.kinds import GenContext
    from synthact.spec import ReferenceSpec
    from synthact.stats import compute_stats

    model = build_model(model_name, n_ctx, device)
    sae = random_sae(model, layer, d_sae, device)
    rng = np.random.default_rng(0)
    corpus = Corpus(docs=rng.integers(0, model.cfg.d_vocab, (512, 256), dtype=np.int64), label="bench-random")
    _sync(device)
    t1 = time.perf_counter()
    stats = compute_stats(model, sae, corpus, layer, n_ctx, ReferenceSpec(), seed=0, device=str(device))
    _sync(device)
    t2 = time.perf_counter()
    ctx = GenContext(model=model, sae=sae, stats=stats, corpus=corpus, layer=layer, n_ctx=n_ctx, device=str(device))
    return model, ctx, t2 - t1


def _draw_kind(kind: str, ctx, n_bases: int):
    """Bases of `kind` and toward-targets of the same kind, at the default (the paper's) generation settings."""
    from synthact.directions import make_directions
    from synthact.kinds import GenerationSettings, draw

    settings = GenerationSettings()
    with torch.inference_mode():
        base = draw(kind, [np.random.default_rng([0, i]) for i in range(n_bases)], ctx, settings)
        dirs = make_directions(
            f"toward:{kind}", kind, base, [np.random.default_rng([1, i]) for i in range(n_bases)], ctx, settings
        )
    return base, dirs


def end_to_end(model_name, layer, n_ctx, steps, n_bases, device, d_sae: int = GEN_D_SAE) -> dict:
    """The paper job's volume (n_bases x 6 kinds, toward:same, N+1 points, fp32) with wall time by phase."""
    import tempfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    from synthact.scan import scan
    from synthact.spec import KINDS, ScanSpec

    t_start = time.perf_counter()
    model, ctx, stats_s = _generation_context(model_name, layer, n_ctx, device, d_sae)
    load_s = time.perf_counter() - t_start - stats_s  # imports, model, SAE, corpus
    read = model.cfg.n_layers - 1
    step_size = ScanSpec().step_size
    seconds = {"load": load_s, "statistics": stats_s, "generation": 0.0, "scan": 0.0, "write": 0.0}
    with tempfile.TemporaryDirectory() as out:
        for kind in KINDS:
            t0 = time.perf_counter()
            base, dirs = _draw_kind(kind, ctx, n_bases)
            _sync(device)
            t1 = time.perf_counter()
            coeffs = (step_size * torch.arange(steps + 1, device=device).float()).expand(n_bases, -1)
            tokens = torch.as_tensor(base.tokens, device=device)
            result = scan(model, layer, [read], tokens, base.vectors, dirs.vectors, coeffs)
            _sync(device)
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
        "device": _device_name(device),
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


def generation_timing(
    model_name, layer, n_ctx, n_bases, device, scan_points_per_s, steps, d_sae: int = GEN_D_SAE
) -> dict:
    """Seconds for reference statistics and for drawing n_bases bases + toward-targets of each kind.

    Each kind's time is also given as a fraction of the time the fast fp32 scan takes for those bases;
    so is each construction of CONSTRUCTIONS, timed as paired targets built from real bases' codes.
    """
    from synthact.kinds import GenerationSettings, draw
    from synthact.spec import KINDS, ReferenceSpec

    _, ctx, stats_seconds = _generation_context(model_name, layer, n_ctx, device, d_sae)
    scan_seconds = n_bases * (steps + 1) / scan_points_per_s
    kinds = {}

    def timed(name, work, *args, **kwargs):
        t0 = time.perf_counter()
        work(*args, **kwargs)
        _sync(device)
        seconds = time.perf_counter() - t0
        kinds[name] = {"seconds": seconds, "bases_per_s": n_bases / seconds, "fraction_of_scan": seconds / scan_seconds}

    for kind in KINDS:
        timed(kind, _draw_kind, kind, ctx, n_bases)
    with torch.inference_mode():
        real = draw("real", [np.random.default_rng([0, i]) for i in range(n_bases)], ctx)
        for name, (kind, overrides) in CONSTRUCTIONS.items():
            rngs = [np.random.default_rng([1, i]) for i in range(n_bases)]
            timed(f"paired {name}", draw, kind, rngs, ctx, GenerationSettings(**overrides), template=real)
    return {
        "d_sae": d_sae,
        "reference_prompts": ReferenceSpec().n_prompts,
        "mean_l0": float(ctx.stats.l0.float().mean()),
        "stats_seconds": stats_seconds,
        "bases": n_bases,
        "scan_seconds_fast_fp32": scan_seconds,
        "kinds": kinds,
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def format_families(reports: list[dict]) -> str:
    """One line per family: fast fp32 against the plain path and the matmul probe."""
    r0 = reports[0]
    lines = [
        f"synthact bench --family all: L={r0['layer']}, n_ctx {r0['n_ctx']}, {r0['points_per_base']} points/base, "
        f"js={r0['js']}; device {r0['device']}, torch {r0['torch']}, {r0['date']}",
        f"{'family':<8}{'shape':<62}{'plain/s':>9}{'fast/s':>9}{'x plain':>9}{'% probe':>9}{'dev/max d':>11}",
    ]
    for r in reports:
        lines.append(
            f"{r['model']:<8}{r['shape']:<62}{r['plain_points_per_s']:>9,.0f}{r['fast_points_per_s']:>9,.0f}"
            f"{r['speedup_vs_plain']:>9.1f}{100 * r['fraction_of_peak_fp32']:>8.0f}%{r['max_rel_dev_l2']:>11.1e}"
        )
    lines.append(f"fast = fast path fp32; % probe = its matmul rate / the fp32 matmul probe "
                 f"({r0['peak_tflops_fp32']:.3f} TFLOP/s); plain = the paper's loop (hook + run_with_cache).")
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
            f"{'kind':<36}{'seconds':>9}{'bases/s':>10}{'x scan':>9}",
        ]
        for kind, k in g["kinds"].items():
            lines.append(f"{kind:<36}{k['seconds']:>9.2f}{k['bases_per_s']:>10,.0f}{k['fraction_of_scan']:>9.2f}")
    return "\n".join(lines)
