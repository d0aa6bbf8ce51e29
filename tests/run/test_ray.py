"""The Ray executor on a real local multi-node cluster (ray.cluster_utils.Cluster), toy model.

One cluster serves the whole module: a head node and a worker node with one CPU each, so the
first test's two worker actors land on different nodes; that test removes the worker node, and
the later tests run one actor on the head. Drivers and
clusters in processes of their own are in test_ray_processes.py (so the two files can run on two
pytest-xdist workers); the job and its local rows are fixtures in conftest.py.
"""

import logging
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
import ray
import yaml
from ray.cluster_utils import Cluster

from synthact.results import read_table
from synthact.run.ray_executor import run_ray
from synthact.run.store import Store
from synthact.spec import parse_job
from tests.helpers import RAY_TINY, ROOT, assert_same_rows, synthact, visible_files

LOGGER = "synthact.run.ray_executor"
# The tests after the first run on the head node it leaves, one actor at a time (each costs seconds of imports).
ONE_ACTOR = dict(RAY_TINY, ray=dict(RAY_TINY["ray"], max_workers=1))


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        c.worker_node = c.add_node(num_cpus=1)
        c.wait_for_nodes()
        ray.init(address=c.address, log_to_driver=False)
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


class Disturb:
    """A cell listener that disturbs the cluster after given numbers of finished cells."""

    def __init__(self, actions: dict[int, callable]):
        self.actions, self.finished = actions, 0

    def cell_finished(self, cell_rows) -> None:
        self.finished += 1
        if self.finished in self.actions:
            self.actions[self.finished]()


def kill_a_busy_actor() -> None:
    """Kill a worker actor while shards are queued on it (every live actor has some mid-sweep)."""
    names = sorted(n for n in ray.util.list_named_actors() if n.startswith("synthact-worker"))
    ray.kill(ray.get_actor(names[0]))


def test_ray_rows_equal_local_spread_over_nodes_through_a_killed_actor_and_a_removed_node(cluster, job, local_rows,
                                                                                          tmp_path, caplog):
    """One sweep over both nodes, disturbed twice: a busy actor killed after 2 cells, the worker node removed
    after 4 (the later tests in this module run on the head). Nothing is lost and the rows are local mode's."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    removed = []

    def remove_the_worker_node():
        cluster.remove_node(cluster.worker_node)
        removed.append(cluster.worker_node)

    disturb = Disturb({2: kill_a_busy_actor, 4: remove_the_worker_node})
    summary = run_ray(job, Store(tmp_path / "out", job), cluster.address, progress=False, listeners=[disturb])
    assert removed and summary.ok, summary.failures
    assert summary.shards_done == len(job.shards()) and summary.curves == local_rows.num_rows
    died = [r for r in caplog.records if "died" in r.getMessage()]
    retried = [r for r in caplog.records if "retried" in r.getMessage()]
    assert len(died) >= 2 and retried, "the disturbances hit no shard in flight"
    assert_same_rows(tmp_path / "out", local_rows)
    nodes = {r.args[1] for r in caplog.records if r.msg.startswith("shard %s ran on node")}
    assert len(nodes) == 2, f"shards ran on {nodes}; expected both nodes"
    # Statistics live in one shared place: one directory per layer under the store.
    assert len(list((tmp_path / "out" / "stats").iterdir())) == len(job.layers)


def test_driver_killed_mid_sweep_resumes_from_manifest(cluster, job, local_rows, tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(ONE_ACTOR))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "synthact.cli", "run", str(spec), "--out", str(out), "--ray", cluster.address,
           "--no-progress", "--no-wandb"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    total = len(job.shards())
    driver = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600  # waits for progress; a hang-catcher only
        while len(list((out / "manifest").glob("*.json"))) < 2 and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(driver.pid, signal.SIGKILL)
    finally:
        driver.wait()
    done_at_kill = len(list((out / "manifest").glob("*.json")))
    assert 0 < done_at_kill < total, f"the driver was not killed mid-sweep ({done_at_kill}/{total} shards done)"
    for f in visible_files(out):  # every visible file is a complete Parquet file
        pq.read_table(f)

    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{total - done_at_kill} run now, {done_at_kill} already done" in rerun.stdout
    assert not [p for p in out.rglob(".tmp-*")], "a temporary file was left behind"
    assert len(visible_files(out)) == total
    assert_same_rows(out, local_rows)


def test_group_that_cannot_load_is_retried_then_reported_rest_completes_exit_code_1(cluster, tmp_path):
    # The second SAE's files do not exist: its actor fails to load every time (a job's bad latent ids, checked
    # against the loaded SAE before the first shard, take the same path); the other group completes.
    missing = tmp_path / "no-such-sae-{layer}"
    data = dict(RAY_TINY, sae=[{"toy": {}}, {"local": str(missing)}], base_kinds=["real"], directions=["toward:same"],
                bases_per_cell=4, shard_size=2)
    data["ray"] = dict(ONE_ACTOR["ray"], max_retries=1)
    job = parse_job(data)
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    # In this process, on this module's connection to the cluster (the test above runs driver processes).
    result = synthact("run", str(spec), "--out", str(out), "--ray", cluster.address, "--no-progress", "--no-wandb")
    assert result.returncode == 1, result.stdout + result.stderr
    bad = {s.shard_id for s in job.shards() if s.cell.sae.local}
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAILED")]
    assert {line.split()[1].rstrip(":") for line in failed} == bad and len(bad) == 2
    assert all("no-such-sae-1" in line and "tried 2 times" in line for line in failed), failed
    assert read_table(out).num_rows == 4  # the toy SAE's 2 shards x 2 bases


