"""Where everything lives: an output directory's layout, the cache directory, atomic directories, disk checks.

Layout of an output directory (local path or any pyarrow filesystem URI, e.g. s3://bucket/run):

    job.yaml                          the spec as given (validated), for humans
    job.json                          canonical spec + its hash + local inputs' content hashes: a rerun must match
    results/cell=<cell_id>/<shard_id>.parquet   one row per curve
    manifest/<shard_id>.json          one record per finished shard (written after its Parquet file)
    stats/<key>/                      reference statistics, shared by all workers (each with its record.json)
    analysis/                         caches of the analysis (each file with a record beside it)
    .lock                             held by the `synthact run` writing here (local directories)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from synthact.errors import SynthactError, first_line
from synthact.integrity import write_record

RESULTS = "results"
MANIFEST = "manifest"
STATS = "stats"
JOB_JSON = "job.json"
JOB_YAML = "job.yaml"


def join(root: str, *parts: str) -> str:
    """A path (or URI) below `root`, '/'-separated whatever the filesystem; a URI's query string
    (`s3://bucket/x?endpoint_override=host:port&scheme=http`) stays at the end."""
    root, query = str(root), ""
    if "://" in root and "?" in root:
        root, query = root.split("?", 1)
        query = "?" + query
    return "/".join([root.rstrip("/"), *parts]) + query


def cell_dir(root: str, cell_id: str) -> str:
    return join(root, RESULTS, f"cell={cell_id}")


def shard_file(root: str, cell_id: str, shard_id: str) -> str:
    return join(cell_dir(root, cell_id), f"{shard_id}.parquet")


def cache_dir() -> Path:
    """Where toy artefacts live: $SYNTHACT_CACHE, else ~/.cache/synthact."""
    return Path(os.environ.get("SYNTHACT_CACHE") or Path.home() / ".cache" / "synthact")


def build_dir_once(path: Path, build: Callable[[Path], None]) -> None:
    """Run `build(tmp)` in a temporary directory beside `path`, record its files (`integrity.write_record`), then
    rename it into place.

    A killed build leaves only a hidden temporary directory (never half a result). A process that
    finds another one building the same directory waits for it (a lock file beside the directory)
    and uses its result; where the filesystem has no locks, both build and the first rename wins.
    """
    path = Path(path)
    if path.is_dir():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.parent / f".{path.name}.lock"
    with open(lock_path, "a") as lock:
        with contextlib.suppress(OSError):
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        try:
            if not path.is_dir():
                _build_and_rename(path, build)
        finally:
            lock_path.unlink(missing_ok=True)  # a later process finds the directory, or builds afresh


def _build_and_rename(path: Path, build: Callable[[Path], None]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        build(tmp)
        write_record(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the result is for every process that may read it
        try:
            os.rename(tmp, path)
        except OSError:
            if not path.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_file_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write `data` to `path` through a hidden temporary beside it, then rename: readers see the old file or
    the new one, never half of one. OSError when the location is not writable (the temporary is removed)."""
    folder, name = path.rsplit("/", 1)
    tmp = f"{folder}/.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{name}"
    try:
        fs.create_dir(folder, recursive=True)
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fs.move(tmp, path)
    except (OSError, pa.ArrowException) as e:
        try:
            fs.delete_file(tmp)
        except (OSError, pa.ArrowException):
            pass
        raise OSError(str(e)) from None


def is_disk_full(error: OSError) -> bool:
    return error.errno == errno.ENOSPC or "No space left" in str(error)


def resolve_location(out) -> tuple[pafs.FileSystem, str, str]:
    """(filesystem, path in it, URI) of an output location; every output location goes through here.

    A local path has `~` expanded and is made absolute (worker processes have their own working
    directory); `scheme://...` must be a URI pyarrow knows (file, s3, gs, hdfs, ...). Unknown
    schemes, unreachable stores and paths below a regular file are a SynthactError: a store is asked once per
    process, with one quick attempt (`_probe`), so a refused or silent endpoint is named in seconds.
    """
    text = str(out)
    if "://" in text:
        try:
            fs, path = pafs.FileSystem.from_uri(text)
        except (pa.ArrowException, OSError, ValueError) as e:
            raise SynthactError(
                f"cannot use output location '{text}': {e}. Give a local directory, or a URI pyarrow knows "
                "(file://, s3://bucket/path, gs://bucket/path, hdfs://...) whose bucket exists and is reachable"
            ) from None
        if text not in _reached:
            _probe(fs, path, text)
            _reached.add(text)
        return fs, path, text
    local = Path(text).expanduser().resolve()
    for parent in [local, *local.parents]:
        if parent.exists():
            if not parent.is_dir() and parent != local:
                raise SynthactError(f"cannot use '{text}': '{parent}' is a regular file, not a directory")
            break
    return pafs.LocalFileSystem(), str(local), str(local)


_reached: set[str] = set()  # output URIs this process has reached
PROBE_TIMEOUT_S = 5


def unreachable(uri: str, error: BaseException) -> SynthactError:
    """The one message for storage that does not answer."""
    text = first_line(str(error)) or type(error).__name__
    waited = f"no answer within {PROBE_TIMEOUT_S} s: " if "timeout" in text.lower() or "timed out" in text else ""
    return SynthactError(
        f"could not reach the storage of '{uri}' ({waited}{text}); check the "
        "endpoint (endpoint_override, AWS_ENDPOINT_URL), the network and the credentials, then rerun"
    )


def _probe(fs: pafs.FileSystem, path: str, uri: str) -> None:
    """Ask an object store about `path` once, with one attempt and a short timeout (S3's default client retries
    a silent endpoint for minutes); a SynthactError when it does not answer."""
    quick = fs
    if isinstance(fs, pafs.S3FileSystem):
        try:
            options = dict(fs.__reduce__()[1][0])  # the client's settings, as pickling passes them on
            options |= {"connect_timeout": PROBE_TIMEOUT_S, "request_timeout": PROBE_TIMEOUT_S,
                        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=1)}
            quick = pafs.S3FileSystem(**options)
        except (TypeError, ValueError, IndexError, pa.ArrowException):
            quick = fs
    try:
        quick.get_file_info(path)
    except (OSError, pa.ArrowException) as e:
        raise unreachable(uri, e) from None
