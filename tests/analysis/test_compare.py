"""`synthact compare`: the printed table and verdicts, and the saved CSV."""

from __future__ import annotations

import re
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest

from synthact import results
from synthact.analysis import aggregate, answers, compare
from synthact.analysis.cells import Sweep
from synthact.errors import SynthactError
from tests.helpers import PAPER_SCANS, TOWARD, command, make_job, write_results


def run_compare(argv: list[str]) -> int:
    return command("compare", *argv)


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp")
    write_results(make_job(directions=TOWARD, scan=PAPER_SCANS), out)
    return out


def test_compare_prints_answers_tables_and_differences_and_writes_nothing_unasked(out, capsys):
    assert run_compare([str(out)]) == 0
    text = capsys.readouterr().out
    assert not (out / "compare.csv").exists()  # only the cache of per-cell aggregates is written (OUT/analysis)
    sweep = Sweep.open(out)
    expected, differences = aggregate.compare_kinds(sweep), aggregate.differences(sweep)
    verdicts = aggregate.verdicts(expected, differences)
    assert text.startswith(answers.TITLE) and answers.READING in text
    for question, _ in answers.QUESTIONS.values():
        assert question in text
    assert "structured anchor vs baseline k=10" in text
    # the distances with their intervals, and the differences between rungs with their intervals
    row = expected[(expected.axis == "target") & (expected.target_kind == "gaussian")
                   & (expected.metric == "max_slope_step") & (expected.scan_mode == "interpolate")].iloc[0]
    assert f"{row.mean_diff:+.3g} [{row.mean_diff_lo:+.3g}, {row.mean_diff_hi:+.3g}]" in text
    assert "[nan" not in text and "KS [95% CI]" not in text  # no interval of a distance: none is calibrated
    assert " ".join(compare.DIFFERENCES_HEADING.split()) in " ".join(text.split())
    shown = compare.headline(differences)
    assert all(f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]" in text for d, lo, hi in
               zip(shown.ks_diff, shown.ks_diff_lo, shown.ks_diff_hi))
    assert len(verdicts) and max(map(len, text.splitlines())) <= 120


def test_compare_all_prints_every_metric(out, capsys):
    assert run_compare([str(out)]) == 0
    headline = capsys.readouterr().out
    assert run_compare([str(out), "--all"]) == 0
    every = capsys.readouterr().out
    for metric in results.COMPARED:
        named = re.compile(rf"{metric}(?![_a-z])")
        assert named.search(every) and bool(named.search(headline)) == (metric in ("max_slope_step", "plateau_len"))
    assert max(map(len, every.splitlines())) <= 120


def test_compare_csv_option(out, tmp_path):
    target = tmp_path / "sub" / "c.csv"
    assert run_compare([str(out), "--csv", str(target)]) == 0
    saved = pd.read_csv(target)
    expected = aggregate.compare_kinds(Sweep.open(out))
    assert len(saved) == len(expected) > 0
    np.testing.assert_allclose(saved.ks_stat, expected.ks_stat)
    np.testing.assert_allclose(saved.mean_diff_hi, expected.mean_diff_hi)
    np.testing.assert_allclose(saved.ks_perm_p, expected.ks_perm_p)
    assert set(saved.metric) == set(results.COMPARED)
    differences = pd.read_csv(tmp_path / "sub" / "c-differences.csv")
    np.testing.assert_allclose(differences.ks_diff_p_holm, aggregate.differences(Sweep.open(out)).ks_diff_p_holm)
    verdicts = pd.read_csv(tmp_path / "sub" / "c-verdicts.csv")
    assert {"check", "verdict", "estimate", "lo", "hi", "p", "p_holm", "n", "detail"} <= set(verdicts)


def test_compare_without_real_says_so(tmp_path, capsys):
    write_results(make_job(bases=6, base_kinds=["gaussian", "synthetic_baseline"]), tmp_path)
    assert run_compare([str(tmp_path)]) == 0
    assert "No comparison" in capsys.readouterr().out


def test_compare_on_an_empty_directory_is_a_clear_error(tmp_path):
    with pytest.raises(SynthactError, match="no results"):
        run_compare([str(tmp_path)])


def test_compare_where_the_cache_cannot_be_written_prints_the_same_without_a_word_about_it(tmp_path, capsys):
    """OUT/analysis is a regular file here, so every cache write fails (as on a read-only OUT; chmod does not
    stop root, who runs these tests in CI)."""
    write_results(make_job(bases=6), tmp_path / "ro")
    assert run_compare([str(tmp_path / "ro")]) == 0
    expected = capsys.readouterr().out
    shutil.rmtree(tmp_path / "ro" / "analysis")
    (tmp_path / "ro" / "analysis").write_text("not a directory")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run_compare([str(tmp_path / "ro")]) == 0
    printed = capsys.readouterr()
    assert printed.out == expected and printed.err == ""
    assert (tmp_path / "ro" / "analysis").read_text() == "not a directory"
