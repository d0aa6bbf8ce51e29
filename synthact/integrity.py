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
