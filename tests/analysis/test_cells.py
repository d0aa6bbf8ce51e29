"""The per-cell aggregate cache: written beside the results, read on a rerun, never stale, and the same rows
with the aggregation run as Ray tasks."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow.parquet as pq
import pytest

from synthact import results
from synthact.analysis import aggregate
from synthact.analysis.cells import Cache, Sweep
from synthact.run.store import Store
from tests.helpers import make_job, shard_rows, synthact, write_results


@pytest.fixture
def out(tmp_path):
    job = make_job(bases=8, directions=["toward:same", "toward:real"])
    write_results(job, tmp_path / "out")
    return job, tmp_path / "out"


def cache_files(out):
    return {p.name: p.stat().st_mtime_ns for p in (out / "analysis" / "metrics").glob("cell=*.parquet")}


def test_a_rerun_reads_the_cached_parts_and_never_a_doctored_one(out):
    job, out = out
    first = aggregate.compare_kinds(Sweep.open(out))
    assert len(cache_files(out)) == len(job.cells())
    before = cache_files(out)
    pd.testing.assert_frame_equal(aggregate.compare_kinds(Sweep.open(out)), first)
    assert cache_files(out) == before  # read, not written again
    # Doctor one cached part (its key and record intact): the rerun finds its bytes are not the recorded ones.
    cell = results.sweep_cells(out)[0]
    path = out / "analysis" / "metrics" / f"cell={cell.cell_id}.parquet"
    table = pq.read_table(path)
    doctored = table.set_column(table.schema.get_field_index("curves"), "curves",
                                [[c + 1000 for c in table.column("curves").to_pylist()]])
    pq.write_table(doctored, path)
    again = Sweep.open(out)
    assert again.aggregates.set_index(["cell_id", "read_layer"]).loc[cell.cell_id].curves.max() < 1000
    pd.testing.assert_frame_equal(aggregate.compare_kinds(again), first)
    assert {n for n in cache_files(out) if cache_files(out)[n] != before[n]} == {path.name}  # recomputed, recached


def test_a_changed_shard_recomputes_its_cell_only(out):
    job, out = out
    Sweep.open(out)
    before = cache_files(out)
    shard = job.shards()[0]
    table = shard_rows(job, shard, seed=7)  # other rows for the same shard, as a redone shard would have
    Store(out, job).write_shard(shard, table)
    sweep = Sweep.open(out)
    after = cache_files(out)
    changed = {name for name in after if after[name] != before[name]}
    assert changed == {f"cell={shard.cell.cell_id}.parquet"}
    rows = results.read_table(out, ["read_layer", "max_slope"], cell_id=shard.cell.cell_id).to_pandas()
    got = sweep.aggregates[sweep.aggregates.cell_id == shard.cell.cell_id].set_index("read_layer").max_slope_mean
    want = rows.groupby("read_layer").max_slope.mean()
    pd.testing.assert_series_equal(got.astype(float), want, check_names=False, check_index_type=False)


def test_a_cached_part_is_keyed_by_the_rows_it_came_from(out):
    _, out = out
    cell = results.sweep_cells(out)[0]
    Sweep.open(out)
    cache = Cache(cell, seed=0)
    assert cache.load("metrics", cell) is not None
    assert Cache(cell, seed=1).load("metrics", cell) is None  # another seed: other intervals
    fewer = results.CellRows(cell.fs, cell.root, cell.cell_id, cell.records[:-1], cell.digests[:-1], cell.spec_hash)
    assert cache.load("metrics", fewer) is None


@pytest.mark.parametrize("rows", [None, [1, 2], "rows", []], ids=["null", "ints", "string", "empty"])
def test_a_damaged_panel_cache_is_recomputed_never_trusted(out, rows):
    _, out = out
    first = synthact("compare", str(out))
    panels = [p for p in (out / "analysis" / "panels").glob("*.json") if not p.name.endswith(".record.json")]
    assert first.returncode == 0 and panels
    for panel in panels:
        panel.write_text(json.dumps(json.loads(panel.read_text()) | {"rows": rows}))
    again = synthact("compare", str(out))
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr
    assert again.stdout == first.stdout


def test_ray_tasks_give_the_same_comparison(out, capsys):
    import ray

    _, out = out
    local = aggregate.compare_kinds(Sweep.open(out))
    (out / "analysis").rename(out / "analysis-local")
    try:
        remote = aggregate.compare_kinds(Sweep.open(out, ray="local"))
    finally:
        assert not ray.is_initialized()
    assert "synthact: Ray dashboard at http://" in capsys.readouterr().err  # the instance it started has one
    assert len(cache_files(out)) == len(results.sweep_cells(out))  # the tasks wrote the cache
    pd.testing.assert_frame_equal(remote, local)
