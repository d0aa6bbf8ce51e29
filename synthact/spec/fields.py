"""The sections of a job spec (model, SAE, corpus, generation, scan, metrics, ...): frozen pydantic
models that document every field where it is declared."""

from __future__ import annotations

import itertools
import math
import string
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

from synthact.spec.ids import digest
from synthact.spec.vocabulary import CONTROL_KINDS, CONTROL_VALUE_SOURCES, GENERATION_AXES, TEMPLATE_KINDS


class Frozen(BaseModel):
    # NaN and inf mean nothing here; strict: a boolean or a string is not a number (`bases_per_cell: true` is not 1,
    # "3" is not 3), while an integer is a fine float
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)

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

    n_layers: int = Field(4, ge=3, le=48, description="Transformer blocks.")
    d_model: int = Field(64, ge=8, le=128, description="Residual stream width.")
    n_heads: int = Field(4, ge=1, le=128, description="Attention heads per block.")
    d_mlp: int = Field(256, ge=8, le=4096, description="MLP hidden width.")
    d_vocab: int = Field(512, ge=16, le=100_000, description="Vocabulary size.")
    n_ctx: int = Field(64, ge=4, le=4096, description="Maximum context length.")
    seed: int = Field(0, ge=0, lt=2**63, description="Seed for the weights.")
    train_steps: int = Field(
        300, ge=0, le=1_000_000, description="Steps of next-token training on the toy corpus, so the model has real structure."
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
        None, description="Path to a local Hugging Face checkpoint directory (save_pretrained; the architectures of "
        "docs/families.md)."
    )
    toy: ToyModelSpec | None = Field(None, description="Build a toy model instead (no network).")
    from_pretrained_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="HookedTransformer.from_pretrained kwargs (processing flags such as fold_ln; dtype: the weights' "
        "precision, float32 (default), bfloat16 or float16); they override the SAE release's own.",
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


# Which of ToySAESpec's sparsity settings each architecture trains with (the others must keep their defaults).
TOY_SAE_SPARSITY = {"standard": "l1_coefficient", "gated": "l1_coefficient", "jumprelu": "l0_coefficient",
                    "topk": "k", "batchtopk": "k"}


class ToySAESpec(Frozen):
    """An SAE trained with sae_lens on the toy model's activations (offline, tests)."""

    architecture: Literal["standard", "jumprelu", "topk", "batchtopk", "gated"] = Field(
        "standard",
        description="sae_lens architecture: standard (ReLU + L1), jumprelu (Gemma Scope), topk (OpenAI), batchtopk "
        "(Llama Scope's training; sae_lens saves it as a JumpReLU SAE), gated.",
    )
    d_sae: int = Field(512, ge=16, le=65_536, description="Number of latents.")
    l1_coefficient: float = Field(3.0, gt=0, le=1e6, description="Sparsity penalty of the standard and gated SAE.")
    l0_coefficient: float = Field(1.0, gt=0, le=1e6, description="L0 penalty of the jumprelu SAE.")
    k: int = Field(16, ge=1, le=4096, description="Active latents per activation of topk (mean per batch: batchtopk).")
    training_tokens: int = Field(400_000, ge=1000, le=10**10, description="Activations seen in training.")
    seed: int = Field(0, ge=0, lt=2**63, description="Seed for SAE init and training order.")

    @model_validator(mode="after")
    def _sparsity_of_its_architecture(self) -> "ToySAESpec":
        for name in set(TOY_SAE_SPARSITY.values()) - {TOY_SAE_SPARSITY[self.architecture]}:
            if getattr(self, name) != type(self).model_fields[name].default:
                used = [a for a, f in TOY_SAE_SPARSITY.items() if f == name]
                raise ValueError(f"{name} applies to architecture {' and '.join(used)}, not {self.architecture}; "
                                 f"remove it or set architecture")
        return self

    @model_serializer(mode="wrap")
    def _what_applies(self, handler) -> dict:
        """Only the sparsity setting of its architecture, and no architecture when standard: the standard toy SAE's
        identity (cache key, label, spec hash) is what it was before the other architectures existed."""
        data = handler(self)
        for name in set(TOY_SAE_SPARSITY.values()) - {TOY_SAE_SPARSITY[self.architecture]}:
            data.pop(name, None)
        if self.architecture == "standard":
            data.pop("architecture", None)
        return data


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

    n_docs: int = Field(2048, ge=16, le=10_000_000, description="Number of documents.")
    doc_len: int = Field(64, ge=4, le=100_000, description="Tokens per document.")
    seed: int = Field(0, ge=0, lt=2**63, description="Seed of the chain.")


class CorpusSpec(Frozen):
    """Where prompts come from. Exactly one of `hf`, `file`, `toy`."""

    hf: str | None = Field(None, description="Hugging Face dataset of token ids, e.g. the pre-tokenized OpenWebText.")
    split: str = Field("train", description="Dataset split (hf only).")
    column: str = Field("input_ids", description="Column holding token ids (hf and Parquet files).")
    max_docs: int = Field(20_000, ge=1, le=100_000_000, description="Documents read from an hf dataset (streamed).")
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


REMOVED_GENERATION = {
    "cooccur_top_m": "cooccur_top_m was removed: co-occurrence is now counted exactly, every partner of every latent "
    "kept, and the diagnostics count on the pool's held-out part (docs/science.md, \"Beyond the paper: the "
    "ladder\"); delete it from the spec and run into a new --out (an output directory whose job.json lists it was "
    "written by an earlier synthact: rerun it into a new --out to resume or recompute it)",
}
RANKED_REMOVED = ("value_source 'ranked' was removed: it moved values between latents, so a latent's value did not "
                  "come from its own distribution; use 'quantile' (R5: each replacement's own value at the template "
                  "value's quantile) and run into a new --out")


def _listify_value(v: Any) -> list:
    return v if isinstance(v, list) else [v]


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
    nearest_k: list[Annotated[int, Field(ge=1, le=1_000_000)]] = Field([10], description="k of match nearest_k (the paper: 10).")
    tol: list[Annotated[float, Field(gt=0, le=20)]] = Field(
        [0.1], description="Max |log10 f(j) - log10 f(i)| of match tol and of structure pairwise (0 < tol <= 20)."
    )
    structure: list[Literal["anchor", "pairwise"]] = Field(
        ["anchor"],
        description="synthetic_structured: the paper's anchor construction, or synthact's pairwise-cosine "
        "search among C frequency-matched candidates.",
    )
    anchor_cos: list[Annotated[float, Field(ge=-1, le=1)]] = Field(
        [0.42], description="Anchor: the decoder cosine to the top latent it should have, in [-1, 1] (the paper: 0.42)."
    )
    anchor_pool: list[Annotated[int, Field(ge=1, le=1_000_000)]] = Field(
        [100], description="Anchor: chosen among this many latents nearest to the top latent in frequency (the paper: 100)."
    )
    candidates: list[Annotated[int, Field(ge=1, le=100_000)]] = Field(
        [16], description="C: frequency-matched candidates per latent of structure pairwise (C=1 is the baseline)."
    )
    value_source: list[Literal["template", "sampled", "quantile", "permuted"]] = Field(
        ["template"],
        description="Values of a built code: the template latent's (the paper), drawn from the replacement "
        "latent's own non-zero values (sampled), the replacement's own value at the template value's quantile "
        "(quantile: the ladder's R5, from the pool's statistics part), or the template's values permuted among the "
        "latents (permuted). The controls keep the template's values: they take only template and permuted.",
    )
    exclude_template: list[bool] = Field(
        [True],
        description="Never replace a latent by any latent of the template's code (a replacement is never the "
        "latent it replaces, whatever this says).",
    )
    match_norm: list[bool] = Field(
        [False], description="Rescale a built code so its activation has the template's norm (the paper: no)."
    )
    add_error: list[bool] = Field([False], description="Add an SAE error (x - sae_recon(x)) to built activations: "
                                  "the template's, or another prompt's (error_source).")
    cooccur: list[Literal["counts", "none"]] = Field(
        ["counts"],
        description="synthetic_cooccur: weight candidates by their exact co-occurrence counts with the latents already "
        "chosen (R3), or not (none: with cooccur_window nearest_k and geometry_temp 0 this is the baseline).",
    )
    cooccur_power: list[Annotated[float, Field(gt=0, le=100)]] = Field(
        [2.0],
        description="synthetic_cooccur with counts: p of the weight (sum over the chosen latents u of count(u, j))^p; "
        "1 draws in proportion to the summed counts; 2 (R3) in proportion to the chance that two independent draws "
        "from those counts both give j, which favours the partners the code shares.",
    )
    cooccur_window: list[Literal["all", "nearest_k", "anchor"]] = Field(
        ["all"],
        description="synthetic_cooccur candidates: every allowed alive latent (all: R3, co-occurrence decides), the "
        "nearest_k allowed latents nearest to the replaced one in frequency (R1's window), or the partners of the "
        "anchor of the anchor construction (anchor: the authors' select_features_challenger; where they are no more "
        "than the code's latents, the anchor construction itself, as theirs).",
    )
    geometry_temp: list[Annotated[float, Field(ge=0, le=1e6)]] = Field(
        [0.0],
        description="synthetic_cooccur: > 0 also weights candidates by exp(-error in kept decoder cosines / this) "
        "(R4; 0 = no geometry).",
    )
    holdout: list[Annotated[float, Field(ge=0, lt=1)]] = Field(
        [0.25],
        description="Fraction of the reference pool (its last codes) held out of what the ladder draws from "
        "(synthetic_cooccur with counts, control_swapped, value_source quantile): the diagnostics count on it.",
    )
    swaps: list[Annotated[int, Field(ge=0, le=100_000)]] = Field(
        [1], description="control_swapped: latents of the template's code replaced (0 = none; >= its L0 = all)."
    )
    swap_order: list[Literal["most_cooccurring", "least_cooccurring"]] = Field(
        ["most_cooccurring"],
        description="control_swapped: swap the latents that co-occur most (or least) with the rest of the code first.",
    )
    error_source: list[Literal["template", "other"]] = Field(
        ["template"],
        description="With add_error: whose SAE error is added, the template's own (its prompt's) or that of another "
        "real prompt drawn from the draw's RNG (other: the transplanted-error control, on any rung).",
    )

    @model_validator(mode="before")
    @classmethod
    def _removed(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, why in REMOVED_GENERATION.items():
                if key in data:
                    raise ValueError(why)
            if "ranked" in _listify_value(data.get("value_source")):
                raise ValueError(RANKED_REMOVED)
        return data

    @field_validator("*")
    @classmethod
    def _non_empty(cls, v: list) -> list:
        if not v:
            raise ValueError("a generation axis must list at least one value")
        if len(set(map(repr, v))) != len(v):
            raise ValueError(f"lists a value twice: {v}")
        return v

    def axes_for(self, kinds: set[str], paired: bool) -> list[dict]:
        """The distinct generation settings of a cell whose base and target kinds are `kinds`
        (`paired`: its target is SAE-built), each with null for the axes no kind there uses; in the
        order of the axes' product (time proportional to the settings listed, not to the product)."""
        found = []
        for choices in self._choices(kinds, paired):
            for combo in itertools.product(*choices):
                found.append((tuple(i for i, _ in combo), dict(zip(GENERATION_AXES, (v for _, v in combo)))))
        return [c for _, c in sorted(found, key=lambda item: item[0])]

    def count_for(self, kinds: set[str], paired: bool) -> int:
        """len(axes_for(kinds, paired)), counted without listing them."""
        return sum(math.prod(map(len, choices)) for choices in self._choices(kinds, paired))

    def _choices(self, kinds: set[str], paired: bool):
        """Per (match, structure, cooccur_window, cooccur, value_source, add_error) a kind here uses: each axis's
        (index, value) choices, [(0, None)] where unused. A cell with a control takes only the value sources that
        keep the template's values (CONTROL_VALUE_SOURCES)."""
        used = set()
        built = kinds & set(TEMPLATE_KINDS)
        if built:
            used |= {"exclude_template", "match_norm"}
        if paired:
            used.add("template")
        matches = list(enumerate(self.match)) if "synthetic_baseline" in kinds else [None]
        structures = list(enumerate(self.structure)) if "synthetic_structured" in kinds else [None]
        cooccur = "synthetic_cooccur" in kinds
        windows = list(enumerate(self.cooccur_window)) if cooccur else [None]
        weights = list(enumerate(self.cooccur)) if cooccur else [None]
        errors = list(enumerate(self.add_error)) if built else [None]
        sources = [(i, v) for i, v in enumerate(self.value_source)
                   if not (kinds & set(CONTROL_KINDS)) or v in CONTROL_VALUE_SOURCES] if built else [None]
        for m, st, w, co, vs, er in itertools.product(matches, structures, windows, weights, sources, errors):
            keep, fixed = set(used), {}
            if er is not None:  # error_source only where an error is added
                keep |= {"add_error"} | ({"error_source"} if er[1] else set())
                fixed["add_error"] = [er]
            if vs is not None:  # holdout where the values come from the pool's statistics part
                keep |= {"value_source"} | ({"holdout"} if vs[1] == "quantile" else set())
                fixed["value_source"] = [vs]
            if m is not None:
                keep |= {"match", "nearest_k" if m[1] == "nearest_k" else "tol"}
                fixed["match"] = [m]
            if st is not None:
                keep |= {"structure"} | ({"anchor_cos", "anchor_pool"} if st[1] == "anchor" else {"tol", "candidates"})
                fixed["structure"] = [st]
            if cooccur:
                keep |= {"cooccur", "cooccur_window", "geometry_temp"} | {"nearest_k": {"nearest_k"}, "all": set(),
                                                                          "anchor": {"anchor_cos", "anchor_pool"}}[w[1]]
                keep |= {"holdout", "cooccur_power"} if co[1] == "counts" else set()
                fixed["cooccur_window"], fixed["cooccur"] = [w], [co]
            if "control_swapped" in kinds:
                keep |= {"swaps", "swap_order", "nearest_k", "holdout"}
            yield [fixed.get(name) or (list(enumerate(getattr(self, name))) if name in keep else [(0, None)])
                   for name in GENERATION_AXES]


class ScanSpec(Frozen):
    """One perturbation scan: A_n = A + n*s*D (step) or A + (n/N)(T - A) (interpolate), n = 0..N; with
    `start: target` the scan runs the other way, x_n = T + n*s*(A - T)/||A - T||, in A's prompt."""

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
        description="Step mode with a target: metrics look at the points up to the target's, n <= floor(||T - A|| / s) "
        "(or n < it, metrics.cut: before_target); the curve is still stored to N.",
    )
    start: Literal["base", "target"] = Field(
        "base",
        description="Where the scan starts: at the base A, stepping towards the target T (synthact; the paper's "
        "text), or at T placed in A's prompt, stepping towards A (the authors' plateau code: the plateau around "
        "T); d_n is measured from the start point and the target's point is then the one reaching A. "
        "`target` needs a toward:<kind> or toward_recon direction.",
    )

    @property
    def label(self) -> str:
        return self.name or self.mode


class MetricsSpec(Frozen):
    """Thresholds of the curve metrics (docs/science.md, "Curve metrics")."""

    slope_threshold: float = Field(
        0.02, ge=0, le=1e6, description="max_slope_step: if no slope d_n - d_{n-1} exceeds it, the step is the last point."
    )
    plateau_threshold: float = Field(
        20.0, gt=0, description="plateau_len: first n with d_n >= this (absolute L2) or this * d_last (relative)."
    )
    plateau_mode: Literal["absolute", "relative"] = Field("absolute", description="How plateau_threshold is read (the paper: absolute).")
    cut: Literal["through_target", "before_target"] = Field(
        "through_target",
        description="Where a scan that stops at the target ends for the metrics: `through_target` reads "
        "d_0..d_target_step (synthact), `before_target` reads d_0..d_(target_step - 1), the authors' "
        "`l2s[:target_step]`. Scans that do not stop at the target read every point either way.",
    )
    fallback: Literal["last", "constant"] = Field(
        "last",
        description="A curve no slope / distance crosses the threshold of: `last` gives max_slope_step = the last "
        "point read and plateau_len = the number of points read (synthact); `constant` gives the authors' "
        "constants, max_slope_step 99 and plateau_len 100, whatever the curve's length.",
    )

    @model_validator(mode="after")
    def _relative_is_a_fraction(self) -> "MetricsSpec":
        if self.plateau_mode == "relative" and self.plateau_threshold > 1:
            raise ValueError(
                f"plateau_mode relative reads plateau_threshold as a fraction of d_last, so it must be in (0, 1]; "
                f"got {self.plateau_threshold} (with the absolute default 20 every curve would get the fallback). "
                "Set plateau_threshold, e.g. 0.9"
            )
        return self


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

    num_gpus: float = Field(1.0, ge=0, le=1024, description="GPUs per worker actor; 0 gives CPU actors.")
    num_cpus: float = Field(1.0, gt=0, le=4096, description="CPUs per worker actor.")
    max_workers: int | None = Field(None, ge=1, le=100_000, description="Cap on worker actors; default: as many as fit.")
    max_in_flight: int = Field(2, ge=1, le=1000, description="Shards queued per worker at once.")
    max_retries: int = Field(2, ge=0, le=100, description="Retries of a failing shard before it is reported.")
    dashboard: bool = Field(
        True, description="Start Ray's dashboard with the instance `--ray local` starts (a few CPU-seconds at "
                          "start); a running cluster keeps its own."
    )


