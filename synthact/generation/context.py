"""What a draw needs (GenContext), how SAE-built kinds are made (GenerationSettings), and what a draw
returns (Activations: the batch with what is needed to rebuild each draw)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from synthact.generation.codes import Codes
from synthact.generation.stats import ReferenceStats
from synthact.spec import GenerationSpec

SINGLE_CANDIDATE = 1  # C of every construction but structure pairwise


def _spec_default(axis: str):
    """The default of a generation axis: the first value of its list in spec.GenerationSpec (the one home)."""
    return GenerationSpec.model_fields[axis].default[0]


@dataclass(frozen=True)
class GenerationSettings:
    """How SAE-built kinds are made: one value of each axis of spec.GenerationSpec, whose defaults these are.

    One named difference: `candidates` defaults to 1 here (every construction but structure pairwise takes
    the first candidate; the worker passes the spec's C only to structure pairwise), where the spec's
    default C for structure pairwise is 16.
    """

    match: str = _spec_default("match")  # synthetic_baseline: "nearest_k" (the paper) or "tol"
    nearest_k: int = _spec_default("nearest_k")  # random among the k allowed latents nearest in frequency
    tol: float = _spec_default("tol")  # max |log10 f(j) - log10 f(i)| of match tol and structure pairwise
    structure: str = _spec_default("structure")  # synthetic_structured: "anchor" (the paper) or "pairwise"
    anchor_cos: float = _spec_default("anchor_cos")  # the anchor's decoder cosine to the top latent
    anchor_pool: int = _spec_default("anchor_pool")  # the anchor is chosen among this many latents nearest in frequency
    candidates: int = SINGLE_CANDIDATE  # C of structure pairwise (1 = the tol baseline); see above
    value_source: str = _spec_default("value_source")  # "template": i's value (the paper); sampled, quantile, permuted
    exclude_template: bool = _spec_default("exclude_template")  # no replacement is any template latent
    match_norm: bool = _spec_default("match_norm")  # rescale the code to the template's norm
    add_error: bool = _spec_default("add_error")  # add an SAE error (x - sae_recon(x))
    error_source: str = _spec_default("error_source")  # with add_error: the template's error, or an "other" prompt's
    cooccur: str = _spec_default("cooccur")  # synthetic_cooccur: weight by co-occurrence counts, or "none" (generation/ladder.py)
    cooccur_power: float = _spec_default("cooccur_power")  # synthetic_cooccur: p of the weight (summed counts)^p
    cooccur_window: str = _spec_default("cooccur_window")  # synthetic_cooccur candidates: all, nearest_k or anchor
    geometry_temp: float = _spec_default("geometry_temp")  # synthetic_cooccur: > 0 also favours kept decoder cosines
    holdout: float = _spec_default("holdout")  # fraction of the pool held out of the ladder's statistics
    swaps: int = _spec_default("swaps")  # control_swapped: latents replaced
    swap_order: str = _spec_default("swap_order")  # control_swapped: which latents first


def method(kind: str, s: GenerationSettings) -> str:
    """How a template-built kind picks its latents: random, nearest_k, anchor, or the value-ordered tol /
    pairwise search (tol is pairwise with C = 1)."""
    if kind == "random_latents":
        return "random"
    if kind in ("synthetic_cooccur", "control_swapped", "control_other_latents"):
        return kind
    if kind == "synthetic_baseline":
        return "nearest_k" if s.match == "nearest_k" else "pairwise"
    return "anchor" if s.structure == "anchor" else "pairwise"


@dataclass
class GenContext:
    """Everything a draw needs: model, SAE, reference statistics, prompts, layer."""

    model: object
    sae: object
    stats: ReferenceStats
    corpus: object
    layer: int
    n_ctx: int
    device: str


@dataclass
class Activations:
    """A batch of B draws of one kind, with what is needed to rebuild each one."""

    kind: str
    vectors: torch.Tensor  # [B, d_model] float32 on ctx.device
    docs: np.ndarray  # int64 [B]
    offsets: np.ndarray  # int64 [B]
    tokens: np.ndarray  # int64 [B, n_ctx]: the source/template prompt, or a context prompt
    latents: list[np.ndarray] | None  # int32 latent ids per draw (SAE-built and sae_recon)
    values: list[np.ndarray] | None  # float32 values per draw
    l0: np.ndarray | None  # int32 [B]: size of the built code, or L0 of the SAE code of the vector
    prompt_based: bool  # the activation is a function of `tokens`
    template_latents: list[np.ndarray] | None = None  # synthetic kinds: i_1..i_k, aligned with latents
    # The other real prompt of control_other_latents (its latents) and error_source "other" (its SAE error).
    other_docs: np.ndarray | None = None  # int64 [B]
    other_offsets: np.ndarray | None = None  # int64 [B]
    other_tokens: np.ndarray | None = None  # int64 [B, n_ctx]
    # The SAE codes of `vectors` where the draw computed them (real, gaussian): paired targets built on these
    # draws as templates take them instead of encoding the same vectors again.
    codes: Codes | None = None

    def __len__(self) -> int:
        return self.vectors.shape[0]

    def replace_rows(self, rows: list[int], other: Activations) -> None:
        """Overwrite draws `rows` with the draws of `other` (same kind, len(other) == len(rows))."""
        idx = torch.as_tensor(rows, device=self.vectors.device)
        self.vectors[idx] = other.vectors
        for name in ("docs", "offsets", "tokens", "l0", "other_docs", "other_offsets", "other_tokens"):
            mine = getattr(self, name)
            if mine is not None:
                mine[rows] = getattr(other, name)
        for name in ("latents", "values", "template_latents"):
            mine = getattr(self, name)
            if mine is not None:
                for r, item in zip(rows, getattr(other, name)):
                    mine[r] = item
        if self.codes is not None:
            rows_at = idx.to(self.codes.offsets.device)
            self.codes = None if other.codes is None else self.codes.replace(rows_at, other.codes)


