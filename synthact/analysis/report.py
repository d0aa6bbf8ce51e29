"""`synthact report OUT [--html FILE] [--ray ADDRESS]`: PNG figures and one self-contained HTML page.

The page opens with a table of contents and the answers: the answers table (analysis/answers.py, as `synthact
compare` prints it first), then every verdict in full, one table per experiment in the paper's order (with every
column the verdicts table has). Then the figures
(synthact.analysis.figures), panel by panel: small multiples of every kind against real, the mean L2 curve with
quantile bands and the ECDFs of `max_slope_step` and `plateau_len`; the KS heatmaps; the comparison table (with
its intervals), the differences between rungs and the diagnostics of the target codes. Figures are embedded
(base64), so the page can be mailed or archived as one file; it states its size and the figures'.

OUT may be local or a remote URI (s3://...): the sweep is read where it is, the figures and the page are
written locally (OUT/report/ and OUT/report.html for a local OUT; for a remote one, ./<name>-report.html and
./<name>-report-figures/, or beside --html FILE). Reads the same cached per-cell aggregates as `synthact compare`.
"""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow.fs as pafs
from matplotlib.figure import Figure

from synthact.analysis import answers, compare, diagnostics, figures
from synthact.analysis.cells import Sweep
from synthact.analysis.order import direction_rank, kind_rank, scan_rank
from synthact.errors import SynthactError
from synthact.layout import resolve_location
from synthact.run.store import completion_note, read_claim


@dataclass
class Report:
    """What `build_report` wrote, and how big it is."""

    html: Path
    figures: list[Path] = field(default_factory=list)
    figure_dir: Path | None = None  # OUT/report, or beside the page when OUT is remote or read-only
    source: str = ""  # the remote OUT it was read from ('' for a local one)

    @property
    def figure_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.figures)

    def describe(self) -> str:
        """One line: where the figures and the page are, and their sizes."""
        return (f"{len(self.figures)} figures in {self.figure_dir} ({_mb(self.figure_bytes)}); page: {self.html} "
                f"({_mb(self.html.stat().st_size)}, figures embedded)" + (f"; read from {self.source}" if self.source else ""))


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def build_report(out: str | Path, html_path: str | Path | None = None, ray: str | None = None) -> Report:
    """Write the figures and the HTML page of a results directory (local or remote) and return where they are."""
    fs, root, uri = resolve_location(out)
    remote = not isinstance(fs, pafs.LocalFileSystem)
    name = _job_name(fs, root, uri)
    if html_path:
        html_path = Path(html_path).expanduser()
    else:
        html_path = Path.cwd() / f"{_slug(name)}-report.html" if remote else Path(root) / "report.html"
    if html_path.is_dir():
        raise SynthactError(f"--html '{html_path}' is a directory; give the path of the HTML file to write, "
                            f"e.g. {html_path / 'report.html'}")
    sweep = Sweep.open(out, ray=ray, bands=True)
    analysis = compare.analyse(sweep)
    bands = sweep.bands()
    own_folder = None if remote else Path(root) / "report"
    figure_dir = _figure_dir(own_folder, html_path, uri)
    report = Report(html=html_path, figure_dir=figure_dir, source=uri if remote else "")

    def save(fig: Figure, name: str, caption: str) -> str:
        data = figures.png_bytes(fig)
        path = figure_dir / f"{name}.png"
        path.write_bytes(data)
        report.figures.append(path)
        return (f'<figure><img id="{html.escape(name)}" alt="{html.escape(caption)}" '
                f'src="data:image/png;base64,{base64.b64encode(data).decode()}"><figcaption>{html.escape(caption)}'
                "</figcaption></figure>")

    sections = []  # (id, heading, html)
    for title, slug, drawn in figures.panel_figures(sweep, bands):
        sections.append((slug, title, "\n".join(save(fig, n, caption) for n, caption, fig in drawn)))
    heatmaps = [save(fig, n, caption) for n, caption, fig in figures.comparison_figures(analysis.comparison)]
    if heatmaps:
        sections.append(("heatmaps", "Each kind against real: KS heatmaps", "\n".join(heatmaps)))
    try:
        html_path.parent.mkdir(parents=True, exist_ok=True)
        html_path.write_text(_page(uri, name, sweep, analysis, sections, bands.empty, report))
    except OSError as e:
        raise SynthactError(f"cannot write the report page '{html_path}' ({e.strerror or e}); give --html FILE "
                            "in a writable place") from None
    return report


def _figure_dir(own: Path | None, html_path: Path, uri: str) -> Path:
    """OUT/report for a local OUT; else (remote or read-only OUT) a folder beside the page."""
    for folder in ([own] if own else []) + [html_path.parent / f"{html_path.stem}-figures"]:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if os.access(folder, os.W_OK):
                return folder
        except OSError:
            pass
    raise SynthactError(f"cannot write the figures of '{uri}' to '{own or html_path.parent}' (read-only or not "
                        "permitted); give --html FILE in a writable place, and the figures go beside it")


# --------------------------------------------------------------------------- the page


STYLE = """body { font-family: sans-serif; margin: 2em; max-width: 1100px; }
img { max-width: 100%; } figure { margin: 1em 0; } figcaption { font-size: 0.85em; color: #555; }
table { border-collapse: collapse; font-size: 0.8em; } td, th { border: 1px solid #ccc; padding: 2px 6px; }
nav li { margin: 0.1em 0; } .YES { color: #117733; font-weight: bold; } .NO { color: #E20134; font-weight: bold; }"""
READING = ("How to read it: KS is the largest gap between the distribution of a kind's curves and real's (0: the "
           "same, 1: disjoint), so a smaller KS is closer to real. YES means the paper's finding holds "
           "(docs/science.md, \"What the paper found\"), NO that the opposite holds, INCONCLUSIVE that the 95% "
           "interval covers no difference. The target axis is the paper's design: real bases pushed toward each "
           "kind of target, each against toward:real; the base axis compares kinds of base along one direction, "
           "each against the real base.")


def _page(uri: str, name: str, sweep: Sweep, analysis: compare.Analysis, sections, no_curves: bool,
          report: Report) -> str:
    comparison = analysis.comparison
    note = "<p>The job set <code>keep_curves: false</code>, so there are no curve figures.</p>" if no_curves else ""
    incomplete = f"<p><strong>{html.escape(completion)}</strong></p>" if (completion := completion_note(uri)) else ""
    table = (comparison[[c for c in compare.SHOWN if c in comparison]].to_html(index=False, float_format="{:.4g}".format)
             if not comparison.empty else "")
    parts = [("answers", "Answers: the study's questions", _answers(analysis)),
             *sections,
             ("comparison", "Comparison table",
              "<p>Each kind against real: the difference of means with its 95% t interval (<code>mean_diff_lo</code>, "
              "<code>mean_diff_hi</code>) and p (<code>mean_diff_p</code>), paired over bases where <code>paired</code>; "
              "<code>ks_perm_p</code> is the permutation p-value of \"same distribution\". The KS and Wasserstein "
              "distances have no interval: none is calibrated (docs/science.md, \"Statistics\").</p>"
              f"{table}" if table else "")]
    if not analysis.differences.empty:
        parts.append(("differences", "Differences between rungs", _differences(analysis.differences)))
    if not analysis.diagnostics.empty:
        parts.append(("diagnostics", "Diagnostics of the target codes",
                      f"<p>{html.escape(diagnostics.HEADING)}.</p>{analysis.diagnostics.to_html(index=False, classes='diagnostics')}"))
    contents = "\n".join(f'<li><a href="#{html.escape(i)}">{html.escape(h)}</a></li>' for i, h, _ in parts)
    body = "\n".join(f'<h2 id="{html.escape(i)}">{html.escape(h)}</h2>\n{content}' for i, h, content in parts)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>synthact report: {html.escape(name)}</title>
<style>
{STYLE}
</style></head><body>
<h1>synthact report: {html.escape(name)}</h1>
{incomplete}
<p>{sweep.curves} curves in {len(sweep.cells)} cells, from <code>{html.escape(uri)}</code>. This page embeds
{len(report.figures)} figures ({_mb(report.figure_bytes)} of PNG, also in <code>{html.escape(str(report.figure_dir))}</code>).</p>
<nav><h2>Contents</h2><ol>
{contents}
</ol></nav>
{note}
{body}
</body></html>
"""


# The verdicts' columns that say where (shown once per experiment, as a heading and per row where they vary).
WHERE = ("axis", "model", "sae", "scan", "layer", "read_layer", "base_kind", "direction")


def _answers(analysis: compare.Analysis) -> str:
    """The answers table (as `synthact compare` prints it first), then the verdicts in full, one table per experiment
    (axis and scan, in the paper's order), every other column kept."""
    verdicts = analysis.verdicts
    if verdicts.empty:
        return "<p>No comparison: the sweep has no <code>real</code> cells to compare other kinds against.</p>"
    modes = {}
    if not analysis.comparison.empty and "scan_mode" in analysis.comparison:
        modes = dict(zip(analysis.comparison["scan"], analysis.comparison["scan_mode"]))
    table = answers.answers(verdicts, analysis.differences, analysis.comparison)
    shown = pd.concat([pd.DataFrame({"experiment": table.experiment, "question": [
        f"{q} ({of})" for q, of in zip(table.question, table.estimate_of)]}), answers.shown(table)], axis=1)
    out = [f"<p>{html.escape(READING)}</p>", _marked(shown.to_html(index=False, classes="answers", na_rep="")),
           f"<p>{html.escape(answers.HOLM_NOTE)}</p>" if shown.answer.str.endswith("*").any() else "",
           "<h3>Every verdict in full</h3>"]
    key = ["axis", "scan"] if "scan" in verdicts else ["axis"]
    groups = sorted(verdicts.groupby(key, sort=False, dropna=False),
                    key=lambda g: (g[0][0] != "target", scan_rank(modes.get(g[0][-1]), g[0][-1])))
    for label, group in groups:
        axis, scan = label[0], label[-1] if len(label) > 1 else None
        varying = [c for c in WHERE if c in group and c not in key and group[c].astype(str).nunique() > 1]
        group = group.iloc[sorted(range(len(group)), key=lambda i: _where_rank(group.iloc[i]))]
        shown = group[varying + [c for c in group.columns if c not in WHERE]]
        heading = f"{axis} axis" + (f", experiment {scan}" if scan is not None and scan == scan else "")
        table = _marked(shown.to_html(index=False, classes="verdicts", float_format="{:.4g}".format, na_rep=""))
        out.append(f"<h4>{html.escape(heading)}</h4>{table}")
    return "\n".join(out)


def _marked(table: str) -> str:
    """An HTML table whose YES and NO cells are coloured."""
    for verdict in ("YES", "NO"):
        table = table.replace(f"<td>{verdict}</td>", f'<td class="{verdict}">{verdict}</td>')
    return table


def _where_rank(row) -> tuple:
    """A verdict's place in its experiment: by model, SAE, layers, then base kind or direction in the one order."""
    what = kind_rank(row["base_kind"]) if row["axis"] == "target" else direction_rank(row["direction"])
    return (str(row.get("model")), str(row.get("sae")), row.get("layer"), row.get("read_layer"), what)


def _differences(differences: pd.DataFrame) -> str:
    out = [f"<p>{html.escape(compare.DIFFERENCES_HEADING)}</p>"]
    for axis in compare.HEADINGS:
        rows = differences[differences.axis == axis]
        for label, group in compare.panel_groups(rows, axis) if not rows.empty else ():
            table = compare.readable_differences(group, sentences=True).to_html(index=False, classes="differences")
            out.append(f"<h4>{html.escape(label)}</h4>{table}")
    return "\n".join(out)


def _job_name(fs: pafs.FileSystem, root: str, uri: str) -> str:
    """The job's name from OUT/job.json, else the folder's name."""
    try:
        claim = read_claim(fs, root, uri)
    except SynthactError:
        claim = None
    name = (claim or {}).get("spec", {}).get("name") if isinstance((claim or {}).get("spec"), dict) else None
    return str(name or root.rstrip("/").rsplit("/", 1)[-1] or "sweep")


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
