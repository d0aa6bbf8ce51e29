"""The ladder's rungs (docs/science.md, "Beyond the paper: the ladder"): the one table of them, which rung a
cell is (its kind and generation settings), and which pairs of cells of a panel `aggregate.differences`
compares.

A pair (a, b) of a step (rung A -> rung B) is a cell a of rung A that is not itself of rung B and a cell b of
rung B that agree on every generation setting both have, besides those the two rungs name: R3 -> R4 pairs
R3 and R4 with the same `cooccur_window` and `value_source`, R4 -> R5 pairs R4 with the R5 of the same window.
Every other cell of the panel but real (a control, the 2 x 2's `cooccur: none`, `geometry_temp: 0` corner, a
kind this table does not name) is compared with the R1 cells whose shared settings agree: `CONTROL_STEP`.
"""

from __future__ import annotations

from collections.abc import Mapping

from synthact.results import SETTINGS, axis_value


def _positive(value) -> bool:
    return value is not None and value > 0


# name: (kind, the settings the rung requires: a value, or a test of the value); unnamed settings are free.
RUNGS = {
    "R0": ("random_latents", {}),
    "R1": ("synthetic_baseline", {}),
    "R2": ("synthetic_structured", {}),
    "R3": ("synthetic_cooccur", {"cooccur": "counts", "geometry_temp": 0.0}),
    "R4": ("synthetic_cooccur", {"cooccur": "counts", "geometry_temp": _positive}),
    "R5": ("synthetic_cooccur", {"cooccur": "counts", "geometry_temp": _positive, "value_source": "quantile"}),
    "G": ("synthetic_cooccur", {"cooccur": "none", "geometry_temp": _positive}),  # geometry alone: the 2 x 2
}
# The ladder (R0 -> R1 -> R2 and R1 -> R3 -> R4 -> R5; R1 -> R2 is the paper's structured vs baseline) and
# the rest of the 2 x 2 {co-occurrence, geometry}: R1 -> G -> R4.
STEPS = (("R0", "R1"), ("R1", "R2"), ("R1", "R3"), ("R3", "R4"), ("R4", "R5"), ("R1", "G"), ("G", "R4"))
CONTROL_REFERENCE = "R1"
CONTROL_STEP = "R1 -> other"


def rung_of(row: Mapping, subject: str) -> str | None:
    """The highest rung a row (a cell's axes) is on, `subject` its kind column; None for a control or real."""
    names = [name for name in RUNGS if _is(row, subject, name)]
    return names[-1] if names else None


def _is(row: Mapping, subject: str, name: str) -> bool:
    kind, wanted = RUNGS[name]
    if row.get(subject) != kind:
        return False
    for setting, test in wanted.items():
        value = axis_value(setting, row.get(setting))
        if not (test(value) if callable(test) else value == test):
            return False
    return True


def agree(a: Mapping, b: Mapping, skip=()) -> bool:
    """Whether two rows agree on every generation setting both of them have, besides `skip`."""
    for name in SETTINGS:
        if name in skip:
            continue
        x, y = axis_value(name, a.get(name)), axis_value(name, b.get(name))
        if x is not None and y is not None and x != y:
            return False
    return True


def pairs(records: list[Mapping], subject: str) -> list[tuple[str, Mapping, Mapping]]:
    """(step, a, b) for each pair of one panel's cells compared between rungs, in STEPS order, then each other
    cell against R1 (CONTROL_STEP)."""
    out = []
    for low, high in STEPS:
        named = set(RUNGS[low][1]) | set(RUNGS[high][1])
        for a in records:
            if not _is(a, subject, low) or _is(a, subject, high):
                continue
            out += [(f"{low} -> {high}", a, b) for b in records
                    if b is not a and _is(b, subject, high) and agree(a, b, named)]
    references = [r for r in records if _is(r, subject, CONTROL_REFERENCE)]
    for b in records:
        if b.get(subject) not in ("real", None) and rung_of(b, subject) is None:
            out += [(CONTROL_STEP, a, b) for a in references if agree(a, b)]
    return out
