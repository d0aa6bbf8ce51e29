"""The results module: the schema's one home, its generated column reference, and readers that skip bad files."""

from __future__ import annotations

import argparse
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from synthact import results
from synthact.analysis import report
from synthact.errors import SynthactError
from tests.helpers import make_job, write_results

ROOT = Path(__file__).resolve().parents[1]


def test_docs_results_md_is_the_generated_column_reference():
    assert (ROOT / "docs" / "results.md").read_text().strip() == results.column_reference().strip(), \
        "regenerate it: python -m synthact.results > docs/results.md"


def test_schema_has_every_declared_column_once():
    schema = results.result_schema(js=True, keep_curves=True)
    declared = [*results.IDS, *results.AXES, *results.PROVENANCE, *results.METRICS, *results.JS_METRICS,
                *results.ACTIVATIONS, *results.CURVES]
    assert schema.names == declared
    plain = results.result_schema(js=False, keep_curves=False)
    assert not set(plain.names) & {*results.JS_METRICS, *results.CURVES}


@pytest.fixture
def out(tmp_path):
    write_results(make_job(bases=4, directions=["toward:same"]), tmp_path / "out")
    return tmp_path / "out"


@pytest.mark.parametrize("damage", ["truncate", "stray"])
def test_readers_skip_and_name_unreadable_files(out, damage):
    complete = results.read_table(out).num_rows
    files = sorted((out / "results").rglob("*.parquet"))
    if damage == "truncate":
        bad = files[0]
        lost = pq.read_metadata(bad).num_rows
        data = bad.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    else:
        bad = out / "results" / "notes.txt"
        bad.write_text("not parquet")
        lost = 0
    with pytest.warns(results.UnreadableResultsWarning, match=bad.name):
        table = results.read_table(out)
    assert table.num_rows == complete - lost
    with pytest.warns(results.UnreadableResultsWarning):
        assert len(results.read_rows(out)) == complete - lost


def test_report_html_naming_a_directory_is_a_clear_error(out, tmp_path):
    parser = argparse.ArgumentParser()
    report.add_arguments(parser)
    with pytest.raises(SynthactError, match="is a directory"):
        report.run(parser.parse_args([str(out), "--html", str(tmp_path)]))
