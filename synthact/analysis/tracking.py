"""Weights & Biases: one run per sweep, watchable live, never a reason for a sweep to fail.

- config = the full job spec (`job`) and the grid's size (`grid`);
- as each cell finishes: a row per read layer in the incremental `cells_live` table (every grid axis
  its own column, plus the cell's aggregates) and progress counters; the mean-curve and distribution
  figures of the panels that changed, redrawn at most every `figure_interval_s`;
- at the end, from the Parquet results: the complete `cells` table, the kind-vs-real `comparison`,
  the replication `verdicts`, every panel's figures, and summary metrics (the driver's numbers as
  `sweep/<name>`, `total/*`, `kind/<kind>/<metric>_mean`, `replication/yes|no|inconclusive`).

No API key (env, netrc) and no WANDB_MODE set -> offline mode, files under OUT/wandb/ (sync later with
`wandb sync OUT/wandb/offline-run-*`). Any W&B failure becomes one warning and turns tracking off.
`read_offline_run` reads a run back from its files (for tests and for checking a sweep by hand).
"""

from __future__ import annotations

import json
import math
import netrc
import os
import struct
import time
import warnings
import zlib
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs

from synthact import results
from synthact.analysis import aggregate, figures
from synthact.errors import SynthactError
from synthact.layout import resolve_location
from synthact.spec import Job

FIGURE_INTERVAL_S = 30.0  # live figures are redrawn at most this often (drawing costs ~0.2 s a figure)


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
        self._rows: list[pd.DataFrame] = []  # finished cells' rows, without curves (memory stays small)
        self._bands: list[pd.DataFrame] = []  # their mean curves and bands
        if not (enabled and job.wandb.enabled):
            return
        self._guard("start", lambda: self._start(out_dir, grid))

    # ------------------------------------------------------------------ the driver's interface

    def cell_finished(self, cell_rows: pa.Table) -> None:
        """Log a finished cell (all its read layers): a live table row each, its panel's figures, progress."""
        if self.run is not None:
            self._guard("log a finished cell", lambda: self._cell_finished(cell_rows))

    def finish(self, summary: dict, out_dir: str | Path, comparison: pd.DataFrame | None = None) -> None:
        """Log the final tables, comparison, figures and summary metrics from the Parquet results; close the run.

        `comparison` is `aggregate.compare_kinds` of the results, when the caller already has it."""
        if self.run is not None:
            self._guard("log the final results", lambda: self._finish(summary, out_dir, comparison))
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
            dir=wandb_dir(out_dir),
            config={"job": self.job.canonical(), "grid": dict(grid)},
            mode=mode,
            settings=wandb.Settings(console="off"),
            reinit="create_new",
        )
        self.live = wandb.Table(columns=CELL_COLUMNS, log_mode="INCREMENTAL", allow_mixed_types=True)

    def _cell_finished(self, cell_rows: pa.Table) -> None:
        rows = _frame(cell_rows)
        if rows.empty:
            return
        cells = aggregate.cell_aggregates(rows)
        for record in cells[CELL_COLUMNS].itertuples(index=False):
            self.live.add_data(*[_plain(v) for v in record])
        self.cells_done += 1
        self.curves_done += len(rows)
        data = {"cells_live": self.live, "progress/cells_done": self.cells_done, "progress/curves_done": self.curves_done}
        self._rows.append(rows.drop(columns="l2_curve", errors="ignore"))
        self._bands.append(aggregate.curve_bands(rows))
        seen = pd.concat(self._rows)
        cell_id = rows.cell_id.iloc[0]
        self._stale |= {slug for _, _, group, _, slug in figures.figure_panels(seen) if cell_id in set(group.cell_id)}
        if self._stale and time.monotonic() - self._last_figures >= self.figure_interval_s:
            data |= _images(seen, pd.concat(self._bands), self._stale)
            self._stale.clear()
            self._last_figures = time.monotonic()
        self.run.log(data)

    def _finish(self, summary: dict, out_dir: str | Path, comparison: pd.DataFrame | None) -> None:
        import wandb

        numbers = _flatten(summary, "sweep/")  # prefixed: the driver's "cells" count must not clash with the table
        self.run.summary.update({k: v for k, v in numbers.items() if isinstance(v, (int, float, str, bool))})
        try:
            rows = results.read_rows(out_dir, curves=True)
        except SynthactError:  # no rows at all (every shard failed): the driver's numbers are all there is
            return
        cells = aggregate.cell_aggregates(rows)
        if comparison is None:
            comparison = aggregate.compare_kinds(rows)
        verdicts = aggregate.verdicts(comparison)
        data = {"cells": _table(cells[CELL_COLUMNS]), "comparison": _table(comparison), "verdicts": _table(verdicts)}
        data |= _images(rows, aggregate.curve_bands(rows))
        if not comparison.empty:
            data["comparison_ks"] = wandb.Image(_image(figures.comparison_figure(comparison)))
        self.run.log(data)
        self.run.summary.update(summary_metrics(rows, verdicts))


CELL_COLUMNS = ["cell_id", *results.AXES, "curves"] + [
    f"{m}_{s}" for m in results.AGGREGATED for s in aggregate.STATS
]


def summary_metrics(rows: pd.DataFrame, verdicts: pd.DataFrame) -> dict:
    """Totals, per base kind and per target kind means of each metric, and counts of replication verdicts."""
    out = {"total/cells": int(rows.cell_id.nunique()), "total/curves": int(len(rows))}
    for prefix, column in (("kind", "base_kind"), ("target", "target_kind")):
        for kind, group in rows.groupby(column, sort=True):
            for metric in results.AGGREGATED:
                values = aggregate.finite(group[metric])
                if values.size:
                    out[f"{prefix}/{kind}/{metric}_mean"] = float(values.mean())
    checks = verdicts[verdicts.check != aggregate.CHECK_CLOSEST].verdict.tolist()
    for verdict in ("YES", "NO", "INCONCLUSIVE"):
        out[f"replication/{verdict.lower()}"] = checks.count(verdict)
    return out


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


def _frame(table: pa.Table) -> pd.DataFrame:
    wanted = ["cell_id", *results.AXES, *results.METRICS, "l2_curve"]
    return table.select([c for c in wanted if c in table.column_names]).to_pandas()


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


def _images(rows: pd.DataFrame, bands: pd.DataFrame, only: set[str] | None = None) -> dict:
    """W&B images of the panels' figures, keyed 'curves/<slug>' and 'distributions/<slug>'."""
    import wandb

    images = {}
    for title, drawn in figures.panel_figures(rows, bands, only):
        for name, _, figure in drawn:
            images[name.replace("_", "/", 1)] = wandb.Image(_image(figure), caption=title)
    return images


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
    """An offline run from its files: {"config", "summary", "history" (list of dicts), "tables" {key: DataFrame}}.

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
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
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
            "finished": finished}


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
