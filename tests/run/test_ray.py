"""The Ray executor on a real local multi-node cluster (ray.cluster_utils.Cluster), toy model.

One cluster serves the whole module: a head node with no CPUs (it runs nothing) and two
worker nodes with one CPU each, so the two worker actors land on different nodes.
"""

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import yaml
from ray.cluster_utils import Cluster

from synthact.results import read_table
from synthact.run.local_executor import run_local
from synthact.run.ray_executor import run_ray
from synthact.run.store import Store
from synthact.spec import parse_job
from tests.helpers import toy_job

ROOT = Path(__file__).resolve().parents[2]
LOGGER = "synthact.run.ray_executor"

# 8 cells of 12 shards each: 96 shards, a few seconds of work, so the second worker actor is
# loaded (about a second after the first) long before the sweep ends.
TINY = toy_job(
    name="ray-tiny", read_layers=[-1], base_kinds=["real", "gaussian", "synthetic_structured"],
    generation={"structure": ["pairwise"], "candidates": [4, 16]}, scan={"steps": 8}, bases_per_cell=24, shard_size=2,
    reference={"n_prompts": 256}, device="cpu", wandb=False,
    ray={"num_gpus": 0, "num_cpus": 1, "max_in_flight": 2, "max_retries": 2},
)


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        workers = [c.add_node(num_cpus=1) for _ in range(2)]
        c.wait_for_nodes()
        ray.init(address=c.address, log_to_driver=False)
        c.worker_nodes_in_order = workers
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="module")
def job():
    return parse_job(dict(TINY))


@pytest.fixture(scope="module")
def local_rows(job, tmp_path_factory):
    """The undisturbed reference: the same spec in local mode."""
    out = tmp_path_factory.mktemp("local") / "out"
    summary = run_local(job, Store(out, job), progress=False)
    assert summary.ok and summary.shards_done == len(job.shards())
    return canonical(read_table(out))


def canonical(table: pa.Table) -> pa.Table:
    """Rows in a fixed order, so two runs compare row for row."""
    return table.sort_by([("cell_id", "ascending"), ("read_layer", "ascending"), ("base_index", "ascending")])


def assert_same_rows(out: Path, expected: pa.Table) -> None:
    rows = canonical(read_table(out))
    keys = list(zip(rows["cell_id"].to_pylist(), rows["read_layer"].to_pylist(), rows["base_index"].to_pylist()))
    assert len(keys) == len(set(keys)), "a curve was written twice"
    assert rows.num_rows == expected.num_rows
    differ = {c: sorted({s for s, a, b in zip(rows["shard_id"].to_pylist(), rows[c].to_pylist(), expected[c].to_pylist())
                         if a != b and not (a != a and b != b)})  # NaN in both is the same value
              for c in rows.column_names if not rows[c].equals(expected[c])}
    differ = {c: shards for c, shards in differ.items() if shards}
    assert not differ, f"rows differ from the undisturbed run (column: shards): {differ}"


def visible_files(out: Path) -> list[Path]:
    return [p for p in (out / "results").rglob("*") if p.is_file() and not p.name.startswith(".")]


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


def test_ray_rows_equal_local_and_shards_spread_over_nodes(cluster, job, local_rows, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    summary = run_ray(job, Store(tmp_path / "out", job), cluster.address, progress=False)
    assert summary.ok and summary.shards_done == len(job.shards()) and summary.curves == local_rows.num_rows
    assert_same_rows(tmp_path / "out", local_rows)
    nodes = {r.args[1] for r in caplog.records if r.msg.startswith("shard %s ran on node")}
    assert len(nodes) == 2, f"shards ran on {nodes}; expected both worker nodes"
    # Statistics live in one shared place: one directory per layer under the store.
    assert len(list((tmp_path / "out" / "stats").iterdir())) == len(job.layers)


def test_actor_killed_and_node_removed_lose_nothing(cluster, job, local_rows, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    removed = []

    def remove_a_worker_node():
        node = cluster.worker_nodes_in_order.pop()
        cluster.remove_node(node)
        removed.append(node)

    disturb = Disturb({2: kill_a_busy_actor, 4: remove_a_worker_node})
    try:
        summary = run_ray(job, Store(tmp_path / "out", job), cluster.address, progress=False, listeners=[disturb])
    finally:
        if removed:  # give the later tests their second node back
            cluster.worker_nodes_in_order.append(cluster.add_node(num_cpus=1))
            cluster.wait_for_nodes()
    assert removed and summary.ok, summary.failures
    died = [r for r in caplog.records if "died" in r.getMessage()]
    retried = [r for r in caplog.records if "retried" in r.getMessage()]
    assert len(died) >= 2 and retried, "the disturbances hit no shard in flight"
    assert_same_rows(tmp_path / "out", local_rows)


def test_driver_killed_mid_sweep_resumes_from_manifest(cluster, job, local_rows, tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "synthact.cli", "run", str(spec), "--out", str(out), "--ray", cluster.address,
           "--no-progress", "--no-wandb"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    total = len(job.shards())
    driver = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(list((out / "manifest").glob("*.json"))) < 2 and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(driver.pid, signal.SIGKILL)
    finally:
        driver.wait()
    done_at_kill = len(list((out / "manifest").glob("*.json")))
    assert 0 < done_at_kill < total, f"the driver was not killed mid-sweep ({done_at_kill}/{total} shards done)"
    for f in visible_files(out):  # every visible file is a complete Parquet file
        pq.read_table(f)

    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{total - done_at_kill} run now, {done_at_kill} already done" in rerun.stdout
    assert not [p for p in out.rglob(".tmp-*")], "a temporary file was left behind"
    assert len(visible_files(out)) == total
    assert_same_rows(out, local_rows)


def test_group_that_cannot_load_is_retried_then_reported_rest_completes_exit_code_1(cluster, tmp_path):
    # The second SAE's files do not exist: its actor fails to load every time (a job's bad latent ids, checked
    # against the loaded SAE before the first shard, take the same path); the other group completes.
    missing = tmp_path / "no-such-sae-{layer}"
    data = dict(TINY, sae=[{"toy": {}}, {"local": str(missing)}], base_kinds=["real"], directions=["toward:same"],
                bases_per_cell=4, shard_size=2)
    data["ray"] = dict(TINY["ray"], max_retries=1)
    job = parse_job(data)
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "synthact.cli", "run", str(spec), "--out", str(out), "--ray", cluster.address,
           "--no-progress", "--no-wandb"]
    result = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 1, result.stdout + result.stderr
    bad = {s.shard_id for s in job.shards() if s.cell.sae.local}
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAILED")]
    assert {line.split()[1].rstrip(":") for line in failed} == bad and len(bad) == 2
    assert all("no-such-sae-1" in line and "tried 2 times" in line for line in failed), failed
    assert read_table(out).num_rows == 4  # the toy SAE's 2 shards x 2 bases


# ---------------------------------------------------------------------- clusters started with `ray start`


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayStartCluster:
    """A head and worker nodes started with `ray start` on this machine, each node its own process group,
    with token authentication on (RAY_AUTH_MODE=token, the token in RAY_AUTH_TOKEN)."""

    def __init__(self, tmp: Path):
        import secrets
        import tempfile

        self.token = secrets.token_hex(32)
        self.temp = tempfile.mkdtemp(prefix="sa-ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
        self.env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, PYTHONPATH=str(ROOT))
        self.env.pop("RAY_ADDRESS", None)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.groups: list[int] = []
        self._start("--head", f"--port={self.port}", "--num-cpus=0", "--include-dashboard=false",
                    f"--ray-client-server-port={free_port()}")

    def add_node(self) -> int:
        """Start a worker node with one CPU; return its process group."""
        self._start(f"--address={self.address}", "--num-cpus=1")
        return self.groups[-1]

    def _start(self, *args: str) -> None:
        cmd = ["ray", "start", *args, f"--temp-dir={self.temp}", "--disable-usage-stats",
               f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
               f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
               f"--runtime-env-agent-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}"]
        started = subprocess.Popen(cmd, env=self.env, start_new_session=True, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        self.groups.append(started.pid)  # the node's processes stay in this group after `ray start` returns
        out, _ = started.communicate(timeout=120)
        assert started.returncode == 0, out

    def kill_group(self, group: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)

    def shutdown(self) -> None:
        for group in reversed(self.groups):
            self.kill_group(group)
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.mark.slow
def test_token_cluster_from_ray_start_with_a_node_killed_mid_sweep_gives_the_local_rows(job, local_rows, tmp_path):
    """Token auth on: a driver without the token is refused in seconds naming the cause; with it, the sweep
    survives the loss of one of its two worker nodes and writes the rows of local mode."""
    c = RayStartCluster(tmp_path)
    try:
        nodes = [c.add_node(), c.add_node()]
        spec = tmp_path / "job.yaml"
        spec.write_text(yaml.safe_dump(TINY))
        out = tmp_path / "out"
        cmd = [sys.executable, "-m", "synthact.cli", "run", str(spec), "--out", str(out), "--ray", c.address,
               "--no-progress", "--no-wandb"]
        no_token = {k: v for k, v in c.env.items() if not k.startswith("RAY_AUTH")}
        start = time.monotonic()
        refused = subprocess.run(cmd, cwd=ROOT, env=dict(no_token, HOME=str(tmp_path)), capture_output=True,
                                 text=True, timeout=120)
        assert refused.returncode == 2 and "uses token authentication" in refused.stderr, refused.stderr
        assert "RAY_AUTH_MODE is 'unset'" in refused.stderr and time.monotonic() - start < 15
        assert not (out / "job.json").exists()

        driver = subprocess.Popen(cmd, cwd=ROOT, env=c.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 180
            while len(list((out / "manifest").glob("*.json"))) < 10 and driver.poll() is None \
                    and time.monotonic() < deadline:
                time.sleep(0.05)
            c.kill_group(nodes[1])
            done_at_kill = len(list((out / "manifest").glob("*.json")))
            output, _ = driver.communicate(timeout=300)
        finally:
            if driver.poll() is None:
                driver.kill()
        assert driver.returncode == 0 and 0 < done_at_kill < len(job.shards()), output
        assert_same_rows(out, local_rows)
    finally:
        c.shutdown()


@pytest.mark.slow
def test_ray_local_run_after_its_driver_was_killed_resumes_undisturbed_by_leftover_processes(job, local_rows, tmp_path):
    """SIGKILL of a `--ray local` driver can leave Ray's agent processes behind (in the driver's process group,
    re-parented to init); the next `--ray local` run starts its own instance beside them and finishes the sweep."""
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "synthact.cli", "run", str(spec), "--out", str(out), "--ray", "local",
           "--no-progress", "--no-wandb"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONPATH": str(ROOT)}
    driver = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while len(list((out / "manifest").glob("*.json"))) < 2 and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        done_at_kill = len(list((out / "manifest").glob("*.json")))
        assert 0 < done_at_kill < len(job.shards())
        rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert "already done" in rerun.stdout and not list(out.rglob(".tmp-*"))
        assert_same_rows(out, local_rows)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)  # what the killed driver left (docs/ray.md, "Cleaning up")
