"""Job spec: YAML -> validated, frozen pydantic models -> grid of cells -> shards.

A job spec is one YAML file. Lists are grid axes; cells are their product. Every
field documents itself here, where it is declared.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from synthact.errors import SynthactError

KINDS = (
    "real",
    "sae_recon",
    "gaussian",
    "synthetic_baseline",
    "synthetic_structured",
    "random_latents",
    "single_latent",
)
Kind = Literal[
    "real",
    "sae_recon",
    "gaussian",
    "synthetic_baseline",
    "synthetic_structured",
    "random_latents",
    "single_latent",
]
SYNTHETIC_KINDS = ("synthetic_baseline", "synthetic_structured")
# Kinds built from a template's SAE code, latent by latent: as targets, the template is the base's own code.
TEMPLATE_KINDS = (*SYNTHETIC_KINDS, "random_latents")


# Bounds that keep `validate` and planning small whatever the spec says.
MAX_SHARDS = 1_000_000
MAX_SPEC_BYTES = 1 << 20
MAX_SPEC_VALUES = 100_000


class SpecError(SynthactError):
    """A job spec that cannot run; the message says what is wrong and how to fix it."""


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def __hash__(self) -> int:  # by value, also for specs holding dicts (from_pretrained_kwargs)
        return hash(digest(self.model_dump(mode="json")))


def _exactly_one(obj: BaseModel, fields: tuple[str, ...], what: str) -> None:
    given = [f for f in fields if getattr(obj, f) is not None]
    if len(given) != 1:
        raise ValueError(
            f"{what} needs exactly one of {', '.join(fields)}; got {given or 'none'}"
        )


# --------------------------------------------------------------------------- model


class ToyModelSpec(Frozen):
    """A small GPT-2-architecture HookedTransformer built from a seed (offline, tests)."""

    n_layers: int = Field(4, ge=3, description="Transformer blocks.")
    d_model: int = Field(64, ge=8, le=128, description="Residual stream width.")
    n_heads: int = Field(4, ge=1, description="Attention heads per block.")
    d_mlp: int = Field(256, ge=8, description="MLP hidden width.")
    d_vocab: int = Field(512, ge=16, description="Vocabulary size.")
    n_ctx: int = Field(64, ge=4, description="Maximum context length.")
    seed: int = Field(0, ge=0, lt=2**63, description="Seed for the weights.")
    train_steps: int = Field(
        300, ge=0, description="Steps of next-token training on the toy corpus, so the model has real structure."
    )

    @model_validator(mode="after")
    def _heads_divide(self) -> "ToyModelSpec":
        if self.d_model % self.n_heads:
            raise ValueError(f"toy d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        return self


class ModelSpec(Frozen):
    """Which language model. Exactly one of `pretrained`, `local`, `toy`."""

    pretrained: str | None = Field(None, description="TransformerLens model name, e.g. 'gpt2'.")
    local: str | None = Field(
        None, description="Path to a local Hugging Face-format checkpoint directory (GPT-2 architecture)."
    )
    toy: ToyModelSpec | None = Field(None, description="Build a toy model instead (no network).")
    from_pretrained_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra HookedTransformer.from_pretrained kwargs; they override the SAE release's own.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> "ModelSpec":
        _exactly_one(self, ("pretrained", "local", "toy"), "model")
        return self

    @property
    def label(self) -> str:
        if self.pretrained:
            return self.pretrained
        if self.local:
            return f"local:{Path(self.local).name}"
        return "toy-" + digest(self.toy.model_dump())[:8]


# --------------------------------------------------------------------------- SAE


class ToySAESpec(Frozen):
    """An SAE trained with sae_lens on the toy model's activations (offline, tests)."""

    d_sae: int = Field(512, ge=16, description="Number of latents.")
    l1_coefficient: float = Field(3.0, gt=0, description="Sparsity penalty of the standard SAE.")
    training_tokens: int = Field(400_000, ge=1000, description="Activations seen in training.")
    seed: int = Field(0, ge=0, lt=2**63, description="Seed for SAE init and training order.")


class SAESpec(Frozen):
    """Which SAE. Exactly one of `release`, `local`, `toy`. `{layer}` is replaced per layer."""

    release: str | None = Field(None, description="sae_lens pretrained release, e.g. 'gpt2-small-res-jb'.")
    id: str = Field("blocks.{layer}.hook_resid_pre", description="SAE id inside the release.")
    local: str | None = Field(
        None, description="Path to a sae_lens SAE directory (from save_model); may contain '{layer}'."
    )
    toy: ToySAESpec | None = Field(None, description="Train a toy SAE on the toy model (no network).")

    @model_validator(mode="after")
    def _one_source(self) -> "SAESpec":
        _exactly_one(self, ("release", "local", "toy"), "sae")
        for text in (self.local, self.id):
            fields = {f for _, f, _, _ in string.Formatter().parse(text or "") if f is not None}
            if fields - {"layer"}:
                raise ValueError(f"'{text}' may contain only the placeholder {{layer}}, not {{{(fields - {'layer'}).pop()}}}")
        return self

    @property
    def label(self) -> str:
        if self.release:
            return f"{self.release}/{self.id}"
        if self.local:
            return f"local:{self.local}"
        return "toy-" + digest(self.toy.model_dump())[:8]


# --------------------------------------------------------------------------- corpus


class ToyCorpusSpec(Frozen):
    """Token sequences from a seeded Markov chain over the toy vocabulary."""

    n_docs: int = Field(2048, ge=16, description="Number of documents.")
    doc_len: int = Field(64, ge=4, description="Tokens per document.")
    seed: int = Field(0, ge=0, lt=2**63, description="Seed of the chain.")


class CorpusSpec(Frozen):
    """Where prompts come from. Exactly one of `hf`, `file`, `toy`."""

    hf: str | None = Field(None, description="Hugging Face dataset of token ids, e.g. the pre-tokenized OpenWebText.")
    split: str = Field("train", description="Dataset split (hf only).")
    column: str = Field("input_ids", description="Column holding token ids (hf and Parquet files).")
    max_docs: int = Field(20_000, ge=1, description="Documents read from an hf dataset (streamed).")
    file: str | None = Field(None, description="Local token file: .npy (2-D [docs, tokens] or 1-D) or Parquet.")
    toy: ToyCorpusSpec | None = Field(None, description="Toy corpus for the toy model.")

    @model_validator(mode="after")
    def _one_source(self) -> "CorpusSpec":
        _exactly_one(self, ("hf", "file", "toy"), "corpus")
        return self

    @property
    def label(self) -> str:
        if self.hf:
            return f"{self.hf}:{self.split}"
        if self.file:
            return f"file:{self.file}"
        return "toy-" + digest(self.toy.model_dump())[:8]


# --------------------------------------------------------------------------- settings


class GenerationSpec(Frozen):
    """How SAE-built kinds are made (docs/science.md, "Generation settings"). Every list is a grid axis;
    an axis applies to the cells whose base or target kind uses it (null elsewhere). The defaults are
    the paper's construction."""

    template: list[Literal["base", "independent"]] = Field(
        ["base"],
        description="Template of SAE-built targets (synthetic_*, random_latents): the base's own SAE code (the "
        "paper: paired) or an independent real prompt (unpaired). SAE-built bases always use an independent one.",
    )
    match: list[Literal["nearest_k", "tol"]] = Field(
        ["nearest_k"],
        description="Frequency matching of synthetic_baseline: random among the k latents nearest in frequency "
        "(the paper), or random within a log10-frequency tolerance.",
    )
    nearest_k: list[int] = Field([10], description="k of match nearest_k (the paper: 10).")
    tol: list[float] = Field(
        [0.1], description="Max |log10 f(j) - log10 f(i)| of match tol and of structure pairwise."
    )
    structure: list[Literal["anchor", "pairwise"]] = Field(
        ["anchor"],
        description="synthetic_structured: the paper's anchor construction, or synthact's pairwise-cosine "
        "search among C frequency-matched candidates.",
    )
    anchor_cos: list[float] = Field(
        [0.42], description="Anchor: the decoder cosine to the top latent it should have (the paper: 0.42)."
    )
    anchor_pool: list[int] = Field(
        [100], description="Anchor: chosen among this many latents nearest to the top latent in frequency (the paper: 100)."
    )
    candidates: list[int] = Field(
        [16], description="C: frequency-matched candidates per latent of structure pairwise (C=1 is the baseline)."
    )
    value_source: list[Literal["template", "sampled"]] = Field(
        ["template"],
        description="Values of a built code: the template latent's (the paper), or drawn from the replacement "
        "latent's own non-zero values.",
    )
    exclude_template: list[bool] = Field(
        [True],
        description="Never replace a latent by any latent of the template's code (a replacement is never the "
        "latent it replaces, whatever this says).",
    )
    match_norm: list[bool] = Field(
        [False], description="Rescale a built code so its activation has the template's norm (the paper: no)."
    )
    add_error: list[bool] = Field([False], description="Add the template's SAE error (real - sae_recon).")

    @field_validator("*")
    @classmethod
    def _non_empty(cls, v: list) -> list:
        if not v:
            raise ValueError("a generation axis must list at least one value")
        if len(set(map(repr, v))) != len(v):
            raise ValueError(f"lists a value twice: {v}")
        return v

    @field_validator("candidates", "nearest_k", "anchor_pool")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(c < 1 for c in v):
            raise ValueError("candidates, nearest_k and anchor_pool must be >= 1")
        return v

    def axes_for(self, kinds: set[str], paired: bool) -> list[dict]:
        """The distinct generation settings of a cell whose base and target kinds are `kinds`
        (`paired`: its target is SAE-built), each with null for the axes no kind there uses."""
        used = set()
        if kinds & set(TEMPLATE_KINDS):
            used |= {"value_source", "exclude_template", "match_norm", "add_error"}
        if paired:
            used.add("template")
        combos = []
        for values in itertools.product(*(getattr(self, name) for name in GENERATION_AXES)):
            c = dict(zip(GENERATION_AXES, values))
            keep = set(used)
            if "synthetic_baseline" in kinds:
                keep |= {"match", "nearest_k" if c["match"] == "nearest_k" else "tol"}
            if "synthetic_structured" in kinds:
                keep |= {"structure"} | ({"anchor_cos", "anchor_pool"} if c["structure"] == "anchor" else {"tol", "candidates"})
            c = {k: (v if k in keep else None) for k, v in c.items()}
            if c not in combos:
                combos.append(c)
        return combos


GENERATION_AXES = (
    "template", "match", "nearest_k", "tol", "structure", "anchor_cos", "anchor_pool", "candidates",
    "value_source", "exclude_template", "match_norm", "add_error",
)


class ScanSpec(Frozen):
    """One perturbation scan: A_n = A + n*s*D (step) or A + (n/N)(T - A) (interpolate), n = 0..N."""

    name: str | None = Field(
        None, description="The scan's name (the `scan` column), e.g. sensitivity or plateaus; default: its mode."
    )
    steps: int = Field(
        100, ge=2, le=100_000, description="N: the scan has N+1 points n = 0..N (the paper's 100 points: N = 99)."
    )
    step_size: float = Field(
        0.5, ge=1e-4, le=1e4, description="s, in residual-norm units (step mode); 1e-4 to 1e4 (float32 scans)."
    )
    mode: Literal["step", "interpolate"] = Field("step", description="Step along D, or interpolate to the target.")
    stop_at_target: bool = Field(
        True,
        description="Step mode with a target: metrics look at the points up to the target, n <= floor(||T - A|| / s) "
        "(the paper); the curve is still stored to N.",
    )

    @property
    def label(self) -> str:
        return self.name or self.mode


class MetricsSpec(Frozen):
    """Thresholds of the curve metrics (docs/science.md, "Curve metrics")."""

    slope_threshold: float = Field(
        0.02, ge=0, description="max_slope_step: if no slope d_n - d_{n-1} exceeds it, the step is the last point."
    )
    plateau_threshold: float = Field(
        20.0, gt=0, description="plateau_len: first n with d_n >= this (absolute L2) or this * d_last (relative)."
    )
    plateau_mode: Literal["absolute", "relative"] = Field("absolute", description="How plateau_threshold is read (the paper: absolute).")


class ReferenceSpec(Frozen):
    """Reference statistics: a pool of real activations per (model, SAE, layer, corpus, seed)."""

    n_prompts: int = Field(4096, ge=64, le=1_000_000, description="Real activations in the pool.")
    value_samples: int = Field(64, ge=1, le=10_000, description="Non-zero values kept per latent.")


class WandbSpec(Frozen):
    """Weights & Biases logging; `wandb: false` turns it off."""

    enabled: bool = Field(True, description="Log to W&B (offline when no API key).")
    project: str | None = Field(None, description="Project; default WANDB_PROJECT or 'synthact'.")
    entity: str | None = Field(None, description="Entity; default WANDB_ENTITY.")
    group: str | None = Field(None, description="Run group.")
    tags: list[str] = Field(default_factory=list, description="Run tags.")


class RaySpec(Frozen):
    """How the sweep runs on a Ray cluster (`--ray ADDRESS`)."""

    num_gpus: float = Field(1.0, ge=0, description="GPUs per worker actor; 0 gives CPU actors.")
    num_cpus: float = Field(1.0, gt=0, description="CPUs per worker actor.")
    max_workers: int | None = Field(None, ge=1, description="Cap on worker actors; default: as many as fit.")
    max_in_flight: int = Field(2, ge=1, description="Shards queued per worker at once.")
    max_retries: int = Field(2, ge=0, description="Retries of a failing shard before it is reported.")


# --------------------------------------------------------------------------- job


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
    n_ctx: int = Field(10, ge=2, description="Prompt length; only the last position is perturbed and read.")
    layers: list[int] = Field(
        [1],
        description="Perturbation layers L: the SAE's hook, blocks.L.hook_resid_pre or blocks.L.hook_resid_post "
        "(the input of block L+1).",
    )
    read_layers: list[int] = Field(
        [-1], description="Read layers R (blocks.R.hook_resid_post); negative counts from the end, -1 = last block."
    )
    base_kinds: list[Kind] = Field(list(KINDS), description="Kinds of base activation.")
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
        for kind, direction, scan in itertools.product(self.base_kinds, self.directions, self.scan):
            problem = pair_problem(kind, direction, scan.mode)
            if problem:
                raise ValueError(problem)
        paired_targets = {target_kind(k, d) for k, d in itertools.product(self.base_kinds, self.directions)
                          if k != "real"} & set(TEMPLATE_KINDS)
        if True in self.generation.add_error and "base" in self.generation.template and paired_targets:
            raise ValueError(
                "add_error with template 'base' needs real bases (the error is the SAE error of the base's prompt); "
                f"targets {', '.join(sorted(paired_targets))} of other base kinds would be paired: drop add_error or "
                "use template: [independent]"
            )
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

    def count(self) -> tuple[int, int]:
        """(cells, shards) of the grid, counted without listing them."""
        cells = sum(n for n, _ in self._cells_per_scan())
        return cells, cells * -(-self.bases_per_cell // self.shard_size)

    def scan_points(self) -> int:
        """Scan points of the whole grid (every base of every cell, N+1 each), counted without listing cells."""
        return sum(n * (scan.steps + 1) for n, scan in self._cells_per_scan()) * self.bases_per_cell

    def _cells_per_scan(self) -> list[tuple[int, "ScanSpec"]]:
        per_group = len(self.model) * len(self.sae) * len(self.layers)
        out = []
        for scan in self.scan:
            n = sum(len(self.generation.axes_for({k, target_kind(k, d)}, paired=target_kind(k, d) in TEMPLATE_KINDS))
                    for k, d in itertools.product(self.base_kinds, self.directions))
            out.append((n * per_group, scan))
        return out

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

    @property
    def spec_hash(self) -> str:
        return digest(self.canonical())


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
        key = dict(self.settings(), model=self.model.model_dump(mode="json"), sae=self.sae.model_dump(mode="json"),
                   scan=self.scan.model_dump(mode="json"))
        return digest(key)[:12]

    @property
    def group(self) -> tuple[ModelSpec, SAESpec]:
        """Cells of one group share a worker (one model, one SAE family)."""
        return (self.model, self.sae)

    def base_settings(self) -> dict:
        """What the base draw depends on: the same bases are reused across directions, targets and scans."""
        s = self.settings()
        for name in ("direction", "target_kind", "scan", "template"):
            s.pop(name)
        if self.base_kind not in TEMPLATE_KINDS:
            for name in GENERATION_AXES:
                s.pop(name, None)
            return s
        used = GenerationSpec(**{k: [v] for k, v in self.generation().items() if v is not None}).axes_for(
            {self.base_kind}, paired=False)[0]
        return s | used


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


# --------------------------------------------------------------------------- helpers


def digest(obj: Any) -> str:
    """Stable hex digest of JSON-able data."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any JSON-able parts (sweep seed, cell settings, base index, role)."""
    return int(digest(list(parts))[:15], 16)


def parse_direction(direction: str) -> tuple[str, str | None]:
    """'toward:real' -> ('toward', 'real'); 'latent:12' -> ('latent', '12'); 'isotropic' -> ('isotropic', None)."""
    if direction in ("isotropic", "toward_recon"):
        return direction, None
    head, _, arg = direction.partition(":")
    if head == "toward" and (arg in KINDS or arg == "same"):
        return head, arg
    if head == "latent" and (arg == "random" or re.fullmatch(r"[0-9]{1,9}", arg)):
        return head, arg
    raise ValueError(
        f"unknown direction '{direction}'; use toward:<kind> (kinds: {', '.join(KINDS)}), toward:same, "
        "isotropic, latent:<id>, latent:random or toward_recon"
    )


def target_kind(base_kind: str, direction: str) -> str | None:
    """The kind of the target activation a direction points at, if any."""
    head, arg = parse_direction(direction)
    if head == "toward":
        return base_kind if arg == "same" else arg
    return None


def pair_problem(base_kind: str, direction: str, mode: str) -> str | None:
    """Why a (base kind, direction) pair makes no sense, or None."""
    head, _ = parse_direction(direction)
    if mode == "interpolate" and head in ("isotropic", "latent"):
        return (
            f"scan mode 'interpolate' needs a target, but direction '{direction}' has none; "
            "use mode: step, or a toward:<kind> / toward_recon direction"
        )
    return None


def resolve_read_layer(read_layer: int, n_layers: int) -> int:
    return read_layer + n_layers if read_layer < 0 else read_layer


def check_layers(job: Job, n_layers: int, model_label: str) -> None:
    """Raise a clear error for layers the model lacks or read layers before the perturbation."""
    for layer in job.layers:
        if layer >= n_layers:
            raise ValueError(
                f"layer {layer} is out of range for model '{model_label}' with {n_layers} blocks "
                f"(valid: 0..{n_layers - 1})"
            )
    resolved = [resolve_read_layer(r, n_layers) for r in job.read_layers]
    if len(set(resolved)) != len(resolved):
        raise ValueError(
            f"read_layers {job.read_layers} name the same block twice on model '{model_label}' with {n_layers} blocks"
        )
    for r in job.read_layers:
        rr = resolve_read_layer(r, n_layers)
        if not 0 <= rr < n_layers:
            raise ValueError(
                f"read layer {r} is out of range for model '{model_label}' with {n_layers} blocks "
                f"(valid: 0..{n_layers - 1}, or -1 for the last)"
            )
        for layer in job.layers:
            if rr < layer:
                raise ValueError(
                    f"read layer {r} (blocks.{rr}.hook_resid_post) comes before perturbation layer {layer} "
                    f"(its SAE's blocks.{layer}.hook_resid_pre or hook_resid_post); read at a layer >= {layer}"
                )


def load_job(path: str | Path) -> Job:
    """Read and validate a YAML job spec; SpecError with a readable message on any problem."""
    path = Path(path)
    if not path.exists():
        raise SpecError(f"job spec '{path}' does not exist; pass the path of a YAML file such as jobs/smoke.yaml")
    if not path.is_file():
        raise SpecError(f"job spec '{path}' is not a file; pass the path of a YAML file such as jobs/smoke.yaml")
    if path.stat().st_size > MAX_SPEC_BYTES:
        raise SpecError(f"job spec '{path}' is larger than {MAX_SPEC_BYTES // 1024} KiB; a job spec is a short YAML file")
    try:
        text = path.read_text()
        data = yaml.safe_load(text)
    except UnicodeDecodeError:
        raise SpecError(f"job spec '{path}' is not a text file; pass the path of a YAML file") from None
    except yaml.YAMLError as e:
        raise SpecError(f"job spec '{path}' is not valid YAML: {e}") from None
    if expanded_size(data) > MAX_SPEC_VALUES:
        raise SpecError(f"job spec '{path}' expands to more than {MAX_SPEC_VALUES:,} values (YAML aliases?); "
                        "a job spec is a short list of fields")
    if not isinstance(data, dict):
        raise SpecError(f"job spec '{path}' must be a YAML mapping of fields (name, model, sae, ...)")
    data.setdefault("name", path.stem)
    return parse_job(data, source=str(path))


def expanded_size(data: Any, memo: dict | None = None) -> int:
    """How many values `data` holds once YAML aliases are expanded (each shared node counted per use)."""
    memo = {} if memo is None else memo
    if not isinstance(data, (dict, list)):
        return 1
    if id(data) not in memo:
        children = [*data.keys(), *data.values()] if isinstance(data, dict) else data
        memo[id(data)] = 1 + sum(expanded_size(c, memo) for c in children)
    return memo[id(data)]


def parse_job(data: dict, source: str = "job spec") -> Job:
    try:
        return Job.model_validate(data)
    except ValidationError as e:
        raise SpecError(f"{source} is invalid:\n{format_validation_error(e)}") from None


def format_validation_error(e: ValidationError) -> str:
    lines = []
    for err in e.errors():
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".") or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"  - unknown key '{where}': remove it or check its spelling (see docs/spec.md)")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"  - {where}: {msg}")
    return "\n".join(lines)


def field_reference() -> str:
    """Every job-spec field with its type, default and description, as Markdown (docs/spec.md)."""
    lines = ["# Job spec fields", "", "Generated by `synthact validate --fields`; every field is declared in",
             "`synthact/spec.py`. Unknown keys are refused.", ""]

    def section(title: str, model: type[BaseModel]) -> None:
        lines.extend([f"## {title}", "", (model.__doc__ or "").strip(), "", "| field | type | default | description |",
                      "|---|---|---|---|"])
        for name, field in model.model_fields.items():
            value = field.default_factory() if field.default_factory else field.default
            default = "required" if field.is_required() else "see below" if isinstance(value, BaseModel) else f"`{value!r}`"
            annotation = field.annotation
            kind = annotation.__name__ if get_origin(annotation) is None and hasattr(annotation, "__name__") else str(annotation)
            kind = kind.replace("typing.", "").replace("synthact.spec.", "").replace("|", "or")
            description = (field.description or "").replace("|", "\\|")
            lines.append(f"| `{name}` | {kind} | {default} | {description} |")
        lines.append("")

    section("job", Job)
    for title, model in [("model", ModelSpec), ("model.toy", ToyModelSpec), ("sae", SAESpec), ("sae.toy", ToySAESpec),
                         ("corpus", CorpusSpec), ("corpus.toy", ToyCorpusSpec), ("generation", GenerationSpec),
                         ("scan", ScanSpec), ("metrics", MetricsSpec), ("reference", ReferenceSpec), ("wandb", WandbSpec), ("ray", RaySpec)]:
        section(title, model)
    return "\n".join(lines)
