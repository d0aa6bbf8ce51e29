"""The diagnostics table read back per cell (analysis/diagnostics.py)."""

from __future__ import annotations

import numpy as np
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


def test_each_cell_is_named_by_its_rung_with_real_first_and_its_value_ks():
    uniform = [[0.1, 0.3, 0.5], [0.7, 0.9]]  # evenly spread: KS 0.1 from uniform
    low = [[0.01, 0.02, 0.03], [0.04, 0.05]]  # all below 0.05: KS 0.95
    rows = pd.DataFrame({
        "cell_id": ["r3", "r3", "real", "real", "r1", "r1"], "layer": 1, "read_layer": 2, "base_kind": "real",
        "direction": ["toward:synthetic_cooccur"] * 2 + ["toward:real"] * 2 + ["toward:synthetic_baseline"] * 2,
        "target_kind": ["synthetic_cooccur"] * 2 + ["real"] * 2 + ["synthetic_baseline"] * 2,
        "cooccur": ["counts"] * 2 + [None] * 4, "geometry_temp": [0.0] * 2 + [None] * 4,
        "value_source": ["template"] * 2 + [None] * 2 + ["template"] * 2,
        **{c: 1.0 for c in diagnostics.SHOWN},
        "target_value_quantiles": [*low, *uniform, *low],
    })
    table = diagnostics.summary_table([diagnostics.cell_summary(g) for _, g in rows.groupby("cell_id", sort=False)])
    assert table.rung.tolist() == ["real", "R1", "R3"]
    assert table["value KS"].tolist() == ["0.1", "0.95", "0.95"]
    assert diagnostics.uniform_ks([[np.nan], None]) != diagnostics.uniform_ks([[np.nan], None])  # none: NaN
    # Rows written before the held-out diagnostics (no co-fire column) are not summarised under their heading.
    assert diagnostics.cell_summary(rows.drop(columns="target_cofire")) is None
