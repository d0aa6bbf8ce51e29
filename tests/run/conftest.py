"""Fixtures of the Ray tests (test_ray.py: a cluster in this process; test_ray_processes.py: drivers and
clusters in processes of their own): the tiny job and its rows in local mode, once per test module."""

import pytest

from synthact.results import read_table
from synthact.run.local_executor import run_local
from synthact.run.store import Store
from synthact.spec import parse_job
from tests.helpers import RAY_TINY, canonical


@pytest.fixture(scope="module")
def job():
    return parse_job(dict(RAY_TINY))


@pytest.fixture(scope="module")
def local_rows(job, tmp_path_factory):
    """The undisturbed reference: the same spec in local mode."""
    out = tmp_path_factory.mktemp("local") / "out"
    summary = run_local(job, Store(out, job), progress=False)
    assert summary.ok and summary.shards_done == len(job.shards())
    return canonical(read_table(out))
