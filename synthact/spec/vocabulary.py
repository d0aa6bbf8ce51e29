"""The vocabulary of a job spec: kinds of activation, the direction grammar, the generation axes."""

from __future__ import annotations

import re
from typing import Literal

KINDS = (
    "real",
    "sae_recon",
    "gaussian",
    "synthetic_baseline",
    "synthetic_structured",
    "random_latents",
    "single_latent",
    "synthetic_cooccur",
    "control_swapped",
    "control_other_latents",
)
Kind = Literal[KINDS]  # the same names, as a type the spec schema checks against
SYNTHETIC_KINDS = ("synthetic_baseline", "synthetic_structured")
# Kinds built from a template's SAE code, latent by latent: as targets, the template is the base's own code.
TEMPLATE_KINDS = (*SYNTHETIC_KINDS, "random_latents", "synthetic_cooccur", "control_swapped", "control_other_latents")
# The ladder's kinds (generation/ladder.py): not in a job's default base_kinds, so default grids stay as they were.
LADDER_KINDS = ("synthetic_cooccur", "control_swapped", "control_other_latents")
# Template-built controls that keep some of the template's latents, or may (generation/ladder.py).
CONTROL_KINDS = ("control_swapped", "control_other_latents")
# The value sources that keep the template's values, the only ones a control takes (its definition).
CONTROL_VALUE_SOURCES = ("template", "permuted")


GENERATION_AXES = (
    "template", "match", "nearest_k", "tol", "structure", "anchor_cos", "anchor_pool", "candidates",
    "value_source", "exclude_template", "match_norm", "add_error",
)
# The ladder's axes (generation/ladder.py): cells that use none of them keep the cell ids they had before.
LADDER_AXES = ("cooccur", "cooccur_power", "cooccur_window", "geometry_temp", "holdout", "swaps", "swap_order",
               "error_source")
# Ladder axes at the value that is what every cell did before the axis existed: left out of ids and seeds too.
AS_BEFORE = {"error_source": "template"}
GENERATION_AXES = (*GENERATION_AXES, *LADDER_AXES)


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


def pair_problem(base_kind: str, direction: str, mode: str, start: str = "base") -> str | None:
    """Why a (base kind, direction) pair makes no sense, or None."""
    head, _ = parse_direction(direction)
    if start == "target" and head in ("isotropic", "latent"):
        return (
            f"scan start 'target' starts at the target, but direction '{direction}' has none; "
            "use start: base, or a toward:<kind> / toward_recon direction"
        )
    if mode == "interpolate" and head in ("isotropic", "latent"):
        return (
            f"scan mode 'interpolate' needs a target, but direction '{direction}' has none; "
            "use mode: step, or a toward:<kind> / toward_recon direction"
        )
    return None

