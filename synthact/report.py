"""`synthact report OUT [--html FILE]`: PNG figures under OUT/report/ and one self-contained HTML page.

Figures: per panel (model, SAE, layer, read layer, direction) the mean L2 curve of every kind with
quantile bands, and the `max_slope` / `plateau_len` distributions per kind; plus the kind-vs-real
comparison as a KS heatmap. The page embeds every figure (base64), the replication verdicts and the
comparison table, so it can be mailed or archived as one file. The W&B tracker draws the same figures.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from synthact import aggregate  # noqa: E402
from synthact.errors import SynthactError  # noqa: E402
from synthact.spec import digest  # noqa: E402

DISTRIBUTED = ("max_slope", "plateau_len")
KIND_COLORS = {"real": "C3", "sae_recon": "C4", "gaussian": "C0", "synthetic_baseline": "C2",
               "synthetic_structured": "C1", "single_latent": "C5"}
LINESTYLES = ("-", "--", ":", "-.")
TABLE_COLUMNS = ["layer", "read_layer", "direction", "variant", "metric", "n", "n_real", "mean", "mean_real",
                 "mean_diff", "diff_ci_low", "diff_ci_high", "ks_stat", "ks_pvalue", "wasserstein"]


# --------------------------------------------------------------------------- figures


def panels(table: pd.DataFrame):
    """(panel axes, rows) for each panel of a frame holding the PANEL columns."""
    for key, group in table.groupby(list(aggregate.PANEL), sort=True):
        yield dict(zip(aggregate.PANEL, key)), group


def panel_slug(panel: dict) -> str:
    """A file-name-safe, unique name for a panel, e.g. 'L1_R3_toward-same_1a2b3c'."""
    direction = re.sub(r"[^A-Za-z0-9_]+", "-", str(panel["direction"]))
    return f"L{int(panel['layer'])}_R{int(panel['read_layer'])}_{direction}_{digest(aggregate.axes_of(panel, aggregate.PANEL))[:6]}"


def styled(table: pd.DataFrame) -> list[tuple[pd.Series, dict]]:
    """One (first row, matplotlib style) per cell: real first, one colour per kind, a line style per setting."""
    firsts = [g.iloc[0] for _, g in table.groupby("cell_id", sort=True)]
    firsts.sort(key=lambda r: (list(KIND_COLORS).index(r["base_kind"]), aggregate.variant_label(r)))
    seen: dict[str, int] = {}
    out = []
    for row in firsts:
        i = seen[row["base_kind"]] = seen.get(row["base_kind"], -1) + 1
        out.append((row, {"color": KIND_COLORS[row["base_kind"]], "linestyle": LINESTYLES[i % len(LINESTYLES)],
                          "label": aggregate.variant_label(row)}))
    return out


def curve_figure(bands: pd.DataFrame, title: str) -> Figure:
    """Mean L2 curve per kind, with the 25-75% band shaded and the 5-95% band lighter."""
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for row, style in styled(bands):
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


def distribution_figure(rows: pd.DataFrame, title: str) -> Figure:
    """Histograms of max_slope and plateau_len per kind (densities on shared bins)."""
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    variants = styled(rows)
    for j, metric in enumerate(DISTRIBUTED):
        ax = fig.add_subplot(1, len(DISTRIBUTED), j + 1)
        values = [_finite(rows.loc[rows.cell_id == row["cell_id"], metric]) for row, _ in variants]
        ax.hist(values, bins=_bins(np.concatenate(values), integer=metric == "plateau_len"), density=True,
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
    wide = comparison.assign(
        row=[f"L{r.layer}->R{r.read_layer} {r.direction} | {r.variant}" for r in comparison.itertuples()]
    )
    ks = wide.pivot_table(index="row", columns="metric", values="ks_stat", sort=False)
    p = wide.pivot_table(index="row", columns="metric", values="ks_pvalue", sort=False).reindex_like(ks)
    fig = Figure(figsize=(3 + 1.6 * ks.shape[1], 1.2 + 0.32 * ks.shape[0]), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(ks.to_numpy(), cmap="viridis_r", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(ks.shape[1]), ks.columns, fontsize=8)
    ax.set_yticks(range(ks.shape[0]), ks.index, fontsize=7)
    for (i, j), value in np.ndenumerate(ks.to_numpy()):
        star = "*" if p.iat[i, j] < aggregate.ALPHA else ""
        ax.text(j, i, f"{value:.2f}{star}", ha="center", va="center", fontsize=7, color="white" if value > 0.5 else "black")
    fig.colorbar(image, ax=ax, label="KS statistic vs real")
    ax.set_title("each kind against real", fontsize=9)
    return fig


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return buf.getvalue()


# --------------------------------------------------------------------------- the report


@dataclass
class Report:
    """What `build_report` wrote."""

    html: Path
    figures: list[Path] = field(default_factory=list)


def build_report(out: str | Path, html_path: str | Path | None = None) -> Report:
    """Write OUT/report/*.png and the HTML page (default OUT/report.html) from a results directory."""
    out = Path(out)
    if "://" in str(out) or ":/" in out.parts[0]:
        raise SynthactError(
            f"report needs a local output directory, got '{out}'; copy the sweep's directory locally "
            "(e.g. `aws s3 sync`) and run `synthact report` on the copy"
        )
    rows = aggregate.load_rows(out, curves=True)
    bands = aggregate.curve_bands(rows)
    comparison = aggregate.compare_to_real(rows)
    verdicts = aggregate.verdicts(comparison)
    figure_dir = out / "report"
    figure_dir.mkdir(parents=True, exist_ok=True)
    sections, figures = [], []

    def save(fig: Figure, name: str, caption: str) -> str:
        data = png_bytes(fig)
        path = figure_dir / f"{name}.png"
        path.write_bytes(data)
        figures.append(path)
        return (f'<figure><img id="{html.escape(name)}" alt="{html.escape(caption)}" '
                f'src="data:image/png;base64,{base64.b64encode(data).decode()}"><figcaption>{html.escape(caption)}'
                "</figcaption></figure>")

    band_panels = {aggregate.panel_label(panel): group for panel, group in panels(bands)}
    for panel, group in panels(rows):
        title = aggregate.panel_label(panel)
        slug = panel_slug(panel)
        parts = [f"<h2>{html.escape(title)}</h2>"]
        panel_bands = band_panels.get(title)
        if panel_bands is not None:
            parts.append(save(curve_figure(panel_bands, title), f"curves_{slug}", f"mean L2 curve per kind: {title}"))
        parts.append(save(distribution_figure(group, title), f"distributions_{slug}",
                          f"max_slope and plateau_len per kind: {title}"))
        sections.append("\n".join(parts))
    if not comparison.empty:
        sections.append("<h2>Each kind against real</h2>" + save(comparison_figure(comparison), "comparison",
                                                                   "KS statistic of each kind against real"))
    html_path = Path(html_path) if html_path else out / "report.html"
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(_page(out, rows, comparison, verdicts, sections, bands.empty))
    return Report(html=html_path, figures=figures)


def _page(out: Path, rows, comparison, verdicts, sections, no_curves: bool) -> str:
    name = _job_name(out)
    if verdicts.empty:
        checks = "<p>No comparison: the sweep has no <code>real</code> cells to compare other kinds against.</p>"
    else:
        shown = verdicts.assign(panel=[aggregate.panel_label(r) for _, r in verdicts.iterrows()])
        checks = shown[["panel", "check", "subject", "verdict", "detail"]].to_html(index=False, classes="verdicts")
    note = "<p>The job set <code>keep_curves: false</code>, so there are no curve figures.</p>" if no_curves else ""
    table = (comparison[[c for c in TABLE_COLUMNS if c in comparison]].to_html(index=False, float_format="{:.4g}".format)
             if not comparison.empty else "")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>synthact report: {html.escape(name)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1100px; }}
img {{ max-width: 100%; }} figure {{ margin: 1em 0; }} figcaption {{ font-size: 0.85em; color: #555; }}
table {{ border-collapse: collapse; font-size: 0.8em; }} td, th {{ border: 1px solid #ccc; padding: 2px 6px; }}
</style></head><body>
<h1>synthact report: {html.escape(name)}</h1>
<p>{len(rows)} curves in {rows.cell_id.nunique()} cells, from <code>{html.escape(str(out))}</code>.</p>
<h2>Replication checks</h2>
<p>YES means the paper's finding holds (science.md, "the replication target").</p>
{checks}
{note}
{''.join(sections)}
<h2>Comparison table</h2>{table}
</body></html>
"""


def _job_name(out: Path) -> str:
    spec = out / "job.yaml"
    if spec.exists():
        return str((yaml.safe_load(spec.read_text()) or {}).get("name", out.name))
    return out.name


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="output directory of a sweep (its results/ folder is read)")
    parser.add_argument("--html", metavar="FILE", help="where to write the HTML page (default: OUT/report.html)")


def run(args: argparse.Namespace) -> int:
    report = build_report(args.out, args.html)
    print(f"{len(report.figures)} figures in {Path(args.out) / 'report'}; page: {report.html}")
    return 0
