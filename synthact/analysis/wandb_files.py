"""A W&B run read back from its local files (an offline run, or an online run's local copy), for tests and for
checking a sweep by hand: its id, config, summary, history, tables and logged artifacts.

It reads the run's `.wandb` record log (LevelDB log format, W&B's protobuf records) directly, so it needs
no network and no W&B server.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from pathlib import Path

import pandas as pd


def read_offline_run(run_dir: str | Path, wait_s: float = 30.0) -> dict:
    """An offline run from its files: {"id", "config", "summary", "history" (list of dicts), "tables" {key: DataFrame},
    "artifacts" (list of {"name", "type", "metadata", "files" {path in the artifact: {"size", "digest",
    "local_path", "ref"}}}), "finished"}.

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
    artifacts: list[dict] = []
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
        elif kind == "artifact":
            artifacts.append(_artifact(record.artifact))
    config.pop("_wandb", None)
    return {"config": config, "summary": summary, "history": history, "tables": _tables(run_dir, history),
            "artifacts": artifacts, "finished": finished, "id": run_id}


def _artifact(record) -> dict:
    files = {c.path: {"size": c.size, "digest": c.digest, "local_path": c.local_path, "ref": c.ref}
             for c in record.manifest.contents}
    return {"name": record.name, "type": record.type, "metadata": json.loads(record.metadata or "{}"), "files": files}


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
