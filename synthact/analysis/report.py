"""`synthact report OUT [--html FILE] [--ray ADDRESS]`: PNG figures under OUT/report/ and one self-contained HTML page.

Figures (synthact.analysis.figures): per panel of each comparison axis, small multiples of every kind against
real: the mean L2 curve with quantile bands, and the ECDFs of `max_slope_step` and `plateau_len` (on the
target axis, the paper's distributions per target kind); plus the kind-vs-real comparison as a KS heatmap.
The page embeds every figure (base64), the replication verdicts, the comparison table (with its intervals),
the differences between rungs and the diagnostics of the target codes, so it can be mailed or archived as
one file. Reads the same cached per-cell aggregates as `synthact compare`.
"""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.fs as pafs
import yaml
from matplotlib.figure import Figure

from synthact.analysis import aggregate, compare, diagnostics, figures
from synthact.analysis.cells import Sweep
from synthact.errors import SynthactError
from synthact.layout import resolve_location
from synthact.run.store import completion_note

# --------------------------------------------------------------------------- the report


@dataclass
class Report:
    """What `build_report` wrote."""

    html: Path
    figures: list[Path] = field(default_factory=list)
    figure_dir: Path | None = None  # OUT/report, or beside the page when OUT is read-only


def build_report(out: str | Path, html_path: str | Path | None = None, ray: str | None = None) -> Report:
    """Write OUT/report/*.png and the HTML page (default OUT/report.html) from a results directory."""
    fs, local, _ = resolve_location(out)
    if not isinstance(fs, pafs.LocalFileSystem):
        raise SynthactError(
            f"report needs a local output directory, got '{out}'; copy the sweep's directory locally "
            "(e.g. `aws s3 sync`) and run `synthact report` on the copy"
        )
    out = Path(local)
    html_path = Path(html_path).expanduser() if html_path else out / "report.html"
    if html_path.is_dir():
        raise SynthactError(f"--html '{html_path}' is a directory; give the path of the HTML file to write, "
                            f"e.g. {html_path / 'report.html'}")
    sweep = Sweep.open(out, ray=ray, bands=True)
    analysis = compare.analyse(sweep)
    comparison = analysis.comparison
    bands = sweep.bands()
    figure_dir = _figure_dir(out, html_path if html_path != out / "report.html" else None)
    sections, written = [], []

    def save(fig: Figure, name: str, caption: str) -> str:
        data = figures.png_bytes(fig)
        path = figure_dir / f"{name}.png"
        path.write_bytes(data)
        written.append(path)
        return (f'<figure><img id="{html.escape(name)}" alt="{html.escape(caption)}" '
                f'src="data:image/png;base64,{base64.b64encode(data).decode()}"><figcaption>{html.escape(caption)}'
                "</figcaption></figure>")

    for title, drawn in figures.panel_figures(sweep, bands):
        parts = [f"<h2>{html.escape(title)}</h2>"]
        parts += [save(fig, name, caption) for name, caption, fig in drawn]
        sections.append("\n".join(parts))
    if not comparison.empty:
        sections.append("<h2>Each kind against real (both axes)</h2>" + save(figures.comparison_figure(comparison), "comparison",
                                                                   "KS statistic of each kind against real"))
    try:
        html_path.parent.mkdir(parents=True, exist_ok=True)
        html_path.write_text(_page(out, sweep, analysis, sections, bands.empty))
    except OSError as e:
        raise SynthactError(f"cannot write the report page '{html_path}' ({e.strerror or e}); give --html FILE "
                            "in a writable place") from None
    return Report(html=html_path, figures=written, figure_dir=figure_dir)


def _figure_dir(out: Path, html_path: Path | None) -> Path:
    """OUT/report, or, where OUT cannot be written and --html points elsewhere, a folder beside the page."""
    for folder in [out / "report"] + ([html_path.parent / f"{html_path.stem}-figures"] if html_path else []):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if os.access(folder, os.W_OK):
                return folder
        except OSError:
            pass
    raise SynthactError(f"cannot write figures to '{out / 'report'}' (read-only or not permitted); give --html FILE in "
                        "a writable place, and the figures go beside it")


def _page(out: Path, sweep: Sweep, analysis: compare.Analysis, sections, no_curves: bool) -> str:
    name = _job_name(out)
    comparison, verdicts = analysis.comparison, analysis.verdicts
    if verdicts.empty:
        checks = "<p>No comparison: the sweep has no <code>real</code> cells to compare other kinds against.</p>"
    else:
        shown = verdicts.assign(panel=[aggregate.panel_label(r, r["axis"]) for _, r in verdicts.iterrows()])
        checks = shown[["axis", "panel", "check", "subject", "verdict", "detail"]].to_html(index=False, classes="verdicts")
    note = "<p>The job set <code>keep_curves: false</code>, so there are no curve figures.</p>" if no_curves else ""
    incomplete = f"<p><strong>{html.escape(completion)}</strong></p>" if (completion := completion_note(out)) else ""
    table = (comparison[[c for c in compare.SHOWN if c in comparison]].to_html(index=False, float_format="{:.4g}".format)
             if not comparison.empty else "")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>synthact report: {html.escape(name)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1100px; }}
img {{ max-width: 100%; }} figure {{ margin: 1em 0; }} figcaption {{ font-size: 0.85em; color: #555; }}
table {{ border-collapse: collapse; font-size: 0.8em; }} td, th {{ border: 1px solid #ccc; padding: 2px 6px; }}
</style></head><body>
<h1>synthact report: {html.escape(name)}</h1>
{incomplete}
<p>{sweep.curves} curves in {len(sweep.cells)} cells, from <code>{html.escape(str(out))}</code>.</p>
<h2>Replication checks</h2>
<p>YES means the paper's finding holds (docs/science.md, "What the paper found"). The <em>target</em> axis is
the paper's design: real bases pushed toward each kind of target, each against <code>toward:real</code>; the
<em>base</em> axis compares kinds of base pushed along one direction, each against <code>real</code>.</p>
{checks}
{note}
{''.join(sections)}
<h2>Comparison table</h2>
<p>Each kind against real: the difference of means with its 95% t interval (<code>mean_diff_lo</code>,
<code>mean_diff_hi</code>) and p (<code>mean_diff_p</code>), paired over bases where <code>paired</code>;
<code>ks_perm_p</code> is the permutation p-value of "same distribution". The KS and Wasserstein distances
have no interval: none is calibrated (docs/science.md, "Statistics").</p>{table}
{_differences(analysis.differences)}
{_diagnostics(analysis.diagnostics)}
</body></html>
"""


def _differences(differences) -> str:
    if differences.empty:
        return ""
    table = compare.readable_differences(differences).to_html(index=False, classes="differences")
    return f"<h2 id=\"differences\">Differences between rungs</h2><p>{html.escape(compare.DIFFERENCES_HEADING)}</p>{table}"


def _diagnostics(table) -> str:
    if table.empty:
        return ""
    shown = table.to_html(index=False, classes="diagnostics")
    return f"<h2 id=\"diagnostics\">Diagnostics of the target codes</h2><p>{html.escape(diagnostics.HEADING)}.</p>{shown}"


def _job_name(out: Path) -> str:
    spec = out / "job.yaml"
    if spec.exists():
        return str((yaml.safe_load(spec.read_text()) or {}).get("name", out.name))
    return out.name


# --------------------------------------------------------------------------- CLI
