"""Builders shared by the tests: toy job specs, the trained toy backend and generation context, fake result
directories laid out like `synthact run`'s, scan inputs, and the command line in a subprocess."""

from __future__ import annotations

import contextlib
import functools
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import yaml

from synthact import results
from synthact.generation import diagnostics
from synthact.generation.context import GenContext
from synthact.generation.stats import ReferenceStats, compute_stats
from synthact.inputs.backends import load_backend
from synthact.scan.metrics import curve_metrics
from synthact.spec import (
    CorpusSpec,
    Job,
    ModelSpec,
    ReferenceSpec,
    SAESpec,
    ToyCorpusSpec,
    ToyModelSpec,
    ToySAESpec,
    derive_seed,
    parse_job,
)

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-4  # max |fast - plain| relative to the largest distance


def toy_job(**overrides) -> dict:
    job = {
        "name": "t",
        "model": {"toy": {}},
        "sae": {"toy": {}},
        "corpus": {"toy": {}},
        "layers": [1],
        "base_kinds": ["real", "synthetic_structured"],
        "directions": ["toward:same", "isotropic"],
        "bases_per_cell": 10,
        "shard_size": 4,
    }
    job.update(overrides)
    return job


CENTRE = {"real": 12.0, "sae_recon": 11.5, "synthetic_structured": 9.0, "synthetic_baseline": 7.5, "gaussian": 4.0,
          "random_latents": 7.0, "single_latent": 5.0, "synthetic_cooccur": 9.5, "control_swapped": 11.0,
          "control_other_latents": 8.0}


WIDTH = {"real": 1.0, "sae_recon": 1.1, "synthetic_structured": 1.2, "synthetic_baseline": 2.5, "gaussian": 3.5,
         "random_latents": 2.6, "single_latent": 3.0, "synthetic_cooccur": 1.3, "control_swapped": 1.1,
         "control_other_latents": 2.0}


# The paper's two experiments, for make_job(scan=PAPER_SCANS): the sensitivity scan (interpolate: the slope verdicts
# read it) and a plateau scan (step: the plateau verdict reads it). Interpolation needs a target: TOWARD directions.
PAPER_SCANS = [{"name": "sensitivity", "mode": "interpolate", "steps": 20},
               {"name": "plateaus", "steps": 20, "step_size": 0.5}]
TOWARD = ["toward:same", "toward:gaussian", "toward:synthetic_baseline", "toward:synthetic_structured"]


def make_job(bases: int = 40, steps: int = 20, **overrides) -> Job:
    spec = {
        "name": "fake",
        "model": {"toy": {"n_layers": 4}},
        "sae": {"toy": {}},
        "corpus": {"toy": {}},
        "layers": [1],
        "read_layers": [2, -1],
        "base_kinds": ["real", "gaussian", "synthetic_baseline", "synthetic_structured"],
        "directions": ["toward:same", "isotropic", "toward:gaussian", "toward:synthetic_baseline",
                       "toward:synthetic_structured"],
        "scan": {"steps": steps, "step_size": 0.5},
        "metrics": {"plateau_mode": "relative", "plateau_threshold": 0.1},  # the fake curves' heights vary
        "bases_per_cell": bases,
        "shard_size": bases // 2,
    } | overrides
    return parse_job(spec)


def shard_rows(job: Job, shard, seed: int = 0, keep_curves: bool = True, read_layers=(2, 3)) -> pa.Table:
    """Rows of one shard with every column of the result schema; curves from a seeded sigmoid process."""
    cell = shard.cell
    s = cell.settings()
    rng = np.random.default_rng([seed, shard.start, int(cell.cell_id, 16) % 2**31])
    n_steps, step = cell.scan.steps, cell.scan.step_size
    columns: dict[str, list] = {}
    for read_layer in read_layers:
        b = shard.n_bases
        # Base and target kind both shape the curve, so kinds differ along both comparison axes.
        target = cell.target_kind or cell.base_kind
        centre = rng.normal((CENTRE[cell.base_kind] + CENTRE[target]) / 2, 1.5, b) + (2.0 if cell.direction == "isotropic" else 0.0)
        height = rng.lognormal(np.log(10.0 * read_layer), 0.3, b)
        n = np.arange(n_steps + 1)
        width = rng.normal((WIDTH[cell.base_kind] + WIDTH[target]) / 2, 0.1, b)[:, None]
        curves = height[:, None] * (1 / (1 + np.exp(-(n - centre[:, None]) / width)) - 1 / (1 + np.exp(centre[:, None] / width)))
        curves = np.maximum(curves + rng.normal(0, 0.05, curves.shape), 0.0)
        curves[:, 0] = 0.0
        metrics = curve_metrics(curves, np.full(b, step), settings=job.metrics)
        synthetic = cell.base_kind.startswith("synthetic")
        k = 8
        rows = {
            "cell_id": [cell.cell_id] * b, "shard_id": [shard.shard_id] * b,
            **{axis: [value] * b for axis, value in s.items()}, "read_layer": [read_layer] * b,
            "base_index": list(range(shard.start, shard.stop)),
            "seed": [job.seed] * b,  # base seeds as the worker derives them: the target kinds of a base kind pair up
            "base_seed": [derive_seed(job.seed, "base", cell.base_settings(), i) for i in range(shard.start, shard.stop)],
            "target_seed": rng.integers(0, 2**62, b).tolist(), "scan_mode": [cell.scan.mode] * b,
            "scan_start": [cell.scan.start] * b, "stop_at_target": [cell.scan.stop_at_target] * b,
            **{k: [v] * b for k, v in job.metrics.model_dump().items()},
            "steps": [n_steps] * b, "step_size": [step] * b,
            **{name: values.tolist() for name, values in metrics.items()},
            "base_norm": rng.normal(50, 3, b).tolist(),
            "target_norm": rng.normal(50, 3, b).tolist() if cell.target_kind else [None] * b,
            "base_l0": rng.integers(5, 15, b).tolist() if synthetic else [None] * b,
            "target_l0": [None] * b, "direction_latent": [None] * b,
            "base_doc": rng.integers(0, 1000, b).tolist(), "base_offset": rng.integers(0, 50, b).tolist(),
            "base_tokens": rng.integers(0, 512, (b, job.n_ctx)).tolist(),
            "target_doc": [None] * b, "target_offset": [None] * b, "target_tokens": [None] * b,
            "base_latents": rng.integers(0, 512, (b, k)).tolist() if synthetic else [None] * b,
            "base_latent_values": rng.random((b, k)).tolist() if synthetic else [None] * b,
            "target_latents": [None] * b, "target_latent_values": [None] * b,
        }
        if cell.target_kind:  # the target codes' diagnostics (analysis/diagnostics.py), from their own draws
            other = np.random.default_rng([seed, shard.start, int(cell.cell_id, 16) % 2**31, read_layer])
            rows |= {c: other.normal(-1.0, 0.3, b).tolist() for c in diagnostics.COLUMNS if c != "target_value_quantiles"}
            rows["target_value_quantiles"] = other.random((b, 5)).tolist()
            rows["target_step"] = other.integers(n_steps // 3, n_steps, b).tolist()  # where the target is reached
        if keep_curves:
            rows["l2_curve"] = curves.tolist()
        for name, values in rows.items():
            columns.setdefault(name, []).extend(values)
    schema = results.result_schema(js=True, keep_curves=keep_curves)
    n = len(columns["cell_id"])
    return pa.table({f.name: pa.array(columns.get(f.name, [None] * n), type=f.type) for f in schema}, schema=schema)


def twin_job(name: str, bases: int = 8) -> Job:
    """A small twin of jobs/<name>.yaml: the same kinds, directions, generation settings and scans (so the same
    panels), one layer, `bases` bases per cell; its rows come from `write_results` (read layer 3)."""
    spec = yaml.safe_load((ROOT / "jobs" / f"{name}.yaml").read_text())
    spec.update(layers=spec["layers"][:1], bases_per_cell=bases, shard_size=bases)
    return parse_job(spec)


def write_results(job: Job, out: Path, seed: int = 0, keep_curves: bool = True,
                  read_layers=(2, 3)) -> dict[str, pa.Table]:
    """Write every shard as `synthact run` does (`Store`: job.json, each file with its manifest record); return each
    cell's rows."""
    from synthact.run.store import Store

    store = Store(out, job)
    cells: dict[str, list[pa.Table]] = {}
    for shard in job.shards():
        table = shard_rows(job, shard, seed, keep_curves, read_layers)
        store.write_shard(shard, table)
        cells.setdefault(shard.cell.cell_id, []).append(table)
    return {cid: pa.concat_tables(tables) for cid, tables in cells.items()}


def finite(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x[np.isfinite(x)]


LAYER, N_CTX = 1, 10


@functools.cache
def toy_backend():
    """The trained toy model + SAE (layer 1) + toy corpus, built once per test process."""
    return load_backend(
        ModelSpec(toy=ToyModelSpec()), SAESpec(toy=ToySAESpec()), CorpusSpec(toy=ToyCorpusSpec()), [LAYER], "cpu",
        n_ctx=N_CTX,
    )


@functools.cache
def toy_stats(n_prompts: int = 2048, seed: int = 0) -> ReferenceStats:
    b = toy_backend()
    return compute_stats(
        b.model.model, b.saes[LAYER].sae, b.corpus, LAYER, N_CTX, ReferenceSpec(n_prompts=n_prompts), seed, "cpu"
    )


def toy_context(n_prompts: int = 2048) -> GenContext:
    b = toy_backend()
    return GenContext(b.model.model, b.saes[LAYER].sae, toy_stats(n_prompts), b.corpus, LAYER, N_CTX, "cpu")


def hand_context(w_dec, freq, codes, values=None) -> GenContext:
    """A sae_lens SAE with decoder rows `w_dec` (normalised), frequencies `freq`, and a pool of `codes` (lists of
    latent ids) with `values` (lists alike; all 1 when not given)."""
    from sae_lens import StandardSAE, StandardSAEConfig

    w = torch.nn.functional.normalize(torch.tensor(w_dec, dtype=torch.float32), dim=-1)
    d_sae, d_model = w.shape
    sae = StandardSAE(StandardSAEConfig(d_in=d_model, d_sae=d_sae))
    with torch.no_grad():
        sae.W_dec.copy_(w)
    n = len(codes)
    offsets = torch.tensor(np.cumsum([0, *map(len, codes)]), dtype=torch.int64)
    latents = torch.tensor([j for c in codes for j in c], dtype=torch.int32)
    flat = [v for c in values for v in c] if values is not None else [1.0] * latents.shape[0]
    stats = ReferenceStats(
        layer=0, acts=torch.zeros(n, d_model), code_offsets=offsets, code_latents=latents,
        code_values=torch.tensor(flat, dtype=torch.float32), freq=torch.tensor(freq, dtype=torch.float64),
        value_samples=torch.zeros(0), value_counts=torch.zeros(d_sae, dtype=torch.int64),
        l0=torch.tensor([len(c) for c in codes]), mean=torch.zeros(d_model, dtype=torch.float64),
        cov=torch.eye(d_model, dtype=torch.float64), chol=torch.eye(d_model, dtype=torch.float64),
        norms=torch.ones(n), code_norms=torch.ones(n),
    )
    return GenContext(model=None, sae=sae, stats=stats, corpus=None, layer=0, n_ctx=1, device="cpu")


def scan_inputs(model, layer, n_bases=3, n_ctx=7, steps=20, seed=0):
    """Real activations at resid_pre L as bases, random unit directions, step coefficients of 0.5*||A||/steps*4."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, model.cfg.d_vocab, (n_bases, n_ctx), generator=gen)
    _, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=f"blocks.{layer}.hook_resid_pre")
    base = cache[f"blocks.{layer}.hook_resid_pre"][:, -1].detach().cpu()
    direction = torch.randn(n_bases, model.cfg.d_model, generator=gen)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    step = 4 * base.norm(dim=-1, keepdim=True) / steps
    coeffs = torch.arange(steps + 1).float() * step
    return tokens, base, direction, coeffs


def assert_agree(fast, plain, read_layers, js):
    for r in read_layers:
        scale = plain.l2[r].abs().max()
        assert scale > 1e-3, "degenerate curves: the test would pass trivially"
        dev = (fast.l2[r] - plain.l2[r]).abs().max()
        assert dev <= TOL * scale, f"read layer {r}: max |fast - plain| = {dev:.3g} vs scale {scale:.3g}"
    if js:
        assert plain.js.max() > 1e-2
        dev = (fast.js - plain.js).abs().max()
        assert dev <= 10 * TOL * plain.js.max(), f"JS: max |fast - plain| = {dev:.3g}"
    else:
        assert fast.js is None and plain.js is None


def synthact(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """`synthact ARGS` through `synthact.cli.main` in this process, as the console script calls it: the exit code
    and what it printed (an exception that escapes `main` fails the test, where a process would print a traceback).
    In-process saves each call the seconds of importing torch, TransformerLens and Ray afresh."""
    from synthact.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    here = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = main(list(args))
            except SystemExit as e:  # argparse: --help (0), a usage error (2)
                code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess(["synthact", *args], code, stdout.getvalue(), stderr.getvalue())


def command(*argv: str) -> int:
    """A `synthact` command run in this process, its SynthactError raised rather than printed (cli.main prints it)."""
    from synthact import cli

    args = cli.build_parser(list(argv)).parse_args(list(argv))
    return args.func(args)


def synthact_process(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """`python -m synthact.cli ARGS` in a fresh process (this checkout's code), for what only a process shows."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "synthact.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)


@contextlib.contextmanager
def network_attempts():
    """Every outgoing connection this process attempts meanwhile, recorded (address) and refused: what a test of
    "fails fast without the network" checks instead of a wall-clock time (no connection, or one probe and no
    retries)."""
    import socket

    attempts, original = [], socket.socket.connect

    def connect(sock, address):
        attempts.append(address)
        raise ConnectionRefusedError(f"refused by the test (connection to {address})")

    socket.socket.connect = connect
    try:
        yield attempts
    finally:
        socket.socket.connect = original


def write_job(path: Path, **fields) -> Path:
    job = toy_job(name="cli", base_kinds=["real"], directions=["isotropic"], scan={"steps": 10}, bases_per_cell=2,
                  shard_size=2, reference={"n_prompts": 128}, device="cpu", wandb=False)
    path.write_text(yaml.safe_dump(job | fields))
    return path


# A toy SAE for tests of mechanics (loading, checks), not science: trained in well under a second.
QUICK_SAE = ToySAESpec(d_sae=64, training_tokens=4096)


def saved_toy_sae(layer: int, sae: ToySAESpec = ToySAESpec(), **model) -> str:
    """The directory of a toy SAE (sae_lens format) for `layer` of the toy model with fields `model`."""
    backend = load_backend(ModelSpec(toy=ToyModelSpec(**model)), SAESpec(toy=sae),
                           CorpusSpec(toy=ToyCorpusSpec()), [layer], "cpu")
    return str(backend.saes[layer].path)


def rows(shard, n=3) -> pa.Table:
    return pa.table({"cell_id": [shard.cell.cell_id] * n, "shard_id": [shard.shard_id] * n, "x": list(range(n))})


# --------------------------------------------------------------------------- Ray tests

# 8 cells of 12 shards each: 96 shards, a few seconds of work, so the second worker actor is
# loaded (about a second after the first) long before the sweep ends.
RAY_TINY = toy_job(
    name="ray-tiny", read_layers=[-1], base_kinds=["real", "gaussian", "synthetic_structured"],
    generation={"structure": ["pairwise"], "candidates": [4, 16]}, scan={"steps": 8}, bases_per_cell=24, shard_size=2,
    reference={"n_prompts": 256}, device="cpu", wandb=False,
    ray={"num_gpus": 0, "num_cpus": 1, "max_in_flight": 2, "max_retries": 2, "dashboard": False},
)


def canonical(table: pa.Table) -> pa.Table:
    """Rows in a fixed order, so two runs compare row for row."""
    return table.sort_by([("cell_id", "ascending"), ("read_layer", "ascending"), ("base_index", "ascending")])


def assert_same_rows(out: Path, expected: pa.Table) -> None:
    rows = canonical(results.read_table(out))
    keys = list(zip(rows["cell_id"].to_pylist(), rows["read_layer"].to_pylist(), rows["base_index"].to_pylist()))
    assert len(keys) == len(set(keys)), "a curve was written twice"
    assert rows.num_rows == expected.num_rows
    differ = {c: sorted({s for s, a, b in zip(rows["shard_id"].to_pylist(), rows[c].to_pylist(), expected[c].to_pylist())
                         if not same_value(a, b)})
              for c in rows.column_names if not rows[c].equals(expected[c])}
    differ = {c: shards for c, shards in differ.items() if shards}
    assert not differ, f"rows differ from the undisturbed run (column: shards): {differ}"


def same_value(a, b) -> bool:
    """Two cells of a result column are equal, NaN in both (or at the same place of two lists) counting as equal."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)


def visible_files(out: Path) -> list[Path]:
    return [p for p in (out / "results").rglob("*") if p.is_file() and not p.name.startswith(".")]
