"""`synthact bench --analysis ROWS`: wall time and peak memory of `synthact compare` and `synthact report` on ROWS curves.

The results directory is built as `synthact run` lays it out: the grid of jobs/paper-toy.yaml (14 cells:
real bases toward seven kinds of target, two scans), ROWS/14 curves per cell in shards of `SHARD_ROWS`,
every column of the result schema with 101-point L2 curves (plateau-then-blow-up, per-kind centre and
width) and their metrics from `scan.metrics.curve_metrics`, written by `run.store.Store` (job.json, each
shard with its spec hash and its manifest record: size and sha256, which every reader checks). A block of
curves is drawn once per cell and written to each of its shards (so building 1e7 rows takes minutes,
not hours); the analysis reads every shard as it would real ones.

Each command runs in its own process (its peak RSS from resource.getrusage in a small launcher), first on a directory
without cached aggregates (`cold`), then again with them (`rerun`: what a second compare or report costs).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from synthact import results
from synthact.run.store import Store
from synthact.scan.metrics import curve_metrics
from synthact.spec import load_job, parse_job

PAPER_TOY = Path(__file__).resolve().parents[2] / "jobs" / "paper-toy.yaml"
SHARD_ROWS = 50_000
CENTRE = {"real": 52.0, "sae_recon": 53.0, "synthetic_structured": 55.0, "synthetic_baseline": 57.0,
          "gaussian": 65.0, "single_latent": 60.0, "random_latents": 62.0}


def build(out: Path, rows: int, seed: int = 0) -> dict:
    """Write a results directory of about `rows` curves; return its size."""
    toy = load_job(PAPER_TOY)
    per_cell = max(1, rows // len(toy.cells()))
    job = parse_job(toy.canonical() | {"bases_per_cell": per_cell, "shard_size": min(SHARD_ROWS, per_cell)})
    store = Store(out, job)  # job.json, and each shard with its spec hash and manifest record (size, sha256)
    schema = results.result_schema(js=False, keep_curves=True)
    blocks: dict[str, pa.Table] = {}
    written = 0
    for shard in job.shards():
        cell = shard.cell
        if cell.cell_id not in blocks:
            blocks[cell.cell_id] = _block(job, cell, min(SHARD_ROWS, per_cell), schema, seed)
        table = blocks[cell.cell_id].slice(0, shard.n_bases)
        table = table.set_column(schema.get_field_index("shard_id"), "shard_id", pa.array([shard.shard_id] * shard.n_bases))
        table = table.set_column(schema.get_field_index("base_index"), "base_index",
                                 pa.array(np.arange(shard.start, shard.stop, dtype=np.int32)))
        store.write_shard(shard, table)
        written += table.num_rows
    size = sum(p.stat().st_size for p in (out / "results").rglob("*.parquet"))
    return {"rows": written, "cells": len(job.cells()), "shards": len(job.shards()), "parquet_bytes": size}


def _block(job, cell, n: int, schema: pa.Schema, seed: int) -> pa.Table:
    """n rows of one cell with every column: seeded sigmoid curves whose blow-up depends on the target kind."""
    rng = np.random.default_rng([seed, int(cell.cell_id, 16) % 2**31])
    steps = cell.scan.steps
    centre = rng.normal(CENTRE[cell.target_kind or "real"], 8.0, n) * steps / 100
    width = rng.lognormal(np.log(3.0), 0.3, n)
    height = rng.lognormal(np.log(25.0), 0.2, n)
    points = np.arange(steps + 1)
    curves = height[:, None] / (1 + np.exp(-(points - centre[:, None]) / width[:, None]))
    curves = (curves - curves[:, :1] + rng.normal(0, 0.05, curves.shape)).clip(min=0).astype(np.float32)
    curves[:, 0] = 0
    step = np.full(n, cell.scan.step_size or 0.25)
    metrics = curve_metrics(curves, step, settings=job.metrics)
    columns = {"cell_id": [cell.cell_id] * n, **{a: [v] * n for a, v in cell.settings().items()},
               "read_layer": np.full(n, job.model[0].toy.n_layers - 1, np.int32), "seed": np.full(n, job.seed),
               "base_seed": rng.integers(0, 2**62, n), "target_seed": rng.integers(0, 2**62, n),
               "scan_mode": [cell.scan.mode] * n, "steps": np.full(n, steps, np.int32), "step_size": step,
               "stop_at_target": [cell.scan.stop_at_target] * n, "target_distance": rng.normal(25, 2, n),
               "target_step": np.full(n, steps, np.int32), **metrics,
               "base_norm": rng.normal(21, 1, n), "target_norm": rng.normal(21, 1, n),
               "base_doc": rng.integers(0, 2048, n), "base_offset": rng.integers(0, 54, n),
               "base_tokens": pa.FixedSizeListArray.from_arrays(rng.integers(0, 512, n * job.n_ctx).astype(np.int32),
                                                                job.n_ctx).cast(results.LIST_I32),
               "l2_curve": pa.FixedSizeListArray.from_arrays(curves.ravel(), steps + 1).cast(results.LIST_F32)}
    arrays = [pa.array(columns[f.name], type=f.type) if f.name in columns and not isinstance(columns[f.name], pa.Array)
              else columns.get(f.name, pa.nulls(n, f.type)) for f in schema]
    arrays[schema.get_field_index("base_index")] = pa.array(np.arange(n, dtype=np.int32))
    arrays[schema.get_field_index("shard_id")] = pa.array([""] * n)
    return pa.Table.from_arrays(arrays, schema=schema)


# A small launcher runs each command: a child's peak RSS counts the memory of the process that forked it
# (Linux keeps the high-water mark across fork and exec), so it must not be forked from this big process.
LAUNCHER = """
import resource, subprocess, sys
code = subprocess.run([sys.executable, "-m", "synthact.cli", *sys.argv[1:]], stdout=subprocess.DEVNULL).returncode
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, code)
"""


def timed(argv: list[str]) -> dict:
    """Run `synthact ARGV` in its own process: wall seconds, its peak RSS in MB, exit code."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                        os.environ.get("PYTHONPATH", "")]))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", LAUNCHER, *argv], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    peak_kb, code = (int(x) for x in done.stdout.split())
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(peak_kb / 1024, 1), "exit": code,
            **({"error": done.stderr[-2000:]} if code else {})}


def analysis_benchmark(rows: int, keep: str | None = None) -> dict:
    """Build ROWS curves (under `keep`, or a temporary directory removed after), then time compare and report."""
    root = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="synthact-bench-analysis-"))
    out = root / "out"
    try:
        start = time.perf_counter()
        report = {"built": build(out, rows)}
        report["built"]["build_s"] = round(time.perf_counter() - start, 1)
        for name, argv in (("compare", ["compare", str(out)]),
                           ("report", ["report", str(out), "--html", str(root / "report.html")])):
            shutil.rmtree(out / "analysis", ignore_errors=True)  # cold: no cached aggregates
            report[f"{name}_cold"] = timed(argv)
            report[f"{name}_rerun"] = timed(argv)
        return report
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def format_analysis(report: dict) -> str:
    built = report["built"]
    lines = [f"{built['rows']:,} curves in {built['cells']} cells, {built['shards']} shards, "
             f"{built['parquet_bytes'] / 1e9:.2f} GB of Parquet (built in {built['build_s']} s)",
             f"{'command':<16}{'wall s':>10}{'peak RSS MB':>14}"]
    for name in ("compare_cold", "compare_rerun", "report_cold", "report_rerun"):
        r = report[name]
        lines.append(f"{name.replace('_', ' '):<16}{r['wall_s']:>10}{r['peak_rss_mb']:>14}"
                     + ("" if r["exit"] == 0 else f"  FAILED ({r['exit']}): {r.get('error', '')[-300:]}"))
    return "\n".join(lines)
