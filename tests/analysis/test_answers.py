"""The answers first: on twins of jobs/paper-toy.yaml and jobs/ladder-toy.yaml (the same kinds, directions, settings
and scans, rows from `write_results`), the first 40 lines of `synthact compare` hold every verdict with its
interval and n, in the paper's order, and no line of compare or of the run summary is over 120 characters."""

from __future__ import annotations

import pytest

from synthact.analysis import aggregate, answers, compare, summary, text
from synthact.analysis.cells import Sweep
from synthact.run.plan import RunSummary
from tests.helpers import command, twin_job, write_results

SCREEN = 40
TWINS = ("paper-toy", "ladder-toy")


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """{name: (out, Analysis, what compare printed)}."""
    built = {}
    for name in TWINS:
        out = tmp_path_factory.mktemp(name)
        write_results(twin_job(name), out, read_layers=(3,))
        analysis = compare.analyse(Sweep.open(out))
        built[name] = out, analysis, analysis.text()
    return built


def _interval(estimate: float, lo: float, hi: float) -> str:
    return f"[{answers._num(lo, '+', estimate, lo, hi)}, {answers._num(hi, '+', estimate, lo, hi)}]"


@pytest.mark.parametrize("name", TWINS)
def test_every_verdict_is_on_the_first_screen_with_its_interval_and_n(twins, name):
    _, analysis, printed = twins[name]
    screen = printed.splitlines()[:SCREEN]
    assert screen[0] == answers.TITLE and screen[1] == answers.READING
    assert len(analysis.verdicts) >= 6
    for v in analysis.verdicts.itertuples():
        scale = (v.estimate, v.lo, v.hi) if v.lo == v.lo else (v.estimate,)
        shown = [line for line in screen if answers._num(v.estimate, "+" if v.lo == v.lo else "", *scale) in line]
        assert shown, (v.check, v.subject)
        if v.lo == v.lo:  # the checks with an interval show it beside the estimate
            assert any(_interval(v.estimate, v.lo, v.hi) in line and line.rstrip().endswith(f" {v.n}") for line in shown), v.subject
    questions = [q for q, _ in answers.QUESTIONS.values() if any(q in line for line in screen)]
    assert len(questions) == len({c for c in analysis.verdicts.check})
    # the ladder's steps (every step the sweep has but the structure verdict's and the controls') follow
    steps = {s for s in analysis.differences.step} - {aggregate.STRUCTURE_STEP, "R1 -> other"}
    assert steps and all(any(line.lstrip().startswith(step + ":") for line in screen) for step in steps)


def test_the_answers_follow_the_papers_order(twins):
    _, analysis, printed = twins["paper-toy"]
    headings = [line for line in printed.splitlines()[:SCREEN] if not line.startswith(" ")][2:]
    experiments = [h.split(":")[0] for h in headings if not h.startswith("*")]
    assert experiments[:3] == ["sensitivity"] * 3  # the paper's first experiment, its three questions
    assert experiments.index("plateaus") < experiments.index("plateaus-around-A") < experiments.index("sensitivity", 3)
    assert headings[0].startswith("sensitivity: which kind is closest")


@pytest.mark.parametrize("name", TWINS)
def test_no_line_of_compare_or_the_summary_is_over_120_characters(twins, name):
    out, analysis, printed = twins[name]
    every = analysis.text(every_metric=True)
    assert max(map(len, (printed + "\n" + every).splitlines())) <= text.WIDTH
    run = RunSummary(cells=67, shards=67, shards_skipped=0, curves=4020, wall_s=1.0)
    shown = summary.render(run, str(out), analysis.comparison, analysis.verdicts, analysis.differences, toy=True)
    lines = shown.splitlines()
    assert len(lines) <= summary.MAX_LINES and max(map(len, lines)) <= text.WIDTH
    assert summary.TOY_NOTE in shown and "more experiments" not in shown
    assert lines[:2] == [answers.TITLE, answers.READING]
    # the summary's answers are compare's first screen, as far as they fit
    head = [line for line in lines[:lines.index("")] if "more answers" not in line]
    assert head == printed.splitlines()[:len(head)] and len(head) > 10


def test_compare_command_prints_the_answers_first(twins, capsys):
    out, _, printed = twins["ladder-toy"]
    assert command("compare", str(out)) == 0
    assert capsys.readouterr().out.rstrip("\n") == printed


def test_pair_labels_say_shared_settings_once():
    label = answers.pair_label("toward:synthetic_structured anchor quantile +error (other prompt's)",
                               "toward:synthetic_baseline k=10 quantile +error (other prompt's)")
    assert label == "structured anchor vs baseline k=10; quantile +error(other)"
