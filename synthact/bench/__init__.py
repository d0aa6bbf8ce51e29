"""`synthact bench`: scan speed (plain vs fast path, points/s, TFLOP/s, deviations), generation and
end-to-end timings, (`--analysis ROWS`) compare / report on ROWS curves, (`--calibration`) the type-I
error and coverage of compare's tests and intervals by simulation, and (`--memory`) model loading's peak
memory. `--model` builds a GPT-2-architecture HookedTransformer directly; `--family` writes a realistic-shape
random checkpoint of that family with `transformers` and loads it through `model: {local: DIR}`, as a user's checkpoint would be (`--family all`: one table of all).
"""

from __future__ import annotations

import argparse
import json
import re

import torch

from synthact.bench.fixtures import FAMILIES, GEN_D_SAE, MODEL_SHAPES, n_layers
from synthact.bench.generation import end_to_end, format_e2e, generation_timing
from synthact.bench.memory import SHAPES as MEMORY_SHAPES
from synthact.bench.scan_speed import benchmark, format_families, format_table
from synthact.errors import SynthactError
from synthact.spec.layers import check_layer


MAX_BENCH_N_CTX = 1024  # GPT-2 small's context; longer prompts make attention patterns that do not fit


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
        "--reference-prompts", type=at_least(64), metavar="N",
        help="with --generation: prompts of the reference statistics (default: the spec's reference.n_prompts)",
    )
    parser.add_argument(
        "--e2e", type=at_least(1), nargs="?", const=1000, metavar="BASES",
        help="instead: the paper job's volume end to end, BASES (default 1000) bases x every kind, wall time by phase",
    )
    parser.add_argument(
        "--analysis", type=at_least(14), metavar="ROWS",
        help="instead: time `synthact compare` and `synthact report` (wall, peak RSS) on a synthetic results "
             "directory of ROWS curves (the paper-toy grid, curves included), without and with cached aggregates",
    )
    parser.add_argument("--keep", metavar="DIR", help="with --analysis: build the results under DIR and keep them")
    parser.add_argument(
        "--calibration", type=at_least(10), nargs="?", const=1000, metavar="REPLICATES",
        help="instead: type-I error and coverage of every test and interval `synthact compare` prints, by simulation "
             "(REPLICATES data sets per configuration, default 1000; n = 100, 1000, 10,000)",
    )
    parser.add_argument("--jobs", type=at_least(1), default=1, help="with --calibration: processes (default 1)")
    parser.add_argument(
        "--memory", type=at_least(1), nargs="*", metavar="LAYERS",
        help="instead: peak host memory of loading Gemma-2-2B- and Llama-3.1-8B-shaped random bf16 checkpoints cut "
             "to LAYERS blocks (default 2 4; the last two give the figure at full depth) against their weights",
    )
    parser.add_argument("--memory-shape", action="append", choices=list(MEMORY_SHAPES),
                        help="with --memory: only this shape (repeatable; default both)")
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
    if args.calibration:
        from synthact.bench.calibration import calibration, format_calibration

        rows = calibration(args.calibration, jobs=args.jobs)
        print(json.dumps(rows, indent=2) if args.json else format_calibration(rows))
        return 0
    if args.memory is not None:
        from synthact.bench.memory import format_memory, memory_benchmark

        report = memory_benchmark(args.memory or [2, 4], args.memory_shape)
        print(json.dumps(report, indent=2) if args.json else format_memory(report))
        return 0
    if args.analysis:
        from synthact.bench.analysis import analysis_benchmark, format_analysis

        report = analysis_benchmark(args.analysis, args.keep)
        print(json.dumps(report, indent=2) if args.json else format_analysis(report))
        return 0
    for name in FAMILIES if args.family == "all" else [args.family or args.model]:
        check_layer(args.layer, n_layers(name), name, fix="lower --layer")
    if args.n_ctx > MAX_BENCH_N_CTX:
        raise SynthactError(f"--n-ctx {args.n_ctx} is longer than the {MAX_BENCH_N_CTX} positions of GPT-2 small "
                            "(attention over it would not fit in memory); the paper's prompts are 10 tokens")
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
            args.d_sae, args.reference_prompts,
        )
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0


def _family_benchmark(args, family: str, device: torch.device) -> dict:
    return benchmark(
        model_name=family, layer=args.layer, n_ctx=args.n_ctx, steps=args.steps, device=device,
        n_bases=args.bases or (4000 if device.type == "cuda" else 40), plain_bases=args.plain_bases,
        batch=args.batch, js=args.js,
    )
