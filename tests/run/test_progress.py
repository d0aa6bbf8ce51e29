"""What `synthact run` shows while it works (stderr, captured): phases from the first second, a bar whose curve and
shard counters count the same thing, ETAs only once shards have finished. Nothing here depends on timing."""

from __future__ import annotations

import re

import pytest

from synthact.run.plan import Progress
from tests.helpers import synthact, write_job

BAR = re.compile(r"(\d+)/(\d+) curves \[[^,\]]*(?:, shards (\d+)/(\d+), failed (\d+)(.*))?\]")


def screens(stderr: str) -> list[str]:
    """What the terminal showed, one state per entry (tqdm redraws its line after a carriage return)."""
    return [part.strip() for line in stderr.splitlines() for part in line.split("\r") if part.strip()]


def bars(shown: list[str]) -> list[tuple[int, ...]]:
    """(curves, of, shards, of) of each bar state that shows its counters, and whether it shows an ETA."""
    out = []
    for text in shown:
        m = BAR.search(text)
        if m and m.group(3):
            out.append((int(m[1]), int(m[2]), int(m[3]), int(m[4]), "ETA" in m[6]))
    return out


@pytest.fixture
def job(tmp_path):
    """Two cells of three shards each (2 bases per shard, one read layer: 2 curves per shard)."""
    return write_job(tmp_path / "job.yaml", base_kinds=["real", "gaussian"], bases_per_cell=6)


def test_phases_come_before_the_first_shard_and_the_eta_after_enough_shards(job, tmp_path):
    result = synthact("run", str(job), "--out", str(tmp_path / "out"), "--no-wandb")
    assert result.returncode == 0, result.stderr
    shown = screens(result.stderr)
    first_shard = next(i for i, text in enumerate(shown) if (b := bars([text])) and b[0][2] > 0)
    before = "\n".join(shown[:first_shard])
    for phase in ("checking the finished shards", "loading model toy-", "reference statistics of layer 1"):
        assert phase in before, before
    after = "\n".join(shown[first_shard:])
    assert "statistics: each kind against real" in after
    states = bars(shown)
    assert states[-1][:4] == (12, 12, 6, 6)
    for curves, total, shards, of, eta in states:
        assert curves == 2 * shards and total == 2 * of  # both count the whole sweep, the same way
        assert eta == (shards >= Progress.MIN_SHARDS_FOR_ETA)


def test_a_resumed_sweep_counts_curves_and_shards_alike(job, tmp_path, monkeypatch):
    """Interrupted (Ctrl-C in its third shard), then resumed: the bar starts at the two shards done before, in
    curves as in shards, and no ETA is shown until three shards have finished in this run."""
    from synthact.run.worker import Worker

    run_shard, calls = Worker.run_shard, []

    def interrupted(self, shard):
        calls.append(shard)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return run_shard(self, shard)

    monkeypatch.setattr(Worker, "run_shard", interrupted)
    out = str(tmp_path / "out")
    assert synthact("run", str(job), "--out", out, "--no-wandb").returncode == 130
    monkeypatch.setattr(Worker, "run_shard", run_shard)
    result = synthact("run", str(job), "--out", out, "--no-wandb")
    assert result.returncode == 0, result.stderr
    states = bars(screens(result.stderr))
    assert states[0][:4] == (4, 12, 2, 6)  # the two shards done before, in both counters
    for curves, total, shards, of, eta in states:
        assert curves == 2 * shards and total == 2 * of
        assert eta == (shards - 2 >= Progress.MIN_SHARDS_FOR_ETA)
    assert states[-1][:4] == (12, 12, 6, 6)


def test_no_progress_shows_nothing(job, tmp_path):
    result = synthact("run", str(job), "--out", str(tmp_path / "out"), "--no-wandb", "--no-progress")
    assert result.returncode == 0 and result.stderr == ""
