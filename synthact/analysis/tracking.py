"""Weights & Biases: one run per sweep, watchable live, never a reason for a sweep to fail.

- config = the full job spec (`job`) and the grid's size (`grid`);
- one run per output directory, resumes included (analysis/wandb_run.py): OUT/wandb_run.json keeps the run's id
  and the step of its next history record, so a rerun continues the same run (`resume="allow"`) and its
  history goes on from that step, offline too;
- as each cell finishes: its rows (one per read layer: every grid axis its own column, plus the cell's
  aggregates) join the incremental `cells_live` table, logged in at most LIVE_INCREMENTS increments whatever
  the grid's size (W&B shows only the last 100 increments of a table), progress counters, and the native W&B
  line plots of the panels that changed (mean L2 curve per kind, ECDFs per kind), at most every
  `figure_interval_s`;
- at the end, from the cached per-cell aggregates (cells.Sweep, the bounded path): the complete `cells`
  table, the kind-vs-real `comparison` (with its intervals), the `differences` between rungs, the
  replication `verdicts` and the target codes' `diagnostics` (W&B tables a user can group and filter), every
  panel's line plots, the KS heatmaps (images: W&B has no native heatmap), summary metrics (the driver's
  numbers as `sweep/<name>`, `total/*`, `kind/<kind>/<metric>_mean`, `replication/yes|no|inconclusive`), and
  the results as an Artifact `<job name>-results`: the Parquet shards the manifest lists and job.json (files
  of a local OUT, references for a remote one).

No API key (env, netrc) and no WANDB_MODE set -> offline mode, files under OUT/wandb/; `Tracker.note` says where
the run went and how to turn tracking off, for the run's summary. Any W&B failure becomes one warning and turns
tracking off. analysis/wandb_files.py reads a run back from its files.
"""

from __future__ import annotations

import math
import netrc
import os
import time
import warnings
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import pyarrow.fs as pafs

from synthact import results
from synthact.analysis import aggregate, figures
from synthact.analysis.cells import Sweep
from synthact.analysis.compare import Analysis, analyse
from synthact.analysis.stats import STATS
from synthact.analysis.wandb_run import run_record, save_record
from synthact.errors import SynthactError
from synthact.layout import JOB_JSON, join, resolve_location
from synthact.manifest import read_manifest
from synthact.results import CellRows
from synthact.spec import Job

FIGURE_INTERVAL_S = 30.0  # live plots are redrawn at most this often
ECDF_POINTS = 101  # an ECDF is logged as this many quantiles per kind, whatever the number of curves
LIVE_INCREMENTS = 90  # the live table's increments per run, at most (W&B shows a table's last 100)
TURN_OFF = "turn W&B off with --no-wandb or `wandb: false` in the spec"


class TrackingWarning(UserWarning):
    """W&B did not work; the sweep and its Parquet output carry on without it."""


class Tracker:
    """Logs one sweep to one W&B run. Every method is safe to call whatever state W&B is in.

    A damaged or foreign OUT/wandb_run.json is the one error it raises (a SynthactError, before W&B starts)."""

    def __init__(self, job: Job, out_dir: str | Path, grid: dict, enabled: bool = True,
                 figure_interval_s: float = FIGURE_INTERVAL_S):
        self.job, self.out, self.grid = job, out_dir, dict(grid)
        self.run = None
        self.note: str | None = None  # where the run went and how to turn tracking off (for the run's summary)
        self.figure_interval_s = figure_interval_s
        self._last_figures = -math.inf
        self._stale: set[tuple] = set()
        self.cells_total = max(int(grid.get("cells", 0)), 1)
        self.cells_done = self.curves_done = 0
        self.increments = self._pending = 0  # live-table increments logged, cells not yet in one
        self.sweep = Sweep(out_dir)  # the finished cells' aggregates (small; values and bands stay on disk)
        if not (enabled and job.wandb.enabled):
            return
        self.record = run_record(out_dir, job.spec_hash)
        self._guard("start", self._start)

    # ------------------------------------------------------------------ the driver's interface

    def cell_finished(self, cell: CellRows) -> None:
        """Log a finished cell (all its read layers): live table rows, its panel's plots, progress."""
        if self.run is not None:
            self._guard("log a finished cell", lambda: self.log_cell(self.sweep.add(cell)))

    def finish(self, summary: dict, out_dir: str | Path, sweep: Sweep | None = None,
               analysis: Analysis | None = None) -> None:
        """Log the final tables, comparison, plots, results artifact and summary metrics; close the run.

        `sweep` and `analysis` (its `compare.analyse`), when the caller already has them."""
        if self.run is not None:
            self._guard("log the final results", lambda: self._finish(summary, out_dir, sweep, analysis))
        self.stop()

    def stop(self, exit_code: int = 0) -> None:
        """Close the run (with `exit_code`, e.g. 130 for a sweep interrupted by Ctrl-C: its history so far stays,
        and the rerun that resumes the sweep continues it). Cells not yet in the live table go there first."""
        if self.run is not None and self._pending:
            self._guard("log the last cells", lambda: self._log(self._live()))
        if self.run is not None:
            run, self.run = self.run, None
            self._guard("close the run", lambda: run.finish(exit_code=exit_code))

    # ------------------------------------------------------------------ internals

    def _guard(self, what: str, action) -> None:
        try:
            action()
        except Exception as e:  # noqa: BLE001 - W&B raises many types; none may stop a sweep
            warnings.warn(
                f"W&B could not {what} ({type(e).__name__}: {e}); tracking is off for the rest of this sweep, "
                "the Parquet results are unaffected. Check the network, WANDB_API_KEY or quota, or pass --no-wandb.",
                TrackingWarning,
                stacklevel=3,
            )
            self.note = None
            run, self.run = self.run, None
            if run is not None:
                try:
                    run.finish(exit_code=1)
                except Exception:  # noqa: BLE001 - already warned once
                    pass

    def _start(self) -> None:
        import wandb

        spec = self.job.wandb
        # Passed explicitly: W&B reads its environment only once per process.
        mode = os.environ.get("WANDB_MODE") or ("online" if has_api_key() else "offline")
        self.run = wandb.init(
            project=spec.project or os.environ.get("WANDB_PROJECT") or "synthact",
            entity=spec.entity,
            group=spec.group,
            tags=list(spec.tags) or None,
            name=self.job.name,
            id=self.record.id,
            resume="allow",
            dir=wandb_dir(self.out),
            config={"job": self.job.canonical(), "grid": self.grid},
            mode=mode,
            settings=wandb.Settings(console="off"),
            reinit="create_new",
        )
        self.step = max(self.record.step, int(self.run.step or 0))  # online, W&B knows where the run stopped
        self.live = wandb.Table(columns=CELL_COLUMNS, log_mode="INCREMENTAL", allow_mixed_types=True)
        self.note = where_note(self.run, mode)

    def _log(self, data: dict) -> None:
        """One history record at the run's next step, that step recorded first (a killed sweep never reuses it)."""
        self.record.step = self.step + 1
        save_record(self.out, self.record)
        self.run.log(data, step=self.step)
        self.step += 1

    def log_cell(self, rows: pd.DataFrame) -> None:
        """A finished cell's aggregate rows (one per read layer): into the live table, progress, stale plots."""
        if rows.empty:
            return
        for record in rows[CELL_COLUMNS].itertuples(index=False):
            self.live.add_data(*[_plain(v) for v in record])
        self.cells_done += 1
        self.curves_done += int(rows.curves.sum())
        self._pending += 1
        data = {"progress/cells_done": self.cells_done, "progress/curves_done": self.curves_done}
        if self.increments * self.cells_total < (LIVE_INCREMENTS - 1) * self.cells_done:  # its share, less the last
            data |= self._live()
        self._stale |= {panel_key(axis, panel) for axis in figures.SUBJECT for panel, _ in aggregate.panels(rows, axis)}
        if self._stale and time.monotonic() - self._last_figures >= self.figure_interval_s:
            data |= panel_plots(self.sweep, self._stale)
            self._stale.clear()
            self._last_figures = time.monotonic()
        self._log(data)

    def _live(self) -> dict:
        """The live table's increment (the rows added since the last), where there are any."""
        if not self._pending:
            return {}
        self.increments += 1
        self._pending = 0
        return {"cells_live": self.live}

    def _finish(self, summary: dict, out_dir: str | Path, sweep: Sweep | None, analysis: Analysis | None) -> None:
        import wandb

        numbers = _flatten(summary, "sweep/")  # prefixed: the driver's "cells" count must not clash with the table
        self.run.summary.update({k: v for k, v in numbers.items() if isinstance(v, (int, float, str, bool))})
        data = self._live()
        try:
            sweep = sweep or Sweep.open(out_dir)
        except SynthactError:  # no results at all (every shard failed): the driver's numbers are all there is
            sweep = None
        if sweep is not None and not sweep.aggregates.empty:
            analysis = analysis or analyse(sweep)
            data |= {"cells": _table(sweep.aggregates[CELL_COLUMNS]), "comparison": _table(analysis.comparison),
                     "differences": _table(analysis.differences), "verdicts": _table(analysis.verdicts)}
            if not analysis.diagnostics.empty:
                data["diagnostics"] = _table(analysis.diagnostics)
            data |= panel_plots(sweep)
            for name, _, figure in figures.comparison_figures(analysis.comparison):
                data[f"comparison_ks/{name}"] = wandb.Image(_image(figure))
            self.run.summary.update(summary_metrics(sweep.aggregates, analysis.verdicts))
            self.run.log_artifact(results_artifact(self.job, out_dir))
        if data:
            self._log(data)


CELL_COLUMNS = ["cell_id", *results.AXES, "curves"] + [
    f"{m}_{s}" for m in results.AGGREGATED for s in STATS
]


def where_note(run, mode: str) -> str | None:
    """One line for the run's summary: where the W&B run went, and how to turn tracking off."""
    if mode == "disabled" or getattr(run, "disabled", False):
        return None
    if mode == "offline":
        folder = Path(run.dir).parent
        near = os.path.relpath(folder)
        folder = near if not near.startswith("..") else folder
        return f"W&B: logged offline to {folder}\n  upload it with `wandb sync {folder}`; {TURN_OFF}"
    return f"W&B: {run.url}\n  {TURN_OFF}"


def results_artifact(job: Job, out_dir: str | Path):
    """The sweep's results as a W&B Artifact: every Parquet shard the manifest lists and job.json, under their
    paths in OUT. A local OUT's files are added as they are (not copied: `wandb sync` reads them from OUT); a
    remote OUT's are references to their URIs (W&B stores the URIs, not the bytes)."""
    import wandb

    fs, root, uri = resolve_location(out_dir)
    records = sorted(read_manifest(fs, root).records.values(), key=lambda r: r.shard_id)
    artifact = wandb.Artifact(
        name=_artifact_name(f"{job.name}-results"), type="sweep-results",
        description=f"synthact sweep '{job.name}': Parquet shards (one row per curve, docs/results.md) and job.json",
        metadata={"spec_hash": job.spec_hash, "shards": len(records), "rows": sum(r.rows for r in records),
                  "out": uri},
    )
    claimed = fs.get_file_info(join(root, JOB_JSON)).type == pafs.FileType.File
    files = [r.file for r in records] + ([JOB_JSON] if claimed else [])
    if isinstance(fs, pafs.LocalFileSystem):
        for name in files:
            artifact.add_file(str(Path(root) / name), name=name, policy="immutable")
    else:
        base = uri.split("?", 1)[0].rstrip("/")
        for name in files:
            artifact.add_reference(f"{base}/{name}", name=name, checksum=False)
    return artifact


def _artifact_name(name: str) -> str:
    """W&B artifact names: letters, digits, '-', '_' and '.'."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def summary_metrics(aggregates: pd.DataFrame, verdicts: pd.DataFrame) -> dict:
    """Totals, per base kind and per target kind means of each metric, and counts of replication verdicts."""
    out = {"total/cells": int(aggregates.cell_id.nunique()), "total/curves": int(aggregates.curves.sum())}
    for prefix, column in (("kind", "base_kind"), ("target", "target_kind")):
        for kind, group in aggregates[aggregates[column].notna()].groupby(column, sort=True):
            for metric in results.AGGREGATED:
                counts, means = group[f"{metric}_count"].astype(float), group[f"{metric}_mean"].astype(float)
                if counts.sum() > 0:
                    out[f"{prefix}/{kind}/{metric}_mean"] = float((counts * means.fillna(0)).sum() / counts.sum())
    checks = verdicts[verdicts.check != aggregate.CHECK_CLOSEST].verdict.tolist()
    for verdict in ("YES", "NO", "INCONCLUSIVE"):
        out[f"replication/{verdict.lower()}"] = checks.count(verdict)
    return out


def panel_key(axis: str, panel: dict) -> tuple:
    """A panel's identity (its axis and axes' values), whatever the rest of the sweep."""
    return axis, tuple(sorted(panel.items()))


def panel_plots(sweep: Sweep, only: set[tuple] | None = None) -> dict:
    """Native W&B line plots per panel (`only`: those `panel_key`s): 'curves/<slug>' (mean L2 curve per kind) and
    'distributions/<slug>/<metric>' (each kind's ECDF, as ECDF_POINTS quantiles)."""
    import wandb

    plots = {}
    for axis, panel, group, title, slug in figures.figure_panels(sweep.aggregates):
        if only is not None and panel_key(axis, panel) not in only:
            continue
        reals, others = figures.ordered(group, axis)
        cells = others + reals  # real last, as in the figures
        labels = ["real" if c in reals else aggregate.variant_label(c, axis) for c in cells]
        bands = sweep.bands([c["cell_id"] for c in cells])
        bands = bands[bands.read_layer == panel["read_layer"]].set_index("cell_id") if not bands.empty else bands
        if not bands.empty:
            curves = [(label, bands.loc[c["cell_id"], "mean"]) for c, label in zip(cells, labels) if c["cell_id"] in bands.index]
            plots[f"curves/{slug}"] = wandb.plot.line_series(
                xs=[list(range(len(m))) for _, m in curves], ys=[m.tolist() for _, m in curves],
                keys=[label for label, _ in curves], title=f"mean L2 curve: {title}", xname="scan step n")
        probability = np.linspace(0, 1, ECDF_POINTS)
        for metric in figures.DISTRIBUTED:
            series = [(label, sweep.values(c["cell_id"], panel["read_layer"], metric)) for c, label in zip(cells, labels)]
            series = [(label, v) for label, v in series if v.size]
            if series:
                plots[f"distributions/{slug}/{metric}"] = wandb.plot.line_series(
                    xs=[np.quantile(v, probability).tolist() for _, v in series], ys=[probability.tolist()] * len(series),
                    keys=[label for label, _ in series], title=f"ECDF of {metric}: {title}", xname=metric)
    return plots


# --------------------------------------------------------------------------- helpers


def has_api_key() -> bool:
    """Whether W&B has credentials: WANDB_API_KEY, an identity token file, or a netrc entry for its host."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return bool(path.exists() and netrc.netrc(path).authenticators(host))
    except (netrc.NetrcParseError, OSError):
        return False


def wandb_dir(out_dir: str | Path) -> str | None:
    """OUT/ for a local output directory (W&B adds wandb/); W&B's default (./wandb) for a remote URI."""
    fs, path, _ = resolve_location(out_dir)
    if not isinstance(fs, pafs.LocalFileSystem):
        return None
    Path(path).mkdir(parents=True, exist_ok=True)
    return path


def _plain(value):
    """A JSON-able cell value: None for NaN/null, Python scalars for numpy ones."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, (np.generic,)):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _table(frame: pd.DataFrame):
    import wandb

    return wandb.Table(columns=list(frame.columns), data=[[_plain(v) for v in r] for r in frame.itertuples(index=False)],
                       allow_mixed_types=True)


def _image(figure):
    """A matplotlib figure as a PIL image (what wandb.Image takes without plotly)."""
    import io

    from PIL import Image

    return Image.open(io.BytesIO(figures.png_bytes(figure)))


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out |= _flatten(v, key + "/") if isinstance(v, dict) else {key: v}
    return out
