"""The results module: the schema's one home, its generated column reference, and readers that skip bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from synthact import results
from synthact.errors import SynthactError
from tests.helpers import command, make_job, write_results

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
        assert sum(cell.read(["max_slope"]).num_rows for cell in results.sweep_cells(out)) == complete - lost


def test_cell_rows_read_only_the_columns_asked_and_axes_once(out):
    cells = results.sweep_cells(out)
    cell = cells[0]
    table = cell.read(["read_layer", "max_slope", "no_such_column"])
    assert table.column_names == ["read_layer", "max_slope"] and table.num_rows == cell.num_rows > 0
    whole = results.read_table(out, cell_id=cell.cell_id).to_pandas()
    for axis, value in cell.axes().items():
        assert set(whole[axis].map(lambda v: results.axis_value(axis, v))) == {value}, axis
    assert sum(c.num_rows for c in cells) == results.read_table(out).num_rows


def test_cell_key_changes_when_a_shard_is_rewritten(out):
    (cell, *_) = results.sweep_cells(out)
    record = out / "manifest" / f"{cell.records[0].shard_id}.json"
    data = json.loads(record.read_text())
    record.write_text(json.dumps(data | {"finished": data["finished"] + 1}))
    assert results.sweep_cells(out)[0].key != cell.key


def test_report_html_naming_a_directory_is_a_clear_error(out, tmp_path):
    with pytest.raises(SynthactError, match="is a directory"):
        command("report", str(out), "--html", str(tmp_path))
