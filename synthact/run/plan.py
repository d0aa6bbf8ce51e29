"""Running a sweep: plan the pending shards, run them (here: in-process), write, track, summarise.

`run_local` is the local executor; `synthact.ray_exec.run_ray` shares `Plan`, `Progress` and
`RunSummary` with it, so both behave the same apart from where shards run.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Protocol

import pyarrow as pa
from tqdm.auto import tqdm

from synthact.errors import SynthactError, describe
from synthact.results import CellRows, cell_rows
from synthact.run.store import Store, Verification, spec_differences
from synthact.spec import Job, Shard


class CellListener(Protocol):
    """Told about each cell as soon as all its shards are written (e.g. the W&B tracker).

    It gets the cell's rows unread (`results.CellRows`): a listener reads only the columns it needs."""

    def cell_finished(self, cell: CellRows) -> None: ...


@dataclass
class RunSummary:
    """What a sweep did; `ok` is False when any shard failed."""

    cells: int
    shards: int
    shards_skipped: int
    shards_done: int = 0
    curves: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    redone: list[tuple[str, str]] = field(default_factory=list)  # finished shards that failed verification
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def fatal(self) -> str | None:
        """The one error every shard failed with when nothing of the sweep could run, else None."""
        messages = {message for _, message in self.failures}
        if self.shards_done or self.shards_skipped or len(messages) != 1:
            return None
        return messages.pop()

    @property
    def curves_per_s(self) -> float:
        return self.curves / self.wall_s if self.wall_s > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            "cells": self.cells,
            "shards": self.shards,
            "shards_skipped": self.shards_skipped,
            "shards_done": self.shards_done,
            "shards_failed": len(self.failures),
            "curves": self.curves,
            "wall_s": round(self.wall_s, 2),
            "curves_per_s": round(self.curves_per_s, 2),
        }


class Plan:
    """The shards still to run, and which cells each finished shard completes.

    Resume: the finished shards are verified (`Store.verify`); a shard written by another job spec than job.json's
    stops the run (`refuse_other_spec`), the job's shards that fail a check are forgotten and redone, and records
    outside the job's grid are left alone (never read, named by `synthact verify`)."""

    def __init__(self, job: Job, store: Store):
        self.job = job
        self.store = store
        store.clean_temporaries()
        found = store.verify()
        refuse_other_spec(store.uri, job, found)
        store.forget([shard_id for shard_id, _ in found.redo])
        shards = job.shards()
        self.pending: list[Shard] = [s for s in shards if s.shard_id not in found.good]
        self.remaining = Counter(s.cell.cell_id for s in self.pending)
        self.summary = RunSummary(cells=len(job.cells()), shards=len(shards), shards_skipped=len(shards) - len(self.pending),
                                  redone=found.redo)
        self.curves_per_shard = {s.shard_id: s.n_bases * len(job.read_layers) for s in shards}
        self.complete_at_start = sorted({s.cell.cell_id for s in shards} - set(self.remaining))
        self.shards_of: dict[str, list[str]] = defaultdict(list)
        for s in shards:
            self.shards_of[s.cell.cell_id].append(s.shard_id)

    def by_group(self) -> dict[tuple, list[Shard]]:
        groups: dict[tuple, list[Shard]] = defaultdict(list)
        for s in self.pending:
            groups[s.cell.group].append(s)
        return groups

    def finished(self, shard: Shard, table: pa.Table, listeners: list[CellListener]) -> None:
        """Write a shard and tell listeners about a cell it completes."""
        self.store.write_shard(shard, table)
        self.summary.shards_done += 1
        self.summary.curves += table.num_rows
        cell_id = shard.cell.cell_id
        self.remaining[cell_id] -= 1
        if self.remaining[cell_id] == 0 and listeners:
            _notify(listeners, self._cell(cell_id))

    def _cell(self, cell_id: str) -> CellRows:
        return cell_rows(self.store.uri, cell_id, self.shards_of[cell_id])

    def failed(self, shard: Shard, error: BaseException | str) -> None:
        self.summary.failures.append((shard.shard_id, error if isinstance(error, str) else describe(error)))

    def group_failed(self, shards, message: str) -> None:
        """A group whose worker could not load: each of its shards fails with the same message."""
        for shard in shards:
            self.failed(shard, message)

    def announce_complete_cells(self, listeners: list[CellListener]) -> None:
        """Cells finished by an earlier run of this spec are reported too (a resumed sweep logs all)."""
        for cell_id in self.complete_at_start if listeners else ():
            _notify(listeners, self._cell(cell_id))


class Progress:
    """What a sweep is doing, from its first second.

    `phase(text)` says what runs now (checking finished shards, loading the model, reference statistics, the
    statistics after the sweep): a line of its own while no bar is open, the bar's description while one is.
    `start(plan)` opens a bar over every curve of the sweep, those finished by an earlier run counted as done, so
    that its counter and the shard counter beside it count the same thing; an ETA is shown once
    MIN_SHARDS_FOR_ETA shards have finished in this run, from their pace since the first (loading excluded).
    """

    MIN_SHARDS_FOR_ETA = 3

    def __init__(self, enabled: bool = True, file=None):
        self.enabled, self.file = enabled, file
        self.bar = None
        self.plan: Plan | None = None
        self._first: tuple[float, int] | None = None  # (time, curves done) at the first shard this run finished
        self._finished = 0  # shards finished in this run

    def phase(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            print(f"synthact: {text}", file=self.file or sys.stderr, flush=True)
        else:
            self.bar.set_description_str(text)

    def start(self, plan: Plan) -> None:
        self.plan = plan
        if not self.enabled:
            return
        total = sum(plan.curves_per_shard.values())
        left = sum(plan.curves_per_shard[s.shard_id] for s in plan.pending)
        self.bar = tqdm(total=total, initial=total - left, unit="curve", disable=not self.enabled, file=self.file,
                        dynamic_ncols=True, mininterval=0, bar_format=BAR)
        self._postfix()

    def update(self, shard: Shard) -> None:
        if self.bar is None:
            return
        self._finished += 1
        curves = self.plan.curves_per_shard[shard.shard_id]
        if self._first is None:
            self._first = (time.monotonic(), self.bar.n + curves)
        self._postfix(self.bar.n + curves, refresh=False)
        self.bar.update(curves)  # one line per shard: the bar and its counters at once

    def _postfix(self, done: int | None = None, refresh: bool = True) -> None:
        s = self.plan.summary
        done = self.bar.n if done is None else done
        text = f"shards {s.shards_done + s.shards_skipped}/{s.shards}, failed {len(s.failures)}"
        if self._finished >= self.MIN_SHARDS_FOR_ETA:
            since, at = self._first
            rate = (done - at) / max(time.monotonic() - since, 1e-9)
            if rate > 0:
                text += f", {rate:.1f} curves/s, ETA {tqdm.format_interval((self.bar.total - done) / rate)}"
        self.bar.set_postfix_str(text, refresh=refresh)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


BAR = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} curves [{elapsed}{postfix}]"


def progress_of(progress: bool | Progress) -> Progress:
    """The executors' `progress` argument (on/off, or the caller's `Progress`) as a `Progress`."""
    return progress if isinstance(progress, Progress) else Progress(bool(progress))


def refuse_other_spec(uri: str, job: Job, found: Verification) -> None:
    """A resume over shards written by another job spec than job.json's would mix two jobs' rows: refuse, naming
    the fields in which they differ (job.json replaced, or shards copied in from another sweep)."""
    if not found.other_spec:
        return
    shard_id, theirs = sorted(found.other_spec.items())[0]
    try:
        spec = json.loads(theirs)
        differ = spec_differences(spec, job.canonical(), "in the shards", "in job.json")
    except (ValueError, TypeError, AttributeError):
        differ = f"the shards carry spec hash {theirs[:12]}"
    raise SynthactError(
        f"output directory '{uri}' holds {len(found.other_spec)} shard(s) (e.g. {shard_id}) written by another job "
        f"spec than the one its job.json records: {differ}. job.json was replaced or shards were copied in, and "
        f"resuming would mix two jobs' rows. `synthact verify {uri}` names them; restore the job.json they were "
        "written with (and rerun that spec), move them out, or use a new --out directory."
    )


def _notify(listeners: list[CellListener], cell: CellRows) -> None:
    for listener in listeners:
        listener.cell_finished(cell)
