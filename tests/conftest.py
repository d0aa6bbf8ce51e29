"""Shared test settings (toy artefacts cached in the repo, W&B offline, no hub, one torch thread) and how the
suite is spread over the pytest-xdist workers (`-n 2` in pyproject.toml's addopts)."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("SYNTHACT_CACHE", str(ROOT / ".cache" / "synthact-tests"))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
# One torch thread per process (set before torch is imported; subprocesses and Ray actors inherit it): the
# workers already fill the cores, and on this 2-core machine two threads per worker made tests 3x slower
# (OpenMP threads waiting for each other), with the same results.
os.environ.setdefault("OMP_NUM_THREADS", "1")
warnings.filterwarnings("ignore", category=DeprecationWarning)

# The longest tests (tens of seconds each on 2 cores: Ray clusters, whole sweeps, processes that import torch
# afresh) and the two that mostly wait (on W&B and S3 timeouts), in the order the two workers start them: the
# first Ray file starts its cluster and waits for the default toy, which builds meanwhile; the other worker
# renders the report and logs the W&B runs (no toy needed), then waits out the timeouts while the Ray
# processes use the cores. A file named here runs whole on one worker, but for the tests named on their own.
# They are marked `slow` (`-m "not slow and not gpu"` leaves them out for a quick run); the rest follow in
# file order.
SLOW = (
    "tests/run/test_ray.py",
    "tests/analysis/test_report.py",
    "tests/analysis/test_tracking.py",
    "tests/analysis/test_tracking.py::test_unreachable_server_is_one_warning_and_the_sweep_goes_on",
    "tests/run/test_reliability.py::test_bad_inputs_are_one_paragraph",
    "tests/run/test_ray_processes.py",
    "tests/run/test_reliability.py::test_ray_local_on_a_cpu_machine_ignores_ray_address",
    "tests/test_end_to_end.py",
    "tests/test_docs.py::test_the_committed_docs_hold_what_the_toy_twins_print",
)


def pytest_configure(config):
    """With xdist workers, in the controlling process: build the default toy model and its layer-1 SAE (about 25 s
    on one core) in the background while the workers start on the tests that need other toys or none. A test that
    needs it before it is ready waits on the cache's lock (layout.build_dir_once) instead of building it again."""
    if hasattr(config, "workerinput") or not config.getoption("numprocesses", None):
        return
    config.toy_build = subprocess.Popen([sys.executable, "-m", "synthact.inputs.toy", "--layers", "1"], cwd=ROOT,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def pytest_unconfigure(config):
    """A build still running at the end is stopped: a killed build leaves no half-written cache entry."""
    build = getattr(config, "toy_build", None)
    if build is not None and build.poll() is None:
        build.terminate()
        build.wait()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Mark the slow tests and put them first; keep each file whose tests share a module-scoped fixture on one
    worker (an xdist group: `--dist loadgroup`), so the fixture (a finished sweep, a Ray cluster) is built once,
    and each file named in SLOW, so that the workers take them in SLOW's order."""
    for item in items:
        file = item.nodeid.split("::")[0]
        if item.nodeid.startswith(SLOW):
            item.add_marker(pytest.mark.slow)
        if shares_a_module_fixture(item) or (file in SLOW and item.nodeid not in SLOW):
            item.add_marker(pytest.mark.xdist_group(file))
    items.sort(key=slowness_rank)  # stable: file order otherwise


def slowness_rank(item) -> int:
    """The place of the item's entry in SLOW (its own entry before its file's), after them all for the rest."""
    if item.nodeid in SLOW:
        return SLOW.index(item.nodeid)
    return next((i for i, prefix in enumerate(SLOW) if item.nodeid.startswith(prefix)), len(SLOW))


def shares_a_module_fixture(item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    return bool(info) and any(d.scope in ("module", "class", "package")
                              for defs in info.name2fixturedefs.values() for d in defs)


@pytest.fixture(autouse=True, scope="session")
def few_resamples():
    """compare's intervals and permutation p-values with fewer resamples than its defaults (aggregate.N_BOOT and
    N_PERM): the same code in a tenth of the time. Tests that check the numbers call inference with these."""
    from synthact.analysis import aggregate

    patch = pytest.MonkeyPatch()
    patch.setattr(aggregate, "N_BOOT", 200)
    patch.setattr(aggregate, "N_PERM", 1000)
    yield
    patch.undo()
