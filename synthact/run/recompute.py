"""`synthact verify OUT --recompute [N]`: every stored row checked against its cell and recomputed from itself.

Per cell, N bases drawn with a fixed seed among the cell's base indices (all of them with N = 0). Each row
is first checked against what its cell must hold, as the job derives it: its cell id and shard, a base
index the cell has (one row per base and read layer: a second row for a curve is named, and so is a
missing one), the seeds derived from the job's seed, the cell's grid axes, scan and metric settings.
A row that holds what its cell says is then recomputed from its own columns alone: the base A and the target
T or direction D rebuilt (`kinds.from_provenance`, `directions.direction_from_provenance`; T of
`toward_recon` is A's SAE reconstruction), rescanned with the row's scan settings on the fast path
(`synthact.scan.scan`, in batches of bases with the same settings), and its metrics recomputed with the
row's metric settings from its stored curve where it keeps one (the curve itself checked against the
rescan), else from the rescan.

Agreement (`run/tolerances.py`, docs/science.md "Recomputing a row"): ||T - A|| and each curve agree to within
the rounding that their dtype, the terms they accumulate and their magnitude allow; the target step is
one that a distance within that tolerance gives; metrics of a stored curve are equal (integers) or agree to
1e-9 (the same float64 arithmetic); metrics of a rescan are values that some curve within its tolerance
gives (an integer metric near a threshold may take either side). The model, SAEs and reference statistics
load as a worker's do (`load_worker`).
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
from synthact.inputs.hooks import blocks_before, resid_post
from synthact.layout import STATS, join, resolve_location
from synthact.results import AXES, JS_METRICS, METRICS, axis_value, sweep_cells
from synthact.run.local_executor import load_worker
from synthact.run.store import read_claim
from synthact.run.tolerances import Arithmetic
from synthact.run.worker import Worker, stop_point, target_steps
from synthact.scan import scan
from synthact.scan.metrics import curve_metrics, last_point, metric_ranges
from synthact.spec import Cell, Job, MetricsSpec, ScanSpec, derive_seed, format_validation_error
from synthact.spec.vocabulary import AS_BEFORE

SEED = 0  # which bases are sampled
STORED_RTOL = 1e-9  # float metrics of a stored curve: the same float64 arithmetic
# What a row is rebuilt and rescanned from (one rescan per distinct value of these, read layers aside).
INPUTS = ("cell_id", "scan", "layer", "base_index", "base_kind", "direction", "target_kind", "add_error",
          "base_seed", "target_seed", "base_tokens", "base_latents", "base_latent_values", "target_tokens",
          "target_latents", "target_latent_values", "direction_latent", "scan_mode", "scan_start", "steps",
          "step_size", "stop_at_target", "error_source", "target_other_tokens")
SCAN = ("scan_mode", "scan_start", "steps", "step_size", "stop_at_target")
CURVES = ("l2_curve", "js_curve")
COLUMNS = (*dict.fromkeys((*INPUTS, *AXES)), "shard_id", "seed", "target_distance", "target_step",
           *MetricsSpec.model_fields, *METRICS, *JS_METRICS, *CURVES)
INTEGER = {name for name, (kind, _) in (METRICS | JS_METRICS).items() if pa.types.is_integer(kind)}


@dataclass
class CellRecompute:
    """One cell's check: how many of its checked rows recompute, how many it must hold, what differs."""

    cell_id: str
    label: str
    rows: int = 0
    matched: int = 0
    expected: int = 0
    mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.matched == self.rows == self.expected and not self.mismatches


@dataclass
class Rescan:
    """One base rebuilt from its row and rescanned with the row's scan settings: what its rows are compared with."""

    arithmetic: Arithmetic  # the rounding the tolerances allow
    scan: ScanSpec
    step: float
    l2: dict[int, np.ndarray]  # read layer -> curve
    js: np.ndarray | None
    start_norm: dict[int, float]  # read layer -> |y_0|
    logit_max: float | None  # max |z_0| (with js)
    distance: float | None = None  # ||T - A||
    distance_tolerance: float = 0.0
    target_steps: set[int] = field(default_factory=set)  # those of a distance within its tolerance


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
    checks, workers = [], {}
    for rows in sorted(sweep_cells(out), key=lambda r: str(cells[r.cell_id].group) if r.cell_id in cells else ""):
        cell = cells.get(rows.cell_id)
        if cell is None:
            checks.append(CellRecompute(rows.cell_id, "?", rows.num_rows, 0, 0, ["not a cell of the job's spec"]))
            continue
        if cell.group not in workers:
            workers.clear()  # one model in memory at a time
            workers[cell.group] = load_worker(job, cell.group, join(uri, STATS))
        bases = recorded_bases(job, cell, [r.shard_id for r in rows.records])
        table = rows.read(list(COLUMNS))
        if table.num_rows:  # none readable: verify names its shards
            chosen = sample(bases, per_cell)
            if len(chosen) < len(bases):
                table = table.filter(pa.compute.is_in(table["base_index"], pa.array(chosen, table["base_index"].type)))
            checks.append(check_rows(workers[cell.group], cell, table.to_pandas(), chosen))
    return sorted(checks, key=lambda c: (c.label, c.cell_id))


def recorded_bases(job: Job, cell: Cell, shard_ids) -> list[int]:
    """The base indices of a cell's recorded shards (shard k holds bases k * shard_size up to the next)."""
    bases = set()
    for shard_id in shard_ids:
        prefix, _, index = shard_id.rpartition("-")
        if prefix == cell.cell_id and index.isdigit():
            start = int(index) * job.shard_size
            bases.update(range(start, min(start + job.shard_size, job.bases_per_cell)))
    return sorted(bases)


def sample(bases: list[int], per_cell: int) -> list[int]:
    """`per_cell` of the cell's base indices drawn with SEED (every one with 0 or when there are no more)."""
    if per_cell == 0 or per_cell >= len(bases):
        return list(bases)
    return sorted(np.random.default_rng(SEED).choice(bases, per_cell, replace=False).tolist())


def check_rows(worker: Worker, cell: Cell, rows: pd.DataFrame, bases=None, batch: int | None = None) -> CellRecompute:
    """Check one cell's stored rows (of the base indices `bases`; default every base of the cell) against the cell
    and recompute those that hold what it says, `batch` bases (default the job's shard_size) rescanned at a time."""
    job = worker.job
    bases = range(job.bases_per_cell) if bases is None else bases
    expected = {(int(i), r) for i in bases for r in worker.read_layers}
    found = CellRecompute(cell.cell_id, f"L{cell.layer} {cell.scan.label} {cell.base_kind} {cell.direction}",
                          rows=len(rows), expected=len(expected))
    rows = rows.sort_values(["base_index", "read_layer"], kind="stable").reset_index(drop=True)
    problems: dict[int, list[str]] = {}
    seen, held = set(), set()
    constant, base_settings = planned(cell, job), cell.base_settings()
    for index, row in rows.iterrows():
        key = (_int(row.base_index), _int(row.read_layer))
        seen.add(key)
        problems[index] = planned_problems(row, cell, job, worker.read_layers, expected, base_settings, constant)
        if not problems[index]:  # the first row of a curve that holds what its cell says is the curve's
            if key in held:
                problems[index].append("a second row for this curve (a cell holds one per base and read layer)")
            held.add(key)
    runnable = rows[[not problems[i] for i in rows.index]]
    for rescanned, group in _rescans(worker, cell, runnable, batch or job.shard_size):
        for index, row in group.iterrows():
            problems[index] = rescanned if isinstance(rescanned, list) else compare_row(row, rescanned)
    for index, row in rows.iterrows():
        if problems[index]:
            found.mismatches.append(f"{_where(row)}: {'; '.join(problems[index])}")
        else:
            found.matched += 1
    found.mismatches += [f"base {i} read layer {r}: missing (the cell has no row for it)"
                         for i, r in sorted(expected - set(seen))]
    return found


def planned(cell: Cell, job: Job) -> dict:
    """What every row of a cell must hold, whatever its base: ids, seed, axes, scan and metric settings."""
    values = {"cell_id": cell.cell_id, "seed": job.seed, **cell.settings(), "scan_mode": cell.scan.mode,
              "scan_start": cell.scan.start, "steps": cell.scan.steps, "stop_at_target": cell.scan.stop_at_target,
              **job.metrics.model_dump()}
    return values | ({"step_size": cell.scan.step_size} if cell.scan.mode == "step" else {})


def planned_problems(row, cell: Cell, job: Job, read_layers: list[int], expected: set, base_settings: dict,
                     constant: dict) -> list[str]:
    """What of a row differs from what its cell must hold (`constant`, `planned(cell, job)`, and per base its
    shard and the seeds derived from the job's seed, `base_settings` and the base index)."""
    i = _int(row.base_index)
    values = dict(constant)
    if i is not None and 0 <= i < job.bases_per_cell:
        values |= {"shard_id": f"{cell.cell_id}-{i // job.shard_size:05d}",
                   "base_seed": derive_seed(job.seed, "base", base_settings, i),
                   "target_seed": derive_seed(job.seed, "target", cell.cell_id, i)}
    problems = [f"{name} {_shown(name, _value(row, name))}, but its cell's is {_shown(name, value)}"
                for name, value in values.items() if not _holds(name, _value(row, name), value)]
    r = _int(row.read_layer)
    if r not in read_layers:
        problems.insert(0, f"read layer {r} is not one of the job's ({', '.join(map(str, read_layers))})")
    elif i is None or not 0 <= i < job.bases_per_cell:
        problems.insert(0, f"base index {i} is not one of the cell's (0..{job.bases_per_cell - 1})")
    elif (i, r) not in expected:
        problems.insert(0, f"base {i} is not in a recorded shard of this cell")
    return problems


def compare_row(row, again: Rescan) -> list[str]:
    """What of a stored row differs from `again`, the rescan of its base; empty when all agree within the
    tolerances of `run/tolerances.py`."""
    problems = []
    r, stored_distance = _int(row.read_layer), _value(row, "target_distance")
    target_step = None
    if _null(stored_distance) != (again.distance is None):
        problems.append(f"target_distance {stored_distance}, recomputed {again.distance}")
    elif again.distance is not None:
        if not abs(stored_distance - again.distance) <= again.distance_tolerance:
            problems.append(f"target_distance {stored_distance:.7g}, recomputed {again.distance:.7g} "
                            f"(tolerance {again.distance_tolerance:.2g})")
        stored_step = _int(_value(row, "target_step"))
        if stored_step not in again.target_steps:
            problems.append(f"target_step {stored_step}, recomputed {_range(again.target_steps)}")
        target_step = np.array([stored_step if stored_step in again.target_steps else min(again.target_steps)])
        if again.scan.mode == "interpolate" and not abs(row.step_size - again.step) <= \
                again.distance_tolerance / again.scan.steps:
            problems.append(f"step_size {row.step_size:.7g}, recomputed {again.step:.7g}")
    step = float(row.step_size)  # checked above (interpolating) or against the cell's: the metrics divide by it
    settings = MetricsSpec(**{k: axis_value(k, _value(row, k)) for k in MetricsSpec.model_fields})
    last = last_point(stop_point(again.scan, target_step), again.scan.steps, settings)
    l2_tolerance = again.arithmetic.l2(r + 1, again.start_norm[r], float(again.l2[r].max()))
    for name, rescanned in (("l2_curve", again.l2[r]), ("js_curve", again.js)):
        if rescanned is None:
            continue
        js, stored = name == "js_curve", _value(row, name)
        kept = not _null(stored) and len(stored) == len(rescanned)
        stored = np.asarray(stored, np.float64) if kept else rescanned
        tolerance = again.arithmetic.js(again.logit_max, stored, rescanned) if js else l2_tolerance
        if kept:
            off = np.abs(stored - rescanned) - tolerance
            if not (off <= 0).all():
                n = int(np.argmax(off))
                problems.append(f"{name} off by {abs(stored[n] - rescanned[n]):.3g} at point {n} "
                                f"(tolerance {np.broadcast_to(tolerance, off.shape)[n]:.3g})")
            expected = curve_metrics(stored[None], np.array([step]), last, settings, js=js)
        else:
            expected = metric_ranges(rescanned, tolerance, step, last, settings, js=js)
        for metric in (JS_METRICS if js else METRICS):
            value = _value(row, metric)
            if value is not None and not _agrees(float(value), expected[metric], metric in INTEGER):
                shown = expected[metric]
                shown = _range(shown) if isinstance(shown, (set, tuple)) else f"{float(shown[0]):.7g}"
                problems.append(f"{metric} {float(value):.7g}, recomputed {shown}")
    return problems


def _agrees(stored: float, expected, integer: bool) -> bool:
    """A stored metric against its recomputation: a value (of a stored curve), a set of integers or an interval
    (lo, hi) of floats (of a rescan, within its tolerance; None bounds: anything, NaN included)."""
    if isinstance(expected, set):
        return stored in expected
    if isinstance(expected, tuple):
        lo, hi = expected
        return lo is None or (not math.isnan(stored) and lo <= stored <= hi)
    again = float(expected[0])
    if math.isnan(stored) or math.isnan(again):
        return math.isnan(stored) and math.isnan(again)
    return stored == again if integer else math.isclose(stored, again, rel_tol=STORED_RTOL, abs_tol=1e-12)


def _rescans(worker: Worker, cell: Cell, rows: pd.DataFrame, batch: int):
    """(recomputation, its rows) per distinct row inputs (usually one base, all its read layers), rescanned in
    batches of bases with the same scan settings."""
    groups: dict[tuple, list] = {}
    for index, row in rows.iterrows():
        groups.setdefault(_key(row), []).append(index)
    groups = [rows.loc[indices] for indices in groups.values()]
    by_scan: dict[tuple, list[pd.DataFrame]] = {}
    for group in groups:
        by_scan.setdefault(tuple(_value(group.iloc[0], k) for k in SCAN), []).append(group)
    for chunked in by_scan.values():
        for start in range(0, len(chunked), batch):
            chunk = chunked[start:start + batch]
            yield from zip(rescan_bases(worker, cell, [g.iloc[0] for g in chunk]), chunk)


@torch.no_grad()
def rescan_bases(worker: Worker, cell: Cell, rows: list) -> list[Rescan | list[str]]:
    """Rebuild and rescan one batch of bases (one row each, with the same scan settings): per base its `Rescan`,
    or the problem of a row that cannot be rebuilt."""
    ctx = worker.context(cell.layer)
    out, lines = [], []
    for row in rows:
        try:
            lines.append(rebuild(row, ctx))
            out.append(None)
        except SynthactError as e:  # the row does not hold what rebuilds it
            out.append([f"cannot rebuild ({e})"])
    if not lines:
        return out
    first = rows[out.index(None)]
    spec = ScanSpec(mode=first.scan_mode, steps=int(first.steps), start=first.scan_start,
                    stop_at_target=bool(first.stop_at_target),
                    **({"step_size": float(first.step_size)} if first.scan_mode == "step" else {}))
    a, t, d = zip(*lines)
    a, d = torch.stack(a), torch.stack(d)
    t = None if any(x is None for x in t) else torch.stack(t)
    distance = None if t is None else (t.double() - a.double()).norm(dim=-1).cpu().numpy()
    step = np.full(len(lines), spec.step_size) if spec.mode == "step" else np.asarray(distance) / spec.steps
    grid = torch.arange(spec.steps + 1, dtype=torch.float32, device=worker.device)
    coeffs = grid[None, :] * torch.as_tensor(step, dtype=torch.float32, device=worker.device)[:, None]
    start, direction = (t, -d) if spec.start == "target" else (a, d)
    tokens = torch.as_tensor(np.stack([np.asarray(r.base_tokens, np.int64) for r, o in zip(rows, out) if o is None]),
                             device=worker.device)
    hook = worker.backend.saes[cell.layer].hook_name
    result = scan(ctx.model, cell.layer, worker.read_layers, tokens, start, direction, coeffs, js=worker.job.js,
                  dtype=worker.job.dtype, hook=hook)
    norms, logit_max = _scales(ctx.model, hook, tokens, start, worker.read_layers, worker.job.js)
    arithmetic = Arithmetic.of(ctx.model, ctx.sae.W_dec.shape[0], worker.job.n_ctx, worker.job.dtype)
    bases = iter(range(len(lines)))
    for i, slot in enumerate(out):
        if slot is not None:
            continue
        b = next(bases)
        again = out[i] = Rescan(arithmetic, spec, float(step[b]), {r: c[b].numpy() for r, c in result.l2.items()},
                                None if result.js is None else result.js[b].numpy(),
                                {r: float(n[b]) for r, n in norms.items()},
                                None if logit_max is None else float(logit_max[b]))
        if distance is not None:
            again.distance = float(distance[b])
            again.distance_tolerance = arithmetic.distance(blocks_before(hook), float(a[b].norm()), float(t[b].norm()))
            ends = target_steps(spec, again.distance + np.array([-1, 1]) * again.distance_tolerance)
            again.target_steps = set(range(int(ends[0]), int(ends[1]) + 1))
    return out


def _scales(model, hook: str, tokens: torch.Tensor, start: torch.Tensor, read_layers: list[int], js: bool):
    """Per base, the norm of its start point's activation at each read layer, and its largest |logit| (with js):
    one forward pass of each prompt with the start point at the hook."""
    def place(resid, hook):
        resid[:, -1, :] = start.to(resid.dtype)
        return resid

    names = {resid_post(r) for r in read_layers}
    with model.hooks(fwd_hooks=[(hook, place)]):
        logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names,
                                             stop_at_layer=None if js else max(read_layers) + 1)
    norms = {r: cache[resid_post(r)][:, -1].double().norm(dim=-1).cpu().numpy() for r in read_layers}
    return norms, logits[:, -1].abs().amax(-1).double().cpu().numpy() if js else None


def _key(row) -> tuple:
    """A row's inputs (read layer aside) as a hashable value."""
    return tuple(tuple(v) if isinstance(v, (list, np.ndarray)) else (None if _null(v) else v)
                 for v in (_value(row, k) for k in INPUTS))


def rebuild(row, ctx) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
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


def _where(row) -> str:
    return f"base {_value(row, 'base_index')} read layer {_value(row, 'read_layer')}"


def _range(values) -> str:
    """A set of integers or an interval of floats, shown."""
    if isinstance(values, tuple):
        return "any value" if values[0] is None else f"{values[0]:.7g}..{values[1]:.7g}"
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"one of {sorted(values)}" if len(values) < 6 else f"{lo}..{hi}"


def _holds(name: str, stored, value) -> bool:
    """A row's value of a setting against its cell's (a ladder axis absent from rows written before it existed
    holds its AS_BEFORE value)."""
    stored = axis_value(name, stored)
    return stored == axis_value(name, value) or (stored is None and AS_BEFORE.get(name) == value)


def _shown(name: str, value) -> str:
    value = axis_value(name, value)
    return "null" if value is None else repr(value) if isinstance(value, str) else str(value)


def _int(value) -> int | None:
    return None if _null(value) else int(value)


def _value(row, name):
    """A row's value of `name` (None where the row has no such column or a null)."""
    value = getattr(row, name, None) if not isinstance(row, pd.Series) else row.get(name)
    return None if value is pd.NA else value


def _null(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
