"""The W&B run of an output directory: OUT/wandb_run.json, which keeps one sweep in one W&B run across resumes.

The file holds the run's `id`, the `step` its next history record takes (so a resumed run's history goes on
where the last one stopped, offline too, where W&B cannot know it) and the `spec_hash` of the sweep it
belongs to. It is read strictly: a damaged file, an id that is not a safe W&B run id, or the run of another
sweep (another spec hash, or an id none of OUT/wandb's runs has while others are there) is refused with one
paragraph that names what it found and how to go on, never silently replaced by a new run (which would split
the history) nor followed (which would mix two sweeps in one run).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from synthact.errors import SynthactError
from synthact.layout import join, resolve_location, write_file_atomic

RUN_ID_FILE = "wandb_run.json"
SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # what W&B accepts in a run id and in its run folder's name
RUN_FOLDER = re.compile(r"(?:offline-)?run-\d{8}_\d{6}-([A-Za-z0-9_-]+)")  # W&B's local folder of a run
HOW = ("Delete the file to start a new W&B run for this sweep, write {\"id\": \"<run id>\"} into it to continue "
       "that run, or pass --no-wandb")


@dataclass
class RunRecord:
    """An output directory's W&B run: its id and the step its next history record takes."""

    id: str
    step: int = 0
    spec_hash: str | None = None

    def to_json(self) -> bytes:
        return json.dumps({"id": self.id, "step": self.step, "spec_hash": self.spec_hash}).encode()


def run_record(out, spec_hash: str) -> RunRecord:
    """The W&B run this sweep logs to: the one OUT/wandb_run.json names (checked), or a new one, recorded now."""
    fs, root, uri = resolve_location(out)
    path = join(root, RUN_ID_FILE)
    try:
        with fs.open_input_stream(path) as f:
            raw = f.read()
    except FileNotFoundError:
        record = RunRecord(uuid.uuid4().hex[:12], 0, spec_hash)
        save_record(out, record)
        return record
    except OSError as e:
        raise SynthactError(f"cannot read '{uri}/{RUN_ID_FILE}' ({e}); check that it is readable, or pass "
                            "--no-wandb") from None
    record = _parse(raw, uri, _logged_ids(fs, root))
    if record.spec_hash is not None and record.spec_hash != spec_hash:
        raise SynthactError(
            f"'{uri}/{RUN_ID_FILE}' names W&B run '{record.id}' of another sweep (spec hash {record.spec_hash[:12]}; "
            f"this sweep's is {spec_hash[:12]}), copied here with it; continuing it would mix two sweeps in one "
            f"W&B run. {HOW}"
        )
    record.spec_hash = spec_hash
    return record


def save_record(out, record: RunRecord) -> None:
    """Write OUT/wandb_run.json atomically (OSError where OUT is not writable)."""
    fs, root, _ = resolve_location(out)
    write_file_atomic(fs, join(root, RUN_ID_FILE), record.to_json())


def _parse(raw: bytes, uri: str, logged: list[str]) -> RunRecord:
    where = f"'{uri}/{RUN_ID_FILE}'"
    found = (f" The W&B logs under {uri}/wandb are of run {' and '.join(repr(i) for i in logged)}." if logged else "")
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not isinstance(data, dict) or "id" not in data:
        what = "not JSON" if data is None else f"a JSON {type(data).__name__} without an \"id\""
        raise SynthactError(
            f"{where} is damaged ({what}); it names the W&B run this sweep logs to, so that a rerun continues that "
            f"run's history instead of starting another.{found} {HOW}"
        )
    run_id, step, spec_hash = data["id"], data.get("step", 0), data.get("spec_hash")
    if not isinstance(run_id, str) or not SAFE_ID.fullmatch(run_id):
        raise SynthactError(
            f"{where} names W&B run id {json.dumps(run_id)}, which is not a W&B run id (1 to 64 letters, digits, "
            f"'-' or '_').{found} {HOW}"
        )
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise SynthactError(f"{where} is damaged (\"step\" {json.dumps(step)} is not a whole number >= 0); it is the "
                            f"step the run's next history record takes.{found} {HOW}")
    if spec_hash is not None and not isinstance(spec_hash, str):
        raise SynthactError(f"{where} is damaged (\"spec_hash\" {json.dumps(spec_hash)} is not a string).{found} {HOW}")
    if logged and run_id not in logged:
        raise SynthactError(
            f"{where} names W&B run '{run_id}', but this directory's W&B logs are of run "
            f"{' and '.join(repr(i) for i in logged)}: the file holds another run's id (copied from another sweep?), "
            f"and continuing it would put this sweep's history in that run. {HOW}"
        )
    return RunRecord(run_id, step, spec_hash)


def _logged_ids(fs: pafs.FileSystem, root: str) -> list[str]:
    """The run ids of OUT/wandb/run-* and offline-run-* (W&B names them <time>-<id>); none for a remote OUT."""
    if not isinstance(fs, pafs.LocalFileSystem):
        return []
    named = (RUN_FOLDER.fullmatch(p.name) for p in (Path(root) / "wandb").glob("*run-*") if p.is_dir())
    return sorted({m.group(1) for m in named if m})
