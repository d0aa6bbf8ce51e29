"""The output directory: atomic shard files, manifest, refusing another spec's directory, a full disk."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synthact.errors import SynthactError
from synthact.results import read_table
from synthact.run.store import Store
from synthact.spec import parse_job
from tests.helpers import rows, toy_job


def test_write_read_and_manifest(tmp_path):
    job = parse_job(toy_job())
    store = Store(tmp_path / "out", job)
    shards = job.shards()
    store.write_shard(shards[0], rows(shards[0]))
    store.write_shard(shards[1], rows(shards[1], 2))
    assert store.done() == {shards[0].shard_id, shards[1].shard_id}
    assert read_table(tmp_path / "out").num_rows == 5
    assert shards[0].cell == shards[1].cell
    assert store.read_table(shards[0].cell.cell_id).num_rows == 5
    # readable by pandas as a hive-partitioned dataset, with the spec in the file metadata
    df = pd.read_parquet(tmp_path / "out" / "results")
    assert len(df) == 5 and set(df["cell"].astype(str)) == {shards[0].cell.cell_id}
    meta = pq.read_metadata(store.shard_file(shards[0])).metadata
    assert b"synthact.job" in meta and b"synthact.versions" in meta


def test_manifest_record_holds_the_files_size_and_sha256(tmp_path):
    import hashlib

    from synthact.manifest import read_manifest

    job = parse_job(toy_job())
    store = Store(tmp_path / "out", job)
    shard = job.shards()[0]
    store.write_shard(shard, rows(shard))
    [record] = read_manifest(store.fs, store.root).records.values()
    data = open(store.shard_file(shard), "rb").read()
    assert (record.size, record.sha256) == (len(data), hashlib.sha256(data).hexdigest())


def test_same_spec_resumes_other_spec_is_refused(tmp_path):
    job = parse_job(toy_job())
    store = Store(tmp_path, job)
    store.write_shard(job.shards()[0], rows(job.shards()[0]))
    assert Store(tmp_path, parse_job(toy_job())).done() == {job.shards()[0].shard_id}
    with pytest.raises(SynthactError, match="already holds results of another job spec"):
        Store(tmp_path, parse_job(toy_job(seed=7)))


def test_foreign_directory_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SynthactError, match="not made by synthact"):
        Store(tmp_path, parse_job(toy_job()))


def test_leftover_temporaries_are_invisible_and_cleaned(tmp_path):
    job = parse_job(toy_job())
    store = Store(tmp_path, job)
    shard = job.shards()[0]
    store.write_shard(shard, rows(shard))
    partial = tmp_path / "results" / f"cell={shard.cell.cell_id}" / ".tmp-deadbeef-x.parquet"
    partial.write_bytes(b"PAR1 half a file")
    assert read_table(tmp_path).num_rows == 3  # readers skip hidden files
    assert store.clean_temporaries() == 1 and not partial.exists()


def test_shard_without_manifest_record_is_not_done(tmp_path):
    job = parse_job(toy_job())
    store = Store(tmp_path, job)
    shard = job.shards()[0]
    store.write_shard(shard, rows(shard))
    (tmp_path / "manifest" / f"{shard.shard_id}.json").unlink()  # killed between the two renames
    assert shard.shard_id not in store.done()
    store.write_shard(shard, rows(shard))  # the rerun overwrites, no duplicate rows
    assert read_table(tmp_path).num_rows == 3


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 256 KiB file system (tmpfs; the tests run as root, as CI does)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True, text=True)
    assert done.returncode == 0, f"cannot mount a tmpfs for the disk-full test: {done.stderr}"
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_full_disk_is_a_clear_error_and_keeps_what_was_written(tiny_disk):
    job = parse_job(toy_job(bases_per_cell=400, shard_size=1))
    store = Store(tiny_disk / "out", job)
    written = []
    with pytest.raises(SynthactError, match="disk under .* is full while writing shard") as error:
        for shard in job.shards():
            big = pa.table({"cell_id": [shard.cell.cell_id] * 2000, "shard_id": [shard.shard_id] * 2000,
                            "x": np.random.default_rng(len(written)).random(2000)})
            store.write_shard(shard, big)
            written.append(shard.shard_id)
    assert "rerun the same command to resume" in str(error.value)
    assert 0 < len(written) < len(job.shards())
    assert store.done() == set(written)
    assert read_table(tiny_disk / "out").num_rows == 2000 * len(written)  # every finished file is whole
    assert not [p for p in (tiny_disk / "out").rglob(".tmp-*")]


def test_resume_deletes_only_the_jobs_own_files_never_what_a_record_names(tmp_path):
    from synthact.run.plan import Plan

    job = parse_job(toy_job())
    store = Store(tmp_path / "out", job)
    first, second = job.shards()[:2]
    store.write_shard(first, rows(first))
    store.write_shard(second, rows(second))
    precious = tmp_path / "precious.txt"
    precious.write_text("mine")
    record = tmp_path / "out" / "manifest" / f"{first.shard_id}.json"
    record.write_text(json.dumps(json.loads(record.read_text()) | {"file": "results/../../precious.txt"}))
    plan = Plan(job, store)
    assert precious.read_text() == "mine" and (tmp_path / "out" / "job.json").is_file()
    assert [s.shard_id for s in plan.pending if s.shard_id in (first.shard_id, second.shard_id)] == [first.shard_id]
    assert not record.exists() and not Path(store.shard_file(first)).exists()  # its own record and file: redone


def test_a_record_outside_the_jobs_grid_is_named_never_read_and_left_alone(tmp_path):
    from synthact.run.plan import Plan

    job, other = parse_job(toy_job()), parse_job(toy_job(base_kinds=["gaussian"]))
    store = Store(tmp_path / "out", job)
    store.write_shard(job.shards()[0], rows(job.shards()[0]))
    foreign = other.shards()[0]
    Store(tmp_path / "other", other).write_shard(foreign, rows(foreign))
    for name in (f"manifest/{foreign.shard_id}.json", f"results/cell={foreign.cell.cell_id}/{foreign.shard_id}.parquet"):
        (tmp_path / "out" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "out" / name).write_bytes((tmp_path / "other" / name).read_bytes())
    found = store.verify()
    assert [shard for shard, _ in found.bad] == [foreign.shard_id] and "not a shard of this job's grid" in found.bad[0][1]
    Plan(job, store)
    assert (tmp_path / "out" / f"manifest/{foreign.shard_id}.json").is_file()
    assert read_table(tmp_path / "out")["shard_id"].unique().to_pylist() == [job.shards()[0].shard_id]
    summary = subprocess.run([sys.executable, "-m", "synthact.cli", "verify", str(tmp_path / "out")], capture_output=True,
                             text=True).stdout.splitlines()[-1]  # a rerun leaves it, so verify does not say it redoes it
    assert "1 name no shard of this job: never read, a rerun leaves them" in summary and "to redo" not in summary
