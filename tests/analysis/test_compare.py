"""`synthact compare`: the printed table and verdicts, and the saved CSV."""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import pytest

from synthact import results
from synthact.analysis import aggregate, compare
from synthact.errors import SynthactError
from tests.helpers import make_job, write_results


def run_compare(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    compare.add_arguments(parser)
    return compare.run(parser.parse_args(argv))


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp")
    write_results(make_job(), out)
    return out


def test_compare_prints_table_and_verdicts_and_writes_nothing_unasked(out, capsys):
    assert run_compare([str(out)]) == 0
    text = capsys.readouterr().out
    assert not (out / "compare.csv").exists()  # a finished (maybe read-only) directory is only read
    expected = aggregate.compare_kinds(results.read_rows(out))
    verdicts = aggregate.verdicts(expected)
    for line in aggregate.verdict_lines(verdicts):
        assert line in text
    for check in (aggregate.CHECK_STRUCTURE, aggregate.CHECK_PLATEAU, aggregate.CHECK_GAUSSIAN, aggregate.CHECK_CLOSEST):
        assert check in text
    assert "toward:synthetic_structured anchor vs toward:synthetic_baseline k=10: YES" in text
    assert "synthetic_structured anchor vs synthetic_baseline k=10: YES" in text


def test_compare_csv_option(out, tmp_path):
    target = tmp_path / "sub" / "c.csv"
    assert run_compare([str(out), "--csv", str(target)]) == 0
    saved = pd.read_csv(target)
    expected = aggregate.compare_kinds(results.read_rows(out))
    assert len(saved) == len(expected) > 0
    np.testing.assert_allclose(saved.ks_stat, expected.ks_stat)
    np.testing.assert_allclose(saved.diff_ci_high, expected.diff_ci_high)
    assert set(saved.metric) == set(results.COMPARED)


def test_compare_without_real_says_so(tmp_path, capsys):
    write_results(make_job(bases=6, base_kinds=["gaussian", "synthetic_baseline"]), tmp_path)
    assert run_compare([str(tmp_path)]) == 0
    assert "No comparison" in capsys.readouterr().out


def test_compare_on_an_empty_directory_is_a_clear_error(tmp_path):
    with pytest.raises(SynthactError, match="no results"):
        run_compare([str(tmp_path)])
