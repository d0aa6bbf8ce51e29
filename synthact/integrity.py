"""Records of files: their size and sha256, and the one check every reader makes against them.

The integrity rule (docs/results.md, "Integrity"): every file a result depends on has a record of its size and
sha256, and every reader checks the bytes it uses against it. Shards are recorded in the manifest
(`manifest.ShardRecord`); a directory built once (reference statistics, a toy model or SAE) carries `record.json`
listing each of its files (`write_record`, `record_problem`); analysis caches carry a record beside them
(`analysis/cells.py`).

Hashing is streamed, and a file's digest is remembered for the life of the process under the file's identity
(local files: inode, size, mtime and ctime, which no user can set back; object stores: size and modification
time), so a file read several times by one command is hashed once, and a file rewritten since is hashed again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

RECORD = "record.json"  # a built directory's record of its files
CHUNK = 1 << 20

# docs/results.md's section on integrity (generated with the column reference, `results.column_reference`).
RULE = """## Integrity

Every file a result depends on has a record of its size and sha256, and every reader checks the bytes it uses
against it (`synthact/integrity.py`):

| files | record | checked by |
|---|---|---|
| shards `results/cell=<cell_id>/<shard_id>.parquet` | `manifest/<shard_id>.json` | every reader, `verify` |
| reference statistics `stats/<key>/` | `stats/<key>/record.json` | the workers, `verify --deep` |
| toy model and SAE caches (`$SYNTHACT_CACHE/models/...`) | `record.json` in each | every load, `verify --deep` |
| analysis caches `analysis/<part>/cell=<id>.parquet`, `analysis/panels/<digest>.json` | `<file>.record.json` | `compare`, `report`, the run summary, W&B |

- **A shard is used only when** its file has the recorded size and sha256 (hashed from the very bytes then
  parsed), is readable Parquet with the recorded rows, its metadata names the spec hash that `job.json`
  records, and its `shard_id` and `cell_id` columns are its record's. `verify` also checks that each record
  is a shard of the job's grid. A reader skips what fails and names it in one line on stderr
  (`synthact: skipped N file(s) of OUT: ...`), once per file and process; `compare`'s "incomplete" note
  counts the shards that pass. The cached aggregates are keyed by the sha256 of the checked shards, so
  what `compare` answers never depends on whether `OUT/analysis` exists; a cached file whose bytes are not
  the recorded ones is recomputed. A file's digest is remembered for the life of a process while the file
  is unchanged (inode, size, mtime, ctime; on object stores size and mtime), so each byte is hashed once
  per command.
- **A record names only its own place.** Its file must be exactly `results/cell=<cell_id>/<shard_id>.parquet`
  for its own ids, and its shard id its own file name; any other record is damaged: named, never followed.
  A second record naming an existing file is therefore a damaged record, and counts nothing twice.
- **Nothing is deleted outside `results/` and `manifest/`**, apart from synthact's own hidden temporaries and
  damaged statistics and toy caches it recomputes. A rerun deletes the record and file of a shard of the
  job's grid that fails its check (the paths built from the job's ids, never from a record) and computes it
  again; records outside the grid are left alone (`verify` names them).
- **Rows of two jobs are never mixed.** A rerun refuses, in one paragraph naming the fields that differ,
  when `job.json` records another spec than the one given, and when the directory holds shards written by
  another spec than its `job.json` records (a shard copied from another sweep, or `job.json` replaced).
- **Damaged statistics and toy caches heal.** A worker recomputes statistics whose files are not the recorded
  ones (or do not load) and a toy model or SAE is rebuilt in place; both are deterministic, so the rows
  computed from them are the rows the sweep already holds. Files written before records existed:
  shard records without size and sha256 are checked by rows only (their digest still keys the caches);
  statistics and toy caches without `record.json` cannot be checked, so they are recomputed or rebuilt once,
  with a note, rather than trusted.
- **One run at a time.** `synthact run` holds `OUT/.lock` (an exclusive `flock`, with its pid, host and start
  time) while it computes; a second run into the same local directory refuses in one paragraph naming the
  holder. The system releases the lock when its process ends however it ends, so a lock file left by a run
  that died is taken over with a note. Object stores have no such lock: two runs into one URI both compute
  every shard (the rows are the same and each write is atomic, so nothing is mixed, only time lost).
- **Storage that does not answer** (a refused or silent endpoint) is asked once per process with one quick
  attempt: one paragraph, exit 2, within seconds. Child paths of a URI go before its query string
  (`s3://bucket/x/stats?endpoint_override=host:port&scheme=http`).
""".splitlines()

_digests: dict[tuple, tuple[int, str]] = {}  # (path, file identity) -> (size, sha256) seen by this process


def digest(data) -> tuple[int, str]:
    """(size in bytes, sha256 hex) of bytes or a pyarrow Buffer."""
    view = memoryview(data)
    return view.nbytes, hashlib.sha256(view).hexdigest()


def identity(fs: pafs.FileSystem, path: str) -> tuple | None:
    """What changes whenever a file's bytes do (None when it is not a file)."""
    if isinstance(fs, pafs.LocalFileSystem):
        try:
            st = os.stat(path)
        except OSError:
            return None
        return (path, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    info = fs.get_file_info(path)
    return (path, info.size, info.mtime_ns) if info.type == pafs.FileType.File else None


def known_digest(fs: pafs.FileSystem, path: str) -> tuple[int, str] | None:
    """The (size, sha256) this process already computed for the file as it is now, else None."""
    key = identity(fs, path)
    return _digests.get(key) if key else None


def file_digest(fs: pafs.FileSystem, path: str) -> tuple[int, str]:
    """(size, sha256) of a file, streamed (or remembered, see the module docstring). OSError when unreadable."""
    key = identity(fs, path)
    if key in _digests:
        return _digests[key]
    h, size = hashlib.sha256(), 0
    with fs.open_input_stream(path) as f:
        while data := f.read(CHUNK):
            h.update(data)
            size += len(data)
    if key:
        _digests[key] = (size, h.hexdigest())
    return size, h.hexdigest()


def read_with_digest(fs: pafs.FileSystem, path: str) -> tuple[pa.Buffer, int, str]:
    """A whole file's bytes and their (size, sha256): the bytes checked are the bytes then parsed."""
    key = identity(fs, path)
    with fs.open_input_file(path) as f:
        data = f.read_buffer()
    size, sha = digest(data)
    if key:
        _digests[key] = (size, sha)
    return data, size, sha


def mismatch(name: str, size: int, sha256: str, recorded_size, recorded_sha256) -> str | None:
    """Why a file of this size and sha256 is not the one recorded (None when it is)."""
    if recorded_size is not None and size != recorded_size:
        return f"{name} has {size} bytes, its record says {recorded_size}"
    if recorded_sha256 is not None and sha256 != recorded_sha256:
        return f"{name} does not match the checksum (sha256) in its record (its content changed or is damaged)"
    return None


# --------------------------------------------------------------------------- built directories


def _files(directory: Path) -> list[Path]:
    """The directory's own visible regular files (not its subdirectories, not its record)."""
    return sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith(".") and p.name != RECORD)


def write_record(directory: Path) -> None:
    """Write `record.json`: the size and sha256 of each of the directory's files (call it last, before publishing)."""
    directory = Path(directory)
    files = {}
    for path in _files(directory):
        size, sha = file_digest(pafs.LocalFileSystem(), str(path))
        files[path.name] = {"size": size, "sha256": sha}
    (directory / RECORD).write_text(json.dumps({"files": files}, indent=1))


def record_problem(directory: Path) -> str | None:
    """Why the directory's files are not the ones its `record.json` lists (missing record, a file missing, added,
    resized or changed), or None when every byte is as recorded."""
    directory = Path(directory)
    try:
        listed = json.loads((directory / RECORD).read_text())["files"]
        if not isinstance(listed, dict) or not all(
                isinstance(v, dict) and isinstance(v.get("size"), int) and isinstance(v.get("sha256"), str)
                for v in listed.values()):
            raise ValueError("not a record")
    except FileNotFoundError:
        return f"it has no {RECORD} (written before synthact recorded its files' sizes and sha256)"
    except (OSError, ValueError, KeyError, TypeError):
        return f"its {RECORD} is damaged"
    present = {p.name for p in _files(directory)}
    if present - set(listed):
        return f"it holds files its {RECORD} does not list: {', '.join(sorted(present - set(listed)))}"
    for name, entry in sorted(listed.items()):
        if name not in present:
            return f"{name} is missing"
        try:
            size, sha = file_digest(pafs.LocalFileSystem(), str(directory / name))
        except OSError as e:
            return f"{name} cannot be read ({e})"
        problem = mismatch(name, size, sha, entry["size"], entry["sha256"])
        if problem:
            return problem
    return None
