"""The diagnostics table read back per cell (analysis/diagnostics.py)."""

from __future__ import annotations

import pandas as pd

from synthact.analysis import diagnostics


def test_the_table_summarises_each_cell_once_per_base():
    rows = pd.DataFrame({
        "cell_id": ["a"] * 4 + ["b", "c"], "layer": 1, "read_layer": [2, 2, 3, 3, 2, 2],
        "base_kind": "real", "direction": ["toward:real"] * 4 + ["toward:synthetic_cooccur"] * 2,
        "target_kind": ["real"] * 4 + ["synthetic_cooccur"] * 2, "cooccur": [None] * 4 + ["counts", "none"],
        "swaps": [None] * 4 + [8.0] * 2, "template": [None] * 4 + ["base"] * 2,
        **{c: [1.0, 3.0, 1.0, 3.0, 5.0, 5.0] for c in diagnostics.SHOWN},
    })
    table = diagnostics.summary_table([diagnostics.cell_summary(g) for _, g in rows.groupby("cell_id", sort=False)])
    assert table.n.tolist() == [2, 1, 1]  # one read layer's rows
    assert table.settings.tolist() == ["", "cooccur=counts", "cooccur=none"]  # swaps=8 does not vary: not shown
    assert table["PMI"].tolist() == ["2+-1.4", "5+-nan", "5+-nan"]
