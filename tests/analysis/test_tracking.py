"""The W&B tracker, run offline for real and read back from its files."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyarrow.fs import LocalFileSystem

from synthact import results
from synthact.analysis import aggregate, compare, figures, tracking
from synthact.analysis.cells import Sweep
from synthact.analysis.tracking import Tracker, TrackingWarning
from synthact.analysis.wandb_files import read_offline_run
from synthact.analysis.wandb_run import RUN_ID_FILE
from synthact.errors import SynthactError
from synthact.manifest import read_manifest
from synthact.run.store import Store
from synthact.spec import load_job
from tests.analysis.test_aggregate import rows_of
from tests.helpers import finite, make_job, synthact, write_job, write_results

ROOT = Path(__file__).resolve().parents[2]
FAKE_KEY = "local-0123456789abcdef0123456789abcdef01234567"
GRID = {"cells": 8, "shards": 16, "curves": 640}


def run_dirs(out: Path) -> list[Path]:
    return sorted((out / "wandb").glob("offline-run-*"))


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """A whole sweep's worth of cells logged live, then finished, with an API key set but offline."""
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_API_KEY", FAKE_KEY)
    mp.setenv("WANDB_MODE", "offline")
    job = make_job(wandb={"project": "synthact-tests", "group": "g1", "tags": ["t1"]})
    out = tmp_path_factory.mktemp("tracked")
    Store(out, job)._claim()  # job.json, as `synthact run` writes it before its first shard
    write_results(job, out)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrackingWarning)
        tracker = Tracker(job, out, GRID)
        for cell in results.sweep_cells(out):
            tracker.cell_finished(cell)
        tracker.finish({"cells": 8, "curves": 640, "wall_s": 1.5, "nested": {"shards_done": 16}}, out)
    mp.undo()
    (run_dir,) = run_dirs(out)
    return job, out, run_dir, read_offline_run(run_dir), rows_of(out)


def same(a, b) -> bool:
    """Equal, treating None and NaN as the same missing value and floats approximately."""
    missing = [x is None or (isinstance(x, float) and math.isnan(x)) for x in (a, b)]
    if any(missing):
        return all(missing)
    if isinstance(a, float) or isinstance(b, float):
        return a == pytest.approx(b, rel=1e-9, abs=1e-12)
    return a == b


def test_config_is_the_job_spec_and_grid(tracked):
    job, _, _, run, _ = tracked
    assert run["finished"]
    assert run["config"]["job"] == job.canonical()
    assert run["config"]["grid"] == GRID


def test_cells_table_equals_parquet_aggregates(tracked):
    job, _, _, run, rows = tracked
    logged = run["tables"]["cells"]
    assert list(logged.columns) == tracking.CELL_COLUMNS
    assert len(logged) == len(job.cells()) * 2
    for _, got in logged.iterrows():
        mine = rows[(rows.cell_id == got.cell_id) & (rows.read_layer == got.read_layer)]
        cell = next(c for c in job.cells() if c.cell_id == got.cell_id)
        for axis, value in cell.settings().items():
            assert same(got[axis], value), axis
        assert got["curves"] == len(mine)
        for metric in results.AGGREGATED:
            x = finite(mine[metric])
            assert got[f"{metric}_count"] == x.size
            assert same(got[f"{metric}_mean"], float(x.mean()))
            assert same(got[f"{metric}_median"], float(np.median(x)))
            assert same(got[f"{metric}_q95"], float(np.quantile(x, 0.95)))
            assert got[f"{metric}_mean_lo"] <= x.mean() <= got[f"{metric}_mean_hi"]


def test_live_table_has_every_cell_once(tracked):
    job, _, _, run, _ = tracked
    live, final = run["tables"]["cells_live"], run["tables"]["cells"]
    key = ["cell_id", "read_layer"]
    pd.testing.assert_frame_equal(live.sort_values(key).reset_index(drop=True),
                                  final.sort_values(key).reset_index(drop=True))
    progress = [h["progress/cells_done"] for h in run["history"] if "progress/cells_done" in h]
    assert progress == list(range(1, len(job.cells()) + 1))


def test_comparison_and_verdicts_are_logged(tracked):
    _, out, _, run, _ = tracked
    expected = aggregate.compare_kinds(Sweep.open(out))
    logged = run["tables"]["comparison"]
    assert len(logged) == len(expected)
    for column in ("ks_stat", "ks_pvalue", "wasserstein", "mean_diff", "mean_diff_lo", "mean_diff_hi", "mean_diff_p",
                   "ks_perm_p"):
        np.testing.assert_allclose(logged[column].astype(float), expected[column], rtol=1e-9)
    assert set(run["tables"]["verdicts"].verdict) >= {"YES"}


def test_differences_between_rungs_and_diagnostics_are_logged(tracked):
    _, out, _, run, _ = tracked
    analysis = compare.analyse(Sweep.open(out))
    logged = run["tables"]["differences"]
    assert list(logged.columns) == list(analysis.differences.columns) and len(logged) == len(analysis.differences) > 0
    for column in ("ks_diff", "ks_diff_lo", "ks_diff_hi", "ks_diff_p_holm", "mean_diff_p"):
        np.testing.assert_allclose(logged[column].astype(float), analysis.differences[column], rtol=1e-9)
    assert logged.verdict.tolist() == analysis.differences.verdict.tolist()
    diagnostics = run["tables"]["diagnostics"]
    assert len(diagnostics) == len(analysis.diagnostics) > 0
    assert diagnostics["PMI"].tolist() == analysis.diagnostics["PMI"].tolist()


def test_summary_metrics(tracked):
    _, _, _, run, rows = tracked
    s = run["summary"]
    assert s["sweep/cells"] == 8 and s["sweep/curves"] == 640 and s["sweep/wall_s"] == 1.5
    assert s["sweep/nested/shards_done"] == 16
    assert s["total/curves"] == len(rows) and s["total/cells"] == rows.cell_id.nunique()
    for kind, group in rows.groupby("base_kind"):
        assert s[f"kind/{kind}/max_slope_mean"] == pytest.approx(group.max_slope.mean())
    for kind, group in rows.groupby("target_kind"):
        assert s[f"target/{kind}/plateau_len_mean"] == pytest.approx(group.plateau_len.mean())
    assert s["replication/yes"] > 0 and s["replication/no"] == 0


def test_plots_are_native_line_series_per_panel(tracked):
    _, out, run_dir, run, _ = tracked
    sweep = Sweep.open(out)
    panels = list(figures.figure_panels(sweep.aggregates))
    last = {}
    for step in run["history"]:
        last |= {k: v for k, v in step.items() if isinstance(v, dict) and "_type" in v}
    curves = [k for k in last if k.startswith("curves/") and k.endswith("_table")]
    assert len(curves) == len(panels)
    assert sum(k.startswith("distributions/") and k.endswith("_table") for k in last) == len(panels) * len(
        figures.DISTRIBUTED)
    heatmaps = {name for name, _, _ in figures.comparison_figures(compare.analyse(sweep).comparison)}
    assert {k.removeprefix("comparison_ks/") for k in last if k.startswith("comparison_ks/")} == heatmaps
    assert all(last[f"comparison_ks/{name}"]["_type"] == "image-file" for name in heatmaps)
    # A panel's mean-curve plot holds each kind's mean curve, as the cached bands have it.
    axis, panel, group, _, slug = panels[0]
    logged = run["tables"][f"curves/{slug}_table"]
    bands = sweep.bands(group.cell_id)
    bands = bands[bands.read_layer == panel["read_layer"]].set_index("cell_id")
    reals, others = figures.ordered(group, axis)
    for cell in reals + others:
        label = "real" if cell in reals else aggregate.variant_label(cell, axis)
        mine = logged[logged.lineKey == label].sort_values("step")
        np.testing.assert_allclose(mine.lineVal.astype(float), bands.loc[cell["cell_id"], "mean"], rtol=1e-6)


def test_api_key_never_lands_in_run_files_or_results(tracked):
    _, out, _, _, _ = tracked
    for path in out.rglob("*"):
        if path.is_file():
            assert FAKE_KEY.encode() not in path.read_bytes(), path


def test_no_api_key_means_offline_under_out(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert not tracking.has_api_key()
    job = make_job(bases=4)
    Tracker(job, tmp_path / "out", GRID).finish({}, tmp_path / "out")
    assert len(run_dirs(tmp_path / "out")) == 1


def test_netrc_entry_counts_as_a_key(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    netrc_file = tmp_path / "netrc"
    netrc_file.write_text(f"machine api.wandb.ai\n  login user\n  password {FAKE_KEY}\n")
    netrc_file.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc_file))
    assert tracking.has_api_key()


def test_disabled_tracker_writes_nothing(tmp_path):
    job = make_job(bases=4)
    write_results(job, tmp_path)
    for tracker in (Tracker(job, tmp_path, GRID, enabled=False), Tracker(make_job(bases=4, wandb=False), tmp_path, GRID)):
        tracker.cell_finished(results.sweep_cells(tmp_path)[0])
        tracker.finish({}, tmp_path)
    assert not (tmp_path / "wandb").exists()


UNREACHABLE = """
import json
import warnings
from pathlib import Path
from synthact.analysis.tracking import Tracker, TrackingWarning
from synthact.results import sweep_cells
from synthact.spec import parse_job

out = Path({out!r})
job = parse_job(json.loads(Path({spec!r}).read_text()))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    tracker = Tracker(job, out, {{"cells": 8}})
    for cell in sweep_cells(out):
        tracker.cell_finished(cell)
    tracker.finish({{}}, out)
tracking = [w for w in caught if issubclass(w.category, TrackingWarning)]
print("TRACKING_WARNINGS", len(tracking))
print(tracking[0].message if tracking else "")
"""


def test_unreachable_server_is_one_warning_and_the_sweep_goes_on(tmp_path):
    """Online mode against a closed port, in a fresh process (W&B reads its environment once per process) that
    tracks results written here. W&B's waits are shortened: 5 s for the run (90 by default) and no account
    lookup first (two more 5 s waits)."""
    job = make_job(bases=4)
    out, spec = tmp_path / "out", tmp_path / "job.json"
    write_results(job, out)
    spec.write_text(json.dumps(job.canonical()))
    env = dict(os.environ, WANDB_MODE="online", WANDB_BASE_URL="http://127.0.0.1:9", WANDB_API_KEY=FAKE_KEY,
               WANDB_INIT_TIMEOUT="5", WANDB_X_DISABLE_VIEWER="true", WANDB_SILENT="false", PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", UNREACHABLE.format(out=str(out), spec=str(spec))], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "TRACKING_WARNINGS 1" in result.stdout, result.stdout + result.stderr[-3000:]
    assert "tracking is off" in result.stdout
    assert FAKE_KEY not in result.stdout + result.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert FAKE_KEY.encode() not in path.read_bytes(), path


def test_failure_mid_sweep_closes_the_run_with_one_warning(tmp_path, monkeypatch):
    job = make_job(bases=4)
    write_results(job, tmp_path)
    cells = results.sweep_cells(tmp_path)
    tracker = Tracker(job, tmp_path, GRID)
    tracker.cell_finished(cells[0])
    with pytest.warns(TrackingWarning) as record:
        tracker.cell_finished("not a cell")  # aggregates cannot be computed: a tracking failure
        tracker.cell_finished(cells[2])
        tracker.finish({}, tmp_path)
    assert len(record) == 1 and tracker.run is None
    (run_dir,) = run_dirs(tmp_path)
    run = read_offline_run(run_dir)
    assert run["finished"] and run["tables"]["cells_live"].shape[0] == 2


def steps(run: dict) -> list[int]:
    return [h["_step"] for h in run["history"]]


def test_a_resumed_sweep_continues_one_run_whose_steps_increase(tmp_path, monkeypatch):
    """Two runs of the tracker on one output directory (a sweep and its resume) log to one W&B run id, and the
    second's history goes on after the first's (offline, where W&B itself cannot know the run's last step)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    job = make_job(bases=4, base_kinds=["real", "gaussian"], directions=["toward:same", "isotropic"])  # 4 cells
    write_results(job, tmp_path)
    cells = results.sweep_cells(tmp_path)
    for part in (cells[:3], cells[3:]):
        tracker = Tracker(job, tmp_path, GRID)
        for cell in part:
            tracker.cell_finished(cell)
        tracker.finish({"cells": len(part)}, tmp_path)
    first, second = (read_offline_run(d) for d in run_dirs(tmp_path))
    assert first["id"] == second["id"] == json.loads((tmp_path / RUN_ID_FILE).read_text())["id"]
    assert first["finished"] and second["finished"]
    history = steps(first) + steps(second)
    assert len(history) == 3 + 1 + 1 + 1 and history == sorted(set(history))  # one history, steps increasing
    other = tmp_path / "other"
    write_results(job, other)
    Tracker(job, other, GRID).finish({}, other)
    assert read_offline_run(run_dirs(other)[0])["id"] != first["id"]  # another output directory: another run


def test_a_sweep_interrupted_by_ctrl_c_resumes_into_one_history(tmp_path, monkeypatch):
    """`synthact run` stopped by Ctrl-C in its third shard (KeyboardInterrupt, where SIGINT raises it), then run
    again: two offline runs with one id, the first closed, and their steps one increasing sequence."""
    from synthact.run.worker import Worker

    job = write_job(tmp_path / "job.yaml", base_kinds=["real", "gaussian"], bases_per_cell=4,
                    wandb={"project": "synthact-tests"})
    out = tmp_path / "out"
    run_shard, calls = Worker.run_shard, []

    def interrupted(self, shard):
        calls.append(shard.shard_id)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return run_shard(self, shard)

    monkeypatch.setattr(Worker, "run_shard", interrupted)
    assert synthact("run", str(job), "--out", str(out), "--no-progress").returncode == 130
    monkeypatch.setattr(Worker, "run_shard", run_shard)
    again = synthact("run", str(job), "--out", str(out), "--no-progress")
    assert again.returncode == 0, again.stderr
    first, second = (read_offline_run(d) for d in run_dirs(out))
    assert first["id"] == second["id"] and first["finished"] and second["finished"]
    assert steps(first) and steps(first)[-1] < steps(second)[0]
    assert steps(first) + steps(second) == sorted(set(steps(first) + steps(second)))
    assert second["summary"]["sweep/shards_skipped"] == 2 and second["summary"]["total/cells"] == 2
    # the summary says where the run went and how to turn W&B off
    assert f"W&B: logged offline to {run_dirs(out)[-1]}" in again.stdout and "--no-wandb" in again.stdout


def test_live_table_of_a_1000_cell_grid_stays_within_w_and_b_increments(tmp_path, monkeypatch):
    """W&B shows only a table's last 100 increments: a 1000-cell grid's live table is logged in at most
    LIVE_INCREMENTS of them, and every cell's rows are in it."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    job = make_job(bases=4, base_kinds=["real"], directions=["isotropic"])
    write_results(job, tmp_path)
    row = Sweep.open(tmp_path).aggregates.iloc[:1]
    tracker = Tracker(job, tmp_path, {"cells": 1000}, figure_interval_s=math.inf)
    for i in range(1000):
        tracker.log_cell(row.assign(cell_id=f"cell{i:04d}"))
    tracker.stop()
    run = read_offline_run(run_dirs(tmp_path)[0])
    increments = [h for h in run["history"] if "cells_live" in h]
    assert 10 <= len(increments) <= tracking.LIVE_INCREMENTS < 100
    assert sorted(run["tables"]["cells_live"].cell_id) == [f"cell{i:04d}" for i in range(1000)]
    assert [h["progress/cells_done"] for h in run["history"] if "progress/cells_done" in h] == list(range(1, 1001))


def test_results_are_logged_as_an_artifact_of_the_parquet_shards_and_job_json(tracked):
    job, out, _, run, _ = tracked
    (artifact,) = [a for a in run["artifacts"] if a["type"] == "sweep-results"]  # W&B's tables are artifacts too
    assert artifact["name"] == "fake-results"
    records = read_manifest(LocalFileSystem(), str(out)).records.values()
    assert set(artifact["files"]) == {r.file for r in records} | {"job.json"}
    for name, entry in artifact["files"].items():
        path = Path(entry["local_path"])
        assert path.is_absolute() and path == out / name and entry["size"] == path.stat().st_size
    assert artifact["metadata"]["spec_hash"] == job.spec_hash and artifact["metadata"]["shards"] == len(records)


def test_a_remote_sweep_is_a_reference_artifact(s3_bucket, tmp_path):
    local = tmp_path / "local"
    job = make_job(bases=4, base_kinds=["real"], directions=["isotropic"])
    write_results(job, local)
    client, bucket = s3_bucket
    for path in local.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), bucket, f"sweep/{path.relative_to(local)}")
    artifact = tracking.results_artifact(job, f"s3://{bucket}/sweep?allow_delayed_open=true")
    entries = artifact.manifest.entries
    records = read_manifest(LocalFileSystem(), str(local)).records.values()
    assert set(entries) == {r.file for r in records} | {"job.json"}
    assert all(entries[name].ref == f"s3://{bucket}/sweep/{name}" for name in entries)


# --------------------------------------------------------------------------- OUT/wandb_run.json


def record_with(out: Path, text: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_ID_FILE).write_text(text)


@pytest.mark.parametrize(("content", "said"), [
    ("{not json", "is damaged (not JSON)"),
    ('["abc123"]', 'is damaged (a JSON list without an "id")'),
    ('{"id": null}', "names W&B run id null, which is not a W&B run id"),
    ('{"id": "../../../etc"}', 'names W&B run id "../../../etc", which is not a W&B run id'),
    ('{"id": "abc123", "step": -4}', '"step" -4 is not a whole number'),
])
def test_a_damaged_run_record_is_refused_in_one_paragraph_and_kept(tmp_path, content, said):
    job = make_job(bases=4)
    record_with(tmp_path, content)
    with pytest.raises(SynthactError) as caught:
        Tracker(job, tmp_path, GRID)
    message = str(caught.value)
    assert said in message and "\n" not in message and "Delete the file" in message and "--no-wandb" in message
    assert (tmp_path / RUN_ID_FILE).read_text() == content  # never replaced by a new run's id
    assert not (tmp_path / "wandb").exists()


def test_another_sweeps_run_id_is_refused_naming_it(tmp_path):
    job = make_job(bases=4)
    record_with(tmp_path, json.dumps({"id": "theirs1", "step": 7, "spec_hash": "f" * 64}))
    with pytest.raises(SynthactError, match=r"names W&B run 'theirs1' of another sweep \(spec hash ffffffffffff"):
        Tracker(job, tmp_path, GRID)


def test_a_run_id_that_none_of_the_directorys_runs_has_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    job = make_job(bases=4)
    Tracker(job, tmp_path, GRID).finish({}, tmp_path)
    mine = json.loads((tmp_path / RUN_ID_FILE).read_text())["id"]
    record_with(tmp_path, json.dumps({"id": "copied9"}))  # an old-style record, copied from elsewhere
    with pytest.raises(SynthactError, match=f"names W&B run 'copied9', but this directory's W&B logs are of run '{mine}'"):
        Tracker(job, tmp_path, GRID)


def test_a_damaged_run_record_stops_synthact_run_with_exit_code_2(tmp_path):
    job = write_job(tmp_path / "job.yaml", wandb={"project": "synthact-tests"})
    Store(tmp_path / "out", load_job(job))._claim()  # a sweep's directory (claimed by an earlier run)
    record_with(tmp_path / "out", '{"id": null}')
    result = synthact("run", str(job), "--out", str(tmp_path / "out"), "--no-progress")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("synthact: error: ") and "wandb_run.json" in result.stderr
    assert not list((tmp_path / "out").glob("results/*"))  # refused before anything ran
