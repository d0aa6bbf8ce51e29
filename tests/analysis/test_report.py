"""`synthact report`: PNG figures and a self-contained HTML page that renders in headless Chromium."""

from __future__ import annotations

import base64
import html
import io
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from synthact.analysis import compare, figures, report
from synthact.analysis.cells import Sweep
from synthact.errors import SynthactError
from tests.helpers import command, make_job, write_results

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]


def run_report(argv: list[str]) -> int:
    return command("report", *argv)


def pixel_std(png: bytes) -> float:
    return float(np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64).std())


def chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    if CHROMIUM is None:
        message = "headless Chromium is not installed, so the rendered page was not checked: apt-get install -y chromium"
        if os.environ.get("CI"):  # CI installs it: a missing browser there is a broken set-up, not a skip
            pytest.fail(message)
        pytest.skip(message)
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
                          capture_output=True, timeout=120, check=True)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("rep")
    job = make_job(directions=["toward:same", "isotropic", "toward:synthetic_structured"])  # 12 panels, 25 figures
    write_results(job, out)
    assert run_report([str(out)]) == 0
    return out, Sweep.open(out).aggregates


def expected_figures(aggregates) -> set[str]:
    names = {"comparison"}
    for *_, slug in figures.figure_panels(aggregates):
        names |= {f"curves_{slug}", f"distributions_{slug}"}
    return names


def test_every_figure_is_written_as_a_non_blank_png(built):
    out, rows = built
    written = {p.stem: p for p in (out / "report").glob("*.png")}
    assert set(written) == expected_figures(rows)
    for path in written.values():
        assert pixel_std(path.read_bytes()) > 10, path


def test_page_renders_in_chromium_with_every_figure(built, tmp_path):
    out, rows = built
    page = out / "report.html"
    dom = chromium(tmp_path, "--dump-dom", page.as_uri()).stdout.decode()
    images = dict(re.findall(r'<img id="([^"]+)"[^>]*src="data:image/png;base64,([^"]+)"', dom))
    assert set(images) == expected_figures(rows)
    for name, data in images.items():
        png = base64.b64decode(data)
        assert png == (out / "report" / f"{name}.png").read_bytes()
        assert pixel_std(png) > 10, name
    assert "Replication checks" in dom and "YES" in dom
    assert "http://" not in page.read_text() and "https://" not in page.read_text()  # self-contained
    shot = tmp_path / "shot.png"
    chromium(tmp_path, "--window-size=1200,4000", f"--screenshot={shot}", page.as_uri())
    assert pixel_std(shot.read_bytes()) > 10


def test_page_has_the_intervals_the_differences_between_rungs_and_the_diagnostics(built):
    out, _ = built
    page = html.unescape((out / "report.html").read_text())
    analysis = compare.analyse(Sweep.open(out))
    for column in ("mean_diff_lo", "mean_diff_hi", "mean_diff_p", "ks_perm_p", "paired"):
        assert f"<th>{column}</th>" in page
    assert '<h2 id="differences">' in page and all(v in page for v in analysis.differences.verdict)
    assert '<h2 id="diagnostics">' in page and not analysis.diagnostics.empty
    assert all(f"<td>{v}</td>" in page for v in analysis.diagnostics["PMI"])


def test_html_option_and_no_curves(tmp_path):
    job = make_job(bases=6, directions=["toward:same", "isotropic", "toward:gaussian"])
    write_results(job, tmp_path / "out", keep_curves=False)
    target = tmp_path / "elsewhere" / "r.html"
    assert run_report([str(tmp_path / "out"), "--html", str(target)]) == 0
    text = target.read_text()
    assert "keep_curves: false" in text
    assert not list((tmp_path / "out" / "report").glob("curves_*.png"))
    panels = list(figures.figure_panels(Sweep.open(tmp_path / "out").aggregates))
    assert len(list((tmp_path / "out" / "report").glob("distributions_*.png"))) == len(panels) > 4


def test_report_on_an_empty_directory_is_a_clear_error(tmp_path):
    with pytest.raises(SynthactError, match="no results"):
        run_report([str(tmp_path)])


def test_comparison_heatmap_labels_only_what_differs_and_titles_the_rest(built):
    out, _ = built
    comparison = report.compare.compare(out)[0]
    fig = figures.comparison_figure(comparison)
    (ax,) = [a for a in fig.axes if a.get_title()]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert "toy-" in ax.get_title() and not any("toy-" in label for label in labels)
    assert len(set(labels)) == len(labels) == comparison.groupby(["axis", "cell_id", "read_layer"]).ngroups
    assert [t.get_text() for t in ax.get_xticklabels()] == ["step", "slope", "plateau", "early"]


def test_distribution_figures_are_small_multiples_of_each_kind_against_real(built):
    out, aggregates = built
    sweep = Sweep.open(out)
    for axis, _, group, title, _ in figures.figure_panels(aggregates):
        reals, others = figures.ordered(group, axis)
        fig = figures.distribution_figure(sweep, group, title, axis)
        shown = [a for a in fig.axes if a.get_visible()]
        assert len(shown) == len(others) * len(figures.DISTRIBUTED)
        assert all(len(a.lines) == 1 + bool(reals) for a in shown)  # the kind's ECDF, and real's where there is one
        assert fig._suptitle.get_text() == title
