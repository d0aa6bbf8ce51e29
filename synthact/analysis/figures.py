"""Every figure synthact draws, from a `cells.Sweep` (per-cell aggregates, values and bands), for `synthact report`.

Per panel of each comparison axis (aggregate.PANELS), small multiples: one subplot per kind, each kind in its
own colour (`kind_color`: one of PALETTE's 12 colour-blind-safe colours, the same in every figure) against the
panel's `real` reference in black, drawn last; at most KINDS_PER_FIGURE kinds per figure (more go to further
parts), in the one kind order of analysis/order.py:
- the mean L2 curve with its 25-75% and 5-95% bands; on step scans a triangle marks the median step at which
  the curves reach their target (`target_step`); the axes say the step size and the read layer;
- the empirical CDFs of `max_slope_step` and `plateau_len` (the KS statistic, the largest vertical gap, in
  each subplot's title).
Plus the KS heatmaps of every kind against real, at most HEATMAP_ROWS rows each. The context shared by every
subplot (model, SAE, layers, scan, direction or base) is in the title, once. File names say the axis, scan,
layers and direction or base kind (model and SAE too where the sweep has several), never a hash.
"""

from __future__ import annotations

import io
import math
import re
import textwrap

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from synthact.analysis.aggregate import ALPHA, panel_label, panels, variant_label  # noqa: E402
from synthact.analysis.cells import Sweep  # noqa: E402
from synthact.analysis.order import KIND_ORDER, direction_rank, kind_rank, scan_rank, variant_rank  # noqa: E402
from synthact.analysis.rungs import rung_of  # noqa: E402

DISTRIBUTED = ("max_slope_step", "plateau_len")
SHORT = {"max_slope_step": "step", "max_slope": "slope", "plateau_len": "plateau", "early_slope_ratio": "early"}
UNITS = {"max_slope_step": "max-slope step (scan points)", "plateau_len": "plateau length (scan points)"}
SUBJECT = {"target": "target_kind", "base": "base_kind"}  # what varies within a panel of each axis; target first
# 12 colours whose pairwise CIELAB distance (and each one's to black) stays above 17 in normal vision and in
# simulated protanopia, deuteranopia and tritanopia (Machado et al. 2009), all dark enough for lines on white;
# drawn from Paul Tol's and Okabe & Ito's colour-blind-safe schemes. A kind's colour is its place in KIND_ORDER.
PALETTE = ("#882255", "#008DF9", "#117733", "#E20134", "#AAAA00", "#8400CD", "#88CCEE", "#EE3377", "#332288",
           "#EE8866", "#FFAABB", "#AA4499")
REAL_COLOR = "black"
KINDS_PER_FIGURE = 16
MAX_COLUMNS = 4
HEATMAP_ROWS = 30
ECDF_POINTS = 2000  # an ECDF is drawn through at most this many of its points (no visible difference)


def kind_color(kind) -> str:
    """The colour of a kind in every figure: black for real, else PALETTE by its place in the kind order."""
    if kind == "real":
        return REAL_COLOR
    known = [k for k in KIND_ORDER if k != "real"]
    index = known.index(kind) if kind in known else len(known) + sum(map(ord, str(kind)))
    return PALETTE[index % len(PALETTE)]


# --------------------------------------------------------------------------- panels


def figure_panels(aggregates: pd.DataFrame):
    """(axis, panel, cells, title, slug) for every panel that compares at least two kinds (one row per cell),
    target axis first, then by experiment, layers and base kind or direction."""
    found = []
    for axis, subject in SUBJECT.items():
        with_subject = aggregates[aggregates[subject].notna()]
        for panel, group in panels(with_subject, axis):
            if group[subject].nunique() > 1:
                found.append((axis, panel, group))
    found.sort(key=lambda f: panel_rank(*f))
    several = len({(p.get("model"), p.get("sae")) for _, p, _ in found}) > 1
    for axis, panel, group in found:
        yield axis, panel, group, f"{axis} kinds: {panel_label(group.iloc[0], axis)}", panel_slug(panel, axis, several)


def panel_heading(title: str, several: bool) -> str:
    """A panel's title for a page's headings: without the model and SAE where the sweep has only one."""
    head, _, rest = title.partition(": ")
    return title if several else f"{head}: " + " | ".join(rest.split(" | ")[2:])


def panel_rank(axis: str, panel: dict, group: pd.DataFrame) -> tuple:
    mode = group.scan_mode.iloc[0] if "scan_mode" in group else None
    what = kind_rank(panel["base_kind"]) if axis == "target" else direction_rank(panel["direction"])
    return (list(SUBJECT).index(axis), scan_rank(mode, panel.get("scan")), str(panel.get("model")),
            str(panel.get("sae")), panel["layer"], panel["read_layer"], what)


def panel_slug(panel: dict, axis: str, with_model: bool = False) -> str:
    """A file name for a panel from what it is, e.g. 'target_plateaus_L1_R3_base-real' (with model and SAE first
    where the sweep has several)."""
    what = panel["direction"] if axis == "base" else f"base-{panel['base_kind']}"
    parts = [panel.get("model"), panel.get("sae")] if with_model else []
    parts += [axis, panel.get("scan"), f"L{panel['layer']}", f"R{panel['read_layer']}", what]
    return _safe("_".join(str(p) for p in parts if p is not None))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", name).strip("-")


def ordered(cells: pd.DataFrame, axis: str) -> tuple[list[dict], list[dict]]:
    """(the real reference cells, the other cells) of a panel, the others in the one kind order (order.py)."""
    subject = SUBJECT[axis]
    records = cells.drop_duplicates("cell_id").to_dict("records")
    records.sort(key=lambda r: variant_rank(r, subject, variant_label(r, axis)))
    return [r for r in records if r[subject] == "real"], [r for r in records if r[subject] != "real"]


def short_label(row: dict, axis: str) -> str:
    """A subplot's title: the ladder's rung where the cell is one, and the variant without the 'toward:' every
    target-axis subplot would repeat."""
    label = variant_label(row, axis)
    label = label.removeprefix("toward:") if axis == "target" else label
    rung = rung_of(row, SUBJECT[axis])
    return f"{rung}: {label}" if rung else label


def panel_figures(sweep: Sweep, bands: pd.DataFrame | None = None):
    """(heading, slug, [(name, caption, figure), ...]) per panel: its mean curves (where bands exist) and
    distributions, each in parts of at most KINDS_PER_FIGURE kinds; `bands` defaults to every cell's."""
    bands = sweep.bands() if bands is None else bands
    several = sweep.aggregates[["model", "sae"]].drop_duplicates().shape[0] > 1
    for axis, panel, group, title, slug in figure_panels(sweep.aggregates):
        reals, others = ordered(group, axis)
        chunks = [others[i:i + KINDS_PER_FIGURE] for i in range(0, len(others), KINDS_PER_FIGURE)]
        mine = bands[bands.cell_id.isin(set(group.cell_id)) & (bands.read_layer == panel["read_layer"])] \
            if not bands.empty else bands
        steps = target_steps(sweep, group, panel["read_layer"]) if not mine.empty else {}
        drawn = []
        for n, chunk in enumerate(chunks, 1):
            part = f"_part{n}" if len(chunks) > 1 else ""
            said = f" (part {n} of {len(chunks)})" if len(chunks) > 1 else ""
            if not mine.empty:
                drawn.append((f"curves_{slug}{part}", f"mean L2 curve per kind against real{said}: {title}",
                              curve_figure(mine, reals, chunk, title + said, axis, steps)))
            drawn.append((f"distributions_{slug}{part}", f"ECDFs per kind against real{said}: {title}",
                          distribution_figure(sweep, reals, chunk, title + said, axis, panel["read_layer"])))
        yield panel_heading(title, several), slug, drawn


def target_steps(sweep: Sweep, cells: pd.DataFrame, read_layer: int) -> dict[str, float]:
    """Per cell of a step scan, the median step at which its curves reach their target (`target_step`)."""
    out = {}
    for row in cells.drop_duplicates("cell_id").itertuples():
        if getattr(row, "scan_mode", "step") != "step" or row.cell_id not in sweep.cells:
            continue
        table = sweep.cells[row.cell_id].read(["read_layer", "target_step"])
        if "target_step" not in table.column_names or table.num_rows == 0:
            continue
        layers = table.column("read_layer").to_numpy(zero_copy_only=False)
        steps = table.column("target_step").to_numpy(zero_copy_only=False).astype(np.float64)[layers == read_layer]
        steps = steps[np.isfinite(steps)]
        if steps.size:
            out[row.cell_id] = float(np.median(steps))
    return out


# --------------------------------------------------------------------------- small multiples


def _grid(n: int, rows_per_kind: int, width: float, height: float, title: str, shared: bool = False):
    """A figure of `n` kinds in blocks of at most MAX_COLUMNS columns, `rows_per_kind` rows of subplots each
    (`shared`: one x and one y scale for all, tick labels on the outer subplots only)."""
    columns = min(MAX_COLUMNS, max(n, 1))
    blocks = math.ceil(max(n, 1) / columns)
    fig = Figure(figsize=(max(width * columns + 0.9, 6.0), height * rows_per_kind * blocks + 1.2),
                 layout="constrained")
    axes = fig.subplots(rows_per_kind * blocks, columns, squeeze=False, sharex=shared, sharey=shared)
    fig.suptitle(_wrap(title, fig.get_figwidth(), 9), fontsize=9)
    return fig, axes, columns


def _wrap(text: str, width_in: float, fontsize: float) -> str:
    """`text` broken into lines that fit `width_in` inches at `fontsize` points (a generous character width)."""
    return textwrap.fill(text, max(12, int(width_in * 72 / (fontsize * 0.62))), break_long_words=True)


def curve_figure(bands: pd.DataFrame, reals: list[dict], kinds: list[dict], title: str, axis: str,
                 steps: dict[str, float]) -> Figure:
    """Small multiples: per kind, its mean L2 curve (25-75% band shaded, 5-95% lighter) against real's in black;
    a triangle at the median step reaching the target, on step scans."""
    by_cell = {r.cell_id: r._asdict() for r in bands.itertuples(index=False)}
    fig, axes, _ = _grid(len(kinds), 1, 2.7, 2.1, title, shared=True)
    for k, ax in enumerate(axes.ravel()):
        if k >= len(kinds):
            ax.set_visible(False)
            continue
        row = kinds[k]
        if row["cell_id"] in by_cell:
            _band(ax, by_cell[row["cell_id"]], kind_color(row[SUBJECT[axis]]), steps.get(row["cell_id"]), 2)
        for ref in reals:  # real last, on top
            if ref["cell_id"] in by_cell:
                _band(ax, by_cell[ref["cell_id"]], REAL_COLOR, steps.get(ref["cell_id"]), 3)
        ax.set_title(_wrap(short_label(row, axis), 2.7, 7.5), fontsize=7.5)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    sample = kinds[0]
    fig.supxlabel(_wrap(step_axis_label(sample, bool(steps)), fig.get_figwidth(), 8), fontsize=8)
    fig.supylabel(_wrap(f"L2 distance from the scan's start at read layer {sample['read_layer']}",
                        fig.get_figheight(), 8), fontsize=8)
    return fig


def step_axis_label(row: dict, marked: bool) -> str:
    """The x axis of a curve: scan points, and what one step is (the step size in L2, or the interpolation)."""
    if row.get("scan_mode") == "interpolate":
        label = f"scan point n of {row.get('steps')} (interpolation from A to T: each step is ||T - A|| / N in L2)"
    else:
        size = row.get("step_size")
        label = f"scan step n (step size {size:g} in L2)" if isinstance(size, (int, float)) else "scan step n"
    start = "A" if row.get("scan_start") == "target" else "T"
    return label + (f"; triangle: median step reaching {start} (black: real)" if marked else "")


def _band(ax, row: dict, color, reached: float | None, zorder: int) -> None:
    mean = np.asarray(row["mean"], np.float64)
    n = np.arange(len(mean))
    ax.fill_between(n, row["q05"], row["q95"], color=color, alpha=0.07, linewidth=0, zorder=zorder)
    ax.fill_between(n, row["q25"], row["q75"], color=color, alpha=0.18, linewidth=0, zorder=zorder)
    ax.plot(n, mean, color=color, linewidth=1.0 if color == REAL_COLOR else 1.6, zorder=zorder)
    if reached is not None and len(mean):
        at = int(min(max(round(reached), 0), len(mean) - 1))
        ax.plot([at], [mean[at]], marker="v", markersize=6, color=color, linestyle="none", zorder=zorder + 2)


def distribution_figure(sweep: Sweep, reals: list[dict], kinds: list[dict], title: str, axis: str,
                        read_layer: int) -> Figure:
    """Small multiples, a row per metric under each kind: the kind's ECDF against real's (black, drawn last)."""
    fig, axes, columns = _grid(len(kinds), len(DISTRIBUTED), 2.4, 1.9, title)
    real_values = {m: np.sort(np.concatenate([sweep.values(r["cell_id"], read_layer, m) for r in reals]))
                   if reals else np.empty(0) for m in DISTRIBUTED}
    for r in range(axes.shape[0]):
        block, m = divmod(r, len(DISTRIBUTED))
        for c in range(columns):
            ax, k = axes[r][c], block * columns + c
            if k >= len(kinds):
                ax.set_visible(False)
                continue
            metric, row = DISTRIBUTED[m], kinds[k]
            mine, real = sweep.values(row["cell_id"], read_layer, metric), real_values[metric]
            _ecdf(ax, mine, kind_color(row[SUBJECT[axis]]), 1.6, 2)
            _ecdf(ax, real, REAL_COLOR, 1.0, 3)
            gap = _ks(mine, real) if real.size and mine.size else math.nan
            label = _wrap(short_label(row, axis), 2.4, 7)
            ax.set_title(label if math.isnan(gap) else f"{label}\nKS {gap:.2f}", fontsize=7)
            ax.set_xlabel(UNITS.get(metric, metric), fontsize=7)
            ax.set_ylim(0, 1.02)
            ax.tick_params(labelsize=6.5)
            ax.grid(alpha=0.3)
    fig.supylabel(_wrap("fraction of curves <= x (black: real)", fig.get_figheight(), 8), fontsize=8)
    return fig


def _ecdf(ax, values: np.ndarray, color, width: float, zorder: int) -> None:
    if values.size:
        at = np.unique(np.linspace(0, values.size - 1, min(values.size, ECDF_POINTS)).astype(np.int64))
        ax.step(values[at], (at + 1) / values.size, where="post", color=color, linewidth=width, zorder=zorder)


def _ks(x: np.ndarray, y: np.ndarray) -> float:
    """The two-sample KS statistic of sorted samples (largest gap of the two ECDFs)."""
    grid = np.concatenate([x, y])
    return float(np.max(np.abs(np.searchsorted(x, grid, side="right") / x.size
                               - np.searchsorted(y, grid, side="right") / y.size)))


# --------------------------------------------------------------------------- KS heatmaps


HEATMAP_GROUP = ("axis", "model", "sae", "scan", "layer", "read_layer")


def comparison_figures(comparison: pd.DataFrame) -> list[tuple[str, str, Figure]]:
    """(name, caption, figure): the KS statistic of each kind against `real` (* = p < 0.05), one heatmap per
    axis, experiment and layers, split so that none has more than HEATMAP_ROWS rows (a panel's rows stay
    together where they fit). Row labels hold only what differs between a heatmap's rows; the rest is its title."""
    if comparison.empty:
        return []
    keys = [k for k in HEATMAP_GROUP if k in comparison]
    rows = comparison.assign(_rank=[_row_rank(r) for r in comparison.to_dict("records")])
    several = rows[["model", "sae"]].drop_duplicates().shape[0] > 1
    out = []
    for _, group in sorted(rows.groupby(keys, sort=False, dropna=False), key=lambda g: g[1]._rank.min()):
        group = group.sort_values("_rank", kind="stable")
        first = group.iloc[0]
        name = _safe("_".join(str(p) for p in (
            "ks", *([first["model"], first["sae"]] if several else []), first["axis"], first.get("scan"),
            f"L{first['layer']}", f"R{first['read_layer']}") if p is not None and p == p))
        chunks = _chunks(group)
        for n, chunk in enumerate(chunks, 1):
            part = f"_part{n}" if len(chunks) > 1 else ""
            said = f" (part {n} of {len(chunks)})" if len(chunks) > 1 else ""
            out.append((f"{name}{part}", f"KS statistic of each kind against real{said}", heatmap(chunk, said)))
    return out


def _row_rank(row: dict) -> tuple:
    subject = SUBJECT[row["axis"]]
    what = kind_rank(row["base_kind"]) if row["axis"] == "target" else direction_rank(row["direction"])
    return (list(SUBJECT).index(row["axis"]), scan_rank(row.get("scan_mode"), row.get("scan")),
            str(row.get("model")), str(row.get("sae")), row["layer"], row["read_layer"], what,
            variant_rank(row, subject, str(row["variant"])))


def _chunks(group: pd.DataFrame) -> list[pd.DataFrame]:
    """A heatmap's rows (one per compared cell) in parts of at most HEATMAP_ROWS, whole panels where they fit."""
    keyed = group.assign(_row=list(zip(group.cell_id, group.read_layer)))
    panel_of = keyed.base_kind.astype(str) if group.axis.iloc[0] == "target" else keyed.direction.astype(str)
    chunks, current, size = [], [], 0
    for _, panel in keyed.groupby(panel_of, sort=False):
        n = panel._row.nunique()
        if current and size + n > HEATMAP_ROWS:
            chunks.append(pd.concat(current))
            current, size = [], 0
        if n > HEATMAP_ROWS:  # a panel too big for one heatmap: split it by rows
            ids = list(dict.fromkeys(panel._row))
            for i in range(0, len(ids), HEATMAP_ROWS):
                chunks.append(panel[panel._row.isin(set(ids[i:i + HEATMAP_ROWS]))])
            continue
        current.append(panel)
        size += n
    if current:
        chunks.append(pd.concat(current))
    return chunks


def heatmap(comparison: pd.DataFrame, said: str = "") -> Figure:
    """One KS heatmap: a row per compared cell, a column per metric, what every row shares in the title."""
    parts = [_label_parts(r) for r in comparison.to_dict("records")]
    varying = [i for i in range(len(parts[0])) if len({p[i] for p in parts}) > 1 or i == len(parts[0]) - 1]
    shared = [parts[0][i] for i in range(len(parts[0])) if i not in varying and parts[0][i]]
    wide = comparison.assign(row=[" | ".join(p[i] for i in varying if p[i]) for p in parts],
                             metric=comparison.metric.map(lambda m: SHORT.get(m, m)))
    ks = wide.pivot_table(index="row", columns="metric", values="ks_stat", sort=False)
    p = wide.pivot_table(index="row", columns="metric", values="ks_pvalue", sort=False).reindex_like(ks)
    label_width = 0.065 * max(map(len, ks.index))
    fig = Figure(figsize=(max(2.2 + label_width + 0.9 * ks.shape[1], 6.5), 2.0 + 0.27 * ks.shape[0]),
                 layout="constrained")
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
    title = "each kind against real" + (f": {' | '.join(shared)}" if shared else "") + said
    ax.set_title(_wrap(title, fig.get_figwidth() - 1.5, 9), fontsize=9)
    return fig


def _label_parts(row: dict) -> list[str]:
    """axis, model, SAE, layers, scan, direction or base, variant: the parts of a comparison row's label."""
    what = row["direction"] if row["axis"] == "base" else f"base {row['base_kind']}"
    scan = row.get("scan")
    return [f"{row['axis']} axis", str(row["model"]), str(row["sae"]), f"L{row['layer']}->R{row['read_layer']}",
            "" if scan is None or (isinstance(scan, float) and math.isnan(scan)) else str(scan), what,
            " ".join(p for p in (rung_of(row, SUBJECT[row["axis"]]), str(row["variant"])) if p)]


def png_bytes(fig: Figure) -> bytes:
    """The figure as a PNG at 80 dpi with at most 256 colours (a third of the bytes of full colour, the same
    picture: lines, text and a few translucent bands)."""
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    image = Image.open(buf).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                                                    dither=Image.Dither.NONE)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()
