"""The results module: the schema's one home, its generated column reference, and readers that skip bad files."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from synthact import results
from synthact.analysis.cells import Sweep
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
def test_readers_skip_and_name_unreadable_files_in_one_line(out, damage, capsys):
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
    capsys.readouterr()
    assert results.read_table(out).num_rows == complete - lost
    assert sum(cell.read(["max_slope"]).num_rows for cell in results.sweep_cells(out)) == complete - lost
    err = capsys.readouterr().err
    assert err.startswith("synthact: skipped 1 file(s)") and err.count("\n") == 1 and bad.name in err, err


def first_shard(out: Path) -> tuple[Path, Path]:
    """The first shard's file and its manifest record."""
    record = sorted((out / "manifest").glob("*.json"))[0]
    return out / json.loads(record.read_text())["file"], record


@pytest.mark.parametrize("change", ["max_slope_step + 30", "one bit flipped"])
def test_a_shard_changed_under_its_record_is_skipped_whether_or_not_a_cache_exists(out, change, capsys):
    shard, _ = first_shard(out)
    lost = pq.read_metadata(shard).num_rows
    whole = Sweep.open(out).aggregates  # caches every cell
    if change == "max_slope_step + 30":
        table = pq.read_table(shard)
        slopes = pc.add(table["max_slope_step"], 30)
        pq.write_table(table.set_column(table.schema.get_field_index("max_slope_step"), "max_slope_step", slopes),
                       shard)
    else:
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0x10
        shard.write_bytes(bytes(data))
    cached = Sweep.open(out).aggregates
    shutil.rmtree(out / "analysis")
    fresh = Sweep.open(out).aggregates
    pd.testing.assert_frame_equal(cached, fresh)
    assert cached.curves.sum() == whole.curves.sum() - lost
    err = capsys.readouterr().err
    assert shard.name in err and ("does not match the checksum" in err or "bytes, its manifest record says" in err)


@pytest.mark.parametrize("file", ["results/../../precious.txt", "results/../job.json", "another shard's"])
def test_a_record_is_followed_only_to_its_own_file(out, file, capsys):
    (out.parent / "precious.txt").write_text("mine")
    complete = results.read_table(out).num_rows
    shard, record = first_shard(out)
    others = sorted((out / "manifest").glob("*.json"))[1]
    named = json.loads(others.read_text())["file"] if file == "another shard's" else file
    record.write_text(json.dumps(json.loads(record.read_text()) | {"file": named}))
    assert results.read_table(out).num_rows == complete - pq.read_metadata(shard).num_rows
    assert "not followed" in capsys.readouterr().err


def test_a_second_record_naming_an_existing_file_counts_nothing_twice(out, capsys):
    complete = results.read_table(out).num_rows
    _, record = first_shard(out)
    data = json.loads(record.read_text())
    cell = data["cell_id"]
    (out / "manifest" / f"{cell}-00009.json").write_text(json.dumps(data | {"shard_id": f"{cell}-00009"}))
    assert results.read_table(out).num_rows == complete
    assert f"{cell}-00009.json (damaged manifest record" in capsys.readouterr().err


def test_a_shard_written_for_another_job_is_skipped(out, tmp_path, capsys):
    other = tmp_path / "other"
    write_results(make_job(bases=4, directions=["toward:same"], seed=7), other)
    complete = results.read_table(out).num_rows
    shard, record = first_shard(out)
    shutil.copy(other / shard.relative_to(out), shard)
    shutil.copy(other / record.relative_to(out), record)
    assert results.read_table(out).num_rows == complete - pq.read_metadata(shard).num_rows
    assert "written by another job spec" in capsys.readouterr().err


def test_a_shard_holding_another_shards_rows_is_skipped(out, capsys):
    complete = results.read_table(out).num_rows
    shard, record = first_shard(out)
    second = sorted((out / "manifest").glob("*.json"))[1]
    copy = out / json.loads(second.read_text())["file"]
    shutil.copy(shard, copy)  # shard 0's rows at shard 1's place, recorded as shard 1's
    data = copy.read_bytes()
    second.write_text(json.dumps(json.loads(second.read_text()) | {"size": len(data),
                                                                   "sha256": hashlib.sha256(data).hexdigest()}))
    assert results.read_table(out).num_rows == complete - pq.read_metadata(copy).num_rows
    assert "holds rows of shard_id" in capsys.readouterr().err


def test_results_without_a_job_json_are_refused(out):
    (out / "job.json").unlink()
    with pytest.raises(SynthactError, match="no job.json"):
        results.read_table(out)


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


def test_cell_key_is_the_checked_bytes_not_the_record(out):
    """A legacy record (no sha256): the key still changes when the shard's bytes do."""
    (cell, *_) = results.sweep_cells(out)
    record = out / "manifest" / f"{cell.records[0].shard_id}.json"
    record.write_text(json.dumps({k: v for k, v in json.loads(record.read_text()).items() if k not in ("size", "sha256")}))
    before = results.sweep_cells(out)[0].key
    shard = out / cell.records[0].file
    table = pq.read_table(shard)
    pq.write_table(table.set_column(table.schema.get_field_index("max_slope"), "max_slope",
                                    pc.add(table["max_slope"], 1.0)), shard)
    assert results.sweep_cells(out)[0].key != before


def test_report_html_naming_a_directory_is_a_clear_error(out, tmp_path):
    with pytest.raises(SynthactError, match="is a directory"):
        command("report", str(out), "--html", str(tmp_path))
