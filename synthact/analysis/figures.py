"""Every figure synthact draws, used by both `synthact report` and the W&B tracker.

Per panel of each comparison axis (aggregate.PANELS): the mean L2 curve of every kind with quantile
bands, and the metric distributions per kind (on the target axis: the paper's histogram of the
max-slope step per target kind); plus the KS heatmap of every kind against real.
"""

from __future__ import annotations

import io
import re

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from synthact.analysis.aggregate import ALPHA, panel_label, panels, variant_label  # noqa: E402
from synthact.spec import digest  # noqa: E402

DISTRIBUTED = ("max_slope_step", "plateau_len")
KIND_COLORS = {"real": "C3", "sae_recon": "C4", "gaussian": "C0", "synthetic_baseline": "C2",
               "synthetic_structured": "C1", "single_latent": "C5", "random_latents": "C6"}
LINESTYLES = ("-", "--", ":", "-.")
SUBJECT = {"base": "base_kind", "target": "target_kind"}  # what varies within a panel of each axis


def figure_panels(rows: pd.DataFrame):
    """(axis, panel, rows, title, slug) for every panel that compares at least two kinds."""
    for axis, subject in SUBJECT.items():
        with_subject = rows[rows[subject].notna()]
        for panel, group in panels(with_subject, axis):
            if group[subject].nunique() > 1:
                title = f"{axis} kinds: {panel_label(group.iloc[0], axis)}"
                yield axis, panel, group, title, panel_slug(panel, axis)


def panel_figures(rows: pd.DataFrame, bands: pd.DataFrame, only: set[str] | None = None):
    """(title, [(name, caption, figure), ...]) per panel: its mean curves (where bands exist) and distributions.

    `only` limits it to the panels with those slugs."""
    for axis, panel, group, title, slug in figure_panels(rows):
        if only is not None and slug not in only:
            continue
        drawn = []
        if not bands.empty:
            mine = bands[bands.cell_id.isin(set(group.cell_id)) & (bands.read_layer == panel["read_layer"])]
            if not mine.empty:
                drawn.append((f"curves_{slug}", f"mean L2 curve per kind: {title}", curve_figure(mine, title, axis)))
        drawn.append((f"distributions_{slug}", f"metric distributions per kind: {title}",
                      distribution_figure(group, title, axis)))
        yield title, drawn


def panel_slug(panel: dict, axis: str) -> str:
    """A file-name-safe, unique name for a panel, e.g. 'target_L1_R3_base-real_1a2b3c'."""
    what = panel["direction"] if axis == "base" else f"base-{panel['base_kind']}"
    name = re.sub(r"[^A-Za-z0-9_]+", "-", f"{axis}_L{panel['layer']}_R{panel['read_layer']}_{what}")
    return f"{name}_{digest(panel)[:6]}"


def styled(table: pd.DataFrame, axis: str) -> list[tuple[pd.Series, dict]]:
    """One (first row, matplotlib style) per cell: real first, one colour per kind, a line style per setting."""
    subject = SUBJECT[axis]
    order = list(KIND_COLORS)
    firsts = [g.iloc[0] for _, g in table.groupby("cell_id", sort=True)]
    firsts.sort(key=lambda r: (order.index(r[subject]) if r[subject] in order else len(order), variant_label(r, axis)))
    seen: dict[str, int] = {}
    out = []
    for row in firsts:
        kind = row[subject]
        i = seen[kind] = seen.get(kind, -1) + 1
        out.append((row, {"color": KIND_COLORS.get(kind, "C7"), "linestyle": LINESTYLES[i % len(LINESTYLES)],
                          "label": variant_label(row, axis)}))
    return out


def curve_figure(bands: pd.DataFrame, title: str, axis: str) -> Figure:
    """Mean L2 curve per kind, with the 25-75% band shaded and the 5-95% band lighter."""
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for row, style in styled(bands, axis):
        color = style["color"]
        n = np.arange(len(row["mean"]))
        ax.fill_between(n, row["q05"], row["q95"], color=color, alpha=0.08, linewidth=0)
        ax.fill_between(n, row["q25"], row["q75"], color=color, alpha=0.22, linewidth=0)
        ax.plot(n, row["mean"], **style)
    ax.set_xlabel("scan step n")
    ax.set_ylabel("L2 distance at read layer")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    return fig


def distribution_figure(rows: pd.DataFrame, title: str, axis: str) -> Figure:
    """Histograms of the max-slope step and the plateau length per kind (densities on shared bins)."""
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    variants = styled(rows, axis)
    metrics = [m for m in DISTRIBUTED if m in rows] or ["max_slope", "plateau_len"]
    for j, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), j + 1)
        values = [_finite(rows.loc[rows.cell_id == row["cell_id"], metric]) for row, _ in variants]
        ax.hist(values, bins=_bins(np.concatenate(values), integer=metric != "max_slope"), density=True,
                histtype="step", linewidth=1.5, color=[style["color"] for _, style in variants],
                label=[style["label"] for _, style in variants])
        ax.set_xlabel(metric)
        ax.set_ylabel("density")
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return fig


def _finite(values) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    return x[np.isfinite(x)]


def _bins(values: np.ndarray, integer: bool):
    if values.size == 0:
        return 10
    if integer:
        return np.arange(values.min(), values.max() + 2) - 0.5
    return np.histogram_bin_edges(values, bins=20)


def comparison_figure(comparison: pd.DataFrame) -> Figure:
    """KS statistic of each kind against `real`, per panel and metric (darker = further; * = p < 0.05)."""
    wide = comparison.assign(row=[f"{panel_label(r, r['axis'])} | {r['variant']}" for _, r in comparison.iterrows()])
    ks = wide.pivot_table(index="row", columns="metric", values="ks_stat", sort=False)
    p = wide.pivot_table(index="row", columns="metric", values="ks_pvalue", sort=False).reindex_like(ks)
    fig = Figure(figsize=(3 + 1.6 * ks.shape[1], 1.2 + 0.32 * ks.shape[0]), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(ks.to_numpy(), cmap="viridis_r", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(ks.shape[1]), ks.columns, fontsize=8)
    ax.set_yticks(range(ks.shape[0]), ks.index, fontsize=7)
    for (i, j), value in np.ndenumerate(ks.to_numpy()):
        star = "*" if p.iat[i, j] < ALPHA else ""
        ax.text(j, i, f"{value:.2f}{star}", ha="center", va="center", fontsize=7, color="white" if value > 0.5 else "black")
    fig.colorbar(image, ax=ax, label="KS statistic vs real")
    ax.set_title("each kind against real", fontsize=9)
    return fig


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return buf.getvalue()
