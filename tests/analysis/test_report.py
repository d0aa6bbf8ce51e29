"""`synthact report`: figures a reader can read and one self-contained HTML page, answers first.

The smoke and ladder-toy reports are built from twins of those jobs (the same kinds, directions, generation
settings and scans, so the same panels; one layer, 8 bases per cell, rows from `write_results`). While a
report is built, every text matplotlib draws is recorded with its bounding box in the figure being saved, so
the check of clipped and overlapping text costs no second drawing.
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
import shutil
import subprocess

import matplotlib.text
import numpy as np
import pytest
from PIL import Image

from synthact import results
from synthact.analysis import compare, figures, report
from synthact.analysis.answers import answers as answers_table
from synthact.analysis.cells import Sweep
from synthact.errors import SynthactError
from tests.helpers import command, make_job, twin_job, write_results

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


class DrawnText:
    """Records, while active, every text matplotlib draws: per figure, (text, box, figure's box) in pixels, each
    text's from the last time it was drawn (saving a figure may draw it more than once)."""

    def __init__(self):
        self.figures: dict[int, tuple[object, dict]] = {}

    def __enter__(self):
        original = self.original = matplotlib.text.Text.draw

        def draw(text, renderer):
            if text.get_visible() and text.get_text().strip() and text.figure is not None:
                fig = text.figure.get_figure(root=True)
                box = text.get_window_extent(renderer)
                self.figures.setdefault(id(fig), (fig, {}))[1][id(text)] = (text.get_text(), box.extents.copy(),
                                                                            fig.bbox.extents.copy())
            return original(text, renderer)

        matplotlib.text.Text.draw = draw
        return self

    def __exit__(self, *exc):
        matplotlib.text.Text.draw = self.original


def text_problems(texts: list) -> list[str]:
    """Texts that leave their figure, and pairs of texts that overlap (by more than half a pixel each way)."""
    boxes = np.array([box for _, box, _ in texts])
    frame = texts[0][2]
    out = [f"clipped: {texts[i][0]!r}" for i in np.flatnonzero(
        (boxes[:, 0] < frame[0] - 0.5) | (boxes[:, 1] < frame[1] - 0.5) | (boxes[:, 2] > frame[2] + 0.5)
        | (boxes[:, 3] > frame[3] + 0.5))]
    w = np.minimum(boxes[:, None, 2], boxes[None, :, 2]) - np.maximum(boxes[:, None, 0], boxes[None, :, 0])
    h = np.minimum(boxes[:, None, 3], boxes[None, :, 3]) - np.maximum(boxes[:, None, 1], boxes[None, :, 1])
    i, j = np.nonzero(np.triu((w > 0.5) & (h > 0.5), 1))
    return out + [f"overlapping: {texts[a][0]!r} and {texts[b][0]!r}" for a, b in zip(i, j)]


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """The smoke and ladder-toy twins' reports: {name: (out, Report, recorded texts per figure)}."""
    built = {}
    for name in ("smoke", "ladder-toy"):
        out = tmp_path_factory.mktemp(name)
        write_results(twin_job(name), out, read_layers=(3,))
        with DrawnText() as drawn:
            built[name] = (out, report.build_report(out), drawn.figures)
    return built


@pytest.fixture(scope="module")
def built(twins):
    out, _, _ = twins["smoke"]
    return out, Sweep.open(out).aggregates


def expected_figures(sweep: Sweep) -> set[str]:
    names = {name for name, _, _ in figures.comparison_figures(compare.analyse(sweep).comparison)}
    for _, _, drawn in figures.panel_figures(sweep):
        names |= {name for name, _, _ in drawn}
    return names


@pytest.mark.parametrize("name", ["smoke", "ladder-toy"])
def test_no_text_of_any_figure_is_clipped_or_overlaps_another(twins, name):
    out, written, drawn = twins[name]
    assert len(drawn) == len(written.figures) > 0  # every figure written was drawn, and checked
    problems = []
    for fig, texts in drawn.values():
        title = fig._suptitle.get_text() if fig._suptitle else fig.axes[0].get_title()
        problems += [f"{title[:60]}: {p}" for p in text_problems(list(texts.values()))]
    assert not problems, "\n".join(problems[:20])


def test_every_figure_is_written_as_a_non_blank_png(built):
    out, _ = built
    written = {p.stem: p for p in (out / "report").glob("*.png")}
    assert set(written) == expected_figures(Sweep.open(out))
    for path in written.values():
        assert pixel_std(path.read_bytes()) > 10, path


@pytest.mark.parametrize("name", ["smoke", "ladder-toy"])
def test_figure_names_say_the_experiment_layers_and_panel_not_a_hash(twins, name):
    out, written, _ = twins[name]
    scans = {cell.settings()["scan"] for cell in twin_job(name).cells()}
    pattern = re.compile(r"(curves|distributions)_(target|base)_(?P<scan>[\w.=-]+?)_L1_R3_(?P<what>[\w.=-]+?)"
                         r"(_part\d+)?|ks_(target|base)_(?P<kscan>[\w.=-]+?)_L1_R3(_part\d+)?")
    for path in written.figures:
        match = pattern.fullmatch(path.stem)
        assert match, path.stem
        assert (match["scan"] or match["kscan"]) in scans, path.stem
        assert not re.search(r"[0-9a-f]{6}", path.stem), path.stem  # no digest in a name
    if name == "smoke":
        stems = {p.stem for p in written.figures}
        assert "curves_base_step_L1_R3_toward-real" in stems and "distributions_target_step_L1_R3_base-gaussian" in stems


@pytest.mark.parametrize("name", ["smoke", "ladder-toy"])
def test_heatmaps_have_at_most_30_rows_and_together_every_comparison(twins, name):
    out, _, _ = twins[name]
    comparison = compare.analyse(Sweep.open(out)).comparison
    maps = figures.comparison_figures(comparison)
    rows = 0
    for _, _, fig in maps:
        (ax,) = [a for a in fig.axes if a.get_title()]  # the heatmap (the other axes is its colour bar)
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert 0 < len(labels) <= figures.HEATMAP_ROWS and len(set(labels)) == len(labels)
        rows += len(labels)
    assert rows == comparison.groupby(["axis", "cell_id", "read_layer"]).ngroups
    assert len(maps) > 1  # both twins need more than one heatmap of at most 30 rows


@pytest.mark.parametrize("name", ["smoke", "ladder-toy"])
def test_each_kind_has_its_own_colour_and_real_is_black_and_drawn_last(twins, name):
    out, _, _ = twins[name]
    sweep = Sweep.open(out, bands=True)
    seen = {}
    for axis, panel, group, _, _ in figures.figure_panels(sweep.aggregates):
        reals, others = figures.ordered(group, axis)
        subject = figures.SUBJECT[axis]
        mine = sweep.bands(group.cell_id)
        fig = figures.curve_figure(mine[mine.read_layer == panel["read_layer"]], reals, others, "t", axis, {})
        shown = [a for a in fig.axes if a.get_visible()]
        assert len(shown) == len(others)
        for ax, row in zip(shown, others):
            kind_line, real_line = ax.lines[0], ax.lines[-1]
            assert real_line.get_color() == "black" and real_line.get_zorder() > kind_line.get_zorder()
            assert kind_line.get_color() == figures.kind_color(row[subject]) != "black"
            seen.setdefault(row[subject], set()).add(kind_line.get_color())
    colours = {kind: colours.pop() for kind, colours in seen.items() if len(colours) == 1}
    assert len(colours) == len(seen) >= (8 if name == "smoke" else 7)  # one colour per kind, whatever the figure
    assert len(set(colours.values())) == len(colours)  # and a different one for each kind


def test_kinds_keep_one_order_in_every_panel(built):
    out, aggregates = built
    order = list(figures.KIND_ORDER)
    for axis, _, group, _, _ in figures.figure_panels(aggregates):
        _, others = figures.ordered(group, axis)
        kinds = [r[figures.SUBJECT[axis]] for r in others]
        assert kinds == sorted(kinds, key=order.index)


def test_step_scans_mark_where_the_target_is_reached_and_axes_say_their_units(twins):
    out, _, _ = twins["smoke"]
    sweep = Sweep.open(out, bands=True)
    rows = results.read_table(out, ["cell_id", "read_layer", "target_step"]).to_pandas()
    axis, panel, group, title, _ = next(p for p in figures.figure_panels(sweep.aggregates) if p[0] == "target")
    reals, others = figures.ordered(group, axis)
    steps = figures.target_steps(sweep, group, panel["read_layer"])
    bands = sweep.bands(group.cell_id)
    fig = figures.curve_figure(bands, reals, others, title, axis, steps)
    for ax, row in zip([a for a in fig.axes if a.get_visible()], others):
        markers = [line for line in ax.lines if line.get_marker() == "v"]
        assert len(markers) == 2  # the kind's and real's
        expected = np.median(rows[rows.cell_id == row["cell_id"]].target_step)
        assert markers[0].get_xdata()[0] == round(expected)
    assert "step size 0.5 in L2" in fig._supxlabel.get_text() and "reaching" in fig._supxlabel.get_text()
    assert "L2 distance" in fig._supylabel.get_text()
    ladder, _, _ = twins["ladder-toy"]
    sweep = Sweep.open(ladder, bands=True)
    axis, panel, group, title, _ = next(figures.figure_panels(sweep.aggregates))
    reals, others = figures.ordered(group, axis)
    assert figures.target_steps(sweep, group, panel["read_layer"]) == {}  # interpolation: T is the last point
    fig = figures.curve_figure(sweep.bands(group.cell_id), reals, others[:4], title, axis, {})
    assert "interpolation from A to T" in fig._supxlabel.get_text()


def test_page_opens_with_contents_then_the_answers_from_the_verdicts_table(twins):
    out, written, _ = twins["ladder-toy"]
    page = html.unescape(written.html.read_text())
    headings = re.findall(r'<h2 id="([^"]+)">', page)
    assert page.index("<nav>") < page.index('<h2 id="answers">') and headings[0] == "answers"
    links = re.findall(r'<li><a href="#([^"]+)">', page)
    assert links == headings and len(links) == len(set(links))
    analysis = compare.analyse(Sweep.open(out))
    verdicts, table = analysis.verdicts, answers_table(analysis.verdicts, analysis.differences, analysis.comparison)
    section = page[page.index('<h2 id="answers">'):page.index(f'<h2 id="{headings[1]}">')]
    first, full = section.split("Every verdict in full")
    assert first.count("<tr>") == len(table) > len(verdicts) > 0  # the answers table, as compare prints it first
    assert all(answer in first for answer in table.answer) and "estimate [95% CI]" in first
    assert full.count("<tr>") == len(verdicts)  # then a row per verdict (header rows are <tr style=...>)
    for row in verdicts.itertuples():
        assert row.subject in full and row.detail in full
    assert f"{len(written.figures)} figures (" in page  # the page says what it holds and how big


def test_report_says_where_it_wrote_and_how_big(twins):
    out, written, _ = twins["smoke"]
    line = written.describe()
    assert str(out / "report") in line and str(out / "report.html") in line
    assert re.search(rf"{len(written.figures)} figures in \S+ \(\d+\.\d MB\)", line) and "figures embedded" in line


def test_page_renders_in_chromium_with_every_figure(built, tmp_path):
    out, _ = built
    page = out / "report.html"
    dom = chromium(tmp_path, "--dump-dom", page.as_uri()).stdout.decode()
    images = dict(re.findall(r'<img id="([^"]+)"[^>]*src="data:image/png;base64,([^"]+)"', dom))
    assert set(images) == expected_figures(Sweep.open(out))
    for name, data in images.items():
        png = base64.b64decode(data)
        assert png == (out / "report" / f"{name}.png").read_bytes()
        assert pixel_std(png) > 10, name
    assert "Answers" in dom and "YES" in dom
    assert "http://" not in page.read_text() and "https://" not in page.read_text()  # self-contained
    shot = tmp_path / "shot.png"
    chromium(tmp_path, "--window-size=1200,4000", f"--screenshot={shot}", page.as_uri())
    assert pixel_std(shot.read_bytes()) > 10


def test_page_has_the_intervals_the_differences_between_rungs_and_the_diagnostics(twins):
    out, written, _ = twins["ladder-toy"]
    page = html.unescape(written.html.read_text())
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


def test_heatmap_labels_only_what_differs_and_titles_the_rest(built):
    out, _ = built
    comparison = report.compare.compare(out)[0]
    for _, _, fig in figures.comparison_figures(comparison):
        (ax,) = [a for a in fig.axes if a.get_title()]
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert "toy-" in ax.get_title() and not any("toy-" in label for label in labels)
        assert "L1->R3" in ax.get_title() and not any("L1->R3" in label for label in labels)
        assert [t.get_text() for t in ax.get_xticklabels()] == ["step", "slope", "plateau", "early"]


def test_distribution_figures_are_small_multiples_of_each_kind_against_real(built):
    out, aggregates = built
    sweep = Sweep.open(out)
    for axis, panel, group, title, _ in figures.figure_panels(aggregates):
        reals, others = figures.ordered(group, axis)
        fig = figures.distribution_figure(sweep, reals, others, title, axis, panel["read_layer"])
        shown = [a for a in fig.axes if a.get_visible()]
        assert len(shown) == len(others) * len(figures.DISTRIBUTED)
        assert all(len(a.lines) == 1 + bool(reals) for a in shown)  # the kind's ECDF, and real's where there is one
        assert title in fig._suptitle.get_text().replace("\n", " ")


def test_report_reads_a_sweep_on_s3_and_writes_it_here(s3_out, tmp_path, monkeypatch):
    """An S3 OUT (a local S3 server): the report reads the sweep there and writes the page and figures here,
    named after the job."""
    uri, local = s3_out
    monkeypatch.chdir(tmp_path)
    written = report.build_report(uri)
    assert written.html == tmp_path / "fake-report.html" and written.figure_dir == tmp_path / "fake-report-figures"
    assert {p.name for p in written.figures} == {p.name for p in (local / "report").glob("*.png")}
    assert "read from s3://" in written.describe()
    assert '<h2 id="answers">' in written.html.read_text()


@pytest.fixture
def s3_out(s3_bucket, tmp_path):
    """A small sweep written locally (with its own report, for comparison), then copied into the S3 bucket."""
    local = tmp_path / "local"
    write_results(make_job(bases=6, base_kinds=["real", "gaussian"], directions=["toward:same", "isotropic"]), local)
    report.build_report(local)
    client, bucket = s3_bucket
    for path in local.rglob("*"):
        if path.is_file() and path.relative_to(local).parts[0] in ("results", "manifest", "job.json"):
            client.upload_file(str(path), bucket, f"sweep/{path.relative_to(local)}")
    return f"s3://{bucket}/sweep?allow_delayed_open=true", local
