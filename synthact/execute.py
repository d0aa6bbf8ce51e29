"""Running a sweep: plan the pending shards, run them (here: in-process), write, track, summarise.

`run_local` is the local executor; `synthact.ray_exec.run_ray` shares `Plan`, `Progress` and
`RunSummary` with it, so both behave the same apart from where shards run.
"""

from __future__ import annotations

import time
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Protocol

import pyarrow as pa
from tqdm.auto import tqdm

from synthact.errors import SynthactError
from synthact.spec import Job, Shard, parse_direction
from synthact.store import Store


class CellListener(Protocol):
    """Told about each cell as soon as all its shards are written (e.g. the W&B tracker)."""

    def cell_finished(self, cell_rows: pa.Table) -> None: ...


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
    """The shards still to run, and which cells each finished shard completes."""

    def __init__(self, job: Job, store: Store):
        self.job = job
        self.store = store
        store.clean_temporaries()
        found = store.verify()
        store.forget(found.bad)
        shards = job.shards()
        self.pending: list[Shard] = [s for s in shards if s.shard_id not in found.good]
        self.remaining = Counter(s.cell.cell_id for s in self.pending)
        self.summary = RunSummary(cells=len(job.cells()), shards=len(shards), shards_skipped=len(shards) - len(self.pending),
                                  redone=found.bad)
        self.curves_per_shard = {s.shard_id: s.n_bases * len(job.read_layers) for s in shards}
        self.complete_at_start = sorted({s.cell.cell_id for s in shards} - set(self.remaining))

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
            _notify(listeners, self.store.read_table(cell_id))

    def failed(self, shard: Shard, error: BaseException | str) -> None:
        self.summary.failures.append((shard.shard_id, error if isinstance(error, str) else describe(error)))

    def group_failed(self, shards, message: str) -> None:
        """A group whose worker could not load: each of its shards fails with the same message."""
        for shard in shards:
            self.failed(shard, message)

    def announce_complete_cells(self, listeners: list[CellListener]) -> None:
        """Cells finished by an earlier run of this spec are reported too (a resumed sweep logs all)."""
        for cell_id in self.complete_at_start if listeners else ():
            _notify(listeners, self.store.read_table(cell_id))


class Progress:
    """A progress bar over curves, with shards done, curves/s and ETA."""

    def __init__(self, plan: Plan, enabled: bool = True):
        total = sum(plan.curves_per_shard[s.shard_id] for s in plan.pending)
        self.bar = tqdm(total=total, unit="curve", disable=not enabled, dynamic_ncols=True, smoothing=0.1)
        self.plan = plan

    def update(self, shard: Shard) -> None:
        s = self.plan.summary
        self.bar.update(self.plan.curves_per_shard[shard.shard_id])
        self.bar.set_postfix_str(f"shards {s.shards_done + s.shards_skipped}/{s.shards}, failed {len(s.failures)}")

    def close(self) -> None:
        self.bar.close()


def run_local(job: Job, store: Store, progress: bool = True, listeners: list[CellListener] | None = None) -> RunSummary:
    """Run every pending shard in this process, one worker per (model, SAE) group.

    A group whose worker cannot load fails its shards only; the other groups run.
    """
    listeners = listeners or []
    start = time.perf_counter()
    plan = Plan(job, store)
    plan.announce_complete_cells(listeners)
    bar = Progress(plan, progress)
    try:
        for group, shards in plan.by_group().items():
            try:
                worker = load_worker(job, group, store.stats_root)
            except SynthactError as e:
                plan.group_failed(shards, str(e))
                continue
            for shard in shards:
                try:
                    table = worker.run_shard(shard)
                except SynthactError as e:
                    plan.failed(shard, str(e))
                    continue
                except Exception as e:  # a bug or a device fault: keep going, report at the end
                    plan.failed(shard, e)
                    continue
                plan.finished(shard, table, listeners)
                bar.update(shard)
    finally:
        bar.close()
        plan.summary.wall_s = time.perf_counter() - start
    return plan.summary


def load_worker(job: Job, group: tuple, stats_root: str, device: str | None = None):
    """Build a group's `Worker` and check the job against what it loaded, before its first shard.

    Every failure is one SynthactError paragraph (both executors report it for the group's shards).
    """
    from synthact.worker import Worker

    model, sae = group
    try:
        worker = Worker(job, group, stats_root, device)
    except SynthactError:
        raise
    except Exception as e:  # a damaged checkpoint, a refused pickle, a device that does not exist, ...
        where = " ".join(f"{what} '{path}'" for what, path in (("model", model.local), ("SAE", sae.local)) if path)
        raise SynthactError(
            f"could not load model '{model.label}' with SAE '{sae.label}' ({type(e).__name__}: "
            f"{first_line(str(e))[:300].rstrip('.')}). Check {where or 'the job spec'}: the files must be complete "
            "(safetensors; pickled .bin checkpoints are refused), and the job's device must exist here"
        ) from None
    preflight(job, worker)
    return worker


def preflight(job: Job, worker) -> None:
    """What the spec cannot know before loading: latent ids against d_sae, n_ctx against the model's."""
    model = worker.backend.model
    if model.model.cfg.n_ctx < job.n_ctx:
        raise SynthactError(
            f"n_ctx {job.n_ctx} is longer than model '{model.label}' allows ({model.model.cfg.n_ctx}); lower n_ctx"
        )
    latents = [int(arg) for head, arg in map(parse_direction, job.directions) if head == "latent" and arg != "random"]
    for layer, loaded in worker.backend.saes.items():
        d_sae = loaded.sae.W_dec.shape[0]
        too_big = [i for i in latents if i >= d_sae]
        if too_big:
            raise SynthactError(
                f"direction latent:{too_big[0]} does not exist in SAE '{loaded.label}' with {d_sae} latents "
                f"(valid: latent:0..latent:{d_sae - 1})"
            )


def first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else ""


def describe(error: BaseException) -> str:
    """One line for a user, plus the innermost frame for a bug report."""
    frame = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
    where = f" (at {frame.filename}:{frame.lineno})" if frame else ""
    return f"{type(error).__name__}: {error}{where}"


def _notify(listeners: list[CellListener], rows: pa.Table) -> None:
    for listener in listeners:
        listener.cell_finished(rows)
