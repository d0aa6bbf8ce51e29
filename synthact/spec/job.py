"""The job: a sweep's spec, its grid of cells and their shards.

A job spec is one YAML file. Lists are grid axes; cells are their product.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from synthact.spec.fields import (
    CorpusSpec,
    Frozen,
    GenerationSpec,
    MetricsSpec,
    ModelSpec,
    RaySpec,
    ReferenceSpec,
    SAESpec,
    ScanSpec,
    WandbSpec,
)
from synthact.spec.ids import digest
from synthact.spec.layers import check_layers
from synthact.spec.vocabulary import (
    AS_BEFORE,
    CONTROL_KINDS,
    CONTROL_VALUE_SOURCES,
    GENERATION_AXES,
    KINDS,
    LADDER_AXES,
    LADDER_KINDS,
    TEMPLATE_KINDS,
    Kind,
    pair_problem,
    parse_direction,
    target_kind,
)

MAX_SHARDS = 1_000_000  # keeps `validate` and planning small whatever the spec says
# Fields that change no row and that no row records: a resume may change them (docs/spec.md, "Resume").
NOT_IDENTITY = ("description", "output", "wandb", "ray")


def _listify(v: Any) -> Any:
    return v if isinstance(v, list) else [v]


class Job(Frozen):
    """One sweep. Lists are grid axes; cells are their product."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$",
        description="Name of the sweep (W&B run name, output labels, runs/<name>): letters, digits, '_', '-', '.'.",
    )
    description: str = Field("", description="Free text.")
    seed: int = Field(
        0, ge=0, lt=2**63, description="Sweep seed; every draw is derived from it, the cell and the base index."
    )
    model: list[ModelSpec] = Field(description="Model(s): one or a list (grid axis).")
    sae: list[SAESpec] = Field(description="SAE(s): one or a list (grid axis).")
    corpus: CorpusSpec = Field(description="Prompt source.")
    n_ctx: int = Field(10, ge=2, le=1_000_000, description="Prompt length; only the last position is perturbed and read.")
    layers: list[int] = Field(
        [1],
        description="Perturbation layers L: the SAE's hook, blocks.L.hook_resid_pre or blocks.L.hook_resid_post "
        "(the input of block L+1).",
    )
    read_layers: list[int] = Field(
        [-1], description="Read layers R (blocks.R.hook_resid_post); negative counts from the end, -1 = last block."
    )
    base_kinds: list[Kind] = Field([k for k in KINDS if k not in LADDER_KINDS], description="Kinds of base activation.")
    directions: list[str] = Field(
        ["toward:same"],
        description="toward:<kind> | toward:same (the base's own kind) | isotropic | latent:<id> | latent:random | toward_recon.",
    )
    generation: GenerationSpec = Field(default_factory=GenerationSpec, description="Synthetic-generation axes.")
    scan: list[ScanSpec] = Field(
        default_factory=lambda: [ScanSpec()],
        description="The scan, or a list of scans (a grid axis: each experiment of a job, e.g. the paper's "
        "sensitivity and plateau scans).",
    )
    metrics: MetricsSpec = Field(default_factory=MetricsSpec, description="Thresholds of the curve metrics.")
    js: bool = Field(False, description="Also record the sqrt-JS distance of next-token distributions (costs the unembedding).")
    bases_per_cell: int = Field(100, ge=1, le=10_000_000, description="Curves per cell (per read layer).")
    shard_size: int = Field(50, ge=1, le=100_000, description="Bases per shard (the unit of work and of resume).")
    reference: ReferenceSpec = Field(default_factory=ReferenceSpec, description="Reference statistics.")
    device: str = Field(
        "auto", pattern=r"^(auto|cpu|mps|cuda(:[0-9]{1,2})?)$",
        description="'auto' (cuda if present, else cpu), 'cpu', 'cuda', 'cuda:1', 'mps'.",
    )
    dtype: Literal["float32", "tf32", "bfloat16"] = Field(
        "float32", description="Scan precision; reduced precision moves curves (see docs/benchmarks.md)."
    )
    keep_curves: bool = Field(True, description="Store l2_curve (and js_curve) per row.")
    output: str | None = Field(
        None, description="Output directory or URI when `synthact run` gets no --out (default: runs/<name>)."
    )
    wandb: WandbSpec = Field(default_factory=WandbSpec, description="W&B logging, or false.")
    ray: RaySpec = Field(default_factory=RaySpec, description="Ray execution settings.")

    @field_validator("model", "sae", "scan", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return _listify(v)

    @field_validator("wandb", mode="before")
    @classmethod
    def _wandb_bool(cls, v: Any) -> Any:
        return {"enabled": v} if isinstance(v, bool) else v

    @field_validator("model", "sae", "layers", "read_layers", "base_kinds", "directions", "scan")
    @classmethod
    def _axis_non_empty(cls, v: list, info) -> list:
        if not v:
            raise ValueError(f"'{info.field_name}' is an empty list, so the grid is empty; give at least one value")
        if len(set(map(repr, v))) != len(v):
            raise ValueError(f"'{info.field_name}' lists a value twice")
        return v

    @field_validator("layers")
    @classmethod
    def _layers_non_negative(cls, v: list[int]) -> list[int]:
        if any(layer < 0 for layer in v):
            raise ValueError("perturbation layers must be >= 0")
        return v

    @field_validator("directions")
    @classmethod
    def _direction_syntax(cls, v: list[str]) -> list[str]:
        for d in v:
            parse_direction(d)
        return v

    @model_validator(mode="after")
    def _pairs_make_sense(self) -> "Job":
        framings = list(dict.fromkeys((scan.mode, scan.start) for scan in self.scan))
        for kind, direction, (mode, start) in itertools.product(self.base_kinds, self.directions, framings):
            problem = pair_problem(kind, direction, mode, start)
            if problem:
                raise ValueError(problem)
        paired_targets = {target_kind(k, d) for k, d in itertools.product(self.base_kinds, self.directions)
                          if k != "real"} & set(TEMPLATE_KINDS)
        errors = self.generation.error_source if True in self.generation.add_error else []
        if "template" in errors and "base" in self.generation.template and paired_targets:
            raise ValueError(
                "add_error with template 'base' needs real bases (the error is the SAE error of the base's prompt); "
                f"targets {', '.join(sorted(paired_targets))} of other base kinds would be paired: drop add_error or "
                "use template: [independent]"
            )
        built_bases = sorted(set(self.base_kinds) & set(TEMPLATE_KINDS))
        if "other" in errors and built_bases:
            raise ValueError(
                "error_source 'other' applies to targets: a row records the other prompt of its target only, so "
                f"SAE-built bases ({', '.join(built_bases)}) cannot take another prompt's error; use real bases or "
                "error_source: [template]"
            )
        problem = self._control_problem()
        if problem:
            raise ValueError(problem)
        labels = [scan.label for scan in self.scan]
        if len(set(labels)) != len(labels):
            raise ValueError(f"scans need distinct names (got {', '.join(labels)}); give each a `name`")
        for m in self.model:
            if m.toy:
                check_layers(self, m.toy.n_layers, m.label)
                if m.toy.n_ctx < self.n_ctx:
                    raise ValueError(f"n_ctx {self.n_ctx} is longer than toy model n_ctx {m.toy.n_ctx}; lower n_ctx")
        latents = [int(arg) for head, arg in map(parse_direction, self.directions) if head == "latent" and arg != "random"]
        for sae in self.sae:
            if sae.toy and latents and max(latents) >= sae.toy.d_sae:
                raise ValueError(f"direction latent:{max(latents)} does not exist in a toy SAE with d_sae "
                                 f"{sae.toy.d_sae} (valid: latent:0..latent:{sae.toy.d_sae - 1})")
        cells, shards = self.count()
        if shards > MAX_SHARDS:
            raise ValueError(f"the grid has {shards:,} shards ({cells:,} cells); at most {MAX_SHARDS:,} are allowed: "
                             "raise shard_size or shrink the grid")
        return self

    def _control_problem(self) -> str | None:
        """Why the job's controls would not be what they are defined to be, or None."""
        g = self.generation
        targets = {target_kind(k, d) for k, d in itertools.product(self.base_kinds, self.directions)}
        controls = (targets | set(self.base_kinds)) & set(CONTROL_KINDS)
        if controls and not set(g.value_source) & set(CONTROL_VALUE_SOURCES):
            return (f"{', '.join(sorted(controls))} keep the template's values (a control is the template's own "
                    f"values on other or swapped latents), so they take value_source "
                    f"{' or '.join(CONTROL_VALUE_SOURCES)} only, and generation.value_source lists neither "
                    f"({', '.join(g.value_source)}); add template")
        of_real = {target_kind("real", d) for d in self.directions} if "real" in self.base_kinds else set()
        degenerate = ("control_swapped" in of_real and "base" in g.template
                      and 0 in g.swaps and True in g.add_error and "template" in g.error_source
                      and "template" in g.value_source)
        if degenerate:
            return ("control_swapped with swaps 0, value_source template and the base's own SAE error (add_error "
                    "true, error_source template) rebuilds the base A itself (A's code, A's values, A's error), so its "
                    "target equals its base and the scan has no direction; drop swaps 0, use error_source: [other], "
                    "or add_error: [false] (then swaps 0 is A's SAE reconstruction)")
        return None

    def count(self) -> tuple[int, int]:
        """(cells, shards) of the grid, counted without listing them."""
        cells = sum(n for n, _ in self._cells_per_scan())
        return cells, cells * -(-self.bases_per_cell // self.shard_size)

    def scan_points(self) -> int:
        """Scan points of the whole grid (every base of every cell, N+1 each), counted without listing cells."""
        return sum(n * (scan.steps + 1) for n, scan in self._cells_per_scan()) * self.bases_per_cell

    def _cells_per_scan(self) -> list[tuple[int, "ScanSpec"]]:
        """(cells, scan) per scan, in time proportional to the spec (never to the grid)."""
        per_group = len(self.model) * len(self.sae) * len(self.layers)
        n = sum(self.generation.count_for({k, target_kind(k, d)}, paired=target_kind(k, d) in TEMPLATE_KINDS)
                for k, d in itertools.product(self.base_kinds, self.directions))
        return [(n * per_group, scan) for scan in self.scan]

    # ------------------------------------------------------------------ grid

    def cells(self) -> list["Cell"]:
        """All cells of the grid, in a stable order."""
        out = []
        for model, sae, layer, kind, direction, scan in itertools.product(
            self.model, self.sae, self.layers, self.base_kinds, self.directions, self.scan
        ):
            target = target_kind(kind, direction)
            for generation in self.generation.axes_for({kind, target}, paired=target in TEMPLATE_KINDS):
                out.append(Cell(model=model, sae=sae, layer=layer, base_kind=kind, direction=direction,
                                target_kind=target, scan=scan, **generation))
        return out

    def shards(self) -> list["Shard"]:
        """Every cell's bases split into shards of `shard_size`."""
        out = []
        for cell in self.cells():
            for i, start in enumerate(range(0, self.bases_per_cell, self.shard_size)):
                stop = min(start + self.shard_size, self.bases_per_cell)
                out.append(Shard(cell=cell, index=i, start=start, stop=stop))
        return out

    def canonical(self) -> dict:
        """The spec as plain data (what the manifest and metadata store)."""
        return self.model_dump(mode="json")

    def identity(self) -> dict:
        """What the job's rows depend on or record: the canonical spec less `NOT_IDENTITY`."""
        return {k: v for k, v in self.canonical().items() if k not in NOT_IDENTITY}

    @property
    def spec_hash(self) -> str:
        """The job's identity: a rerun resumes a directory whose job has the same hash."""
        return digest(self.identity())


@dataclass(frozen=True)
class Cell:
    """One point of the grid: everything a curve's setting depends on except the base index.
    Generation axes are None where neither the base nor the target kind uses them."""

    model: ModelSpec
    sae: SAESpec
    layer: int
    base_kind: str
    direction: str
    target_kind: str | None
    scan: ScanSpec
    template: str | None = None
    match: str | None = None
    nearest_k: int | None = None
    tol: float | None = None
    structure: str | None = None
    anchor_cos: float | None = None
    anchor_pool: int | None = None
    candidates: int | None = None
    value_source: str | None = None
    exclude_template: bool | None = None
    match_norm: bool | None = None
    add_error: bool | None = None
    cooccur: str | None = None
    cooccur_power: float | None = None
    cooccur_window: str | None = None
    geometry_temp: float | None = None
    holdout: float | None = None
    swaps: int | None = None
    swap_order: str | None = None
    error_source: str | None = None

    def generation(self) -> dict:
        """The cell's generation axes."""
        return {name: getattr(self, name) for name in GENERATION_AXES}

    def settings(self) -> dict:
        """The cell's own axes as plain, JSON-able values."""
        return {
            "model": self.model.label,
            "sae": self.sae.label,
            "layer": self.layer,
            "base_kind": self.base_kind,
            "direction": self.direction,
            "target_kind": self.target_kind,
            "scan": self.scan.label,
            **self.generation(),
        }

    @property
    def cell_id(self) -> str:
        key = dict(_without_unused_ladder_axes(self.settings()), model=self.model.model_dump(mode="json"),
                   sae=self.sae.model_dump(mode="json"),
                   scan=self.scan.model_dump(mode="json", exclude={"start"} if self.scan.start == "base" else None))
        return digest(key)[:12]  # a scan from the base keeps the id it had before `scan.start` existed

    @property
    def group(self) -> tuple[ModelSpec, SAESpec]:
        """Cells of one group share a worker (one model, one SAE family)."""
        return (self.model, self.sae)

    def base_settings(self) -> dict:
        """What the base draw depends on: the same bases are reused across directions, targets and scans."""
        s = _without_unused_ladder_axes(self.settings())
        for name in ("direction", "target_kind", "scan", "template"):
            s.pop(name)
        if self.base_kind not in TEMPLATE_KINDS:
            for name in GENERATION_AXES:
                s.pop(name, None)
            return s
        used = GenerationSpec(**{k: [v] for k, v in self.generation().items() if v is not None}).axes_for(
            {self.base_kind}, paired=False)[0]
        return _without_unused_ladder_axes(s | used)


def _without_unused_ladder_axes(settings: dict) -> dict:
    """The ladder's axes that a cell does not use (or uses at the value that was all there was before them,
    AS_BEFORE) are left out of what its ids and seeds hash, so the cells and bases of jobs without the ladder
    are the same as before it existed."""
    return {k: v for k, v in settings.items()
            if not (k in LADDER_AXES and (v is None or (k in AS_BEFORE and v == AS_BEFORE[k])))}


@dataclass(frozen=True)
class Shard:
    """Bases [start, stop) of one cell: the unit of work, retry and resume."""

    cell: Cell
    index: int
    start: int
    stop: int

    @property
    def shard_id(self) -> str:
        return f"{self.cell.cell_id}-{self.index:05d}"

    @property
    def n_bases(self) -> int:
        return self.stop - self.start


