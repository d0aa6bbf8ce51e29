"""The diagnostics of the target codes read back per cell: does each rung match the statistics of real codes it
claims to? (docs/science.md, "Beyond the paper: the ladder"; the worker computes them: generation/diagnostics.py).

One cell's rows at a time (only the diagnostic and axis columns), one summary per cell: mean +- std of each
diagnostic over one read layer's rows (the codes are per base), for `synthact compare`, the report and W&B.
"""

from __future__ import annotations

import pandas as pd

SHOWN = {"target_l0": "L0", "target_log_freq": "log10 f", "target_pmi": "PMI", "target_pair_cos": "pair cos",
         "target_top_cos": "top cos", "target_top_share": "top share", "target_mean_value": "mean value",
         "target_distance": "||T-A||"}
HEADING = ("Diagnostics of the target codes (mean+-std per cell; built codes, or the SAE code of other targets; "
           "PMI in bits against the pool's statistics part)")
LADDER_SETTINGS = ("match", "structure", "cooccur", "cooccur_window", "geometry_temp", "swaps", "swap_order",
                   "value_source", "add_error", "error_source", "template")


def cell_summary(rows: pd.DataFrame) -> dict | None:
    """Mean and std of each diagnostic of one cell's rows (one read layer's: the codes are per base), with the
    cell's settings; None for a cell without target diagnostics."""
    have = [c for c in SHOWN if c in rows]
    if "target_kind" not in rows or "target_log_freq" not in have:
        return None
    rows = rows[rows.target_kind.notna() & rows.target_log_freq.notna()]
    if rows.empty:
        return None
    rows = rows[rows.read_layer == rows.read_layer.min()]
    first = rows.iloc[0]
    return {"L": first["layer"], "base": first["base_kind"], "direction": first["direction"], "n": len(rows),
            "settings": {c: first[c] for c in LADDER_SETTINGS if c in rows},
            **{SHOWN[c]: f"{rows[c].mean():.3g}+-{rows[c].std():.2g}" for c in have}}


def summary_table(summaries: list[dict | None]) -> pd.DataFrame:
    """The cells' summaries as one table; a settings column names only the ladder settings that vary."""
    summaries = [s for s in summaries if s is not None]
    if not summaries:
        return pd.DataFrame()
    names = dict.fromkeys(c for s in summaries for c in s["settings"])
    varying = [c for c in names if len({str(s["settings"].get(c)) for s in summaries
                                        if pd.notna(s["settings"].get(c))}) > 1]
    out = [s | {"settings": ", ".join(f"{c}={_short(s['settings'][c])}" for c in varying
                                      if pd.notna(s["settings"].get(c)))} for s in summaries]
    return pd.DataFrame(out).sort_values(["L", "base", "direction", "settings"], kind="stable", ignore_index=True)


def _short(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def diagnostics(sweep) -> pd.DataFrame:
    """The diagnostics table of a sweep (a cells.Sweep): one summary per cell with target diagnostics, each cell's
    diagnostic columns read on their own (empty for results written before the diagnostic columns existed)."""
    wanted = ["cell_id", "layer", "read_layer", "base_kind", "direction", "target_kind", *LADDER_SETTINGS, *SHOWN]
    return summary_table([cell_summary(cell.read(wanted).to_pandas()) for _, cell in sorted(sweep.cells.items())])


def diagnostics_text(table: pd.DataFrame) -> str:
    """The diagnostics table as `synthact compare` prints it ('' without diagnostics)."""
    if table.empty:
        return ""
    with pd.option_context("display.width", 250, "display.max_rows", 2000, "display.max_columns", 30):
        return (f"{HEADING}:\n" + table.to_string(index=False))
