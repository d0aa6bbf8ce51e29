"""Ray drivers and clusters in processes of their own, toy model: a cluster started with `ray start` and token
authentication, and `--ray local` drivers killed with SIGKILL. The job and its local rows are fixtures in
conftest.py; the cluster in this process is test_ray.py's.
"""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import RAY_TINY, ROOT, assert_same_rows

# ---------------------------------------------------------------------- clusters started with `ray start`


def free_ports(n: int) -> list[int]:
    """n distinct free ports: all bound at once, so that the kernel cannot hand the same one out twice (one at a
    time, a port just closed came back for another of Ray's components on a busy machine)."""
    import socket

    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class RayStartCluster:
    """A head node with one CPU and worker nodes started with `ray start` on this machine, each node its own
    process group, with token authentication on (RAY_AUTH_MODE=token, the token in RAY_AUTH_TOKEN)."""

    def __init__(self, tmp: Path):
        import secrets
        import tempfile

        self.token = secrets.token_hex(32)
        self.temp = tempfile.mkdtemp(prefix="sa-ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
        self.env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, PYTHONPATH=str(ROOT))
        self.env.pop("RAY_ADDRESS", None)
        self.port, client = free_ports(2)
        self.address = f"127.0.0.1:{self.port}"
        self.groups: list[int] = []
        self._start("--head", f"--port={self.port}", "--num-cpus=1", "--include-dashboard=false",
                    f"--ray-client-server-port={client}", taken={self.port, client})

    def add_node(self) -> int:
        """Start a worker node with one CPU; return its process group."""
        self._start(f"--address={self.address}", "--num-cpus=1")
        return self.groups[-1]

    def _start(self, *args: str, taken: set[int] = frozenset()) -> None:
        ports = [p for p in free_ports(6 + len(taken)) if p not in taken][:6]
        names = ("dashboard-agent-listen", "metrics-export", "node-manager", "object-manager", "runtime-env-agent",
                 "dashboard-agent-grpc")
        cmd = ["ray", "start", *args, f"--temp-dir={self.temp}", "--disable-usage-stats",
               *(f"--{name}-port={port}" for name, port in zip(names, ports, strict=True))]
        started = subprocess.Popen(cmd, env=self.env, start_new_session=True, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        self.groups.append(started.pid)  # the node's processes stay in this group after `ray start` returns
        out, _ = started.communicate(timeout=600)
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
    survives the loss of its worker node (the head node's actor finishes it) and writes the rows of local mode."""
    c = RayStartCluster(tmp_path)
    try:
        worker_node = c.add_node()
        spec = tmp_path / "job.yaml"
        spec.write_text(yaml.safe_dump(RAY_TINY))
        out = tmp_path / "out"
        cmd = [sys.executable, "-m", "synthact.cli", "run", str(spec), "--out", str(out), "--ray", c.address,
               "--no-progress", "--no-wandb"]
        no_token = {k: v for k, v in c.env.items() if not k.startswith("RAY_AUTH")}
        # refused before any work; the timeout catches a hang (a driver retrying) only
        refused = subprocess.run(cmd, cwd=ROOT, env=dict(no_token, HOME=str(tmp_path)), capture_output=True,
                                 text=True, timeout=300)
        assert refused.returncode == 2 and "uses token authentication" in refused.stderr, refused.stderr
        assert "RAY_AUTH_MODE is 'unset'" in refused.stderr and not (out / "job.json").exists()

        driver = subprocess.Popen(cmd, cwd=ROOT, env=c.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 600  # waits for progress; a hang-catcher only
            while len(list((out / "manifest").glob("*.json"))) < 10 and driver.poll() is None \
                    and time.monotonic() < deadline:
                time.sleep(0.05)
            c.kill_group(worker_node)
            done_at_kill = len(list((out / "manifest").glob("*.json")))
            output, _ = driver.communicate(timeout=600)
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
    re-parented to init); the next `--ray local` run starts its own instance beside them and finishes the sweep.
    One worker actor per run is enough for that (each actor costs seconds of imports)."""
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(dict(RAY_TINY, ray=dict(RAY_TINY["ray"], max_workers=1))))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "synthact.cli", "run", str(spec), "--out", str(out), "--ray", "local",
           "--no-progress", "--no-wandb"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONPATH": str(ROOT)}
    driver = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600  # waits for progress; a hang-catcher only
        while len(list((out / "manifest").glob("*.json"))) < 2 and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        done_at_kill = len(list((out / "manifest").glob("*.json")))
        assert 0 < done_at_kill < len(job.shards())
        rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert "already done" in rerun.stdout and not list(out.rglob(".tmp-*"))
        assert "Ray dashboard" not in rerun.stderr  # RAY_TINY's ray.dashboard: false
        assert_same_rows(out, local_rows)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)  # what the killed driver left (docs/ray.md, "Cleaning up")
