"""The Python API: load and validate a job, run it (here or on Ray), read its rows, compare, report, verify.

Everything the command line does goes through these functions; `synthact.cli` only parses arguments
and prints. Heavy libraries (torch, TransformerLens, Ray, W&B) are imported by the call that needs
them, so `import synthact` and `synthact.load_job` stay cheap. Bad input raises `SynthactError`
(a `SpecError` for a job spec) whose message says what was wrong and how to fix it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from synthact.errors import SpecError, SynthactError

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from synthact.analysis.compare import Analysis
    from synthact.analysis.report import Report
    from synthact.run.plan import RunSummary
    from synthact.run.store import Verification
    from synthact.spec import Job

def load_job(job: str | Path | Mapping | Job, overrides: list[str] | tuple[str, ...] = ()) -> Job:
    """A validated job from a YAML path, a dict of the same fields, or a `Job` (returned as it is), with `overrides`
    ("key.sub=value" strings, values in YAML: `["seed=3", "scan.steps=20"]`) applied on top.

    A dict without `name` is named "job". Raises `SpecError` naming every problem.
    """
    from synthact.spec import Job, apply_overrides, parse_job
    from synthact.spec import load_job as load_yaml

    overrides = list(overrides)
    if isinstance(job, Job):
        return parse_job(apply_overrides(job.canonical(), overrides), "job spec with " + " ".join(overrides)) \
            if overrides else job
    if isinstance(job, Mapping):
        source = "job spec (dict)" + (f" with {' '.join(overrides)}" if overrides else "")
        return parse_job(apply_overrides({"name": "job", **job}, overrides), source=source)
    if isinstance(job, (str, Path)):
        if not str(job).strip():
            raise SpecError("the job spec path is empty; pass the path of a YAML file such as jobs/smoke.yaml")
        return load_yaml(job, overrides)
    raise SpecError(f"a job is a YAML path, a dict of spec fields or a synthact Job, not {type(job).__name__}")


def grid(job: str | Path | Mapping | Job) -> pd.DataFrame:
    """One row per cell of the job's grid, one column per axis (nothing is loaded or run)."""
    import pandas as pd

    return pd.DataFrame([cell.settings() for cell in load_job(job).cells()])


def grid_size(job: str | Path | Mapping | Job) -> dict:
    """Cells, shards, curves and scan points of a job (counted, not listed)."""
    job = load_job(job)
    cells, shards = job.count()
    return {
        "cells": cells,
        "shards": shards,
        "curves": cells * job.bases_per_cell * len(job.read_layers),
        "scan_points": job.scan_points(),
    }


def memory_estimate(job: str | Path | Mapping | Job) -> str:
    """Each worker's estimated peak host and device memory and the scan batch it would use (or that it does not
    fit), from the model's and SAEs' shapes without a download; and what the job would download."""
    from synthact.inputs.memory import report

    return report(load_job(job))


def output_of(job: Job, out: str | Path | None = None) -> str:
    """Where a job writes: `out`, else the job's `output`, else runs/<job name>."""
    return str(out or job.output or f"runs/{job.name}")


@dataclass
class SweepRun:
    """What `run_job` did: the output location, the run's summary, the comparison of its rows, the differences
    between rungs and the verdicts (None if no rows), and where its W&B run went."""

    out: str
    summary: RunSummary
    comparison: pd.DataFrame | None = None
    verdicts: pd.DataFrame | None = None
    differences: pd.DataFrame | None = None
    wandb: str | None = None  # where the W&B run went and how to turn W&B off (None without W&B)
    toy: bool = False  # the job runs a toy model (which checks the pipeline, not the science)

    @property
    def ok(self) -> bool:
        """True when every shard of the sweep is written."""
        return self.summary.ok

    def rows(self, curves: bool = False) -> pd.DataFrame:
        """The sweep's rows (see `read_rows`)."""
        return read_rows(self.out, curves=curves)


def run_job(
    job: str | Path | Mapping | Job,
    out: str | Path | None = None,
    *,
    ray: str | None = None,
    wandb: bool = True,
    progress: bool = True,
    overrides: list[str] | tuple[str, ...] = (),
) -> SweepRun:
    """Run every shard of `job` not yet written into `out` (a directory or a pyarrow URI) and compare the rows.

    Calling it again with the same job and `out` resumes: finished shards are verified and skipped, damaged
    ones redone. `ray`: None runs in this process; 'local', 'auto' or a cluster address runs the same shards
    on Ray worker actors, with the same rows and the same resume. `wandb=False` turns tracking off even when
    the job asks for it. `overrides` change spec fields ("key.sub=value", see `load_job`); OUT/job.json records
    them, and a resume needs the same spec (the same overrides). Failed shards are in `SweepRun.summary.failures`
    (`SweepRun.ok` is False; `.causes()` groups them by cause); a sweep whose workers could not load at all raises
    `SynthactError` (bad input).
    """
    from synthact.run.plan import Progress
    from synthact.run.store import Store

    _require(ray, "ray")
    _require(out, "out")
    job = load_job(job, overrides)
    out = output_of(job, out)
    store = Store(out, job, overrides=list(overrides))
    shown = Progress(progress)
    with store.locked():  # one run at a time writes a local output directory
        listeners, tracker = [], None
        if job.wandb.enabled and wandb:
            from synthact.analysis.tracking import Tracker

            shown.phase("W&B: starting the run")
            tracker = Tracker(job, out, grid_size(job))
            listeners.append(tracker)
        try:
            if ray:
                from synthact.run.ray_executor import run_ray

                summary = run_ray(job, store, ray, progress=shown, listeners=listeners)
            else:
                from synthact.run.local_executor import run_local

                summary = run_local(job, store, progress=shown, listeners=listeners)
        except BaseException as e:  # Ctrl-C or an error: the W&B run keeps its history so far; a rerun continues it
            if tracker is not None:
                tracker.stop(130 if isinstance(e, KeyboardInterrupt) else 1)
            raise
    if summary.fatal:
        if tracker is not None:
            tracker.stop(1)
        redone = "".join(f"; shard {shard_id} was redone because {problem}" for shard_id, problem in summary.redone)
        raise SynthactError(f"nothing could run: {summary.fatal}{redone}")
    from synthact.analysis.cells import Sweep
    from synthact.analysis.compare import analyse

    run = SweepRun(out, summary, toy=any(m.toy for m in job.model))
    if summary.wrote_nothing:  # every shard failed: no rows to compare (the caller reports summary.causes())
        if tracker is not None:
            tracker.finish(summary.as_dict(), out)
            run.wandb = tracker.note
        return run
    shown.phase("statistics: each kind against real and the differences between rungs, with their intervals")
    sweep = Sweep.open(out)  # the bounded path: cells the tracker already aggregated are read from the cache
    analysis = None
    if not sweep.aggregates.empty:
        analysis = analyse(sweep)
        run.comparison, run.verdicts, run.differences = analysis.comparison, analysis.verdicts, analysis.differences
    if tracker is not None:
        shown.phase("W&B: logging the final tables, plots and the results artifact")
        tracker.finish(summary.as_dict(), out, sweep, analysis)
        run.wandb = tracker.note
    return run


def _require(value, name: str) -> None:
    """Refuse an empty string where a value is optional: "" would silently mean "not given"."""
    if isinstance(value, (str, Path)) and not str(value).strip():
        raise SynthactError(f"{name} is empty ('{value}'); give a value, or leave it out (None)")


def read_rows(out: str | Path, curves: bool = False) -> pd.DataFrame:
    """A sweep's rows as a pandas DataFrame, one row per curve; the curve columns only with `curves=True`."""
    from synthact.results import read_rows as read

    return read(out, curves)


def read_table(out: str | Path, columns: list[str] | None = None) -> pa.Table:
    """A sweep's rows as an Arrow table, only the named `columns` when given (all by default)."""
    from synthact.results import read_table as read

    return read(out, columns)


def compare(out: str | Path, csv: str | Path | None = None, ray: str | None = None
            ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each kind against real along both axes (KS, Wasserstein, difference of means with CI) and the verdicts
    on the paper's findings: (comparison, verdicts). `csv` also saves the comparison there; `ray` aggregates the
    cells on a Ray cluster (shared storage). Memory is bounded by one panel, whatever the sweep's size."""
    from synthact.analysis.compare import compare as compare_rows

    _require(csv, "csv")
    _require(ray, "ray")
    return compare_rows(out, csv, ray)


def analyse(out: str | Path, ray: str | None = None) -> Analysis:
    """Everything `synthact compare` shows of a sweep, as one `Analysis`: `.comparison` and `.verdicts` (as
    `compare` returns them), `.differences` (as `differences` returns it), `.diagnostics` (per cell, the
    statistics of the built codes against real codes) and `.text()` (the printed tables)."""
    from synthact.analysis.compare import analyse as analyse_sweep

    _require(ray, "ray")
    return analyse_sweep(out, ray)


def differences(out: str | Path, csv: str | Path | None = None, ray: str | None = None) -> pd.DataFrame:
    """The differences between rungs of the ladder (and the paper's structured vs baseline), per panel: for each
    pair of kinds, KS(b, real) - KS(a, real) and mean(b) - mean(a) with 95% intervals (paired over bases where
    the kinds were built for the same bases), permutation p-values and Holm-adjusted ones across the grid, and
    the verdict sentence. `csv` also saves it there. Computed per panel and cached like `compare`'s numbers."""
    from synthact.analysis.compare import save_csv

    _require(csv, "csv")
    table = analyse(out, ray).differences
    if csv:
        save_csv(table, csv, "differences")
    return table


def report(out: str | Path, html: str | Path | None = None, ray: str | None = None) -> Report:
    """Write the figures (OUT/report/*.png) and one self-contained HTML page (default OUT/report.html)."""
    from synthact.analysis.report import build_report

    _require(html, "html")
    _require(ray, "ray")
    return build_report(out, html, ray)


def verify(out: str | Path, deep: bool = False, recompute: int | None = None) -> Verification:
    """Check every shard the manifest records (present, readable, its rows; `deep` reads every row) and list
    stray files. `recompute`: also rebuild and rescan that many bases per cell from their rows alone (0 or True:
    all; it loads the model) into `.recomputed`, one `CellRecompute` per cell. Raises `SynthactError` when `out` is
    not a sweep's output directory."""
    from synthact.layout import resolve_location
    from synthact.manifest import read_claim
    from synthact.run.store import verify as verify_out

    fs, root, uri = resolve_location(out)
    if read_claim(fs, root, uri) is None:
        raise SynthactError(f"'{uri}' is not a synthact output directory (no job.json)")
    found = verify_out(out, deep=deep)
    if isinstance(recompute, bool):  # True: every base
        recompute = 0 if recompute else None
    if recompute is not None:
        from synthact.run.recompute import recompute as recompute_rows

        found.recomputed = recompute_rows(out, int(recompute))
    return found


def field_reference() -> str:
    """Every job spec field with its type, default and description (Markdown; docs/spec.md)."""
    from synthact.spec import field_reference as reference

    return reference()
