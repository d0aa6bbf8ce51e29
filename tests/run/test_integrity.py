"""The integrity rule end to end (issue 23): records name only their own place and nothing outside results/ is
deleted; readable damage to statistics and the toy cache is named and healed; shards and job.json are checked
against the job; one run at a time; S3 locations with a query string, and storage that does not answer.

Runs go through `synthact.cli.main` in this process (a traceback would fail the test) on the toy model, with real
Parquet files, a real local S3 server (moto) and real sockets that refuse or never answer.
"""

import json
import os
import socket
import struct
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from synthact.cli import main
from synthact.results import read_table
from synthact.run.store import Store
from synthact.spec import load_job, parse_job
from tests.helpers import rows, toy_job, write_job

TINY_TOY = {"model": {"toy": {"n_layers": 3, "d_model": 16, "n_heads": 2, "d_mlp": 32, "d_vocab": 64, "n_ctx": 16,
                              "train_steps": 2}},
            "sae": {"toy": {"d_sae": 16, "training_tokens": 2048}}, "corpus": {"toy": {"n_docs": 64, "doc_len": 16}}}


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def clean_error(capsys, *args) -> str:
    code, _, err = cli(capsys, *args)
    assert code == 2 and "Traceback" not in err and err.startswith("synthact: error:"), err
    return err


def sorted_rows(out) -> pa.Table:
    table = read_table(out)
    return table.select([c for c in table.column_names if c != "cell"]).sort_by([("shard_id", "ascending"),
                                                                                 ("base_index", "ascending")])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished sweep whose kinds read the statistics' `chol` (gaussian) and `freq` (synthetic_baseline):
    (job file, output directory, its rows)."""
    tmp = tmp_path_factory.mktemp("finished")
    job = write_job(tmp / "job.yaml", base_kinds=["real", "gaussian", "synthetic_baseline"], bases_per_cell=2,
                    shard_size=1)
    out = tmp / "out"
    assert main(["run", str(job), "--out", str(out), "--no-progress"]) == 0
    return job, out, sorted_rows(out)


def copy_of(finished, tmp_path) -> tuple[Path, Path]:
    job, out, _ = finished
    subprocess.run(["cp", "-a", str(out), str(tmp_path / "out")], check=True)
    return job, tmp_path / "out"


def records(out: Path) -> list[Path]:
    return sorted((out / "manifest").glob("*.json"))


def overwrite_tensor(path: Path, name: str, value: float) -> None:
    """Write finite float64 `value`s over 64 bytes in the middle of tensor `name` of a safetensors file."""
    data = bytearray(path.read_bytes())
    (size,) = struct.unpack("<Q", data[:8])
    start, end = json.loads(data[8:8 + size])[name]["data_offsets"]
    at = 8 + size + (start + end) // 2 // 8 * 8
    data[at:at + 64] = np.full(8, value, np.float64).tobytes()
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------------- records name only their own place


@pytest.mark.parametrize("file", ["results/../../precious.txt", "results/../job.json"])
def test_a_record_naming_a_file_outside_results_is_neither_read_nor_deleted(finished, tmp_path, capsys, file):
    job, out = copy_of(finished, tmp_path)
    precious = tmp_path / "precious.txt"
    precious.write_text("mine")
    claim = (out / "job.json").read_text()
    record = records(out)[0]
    record.write_text(json.dumps(json.loads(record.read_text()) | {"file": file}))
    code, text, _ = cli(capsys, "verify", out)
    assert code == 1 and f"bad shard {record.stem}: damaged manifest record" in text and "not followed" in text, text
    code, _, err = cli(capsys, "run", job, "--out", out, "--no-progress")
    assert code == 0 and "failed verification and were redone" in err, err
    assert precious.read_text() == "mine" and (out / "job.json").read_text() == claim
    assert sorted_rows(out).equals(finished[2])
    assert cli(capsys, "verify", out)[0] == 0


def test_a_second_record_naming_an_existing_file_is_a_conflict_counted_once(finished, tmp_path, capsys):
    job, out = copy_of(finished, tmp_path)
    first, *_, last = records(out)
    (out / json.loads(last.read_text())["file"]).unlink()
    last.write_text(json.dumps(json.loads(first.read_text()) | {"shard_id": last.stem}))  # names first's file
    code, text, _ = cli(capsys, "compare", out)
    assert code == 0 and text.startswith("NOTE: this sweep is incomplete: 5 of 6 shards done"), text
    assert read_table(out).num_rows == finished[2].num_rows - 1
    code, text, _ = cli(capsys, "verify", out)
    assert code == 1 and f"bad shard {last.stem}: damaged manifest record" in text, text


# ---------------------------------------------------------------------- records and rows belong to the job


def test_a_shard_and_record_copied_from_another_sweep_fail_verify_and_stop_a_resume(finished, tmp_path, capsys):
    job, out = copy_of(finished, tmp_path)
    other = parse_job(load_job(job).canonical() | {"seed": 7})
    store = Store(tmp_path / "other", other)
    shard = next(s for s in other.shards() if s.shard_id == records(out)[0].stem)
    store.write_shard(shard, rows(shard))
    for name in (f"manifest/{shard.shard_id}.json", json.loads(records(out)[0].read_text())["file"]):
        (out / name).write_bytes((tmp_path / "other" / name).read_bytes())
    code, text, _ = cli(capsys, "verify", out)
    assert code == 1 and "written by another job spec" in text, text
    summary = text.splitlines()[-1]  # a rerun would refuse, so it does not say a rerun redoes them
    assert "1 bad" in summary and "1 were written by another job spec: a rerun refuses" in summary, summary
    assert "rerun the same `synthact run` to redo" not in summary
    err = clean_error(capsys, "run", job, "--out", out, "--no-progress")
    assert "seed (7 in the shards, 0 in job.json)" in err and err.count("\n") == 1, err
    assert (out / json.loads(records(out)[0].read_text())["file"]).read_bytes() == \
        (tmp_path / "other" / json.loads(records(out)[0].read_text())["file"]).read_bytes()  # nothing deleted


def test_a_job_json_copied_from_a_sweep_with_another_seed_is_not_resumed_over(finished, tmp_path, capsys):
    job, out = copy_of(finished, tmp_path)
    reseeded = write_job(tmp_path / "seed7.yaml", **(load_job(job).canonical() | {"seed": 7}))
    (out / "job.json").write_text(json.dumps(json.loads((out / "job.json").read_text())
                                             | {"spec": load_job(reseeded).canonical(),
                                                "spec_hash": load_job(reseeded).spec_hash}))
    records(out)[0].unlink()  # a shard to do: a resume would write seed-7 rows beside seed-0 ones
    err = clean_error(capsys, "run", reseeded, "--out", out, "--no-progress")
    assert "written by another job spec than the one its job.json records" in err and "seed (0 in the shards, 7 in " \
        "job.json)" in err, err
    assert len(records(out)) == 5


def test_the_changed_spec_refusal_names_the_fields_that_differ(finished, tmp_path, capsys):
    job, out = copy_of(finished, tmp_path)
    changed = write_job(tmp_path / "changed.yaml", **(load_job(job).canonical() | {"seed": 3, "n_ctx": 8}))
    err = clean_error(capsys, "run", changed, "--out", out, "--no-progress")
    assert "already holds results of another job spec" in err and "n_ctx (10 there, 8 in this spec)" in err \
        and "seed (0 there, 3 in this spec)" in err, err


# ---------------------------------------------------------------------- statistics and the toy cache


@pytest.mark.parametrize("tensor", ["chol", "freq"])
def test_readable_damage_to_statistics_is_named_by_verify_deep_and_healed_never_mixed(finished, tmp_path, capsys,
                                                                                       tensor):
    job, out = copy_of(finished, tmp_path)
    [stats] = (out / "stats").iterdir()
    overwrite_tensor(stats / "tensors.safetensors", tensor, 0.5)
    assert cli(capsys, "verify", out)[0] == 0  # only --deep reads statistics
    code, text, _ = cli(capsys, "verify", out, "--deep")
    assert code == 1 and f"damaged reference statistics {stats}" in text and "checksum" in text, text
    for record in records(out):  # every shard redone with the statistics the rerun finds
        (out / json.loads(record.read_text())["file"]).unlink()
    code, _, err = cli(capsys, "run", job, "--out", out, "--no-progress")
    assert code == 0 and "recomputed" in err, err
    assert sorted_rows(out).equals(finished[2])
    assert cli(capsys, "verify", out, "--deep")[0] == 0


def test_statistics_saved_before_records_existed_are_recomputed_with_a_note(finished, tmp_path, capsys):
    job, out = copy_of(finished, tmp_path)
    [stats] = (out / "stats").iterdir()
    (stats / "record.json").unlink()
    code, text, _ = cli(capsys, "verify", out, "--deep")
    assert code == 1 and "no record.json" in text, text
    records(out)[0].unlink()
    code, _, err = cli(capsys, "run", job, "--out", out, "--no-progress")
    assert code == 0 and "no record.json" in err and "recomputed" in err, err
    assert sorted_rows(out).equals(finished[2]) and (stats / "record.json").is_file()


def test_a_toy_model_with_64_bytes_overwritten_is_named_by_verify_deep_and_rebuilt(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SYNTHACT_CACHE", str(tmp_path / "cache"))
    job = write_job(tmp_path / "job.yaml", **TINY_TOY, base_kinds=["real", "gaussian"], n_ctx=8, bases_per_cell=2,
                    shard_size=1, reference={"n_prompts": 64})
    out = tmp_path / "out"
    assert cli(capsys, "run", job, "--out", out, "--no-progress")[0] == 0
    expected = sorted_rows(out)
    [weights] = (tmp_path / "cache" / "models").glob("*/model.safetensors")
    overwrite_tensor(weights, "blocks.1.mlp.W_in", 0.25)
    assert cli(capsys, "verify", out)[0] == 0
    code, text, _ = cli(capsys, "verify", out, "--deep")
    assert code == 1 and f"damaged toy cache {weights.parent}" in text and "model.safetensors" in text, text
    for record in records(out):
        (out / json.loads(record.read_text())["file"]).unlink()
    code, _, err = cli(capsys, "run", job, "--out", out, "--no-progress")
    assert code == 0 and "is damaged" in err and "rebuilding it" in err, err
    assert sorted_rows(out).equals(expected)
    assert cli(capsys, "verify", out, "--deep")[0] == 0


# ---------------------------------------------------------------------- one run at a time


def test_a_second_run_into_a_held_directory_refuses_naming_the_holder(finished, tmp_path, capsys):
    job, out = copy_of(finished, tmp_path)
    with Store(out, load_job(job)).locked():
        err = clean_error(capsys, "run", job, "--out", out, "--no-progress")
    assert "is in use by another `synthact run`" in err and f"pid {os.getpid()} on host {socket.gethostname()}" in err
    assert not (out / ".lock").exists()
    assert cli(capsys, "run", job, "--out", out, "--no-progress")[0] == 0


def test_a_lock_left_by_a_run_that_died_is_taken_over_with_a_note(finished, tmp_path, capsys):
    job, out = copy_of(finished, tmp_path)
    (out / ".lock").write_text(json.dumps({"pid": 2**22 + 17, "host": socket.gethostname(), "started": 0}))
    code, _, err = cli(capsys, "run", job, "--out", out, "--no-progress")
    assert code == 0 and "no longer running" in err and f"pid {2**22 + 17}" in err, err
    assert not (out / ".lock").exists()


# ---------------------------------------------------------------------- object stores


@pytest.fixture
def s3(monkeypatch):
    """A local S3 server (moto) with bucket `bkt`: its `host:port`.

    moto 5.2 names the root element of its CompleteMultipartUpload answer `...Response` where S3 says `...Result`,
    and the AWS SDK under pyarrow then takes every upload for failed; the answer is renamed as S3 would send it."""
    from moto.s3.responses import S3Response
    from moto.server import ThreadedMotoServer

    for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                        "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(name, value)
    post = S3Response._key_response_post

    def as_s3_answers(self, *args, **kwargs):
        status, headers, body = post(self, *args, **kwargs)
        if isinstance(body, str):
            body = body.replace("CompleteMultipartUploadResponse", "CompleteMultipartUploadResult")
        return status, headers, body

    monkeypatch.setattr(S3Response, "_key_response_post", as_s3_answers)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    pafs.S3FileSystem(endpoint_override=f"{host}:{port}", scheme="http", region="us-east-1",
                      allow_bucket_creation=True).create_dir("bkt")
    yield f"{host}:{port}"
    server.stop()


def test_an_s3_out_with_an_endpoint_in_its_query_string_runs_and_matches_local(s3, tmp_path, capsys):
    job = write_job(tmp_path / "job.yaml")
    uri = f"s3://bkt/x?endpoint_override={s3}&scheme=http&region=us-east-1"
    code, _, err = cli(capsys, "run", job, "--out", uri, "--no-progress")
    assert code == 0, err
    assert cli(capsys, "run", job, "--out", tmp_path / "local", "--no-progress")[0] == 0
    assert sorted_rows(uri).equals(sorted_rows(tmp_path / "local"))
    fs = pafs.S3FileSystem(endpoint_override=s3, scheme="http", region="us-east-1")
    stats = fs.get_file_info(pafs.FileSelector("bkt/x/stats"))
    assert [i.base_name for i in stats] == [p.name for p in (tmp_path / "local" / "stats").iterdir()]
    code, text, _ = cli(capsys, "verify", uri, "--deep")
    assert code == 0, text
    assert cli(capsys, "compare", uri)[0] == 0


@pytest.mark.parametrize("endpoint", ["refuses", "never answers"])
def test_compare_on_storage_that_cannot_be_reached_is_one_paragraph(capsys, endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    if endpoint == "refuses":
        listener.close()
    else:
        listener.listen(0)  # connections queue, nothing ever answers
    try:
        err = clean_error(capsys, "compare", f"s3://bkt/x?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1")
    finally:
        listener.close()
    assert "could not reach the storage of 's3://bkt/x" in err and "holds no results" not in err, err
    assert err.count("\n") == 1
    if endpoint == "never answers":
        assert "no answer within" in err, err


def test_a_store_on_s3_with_a_query_string_writes_below_the_path(s3):
    job = parse_job(toy_job())
    store = Store(f"s3://bkt/y?endpoint_override={s3}&scheme=http&region=us-east-1", job)
    assert store.stats_root == f"s3://bkt/y/stats?endpoint_override={s3}&scheme=http&region=us-east-1"
    shard = job.shards()[0]
    store.write_shard(shard, rows(shard))
    assert store.done() == {shard.shard_id}
