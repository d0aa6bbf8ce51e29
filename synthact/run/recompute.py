"""`synthact verify OUT --recompute [N]`: stored curves and metrics recomputed from their rows alone.

Per cell, N bases drawn with a fixed seed (all of them with N = 0), each with its rows of every read
layer. From a row alone: the base A and the target T or direction D are rebuilt
(`kinds.from_provenance`, `directions.direction_from_provenance`; T of `toward_recon` is A's SAE
reconstruction), the scan reruns with the row's settings (mode, steps, step_size, start, stop_at_target)
on the fast path (`synthact.scan.scan`) in batches, and the metrics are recomputed with the row's metric
settings (`curve_metrics`) from the stored curve where the row keeps one (itself checked against the
rescan; float noise in a rescan can move an argmax between two near-equal slopes), else from the rescan.
A row recomputes when ||T - A|| agrees to RTOL, its target step is equal, every stored curve agrees with
the rescan to within CURVE_RTOL of the curve's largest value, integer metrics are equal and the others
agree to METRIC_RTOL. The model, SAEs and reference statistics load as a worker's do (`load_worker`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from pydantic import ValidationError

from synthact.errors import SynthactError
from synthact.generation.directions import direction_from_provenance
from synthact.generation.kinds import from_provenance
from synthact.layout import STATS, join, resolve_location
from synthact.results import JS_METRICS, METRICS, sweep_cells
from synthact.run.local_executor import load_worker
from synthact.run.store import read_claim
from synthact.run.worker import Worker, stop_point, target_steps
from synthact.scan import scan
from synthact.scan.metrics import curve_metrics, last_point
from synthact.spec import Job, MetricsSpec, ScanSpec, format_validation_error

RTOL = 1e-5  # ||T - A||
CURVE_RTOL = 1e-4  # of the curve's largest value (the fast path against itself, float32)
METRIC_RTOL = 1e-3  # float metrics (slopes divide curve differences by the step)
SEED = 0  # which bases are sampled
# What a row is rebuilt and rescanned from, besides the metric settings (MetricsSpec's fields).
INPUTS = ("cell_id", "scan", "layer", "read_layer", "base_index", "base_kind", "direction", "target_kind", "add_error",
          "base_seed", "target_seed", "base_tokens", "base_latents", "base_latent_values", "target_tokens",
          "target_latents", "target_latent_values", "direction_latent", "scan_mode", "scan_start", "steps",
          "step_size", "stop_at_target", "target_distance", "target_step", "error_source", "target_other_tokens")
CURVES = ("l2_curve", "js_curve")
COLUMNS = (*INPUTS, *MetricsSpec.model_fields, *METRICS, *JS_METRICS, *CURVES)
INTEGER = {"target_step", *(name for name, (kind, _) in (METRICS | JS_METRICS).items() if pa.types.is_integer(kind))}


@dataclass
class CellRecompute:
    """One cell's check: how many of its sampled rows recompute, and what differs in those that do not."""

    cell_id: str
    label: str
    rows: int = 0
    matched: int = 0
    mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.matched == self.rows and not self.mismatches


def recompute(out, per_cell: int = 0) -> list[CellRecompute]:
    """Recompute `per_cell` bases of every cell of OUT (0: all), one model load per (model, SAE) group."""
    if per_cell < 0:
        raise SynthactError(f"recompute (--recompute N) takes a number of bases per cell >= 0 (0: all), not {per_cell}")
    fs, root, uri = resolve_location(out)
    claim = read_claim(fs, root, uri)
    if claim is None:
        raise SynthactError(f"'{uri}' is not a synthact output directory (no job.json)")
    try:
        job = Job.model_validate(claim["spec"])
    except ValidationError as e:
        raise SynthactError(f"the spec in '{uri}/job.json' does not parse with this version of synthact, so its "
                            f"rows cannot be recomputed:\n{format_validation_error(e)}") from None
    except (ValueError, TypeError) as e:
        raise SynthactError(f"the spec in '{uri}/job.json' does not parse with this version of synthact, so its "
                            f"rows cannot be recomputed ({str(e).splitlines()[0]})") from None
    cells = {c.cell_id: c for c in job.cells()}
    stored = sweep_cells(out)
    checks, workers = [], {}
    for rows in sorted(stored, key=lambda r: str(cells[r.cell_id].group) if r.cell_id in cells else ""):
        cell = cells.get(rows.cell_id)
        if cell is None:
            checks.append(CellRecompute(rows.cell_id, "?", rows.num_rows, 0, ["not a cell of the job's spec"]))
            continue
        if cell.group not in workers:
            workers.clear()  # one model in memory at a time
            workers[cell.group] = load_worker(job, cell.group, join(uri, STATS))
        table = sample(rows.read(list(COLUMNS)), per_cell)
        if table.num_rows:  # none readable: verify names its shards
            checks.append(check_rows(workers[cell.group], table.to_pandas(), job.shard_size))
    return sorted(checks, key=lambda c: (c.label, c.cell_id))


def sample(table: pa.Table, per_cell: int) -> pa.Table:
    """The rows of `per_cell` bases drawn with SEED (every row with 0 or when the cell has no more)."""
    bases = np.unique(table["base_index"].to_numpy())
    if per_cell == 0 or per_cell >= bases.size:
        return table
    chosen = np.random.default_rng(SEED).choice(bases, per_cell, replace=False)
    return table.filter(pa.compute.is_in(table["base_index"], pa.array(chosen, table["base_index"].type)))


def check_rows(worker: Worker, rows: pd.DataFrame, batch: int) -> CellRecompute:
    """Recompute one cell's stored rows (any subset) and compare; `batch` bases are scanned at a time."""
    first = rows.iloc[0]
    found = CellRecompute(first.cell_id, f"L{first.layer} {first.scan} {first.base_kind} {first.direction}")
    ctx = worker.context(int(first.layer))
    lines, groups = [], []
    for _, group in rows.sort_values(["base_index", "read_layer"]).groupby("base_index", sort=True):
        try:
            lines.append(_line(group.iloc[0], ctx))
            groups.append(group)
        except SynthactError as e:  # the row does not hold what rebuilds it
            found.rows += len(group)
            found.mismatches += [f"base {r.base_index} read layer {r.read_layer}: cannot rebuild ({e})"
                                 for r in group.itertuples()]
    for start in range(0, len(groups), batch):
        chunk = groups[start:start + batch]
        recomputed = _rescan(worker, chunk, lines[start:start + batch], sorted(set(rows.read_layer.astype(int))))
        for b, group in enumerate(chunk):
            for row in group.itertuples():
                problems = compare_row(row, {k: v[b] for k, v in recomputed[int(row.read_layer)].items()})
                found.rows += 1
                if problems:
                    found.mismatches.append(f"base {row.base_index} read layer {row.read_layer}: {'; '.join(problems)}")
                else:
                    found.matched += 1
    return found


def compare_row(row, recomputed: dict) -> list[str]:
    """What of a stored row differs from its recomputation (`recomputed`: column -> value); empty when all agree."""
    problems = []
    distance, again = _value(row, "target_distance"), recomputed.get("target_distance")
    if _null(distance) != (again is None) or (again is not None and not math.isclose(distance, again, rel_tol=RTOL)):
        problems.append(f"target_distance {distance}, recomputed {again}")
    for name in ("target_step", *METRICS, *JS_METRICS):
        stored, again = _value(row, name), recomputed.get(name)
        if stored is None or again is None or _agree(float(stored), float(again), name in INTEGER):
            continue
        problems.append(f"{name} {stored:.6g}, recomputed {again:.6g}")
    for name in CURVES:
        stored, again = _value(row, name), recomputed.get(name)
        if _null(stored) or again is None:
            continue
        stored = np.asarray(stored, np.float64)
        tolerance = CURVE_RTOL * max(float(np.abs(stored).max(initial=0.0)), 1e-6)
        off = float(np.abs(stored - again).max()) if stored.shape == again.shape else math.inf
        if not off <= tolerance:
            problems.append(f"{name} off by {off:.3g} (tolerance {tolerance:.3g})")
    return problems


def _agree(stored: float, again: float, integer: bool) -> bool:
    if math.isnan(stored) or math.isnan(again):
        return math.isnan(stored) and math.isnan(again)
    return stored == again if integer else math.isclose(stored, again, rel_tol=METRIC_RTOL, abs_tol=1e-9)


def _value(row, name):
    """A row's value of `name` (None where the row has no such column)."""
    return getattr(row, name, None)


def _null(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


@torch.no_grad()
def _rescan(worker: Worker, bases: list[pd.DataFrame], lines: list, read_layers: list[int]
            ) -> dict[int, dict[str, np.ndarray]]:
    """Rescan a batch of bases of one cell (each its rows, and its rebuilt (A, T, D)): per read layer,
    column -> [B] values; the metrics of the stored curves where the rows have them, else of the rescan."""
    rows = [base.iloc[0] for base in bases]
    first = rows[0]
    spec = ScanSpec(mode=first.scan_mode, steps=int(first.steps), start=_value(first, "scan_start") or "base",
                    stop_at_target=bool(first.stop_at_target),
                    **({"step_size": float(first.step_size)} if first.scan_mode == "step" else {}))
    metrics = MetricsSpec(**{k: getattr(first, k) for k in MetricsSpec.model_fields if not _null(_value(first, k))})
    ctx = worker.context(int(first.layer))
    a, t, d = zip(*lines)
    a, d = torch.stack(a), torch.stack(d)
    t = None if any(x is None for x in t) else torch.stack(t)
    distance = None if t is None else (t.double() - a.double()).norm(dim=-1).cpu().numpy()
    step = (np.full(len(rows), spec.step_size) if spec.mode == "step" else np.asarray(distance) / spec.steps)
    grid = torch.arange(spec.steps + 1, dtype=torch.float32, device=worker.device)
    coeffs = grid[None, :] * torch.as_tensor(step, dtype=torch.float32, device=worker.device)[:, None]
    start, direction = (t, -d) if spec.start == "target" else (a, d)
    tokens = torch.as_tensor(np.stack([np.asarray(r.base_tokens, np.int64) for r in rows]), device=worker.device)
    result = scan(ctx.model, ctx.layer, read_layers, tokens, start, direction, coeffs, js=worker.job.js,
                  dtype=worker.job.dtype, hook=worker.backend.saes[ctx.layer].hook_name)
    target_step = target_steps(spec, distance)
    last = last_point(stop_point(spec, target_step), spec.steps, metrics)
    common = {k: v for k, v in (("target_distance", distance), ("target_step", target_step)) if v is not None}
    if result.js is not None:
        js = result.js.numpy()
        basis = _basis(js, [base.iloc[0] for base in bases], "js_curve")
        common |= {"js_curve": js, **curve_metrics(basis, step, last, metrics, js=True)}
    out = {}
    for r in read_layers:
        curves = result.l2[r].numpy()
        basis = _basis(curves, [_at(base, r) for base in bases], "l2_curve")
        out[r] = common | {"l2_curve": curves, **curve_metrics(basis, step, last=last, settings=metrics)}
    return out


def _basis(rescanned: np.ndarray, rows: list, column: str) -> np.ndarray:
    """Per base, its stored curve (of the same length) where its row has one, else the rescan."""
    stored = [None if row is None or _null(_value(row, column)) else np.asarray(_value(row, column)) for row in rows]
    return np.stack([c if c is not None and c.shape == again.shape else again for c, again in zip(stored, rescanned)])


def _at(base: pd.DataFrame, read_layer: int):
    """A base's row at `read_layer` (None where it has none)."""
    found = base[base.read_layer == read_layer]
    return found.iloc[0] if len(found) else None


def _line(row, ctx) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(A, T or None, D) rebuilt from one row."""
    a = from_provenance(row.base_kind, *_lists(row.base_tokens, row.base_latents, row.base_latent_values),
                        row.add_error, ctx, seed=int(row.base_seed))
    t = None
    if isinstance(row.target_kind, str):
        t = from_provenance(row.target_kind, *_lists(row.target_tokens, row.target_latents, row.target_latent_values),
                            row.add_error, ctx, seed=int(row.target_seed), error_source=_value(row, "error_source"),
                            other_tokens=_lists(_value(row, "target_other_tokens"))[0])
    elif row.direction == "toward_recon":  # T = decode(encode(A)), as directions.recon_target
        t = ctx.sae.decode(ctx.sae.encode(a[None].to(ctx.sae.W_dec.dtype))).float()[0]
    latent = None if _null(_value(row, "direction_latent")) else int(row.direction_latent)
    d = direction_from_provenance(row.direction, a, ctx, target_vector=t, target_seed=int(row.target_seed),
                                  latent=latent)
    return a, t, d


def _lists(*values) -> list:
    """Stored list columns as writable arrays (Arrow's are read-only views), None kept."""
    return [None if v is None else np.array(v) for v in values]
