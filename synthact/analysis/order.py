"""The one order in which tables and figures show kinds and experiments, so a kind is in the same place everywhere.

Kinds: the paper's (real, its reconstruction, gaussian, baseline, structured), then the ladder's rungs that are
not the paper's (R0 random latents, then co-occurrence: R3, R4, R5 and the 2 x 2's geometry-only corner), then
the other kinds, then the controls; a kind not named here comes last, alphabetically. Variants of one kind
follow their rung (analysis/rungs.py), then their label. Directions: toward a kind (in kind order), toward the
base's own kinds, isotropic, then latents. Experiments: the sensitivity scans (mode
`interpolate`, the paper's first experiment) before the plateau scans (mode `step`), each by name.
"""

from __future__ import annotations

from collections.abc import Mapping

from synthact.analysis.rungs import RUNGS, rung_of

PAPER_KINDS = ("real", "sae_recon", "gaussian", "synthetic_baseline", "synthetic_structured")
LADDER_KINDS = ("random_latents", "synthetic_cooccur")
OTHER_KINDS = ("single_latent",)
CONTROL_KINDS = ("control_swapped", "control_other_latents")
KIND_ORDER = (*PAPER_KINDS, *LADDER_KINDS, *OTHER_KINDS, *CONTROL_KINDS)
SCAN_MODE_ORDER = ("interpolate", "step")


def kind_rank(kind) -> tuple[int, str]:
    """Where a kind goes: its place in KIND_ORDER, unknown kinds after them all, alphabetically."""
    kind = str(kind)
    return (KIND_ORDER.index(kind), "") if kind in KIND_ORDER else (len(KIND_ORDER), kind)


def variant_rank(row: Mapping, subject: str, label: str = "") -> tuple:
    """Where a cell (`row`, its kind in column `subject`) goes among a panel's cells: kind, then rung, then label."""
    rung = rung_of(row, subject)
    return (*kind_rank(row.get(subject)), list(RUNGS).index(rung) if rung else len(RUNGS), label)


def direction_rank(direction) -> tuple:
    """Where a direction goes: toward a kind (in kind order), toward the base's own kinds, isotropic, latents."""
    text = str(direction)
    head, _, arg = text.partition(":")
    if head == "toward" and arg not in ("same", ""):
        return (0, *kind_rank(arg))
    group = {"toward": 1, "toward_recon": 1, "isotropic": 2, "latent": 3}.get(head, 4)
    return (group, 0, text)


def scan_rank(mode, name) -> tuple[int, str]:
    """Where an experiment (a scan: its mode and name) goes: sensitivity scans first, then plateau scans."""
    mode = str(mode)
    return (SCAN_MODE_ORDER.index(mode) if mode in SCAN_MODE_ORDER else len(SCAN_MODE_ORDER), str(name))
