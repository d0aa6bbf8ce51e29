"""The rung table (analysis/rungs.py): which rung a cell is, and which cells of a panel pair up."""

from __future__ import annotations

from synthact.analysis import rungs


def cell(kind, **settings):
    return {"target_kind": kind, "cell_id": f"{kind}-{sorted(settings.items())}", **settings}


def test_rungs_pair_along_the_ladder_with_the_same_other_settings():
    r1 = [cell("synthetic_baseline", value_source=v, nearest_k=10) for v in ("template", "quantile")]
    r3 = cell("synthetic_cooccur", cooccur="counts", geometry_temp=0.0, cooccur_window="nearest_k",
              value_source="template", nearest_k=10)
    r4 = cell("synthetic_cooccur", cooccur="counts", geometry_temp=0.01, cooccur_window="nearest_k",
              value_source="template", nearest_k=10)
    r5 = dict(r4, value_source="quantile", cell_id="r5")
    challenger = dict(r3, cooccur_window="all", nearest_k=None, cell_id="all")
    corner = dict(r3, cooccur="none", cell_id="corner")  # cooccur none, geometry 0: R1 draw for draw, a control
    swapped = cell("control_swapped", swaps=2, value_source="template", nearest_k=10)
    records = [cell("real"), *r1, r3, r4, r5, challenger, corner, swapped, cell("gaussian")]
    assert [rungs.rung_of(r, "target_kind") for r in (r1[0], r3, r4, r5, corner, swapped)] == [
        "R1", "R3", "R4", "R5", None, None]
    got = {(step, a["cell_id"], b["cell_id"]) for step, a, b in rungs.pairs(records, "target_kind")}
    assert got == {
        ("R1 -> R3", r1[0]["cell_id"], r3["cell_id"]), ("R1 -> R3", r1[0]["cell_id"], "all"),
        ("R3 -> R4", r3["cell_id"], r4["cell_id"]),  # not to R5 (quantile values) nor from the challenger's window
        ("R4 -> R5", r4["cell_id"], "r5"),
        ("R1 -> other", r1[0]["cell_id"], "corner"), ("R1 -> other", r1[0]["cell_id"], swapped["cell_id"]),
        # gaussian has no generation settings: against both baselines
        ("R1 -> other", r1[0]["cell_id"], "gaussian-[]"), ("R1 -> other", r1[1]["cell_id"], "gaussian-[]"),
    }
