"""A worker holds one model, its SAEs and reference statistics, and turns shards into Arrow tables.

The same class runs in-process (local mode) and inside a Ray actor (Ray mode).
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import torch

from synthact.errors import SynthactError
from synthact.generation import codes
from synthact.generation.context import SINGLE_CANDIDATE, Activations, GenContext, GenerationSettings
from synthact.generation.diagnostics import target_columns
from synthact.generation.directions import Directions, make_directions
from synthact.generation.kinds import draw
from synthact.generation.stats import ReferenceStats, load_or_compute_stats
from synthact.inputs.backends import Backend, load_backend, resolve_device
from synthact.results import result_schema
from synthact.scan import scan
from synthact.scan.metrics import curve_metrics, last_point
from synthact.spec import (
    TEMPLATE_KINDS,
    Cell,
    Job,
    ModelSpec,
    SAESpec,
    ScanSpec,
    Shard,
    check_layers,
    derive_seed,
    resolve_read_layer,
)


class Worker:
    """Loads (model, SAE family, statistics) once; `run_shard` is deterministic."""

    def __init__(self, job: Job, group: tuple[ModelSpec, SAESpec], stats_root: str, device: str | None = None,
                 phase=None):
        """`phase(text)` is told what loads (the driver's progress display; None: nothing is said)."""
        phase = phase or (lambda text: None)
        self.job = job
        self.device = resolve_device(device or job.device)
        model_spec, sae_spec = group
        toy = " (toy parts are trained once, on first use, then cached)" if model_spec.toy or sae_spec.toy else ""
        phase(f"loading model {model_spec.label} and SAE {sae_spec.label}{toy}")
        self.backend: Backend = load_backend(model_spec, sae_spec, job.corpus, job.layers, self.device, n_ctx=job.n_ctx)
        model = self.backend.model
        check_layers(job, model.n_layers, model.label)
        self.read_layers = sorted({resolve_read_layer(r, model.n_layers) for r in job.read_layers})
        self.stats: dict[int, ReferenceStats] = {}
        self.stats_paths: dict[int, str] = {}
        for layer in job.layers:
            phase(f"reference statistics of layer {layer} (computed once per output directory, then read)")
            self.stats[layer], self.stats_paths[layer] = load_or_compute_stats(
                self.backend, layer, job, stats_root, self.device
            )

    # ------------------------------------------------------------------ shards

    def context(self, layer: int) -> GenContext:
        b = self.backend
        return GenContext(
            model=b.model.model,
            sae=b.saes[layer].sae,
            stats=self.stats[layer],
            corpus=b.corpus,
            layer=layer,
            n_ctx=self.job.n_ctx,
            device=self.device,
        )

    def run_shard(self, shard: Shard) -> pa.Table:
        """Draw the shard's bases and directions, scan them, and return one row per (base, read layer)."""
        job, cell = self.job, shard.cell
        ctx = self.context(cell.layer)
        indices = list(range(shard.start, shard.stop))
        base_seeds = [derive_seed(job.seed, "base", cell.base_settings(), i) for i in indices]
        target_seeds = [derive_seed(job.seed, "target", cell.cell_id, i) for i in indices]
        with torch.no_grad():
            base = draw(cell.base_kind, _rngs(base_seeds), ctx, settings_for(cell, cell.base_kind))
            dirs = make_directions(
                cell.direction, cell.target_kind, base, _rngs(target_seeds), ctx, settings_for(cell, cell.target_kind),
                paired=cell.template == "base",
            )
            coeffs, step = scan_coefficients(cell.scan, dirs, len(indices), self.device)
            start, direction = scan_line(cell.scan, base.vectors, dirs)
            result = scan(
                ctx.model, cell.layer, self.read_layers, torch.as_tensor(base.tokens, device=self.device),
                start, direction, coeffs, js=job.js, dtype=job.dtype,
                hook=self.backend.saes[cell.layer].hook_name,
            )
            base_l0 = base.l0 if base.l0 is not None else _encoded_l0(ctx, base.vectors)
        curves = {r: c.numpy() for r, c in result.l2.items()}
        js_curve = result.js.numpy() if result.js is not None else None
        named = [*((f"read layer {r}", c) for r, c in curves.items()), *([("JS", js_curve)] if job.js else [])]
        if not all(np.isfinite(c).all() for _, c in named):
            raise SynthactError(non_finite_cause(self.backend.model, job.dtype, start, direction, coeffs, named))
        return self._table(shard, base, dirs, base_seeds, target_seeds, base_l0, step, curves, js_curve)

    def _table(self, shard, base: Activations, dirs: Directions, base_seeds, target_seeds, base_l0, step, curves, js_curve):
        job, cell = self.job, shard.cell
        n = shard.n_bases
        target = dirs.target
        target_step = target_steps(cell.scan, dirs.distance)
        last = last_point(stop_point(cell.scan, target_step), cell.scan.steps, job.metrics)
        js_cols = curve_metrics(js_curve, step, last, job.metrics, js=True) if js_curve is not None else {}
        diagnostics = target_columns(target, self.context(cell.layer), target_seeds, settings_for(cell, cell.target_kind))
        blocks = []
        for r in self.read_layers:
            cols = {
                "cell_id": [cell.cell_id] * n,
                "shard_id": [shard.shard_id] * n,
                **{k: [v] * n for k, v in cell.settings().items()},
                "read_layer": np.full(n, r, np.int32),
                "base_index": np.arange(shard.start, shard.stop, dtype=np.int32),
                "seed": np.full(n, job.seed, np.int64),
                "base_seed": np.array(base_seeds, np.int64),
                "target_seed": np.array(target_seeds, np.int64),
                "scan_mode": [cell.scan.mode] * n,
                "scan_start": [cell.scan.start] * n,
                "steps": np.full(n, cell.scan.steps, np.int32),
                "step_size": step,
                "stop_at_target": np.full(n, cell.scan.stop_at_target),
                "target_distance": dirs.distance,
                "target_step": target_step,
                **{k: [v] * n for k, v in job.metrics.model_dump().items()},
                **curve_metrics(curves[r], step, last=last, settings=job.metrics),
                **js_cols,
                "base_norm": base.vectors.norm(dim=-1).double().cpu().numpy(),
                "target_norm": dirs.target_norm,
                "base_l0": base_l0,
                "target_l0": target.l0 if target is not None else None,
                **diagnostics,
                "direction_latent": dirs.latent,
                "base_doc": base.docs,
                "base_offset": base.offsets,
                "base_tokens": list(base.tokens),
                **target_prompt_columns(target),
                "base_latents": base.latents,
                "base_latent_values": base.values,
                "target_latents": target.latents if target is not None else None,
                "target_latent_values": target.values if target is not None else None,
            }
            if job.keep_curves:
                cols["l2_curve"] = list(curves[r])
                if js_curve is not None:
                    cols["js_curve"] = list(js_curve)
            blocks.append(pa.table({k: _column(k, v, n) for k, v in cols.items()}, schema=result_schema(job.js, job.keep_curves)))
        table = pa.concat_tables(blocks)
        provenance = {
            "model_path": str(self.backend.model.path) if self.backend.model.path else None,
            "sae_path": str(self.backend.saes[cell.layer].path) if self.backend.saes[cell.layer].path else None,
            "sae_info": self.backend.saes[cell.layer].info,
            "stats": self.stats_paths[cell.layer],
            "device": self.device,
            "dtype": job.dtype,
        }
        return table.replace_schema_metadata({b"synthact.run.provenance": json.dumps(provenance, default=str).encode()})


# ---------------------------------------------------------------------- helpers


def non_finite_cause(model, dtype: str, start: torch.Tensor, direction: torch.Tensor, coeffs: torch.Tensor,
                     curves: list[tuple[str, np.ndarray]]) -> str:
    """Why a scan gave NaN or infinite distances, as far as it is known: a damaged model weight, inputs that were
    not finite before the scan, or (finite weights and inputs) an overflow of the dtype, where it starts."""
    bad = [(name, c) for name, c in curves if not np.isfinite(c).all()]
    head = f"the scan produced NaN or infinite distances ({', '.join(name for name, _ in bad)})"
    damaged = [name for name, p in model.model.named_parameters() if not torch.isfinite(p.detach()).all()]
    if damaged:
        more = f" and {len(damaged) - 1} more tensor(s)" if len(damaged) > 1 else ""
        return (f"{head}: model '{model.label}' has NaN or infinite weights in {damaged[0]}{more}; its checkpoint is "
                "damaged: point the spec at an intact one")
    for name, x in (("start points (base or target activations)", start), ("directions", direction),
                    ("scan coefficients", coeffs)):
        if not torch.isfinite(x).all():
            return (f"{head}: the {name} were NaN or infinite before the scan (they are built from the SAE, the "
                    "reference statistics and the model: check that these are intact)")
    # finite weights and inputs: only a value beyond the dtype's range (then inf - inf, 0 * inf) makes NaN or inf
    first = [(int(np.argmax(~np.isfinite(row))), b) for _, c in bad for b, row in enumerate(c) if not np.isfinite(row).all()]
    n, b = min(first)
    size = float(coeffs[b, n].abs() * direction[b].norm())
    if n == 0:
        return (f"{head}: already at the scan's start point (norm {float(start[b].norm()):.3g}), with finite weights "
                f"and inputs, so the model's activations there overflow {dtype}")
    return (f"{head} from scan point n = {n} on (a perturbation of norm {size:.3g} from a start point of norm "
            f"{float(start[b].norm()):.3g}), with finite weights and inputs: the activations overflow {dtype}; use a "
            "smaller step_size or fewer steps" + (", or dtype float32" if dtype != "float32" else ""))


def settings_for(cell: Cell, kind: str | None) -> GenerationSettings | None:
    """The generation settings a kind uses in this cell (the cell's axes; C = 1 unless structure pairwise)."""
    if kind not in TEMPLATE_KINDS:
        return None
    given = {k: v for k, v in cell.generation().items() if v is not None and k != "template"}
    if not (kind == "synthetic_structured" and cell.structure == "pairwise"):
        given["candidates"] = SINGLE_CANDIDATE
    return GenerationSettings(**given)


def target_steps(scan: ScanSpec, distance: np.ndarray | None) -> np.ndarray | None:
    """Per curve, the scan point that reaches the target: floor(||T - A|| / s) in step mode, N when
    interpolating; None without a target."""
    if distance is None:
        return None
    if scan.mode == "interpolate":
        return np.full(len(distance), scan.steps, np.int32)
    return np.floor(np.asarray(distance, np.float64) / scan.step_size + 1e-9).astype(np.int32)


def stop_point(scan: ScanSpec, target_step: np.ndarray | None) -> np.ndarray | None:
    """The point a scan stops at for the metrics: the target's step when it stops there (step mode), else None."""
    if target_step is None or not scan.stop_at_target or scan.mode != "step":
        return None
    return target_step


def scan_line(scan: ScanSpec, base: torch.Tensor, dirs: Directions) -> tuple[torch.Tensor, torch.Tensor]:
    """(start point x_0, unit direction) of each curve: (A, D) from the base, or (T, -D) from the target,
    so that x_n = T + n s (A - T)/||A - T|| runs back to A (`start: target`)."""
    if scan.start == "base":
        return base, dirs.vectors
    if dirs.target is None:
        raise SynthactError("scan start 'target' needs a direction with a target (toward:<kind> or toward_recon)")
    return dirs.target.vectors, -dirs.vectors


def scan_coefficients(scan: ScanSpec, dirs: Directions, n: int, device: str) -> tuple[torch.Tensor, np.ndarray]:
    """coeffs [B, N+1] with A_n = A + coeffs[b, n] * D_b, and the per-curve step they imply."""
    grid = torch.arange(scan.steps + 1, dtype=torch.float32, device=device)
    if scan.mode == "step":
        step = np.full(n, scan.step_size, np.float64)
    else:
        step = np.asarray(dirs.distance, np.float64) / scan.steps
    return grid[None, :] * torch.as_tensor(step, dtype=torch.float32, device=device)[:, None], step


def _rngs(seeds: list[int]) -> list[np.random.Generator]:
    return [np.random.default_rng(s) for s in seeds]


def _encoded_l0(ctx: GenContext, vectors: torch.Tensor) -> np.ndarray:
    return codes.encode(ctx.sae, vectors).l0.cpu().numpy().astype(np.int32)


def target_prompt_columns(target: Activations | None) -> dict:
    """The target's own prompt (prompt-based targets) and the other prompt it borrowed latents or an SAE error from."""
    own = {"target_doc": None, "target_offset": None, "target_tokens": None}
    if target is not None and target.prompt_based:
        own = {"target_doc": target.docs, "target_offset": target.offsets, "target_tokens": list(target.tokens)}
    other = {"target_other_doc": None, "target_other_offset": None, "target_other_tokens": None}
    if target is not None and target.other_tokens is not None:
        other = {"target_other_doc": target.other_docs, "target_other_offset": target.other_offsets,
                 "target_other_tokens": list(target.other_tokens)}
    return own | other


def _column(name: str, value, n: int):
    if value is None:
        return [None] * n
    if isinstance(value, list) and value and isinstance(value[0], np.ndarray):
        return [v.tolist() for v in value]
    return value
