"""Every figure synthact draws, from a `cells.Sweep` (per-cell aggregates, values and bands), for `synthact report`.

Per panel of each comparison axis (aggregate.PANELS), small multiples: one subplot per kind, each drawn
against the panel's `real` reference in grey, so every kind can be told from real at any number of kinds:
- the mean L2 curve with its 25-75% and 5-95% bands;
- the empirical CDFs of `max_slope_step` and `plateau_len` (the KS statistic is the largest vertical gap).
Plus the KS heatmap of every kind against real. The context shared by every subplot (model, SAE, layers,
scan, direction or base) is in the title, once.
"""

from __future__ import annotations

import io
import math
import re

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from synthact.analysis.aggregate import ALPHA, panel_label, panels, variant_label  # noqa: E402
from synthact.analysis.cells import Sweep  # noqa: E402
from synthact.spec import digest  # noqa: E402

DISTRIBUTED = ("max_slope_step", "plateau_len")
SHORT = {"max_slope_step": "step", "max_slope": "slope", "plateau_len": "plateau", "early_slope_ratio": "early"}
KIND_COLORS = {"real": "C3", "sae_recon": "C4", "gaussian": "C0", "synthetic_baseline": "C2",
               "synthetic_structured": "C1", "single_latent": "C5", "random_latents": "C6"}
SUBJECT = {"base": "base_kind", "target": "target_kind"}  # what varies within a panel of each axis
REAL_COLOR = "0.45"
MAX_COLUMNS = 4


def figure_panels(aggregates: pd.DataFrame):
    """(axis, panel, cells, title, slug) for every panel that compares at least two kinds (one row per cell)."""
    for axis, subject in SUBJECT.items():
        with_subject = aggregates[aggregates[subject].notna()]
        for panel, group in panels(with_subject, axis):
            if group[subject].nunique() > 1:
                title = f"{axis} kinds: {panel_label(group.iloc[0], axis)}"
                yield axis, panel, group, title, panel_slug(panel, axis)


def panel_figures(sweep: Sweep, bands: pd.DataFrame | None = None, only: set[str] | None = None):
    """(title, [(name, caption, figure), ...]) per panel: its mean curves (where bands exist) and distributions.

    `only` limits it to the panels with those slugs; `bands` defaults to every cell's (sweep.bands())."""
    bands = sweep.bands() if bands is None else bands
    for axis, panel, group, title, slug in figure_panels(sweep.aggregates):
        if only is not None and slug not in only:
            continue
        drawn = []
        mine = bands[bands.cell_id.isin(set(group.cell_id)) & (bands.read_layer == panel["read_layer"])] \
            if not bands.empty else bands
        if not mine.empty:
            drawn.append((f"curves_{slug}", f"mean L2 curve per kind against real: {title}",
                          curve_figure(mine, title, axis)))
        drawn.append((f"distributions_{slug}", f"ECDFs per kind against real: {title}",
                      distribution_figure(sweep, group, title, axis)))
        yield title, drawn


def panel_slug(panel: dict, axis: str) -> str:
    """A file-name-safe, unique name for a panel, e.g. 'target_L1_R3_base-real_1a2b3c'."""
    what = panel["direction"] if axis == "base" else f"base-{panel['base_kind']}"
    name = re.sub(r"[^A-Za-z0-9_]+", "-", f"{axis}_L{panel['layer']}_R{panel['read_layer']}_{what}")
    return f"{name}_{digest(panel)[:6]}"


def ordered(cells: pd.DataFrame, axis: str) -> tuple[list[dict], list[dict]]:
    """(the real reference cells, the other cells) of a panel, the others in the paper's kind order."""
    subject, order = SUBJECT[axis], list(KIND_COLORS)
    records = cells.drop_duplicates("cell_id").to_dict("records")
    rank = (lambda r: (order.index(r[subject]) if r[subject] in order else len(order), variant_label(r, axis)))
    records.sort(key=rank)
    return [r for r in records if r[subject] == "real"], [r for r in records if r[subject] != "real"]


def _grid(n: int, width: float, height: float, title: str) -> tuple[Figure, list]:
    columns = min(MAX_COLUMNS, max(n, 1))
    rows = math.ceil(max(n, 1) / columns)
    fig = Figure(figsize=(width * columns + 0.4, height * rows + 0.7), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False, sharex=True, sharey=True).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=9)
    return fig, axes[:n]


def curve_figure(bands: pd.DataFrame, title: str, axis: str) -> Figure:
    """Small multiples: per kind, its mean L2 curve (25-75% band shaded, 5-95% lighter) against real's in grey."""
    reals, others = ordered(bands, axis)
    fig, axes = _grid(len(others) or 1, 2.6, 2.0, title)
    for ax, row in zip(axes, others or reals):
        for ref in reals:
            _band(ax, ref, REAL_COLOR, "real")
        _band(ax, row, KIND_COLORS.get(row[SUBJECT[axis]], "C7"), None)
        ax.set_title(variant_label(row, axis), fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    fig.supxlabel("scan step n", fontsize=8)
    fig.supylabel("L2 distance at read layer", fontsize=8)
    return fig


def _band(ax, row: dict, color, label) -> None:
    n = np.arange(len(row["mean"]))
    ax.fill_between(n, row["q05"], row["q95"], color=color, alpha=0.08, linewidth=0)
    ax.fill_between(n, row["q25"], row["q75"], color=color, alpha=0.22, linewidth=0)
    ax.plot(n, row["mean"], color=color, linewidth=1.3, label=label)


def distribution_figure(sweep: Sweep, cells: pd.DataFrame, title: str, axis: str) -> Figure:
    """Small multiples, one row per metric and one column per kind: the kind's ECDF against real's (grey)."""
    reals, others = ordered(cells, axis)
    others = others or reals
    read_layer = int(cells.read_layer.iloc[0])
    columns = min(len(others), 2 * MAX_COLUMNS)
    blocks = math.ceil(len(others) / columns)  # kinds wrap into blocks of rows, one row per metric in each
    fig = Figure(figsize=(2.3 * columns + 0.6, 2.0 * len(DISTRIBUTED) * blocks + 0.7), layout="constrained")
    axes = fig.subplots(len(DISTRIBUTED) * blocks, columns, squeeze=False, sharey=True)
    for j in range(len(DISTRIBUTED) * blocks * columns):
        r, c = divmod(j, columns)
        block, m = divmod(r, len(DISTRIBUTED))
        k = block * columns + c
        ax = axes[r][c]
        if k >= len(others):
            ax.set_visible(False)
            continue
        metric, row = DISTRIBUTED[m], others[k]
        real = np.sort(np.concatenate([sweep.values(ref["cell_id"], read_layer, metric) for ref in reals])) \
            if reals else np.empty(0)
        mine = sweep.values(row["cell_id"], read_layer, metric)
        _ecdf(ax, real, REAL_COLOR)
        _ecdf(ax, mine, KIND_COLORS.get(row[SUBJECT[axis]], "C7"))
        gap = _ks(mine, real) if real.size and mine.size else math.nan
        label = variant_label(row, axis)
        ax.set_title(label if math.isnan(gap) else f"{label}\nKS {gap:.2f}", fontsize=7)
        ax.set_xlabel(metric, fontsize=7)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    fig.supylabel("fraction of curves <= x (grey: real)", fontsize=8)
    fig.suptitle(title, fontsize=9)
    return fig


ECDF_POINTS = 2000  # an ECDF is drawn through at most this many of its points (no visible difference)


def _ecdf(ax, values: np.ndarray, color) -> None:
    if values.size:
        at = np.unique(np.linspace(0, values.size - 1, min(values.size, ECDF_POINTS)).astype(np.int64))
        ax.step(values[at], (at + 1) / values.size, where="post", color=color, linewidth=1.3)


def _ks(x: np.ndarray, y: np.ndarray) -> float:
    """The two-sample KS statistic of sorted samples (largest gap of the two ECDFs)."""
    grid = np.concatenate([x, y])
    return float(np.max(np.abs(np.searchsorted(x, grid, side="right") / x.size
                               - np.searchsorted(y, grid, side="right") / y.size)))


def comparison_figure(comparison: pd.DataFrame) -> Figure:
    """KS statistic of each kind against `real`, one row per panel and kind, one column per metric (* = p < 0.05).

    Row labels hold only what differs between rows; what every row shares goes in the title."""
    parts = [_label_parts(r) for r in comparison.to_dict("records")]
    varying = [i for i in range(max(map(len, parts), default=0)) if len({p[i] if i < len(p) else "" for p in parts}) > 1]
    shared = [parts[0][i] for i in range(len(parts[0])) if i not in varying] if parts else []
    wide = comparison.assign(row=[" | ".join(p[i] for i in varying if i < len(p)) or p[-1] for p in parts],
                             metric=comparison.metric.map(lambda m: SHORT.get(m, m)))
    ks = wide.pivot_table(index="row", columns="metric", values="ks_stat", sort=False)
    p = wide.pivot_table(index="row", columns="metric", values="ks_pvalue", sort=False).reindex_like(ks)
    fig = Figure(figsize=(4 + 0.9 * ks.shape[1] + 0.06 * max(map(len, ks.index), default=0),
                          1.4 + 0.28 * ks.shape[0]), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(ks.to_numpy(), cmap="viridis_r", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(ks.shape[1]), ks.columns, fontsize=8)
    ax.xaxis.tick_top()
    ax.set_yticks(range(ks.shape[0]), ks.index, fontsize=7)
    for (i, j), value in np.ndenumerate(ks.to_numpy()):
        if not np.isnan(value):
            star = "*" if p.iat[i, j] < ALPHA else ""
            ax.text(j, i, f"{value:.2f}{star}", ha="center", va="center", fontsize=7,
                    color="white" if value > 0.5 else "black")
    fig.colorbar(image, ax=ax, label="KS statistic vs real (* p < 0.05)", shrink=0.8)
    ax.set_title("each kind against real" + (f": {' | '.join(shared)}" if shared else ""), fontsize=9)
    return fig


def _label_parts(row: dict) -> list[str]:
    """axis, model, SAE, layers, scan, direction or base, variant: the parts of a comparison row's label."""
    what = row["direction"] if row["axis"] == "base" else f"base {row['base_kind']}"
    scan = row.get("scan")
    return [f"{row['axis']} axis", str(row["model"]), str(row["sae"]), f"L{row['layer']}->R{row['read_layer']}",
            "" if scan is None or (isinstance(scan, float) and math.isnan(scan)) else str(scan), what,
            str(row["variant"])]


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return buf.getvalue()
