"""The diagnostics of the target codes read back per cell: does each rung match the statistics of real codes it
claims to? (docs/science.md, "Beyond the paper: the ladder"; the worker computes them on the pool's held-out part:
generation/diagnostics.py).

One cell's rows at a time (only the diagnostic and axis columns), one summary per cell over one read layer's rows
(the codes are per base): mean +- std of each per-code diagnostic, and `value KS`, the KS distance between the
cell's value quantiles (every value of every code) and uniform: 0 up to sampling noise for real codes. Each cell
is named by its rung (analysis/rungs.py), `real` for the toward:real cell (the reference every rung should
approach), else its target kind. For `synthact compare`, the report and W&B.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from synthact.analysis import text
from synthact.analysis.rungs import rung_of
from synthact.results import axes_of

SHOWN = {"target_l0": "L0", "target_log_freq": "log10 f", "target_pmi": "PMI", "target_cofire": "co-fire",
         "target_pair_cos": "pair cos", "target_cos_error": "cos err", "target_top_cos": "top cos",
         "target_top_share": "top share", "target_mean_value": "mean value", "target_distance": "||T-A||"}
QUANTILES = "target_value_quantiles"
HEADING = ("Diagnostics of the target codes, counted on the reference pool's held-out part (mean+-std per cell; built "
           "codes, or the SAE code of other targets; PMI in bits; co-fire: fraction of a code's latent pairs that fire "
           "together in a held-out code; cos err: error in the template's decoder cosines; value KS: KS of the values' "
           "quantiles within their latents' held-out values against uniform); `real` is the reference")
LADDER_SETTINGS = ("match", "structure", "cooccur", "cooccur_power", "cooccur_window", "geometry_temp", "swaps",
                   "swap_order", "value_source", "add_error", "error_source", "template")


def cell_summary(rows: pd.DataFrame) -> dict | None:
    """Mean and std of each diagnostic of one cell's rows (one read layer's: the codes are per base) and its value KS,
    with the cell's rung and settings; None for a cell without held-out diagnostics (rows written before them)."""
    have = [c for c in SHOWN if c in rows]
    if "target_kind" not in rows or "target_cofire" not in have:
        return None
    rows = rows[rows.target_kind.notna() & rows.target_log_freq.notna()]
    if rows.empty:
        return None
    rows = rows[rows.read_layer == rows.read_layer.min()]
    first = rows.iloc[0]
    settings = {c: first[c] for c in LADDER_SETTINGS if c in rows}
    rung = "real" if first["target_kind"] == "real" else rung_of(axes_of(first, list(settings) + ["target_kind"]),
                                                                  "target_kind") or first["target_kind"]
    summary = {"L": first["layer"], "base": first["base_kind"], "direction": first["direction"], "rung": rung,
               "n": len(rows), "settings": settings,
               **{SHOWN[c]: f"{rows[c].mean():.3g}+-{rows[c].std():.2g}" for c in have}}
    if QUANTILES in rows:
        summary["value KS"] = f"{uniform_ks(rows[QUANTILES]):.3g}"
    return summary


def uniform_ks(quantiles) -> float:
    """KS distance between the pooled quantiles (lists per code, NaN skipped) and uniform on [0, 1]; NaN if none."""
    q = np.concatenate([np.asarray(x, np.float64) for x in quantiles if x is not None] or [np.zeros(0)])
    q = np.sort(q[~np.isnan(q)])
    if q.size == 0:
        return float("nan")
    i = np.arange(1, q.size + 1)
    return float(max((i / q.size - q).max(), (q - (i - 1) / q.size).max()))


def summary_table(summaries: list[dict | None]) -> pd.DataFrame:
    """The cells' summaries as one table, real first in each panel; a settings column names only the ladder settings
    that vary."""
    summaries = [s for s in summaries if s is not None]
    if not summaries:
        return pd.DataFrame()
    names = dict.fromkeys(c for s in summaries for c in s["settings"])
    varying = [c for c in names if len({str(s["settings"].get(c)) for s in summaries
                                        if pd.notna(s["settings"].get(c))}) > 1]
    out = [s | {"settings": ", ".join(f"{c}={_short(s['settings'][c])}" for c in varying
                                      if pd.notna(s["settings"].get(c)))} for s in summaries]
    table = pd.DataFrame(out)
    table["_real"] = table.rung != "real"
    return (table.sort_values(["L", "base", "_real", "rung", "direction", "settings"], kind="stable", ignore_index=True)
            .drop(columns="_real"))


def _short(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def diagnostics(sweep) -> pd.DataFrame:
    """The diagnostics table of a sweep (a cells.Sweep): one summary per cell with target diagnostics, each cell's
    diagnostic columns read on their own (empty for results written before the diagnostic columns existed)."""
    wanted = ["cell_id", "layer", "read_layer", "base_kind", "direction", "target_kind", *LADDER_SETTINGS, *SHOWN,
              QUANTILES]
    return summary_table([cell_summary(cell.read(wanted).to_pandas()) for _, cell in sorted(sweep.cells.items())])


COMPACT = {"cooccur_window=": "window=", "geometry_temp=": "geo=", "value_source=": "", "cooccur=": "",
           "add_error=True": "+error", "add_error=False": "", "structure=": "", "match=": ""}


def _compact(settings: str) -> str:
    """A settings label as the text table shows it: 'cooccur=none, geometry_temp=0.05' -> 'none geo=0.05'."""
    for long, short in COMPACT.items():
        settings = settings.replace(long, short)
    return " ".join(p.strip() for p in settings.split(",") if p.strip())


def diagnostics_text(table: pd.DataFrame) -> str:
    """The diagnostics table as `synthact compare` prints it ('' without diagnostics)."""
    if table.empty:
        return ""
    shown = table.assign(direction=table.direction.map(lambda d: str(d).replace("toward:", "")),
                         settings=table.settings.map(_compact))
    shown = shown.drop(columns=[c for c in ("L", "base", "direction") if shown[c].astype(str).nunique() == 1])
    return "\n".join([*text.paragraph(HEADING + ":"), *text.table(shown, keys=("rung", "settings"), cell={"settings": 48},
                                                                indent="  ")])
