"""Directions D (unit vectors) along which a base activation A is perturbed.

- `toward:<kind>`: D = (T - A) / ||T - A|| with T a draw of that kind from the target RNG; a
  template-built kind (synthetic_*, random_latents) with `paired` is built from the base's own SAE
  code (the paper), else from an independent prompt; a target within MIN_DISTANCE of its base is
  redrawn from the same RNG.
- `toward_recon`: T = SAE reconstruction of A.
- `isotropic`: uniform on the sphere (d_model float64 normals from the target RNG, normalised).
- `latent:<id>`: the decoder row W_dec[id], normalised; `latent:random`: a random alive latent
  (one integer from the target RNG indexing the pool's alive latents, ascending).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from synthact.errors import SynthactError
from synthact.generation import codes
from synthact.generation.context import Activations, GenContext, GenerationSettings
from synthact.generation.kinds import draw
from synthact.spec import TEMPLATE_KINDS, parse_direction

MIN_DISTANCE = 1e-3  # ||T - A|| below this makes (T - A) / ||T - A|| meaningless
MAX_TARGET_TRIES = 16


@dataclass
class Directions:
    """One unit direction per base, and the target it points at where there is one."""

    vectors: torch.Tensor  # [B, d_model] float32, unit norm
    target: Activations | None  # the targets of toward:<kind> / toward_recon
    target_norm: np.ndarray | None  # float64 [B] ||T||
    distance: np.ndarray | None  # float64 [B] ||T - A|| (interpolate mode scans over it)
    latent: np.ndarray | None  # int32 [B] latent id of latent:<id|random>


@torch.no_grad()
def make_directions(
    direction: str,
    target_kind: str | None,
    base: Activations,
    rngs: list[np.random.Generator],
    ctx: GenContext,
    settings: GenerationSettings | None,
    paired: bool = False,
) -> Directions:
    """Directions for every base in `base`, drawing from `rngs[b]` (the target RNG of base b) only;
    `paired`: template-built targets use the base as their template."""
    if len(rngs) != len(base):
        raise SynthactError(f"make_directions got {len(rngs)} RNGs for {len(base)} bases; pass one per base")
    try:
        head, arg = parse_direction(direction)
    except ValueError as e:
        raise SynthactError(str(e)) from None
    if head == "toward":
        kind = target_kind or (base.kind if arg == "same" else arg)
        template = base if paired and kind in TEMPLATE_KINDS else None
        target = draw(kind, rngs, ctx, settings, template)
        _redraw_close_targets(target, base, rngs, ctx, settings, template)
        return _toward(base, target)
    if head == "toward_recon":
        return _toward(base, recon_target(base, ctx))
    d_model = base.vectors.shape[1]
    if head == "isotropic":
        g = torch.as_tensor(np.stack([rng.standard_normal(d_model) for rng in rngs]), device=base.vectors.device)
        return Directions(_unit(g), None, None, None, None)
    ids = np.full(len(rngs), latent_id(arg, ctx), np.int64) if arg != "random" else _random_latents(rngs, ctx)
    vectors = _unit(ctx.sae.W_dec[torch.as_tensor(ids, device=ctx.sae.W_dec.device)].to(base.vectors.device))
    return Directions(vectors, None, None, None, ids.astype(np.int32))


def latent_id(arg: str, ctx: GenContext) -> int:
    """The latent of `latent:<id>`, checked against the SAE's width."""
    j, d_sae = int(arg), ctx.sae.W_dec.shape[0]
    if not 0 <= j < d_sae:
        raise SynthactError(f"direction 'latent:{arg}': the SAE has {d_sae} latents (ids 0..{d_sae - 1})")
    return j


def _random_latents(rngs: list[np.random.Generator], ctx: GenContext) -> np.ndarray:
    alive = ctx.stats.alive.cpu().numpy()
    return np.array([alive[rng.integers(alive.shape[0])] for rng in rngs], np.int64)


@torch.no_grad()
def recon_target(base: Activations, ctx: GenContext) -> Activations:
    """T = decode(encode(A)) for every base (kind 'sae_recon', the base's prompt)."""
    z = codes.encode(ctx.sae, base.vectors)
    latents, values = z.lists()
    return Activations(
        "sae_recon", codes.decode(ctx.sae, z), base.docs.copy(), base.offsets.copy(), base.tokens.copy(),
        latents, values, np.array([len(ids) for ids in latents], np.int32), base.prompt_based,
    )


def _redraw_close_targets(target: Activations, base: Activations, rngs, ctx: GenContext, settings, template) -> None:
    for _ in range(MAX_TARGET_TRIES):
        close = np.flatnonzero(_distance(target.vectors, base.vectors) <= MIN_DISTANCE)
        if close.size == 0:
            return
        sub = _rows(template, close) if template is not None else None
        target.replace_rows(close.tolist(), draw(target.kind, [rngs[i] for i in close], ctx, settings, sub))
    raise SynthactError(
        f"{MAX_TARGET_TRIES} '{target.kind}' targets in a row lay within {MIN_DISTANCE} of their base, so "
        f"toward:{target.kind} has no direction; the corpus has too few distinct prompts for this kind"
    )


def _rows(acts: Activations, rows: np.ndarray) -> Activations:
    """Draws `rows` of `acts` (vectors, prompts) as a batch of their own."""
    idx = torch.as_tensor(rows, device=acts.vectors.device)
    return Activations(acts.kind, acts.vectors[idx], acts.docs[rows], acts.offsets[rows], acts.tokens[rows],
                       None, None, None, acts.prompt_based)


def _toward(base: Activations, target: Activations) -> Directions:
    diff = target.vectors.double() - base.vectors.double()
    distance = diff.norm(dim=-1)
    if bool((distance <= MIN_DISTANCE).any()):
        raise SynthactError(
            f"a '{target.kind}' target equals its '{base.kind}' base (||T - A|| <= {MIN_DISTANCE}), so the direction "
            "toward it is undefined; this SAE reconstructs the base exactly: use another direction"
        )
    return Directions(
        (diff / distance[:, None]).float(),
        target,
        target.vectors.double().norm(dim=-1).cpu().numpy(),
        distance.cpu().numpy(),
        None,
    )


def _distance(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return (a.double() - b.double()).norm(dim=-1).cpu().numpy()


def _unit(v: torch.Tensor) -> torch.Tensor:
    v = v.double()
    return (v / v.norm(dim=-1, keepdim=True)).float()


@torch.no_grad()
def direction_from_provenance(
    direction: str,
    base_vector: torch.Tensor,
    ctx: GenContext,
    target_vector: torch.Tensor | None = None,
    target_seed: int | None = None,
    latent: int | None = None,
) -> torch.Tensor:
    """Rebuild one direction [d_model] from a result row.

    toward:<kind>: pass `target_vector` (rebuild it with `kinds.from_provenance`); toward_recon:
    computed from `base_vector`; isotropic: from `target_seed`; latent:<id>: from the direction;
    latent:random: from the row's `latent` (direction_latent).
    """
    try:
        head, arg = parse_direction(direction)
    except ValueError as e:
        raise SynthactError(str(e)) from None
    a = base_vector.reshape(1, -1)
    if head in ("toward", "toward_recon"):
        if head == "toward_recon":
            target_vector = ctx.sae.decode(ctx.sae.encode(a.to(ctx.sae.W_dec.dtype))).float()
        if target_vector is None:
            raise SynthactError(f"rebuilding direction '{direction}' needs the target activation")
        diff = target_vector.reshape(1, -1).double() - a.double()
        return (diff / diff.norm()).float()[0]
    if head == "isotropic":
        if target_seed is None:
            raise SynthactError("rebuilding an isotropic direction needs the row's target_seed")
        g = np.random.default_rng(target_seed).standard_normal(a.shape[1])
        return _unit(torch.as_tensor(g[None], device=a.device))[0]
    if arg == "random" and latent is None:
        raise SynthactError("rebuilding direction 'latent:random' needs the row's direction_latent")
    j = latent if arg == "random" else latent_id(arg, ctx)
    return _unit(ctx.sae.W_dec[j][None].to(a.device))[0]
