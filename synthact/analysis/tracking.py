"""Weights & Biases: one run per sweep, watchable live, never a reason for a sweep to fail.

- config = the full job spec (`job`) and the grid's size (`grid`);
- one run per output directory: its id is kept in OUT/wandb_run.json, so rerunning the same command to
  resume a sweep continues the same run (`resume="allow"`) instead of starting another;
- as each cell finishes: a row per read layer in the incremental `cells_live` table (every grid axis
  its own column, plus the cell's aggregates) and progress counters; the native W&B line plots of the
  panels that changed (mean L2 curve per kind, ECDFs of the distributed metrics per kind), redrawn at
  most every `figure_interval_s`;
- at the end, from the cached per-cell aggregates (cells.Sweep, the bounded path): the complete `cells`
  table, the kind-vs-real `comparison` (with its intervals), the `differences` between rungs, the
  replication `verdicts` and the target codes' `diagnostics` (W&B tables a user can group and filter), every panel's line plots, the KS heatmap (an image: W&B has no native heatmap), and summary
  metrics (the driver's numbers as `sweep/<name>`, `total/*`, `kind/<kind>/<metric>_mean`,
  `replication/yes|no|inconclusive`).

No API key (env, netrc) and no WANDB_MODE set -> offline mode, files under OUT/wandb/ (sync later with
`wandb sync OUT/wandb/offline-run-*`; the offline runs of a resumed sweep share one id and sync into one
run). Any W&B failure becomes one warning and turns tracking off. `read_offline_run` reads a run back from
its files (for tests and for checking a sweep by hand).
"""

from __future__ import annotations

import json
import math
import netrc
import os
import struct
import time
import uuid
import warnings
import zlib
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
from synthact.errors import SynthactError
from synthact.layout import join, resolve_location, write_file_atomic
from synthact.results import CellRows
from synthact.spec import Job

FIGURE_INTERVAL_S = 30.0  # live plots are redrawn at most this often
RUN_ID_FILE = "wandb_run.json"
ECDF_POINTS = 101  # an ECDF is logged as this many quantiles per kind, whatever the number of curves


class TrackingWarning(UserWarning):
    """W&B did not work; the sweep and its Parquet output carry on without it."""


class Tracker:
    """Logs one sweep to one W&B run. Every method is safe to call whatever state W&B is in."""

    def __init__(self, job: Job, out_dir: str | Path, grid: dict, enabled: bool = True,
                 figure_interval_s: float = FIGURE_INTERVAL_S):
        self.job = job
        self.run = None
        self.figure_interval_s = figure_interval_s
        self._last_figures = -math.inf
        self._stale: set[str] = set()
        self.cells_done = 0
        self.curves_done = 0
        self.sweep = Sweep(out_dir)  # the finished cells' aggregates (small; values and bands stay on disk)
        if not (enabled and job.wandb.enabled):
            return
        self._guard("start", lambda: self._start(out_dir, grid))

    # ------------------------------------------------------------------ the driver's interface

    def cell_finished(self, cell: CellRows) -> None:
        """Log a finished cell (all its read layers): a live table row each, its panel's plots, progress."""
        if self.run is not None:
            self._guard("log a finished cell", lambda: self._cell_finished(cell))

    def finish(self, summary: dict, out_dir: str | Path, sweep: Sweep | None = None,
               analysis: Analysis | None = None) -> None:
        """Log the final tables, comparison, plots and summary metrics from the aggregates; close the run.

        `sweep` and `analysis` (its `compare.analyse`), when the caller already has them."""
        if self.run is not None:
            self._guard("log the final results", lambda: self._finish(summary, out_dir, sweep, analysis))
        if self.run is not None:
            run, self.run = self.run, None
            self._guard("close the run", run.finish)

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
            run, self.run = self.run, None
            if run is not None:
                try:
                    run.finish(exit_code=1)
                except Exception:  # noqa: BLE001 - already warned once
                    pass

    def _start(self, out_dir: str | Path, grid: dict) -> None:
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
            id=run_id(out_dir),
            resume="allow",
            dir=wandb_dir(out_dir),
            config={"job": self.job.canonical(), "grid": dict(grid)},
            mode=mode,
            settings=wandb.Settings(console="off"),
            reinit="create_new",
        )
        self.live = wandb.Table(columns=CELL_COLUMNS, log_mode="INCREMENTAL", allow_mixed_types=True)

    def _cell_finished(self, cell: CellRows) -> None:
        rows = self.sweep.add(cell)
        if rows.empty:
            return
        for record in rows[CELL_COLUMNS].itertuples(index=False):
            self.live.add_data(*[_plain(v) for v in record])
        self.cells_done += 1
        self.curves_done += int(rows.curves.sum())
        data = {"cells_live": self.live, "progress/cells_done": self.cells_done, "progress/curves_done": self.curves_done}
        self._stale |= {figures.panel_slug(panel, axis) for axis in figures.SUBJECT
                        for panel, _ in aggregate.panels(rows, axis)}  # the cell's panels, without the sweep's
        if self._stale and time.monotonic() - self._last_figures >= self.figure_interval_s:
            data |= panel_plots(self.sweep, self._stale)
            self._stale.clear()
            self._last_figures = time.monotonic()
        self.run.log(data)

    def _finish(self, summary: dict, out_dir: str | Path, sweep: Sweep | None, analysis: Analysis | None) -> None:
        import wandb

        numbers = _flatten(summary, "sweep/")  # prefixed: the driver's "cells" count must not clash with the table
        self.run.summary.update({k: v for k, v in numbers.items() if isinstance(v, (int, float, str, bool))})
        try:
            sweep = sweep or Sweep.open(out_dir)
        except SynthactError:  # no results at all (every shard failed): the driver's numbers are all there is
            return
        if sweep.aggregates.empty:
            return
        analysis = analysis or analyse(sweep)
        comparison, verdicts = analysis.comparison, analysis.verdicts
        data = {"cells": _table(sweep.aggregates[CELL_COLUMNS]), "comparison": _table(comparison),
                "differences": _table(analysis.differences), "verdicts": _table(verdicts)}
        if not analysis.diagnostics.empty:
            data["diagnostics"] = _table(analysis.diagnostics)
        data |= panel_plots(sweep)
        if not comparison.empty:
            data["comparison_ks"] = wandb.Image(_image(figures.comparison_figure(comparison)))
        self.run.log(data)
        self.run.summary.update(summary_metrics(sweep.aggregates, verdicts))


CELL_COLUMNS = ["cell_id", *results.AXES, "curves"] + [
    f"{m}_{s}" for m in results.AGGREGATED for s in STATS
]


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


def panel_plots(sweep: Sweep, only: set[str] | None = None) -> dict:
    """Native W&B line plots per panel: 'curves/<slug>' (mean L2 curve per kind) and
    'distributions/<slug>/<metric>' (each kind's ECDF, as ECDF_POINTS quantiles)."""
    import wandb

    plots = {}
    for axis, panel, group, title, slug in figures.figure_panels(sweep.aggregates):
        if only is not None and slug not in only:
            continue
        reals, others = figures.ordered(group, axis)
        cells = reals + others
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


def run_id(out_dir: str | Path) -> str:
    """The W&B run id of an output directory: made on the first run, kept in OUT/wandb_run.json, reused on resume."""
    fs, root, _ = resolve_location(out_dir)
    path = join(root, RUN_ID_FILE)
    try:
        with fs.open_input_stream(path) as f:
            return str(json.loads(f.read())["id"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    new = uuid.uuid4().hex[:12]
    write_file_atomic(fs, path, json.dumps({"id": new}).encode())
    return new


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
    """OUT/ for a local output directory (W&B adds wandb/); W&B's default for a remote URI."""
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


# --------------------------------------------------------------------------- reading a run back


def read_offline_run(run_dir: str | Path, wait_s: float = 30.0) -> dict:
    """An offline run from its files: {"id", "config", "summary", "history" (list of dicts), "tables" {key: DataFrame},
    "finished"}.

    `tables` holds each table key's last logged version, or for an incremental table all its
    increments concatenated, with values exactly as logged (object columns, None for null).
    Reads the run's `.wandb` record log (LevelDB log format) directly. W&B's service may still be
    writing the file after `run.finish()` returns, so this waits up to `wait_s` for the run's exit
    record; a run that never finished (a crash) is read as far as it goes.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    run_dir = Path(run_dir)
    files = list(run_dir.glob("run-*.wandb"))
    if len(files) != 1:
        raise FileNotFoundError(f"expected one run-*.wandb file in {run_dir}, found {len(files)}")
    deadline = time.monotonic() + wait_s
    while True:
        records = []
        for payload in _log_records(files[0].read_bytes()):
            record = pb.Record()
            record.ParseFromString(payload)
            records.append(record)
        finished = any(r.WhichOneof("record_type") == "exit" for r in records)
        if finished or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    config: dict = {}
    summary: dict = {}
    history: list[dict] = []
    run_id = None
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run_id = record.run.run_id
            _apply(config, record.run.config.update)
        elif kind == "config":
            _apply(config, record.config.update)
        elif kind == "summary":
            _apply(summary, record.summary.update)
        elif kind == "history":
            step: dict = {}
            _apply(step, record.history.item)
            history.append(step)
    config.pop("_wandb", None)
    return {"config": config, "summary": summary, "history": history, "tables": _tables(run_dir, history),
            "finished": finished, "id": run_id}


def _apply(target: dict, items) -> None:
    for item in items:
        keys = list(item.nested_key) or [item.key]
        node = target
        for key in keys[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[keys[-1]] = json.loads(item.value_json)


def _tables(run_dir: Path, history: list[dict]) -> dict[str, pd.DataFrame]:
    parts: dict[str, list[pd.DataFrame]] = {}
    for step in history:
        for key, value in step.items():
            if isinstance(value, dict) and value.get("_type") in ("table-file", "incremental-table-file"):
                data = json.loads((run_dir / "files" / value["path"]).read_text())
                table = pd.DataFrame(data["data"], columns=data["columns"], dtype=object)
                if value["_type"] == "table-file":
                    parts[key] = [table]
                else:
                    parts.setdefault(key, []).append(table)
    return {k: pd.concat(v, ignore_index=True) for k, v in parts.items()}


def _log_records(data: bytes):
    """Records of a W&B `.wandb` file: a 7-byte header, then LevelDB log blocks of 32 KiB."""
    if data[:4] != b":W&B":
        raise ValueError("not a W&B run file (bad header)")
    block, pos, pending = 32768, 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        checksum, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if pos + 7 + length > len(data):  # the writer is mid-record
            return
        payload = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        if zlib.crc32(payload, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != checksum:
            raise ValueError(f"corrupt W&B run file: checksum mismatch at byte {pos}")
        if kind == 1:
            yield payload
        elif kind == 2:
            pending = payload
        elif kind == 3:
            pending += payload
        elif kind == 4:
            yield pending + payload
