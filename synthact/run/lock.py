"""One run at a time: `synthact run` holds OUT/.lock while it computes (a local output directory).

The lock is an exclusive `flock` on OUT/.lock, which the system releases when the holding process ends, however
it ends; the file holds the holder's pid, host and start time, for the message a second run prints. Object
stores have no lock (docs/results.md, "Integrity").
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from synthact.errors import SynthactError

LOCK = ".lock"


@contextlib.contextmanager
def hold(root: Path, uri: str):
    """Hold OUT/.lock (an exclusive `flock`, released by the system when the process ends, however it ends) with
    the holder's pid, host and start time in it. A second run refuses in one paragraph naming the holder; a lock
    file left by a run that is gone is taken over with a note. Where the filesystem has no locks, or the directory
    cannot be written (the run's first write then says so), nothing is held."""
    path = root / LOCK
    while True:
        try:
            root.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:  # a read-only or full directory: the run's first write says so in its own words
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _holder(os.read(fd, 4096))
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise SynthactError(
                    f"output directory '{uri}' is in use by another `synthact run` ({holder}); two runs into one "
                    "directory would both compute every shard. Wait for it to finish (then rerun to resume), or stop "
                    f"it; if no such run exists any more, delete {path}"
                ) from None
            yield  # no locks on this filesystem
            return
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # its holder removed it as we opened it: take the new one
    previous = os.read(fd, 4096)
    if previous.strip():
        print(f"synthact: {path} was left by a run that is no longer running ({_holder(previous)}); taking it over",
              file=sys.stderr)
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}).encode(), 0)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)


def _holder(data: bytes) -> str:
    try:
        holder = json.loads(data)
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder["started"])))
        return f"pid {int(holder['pid'])} on host {holder['host']}, started {started}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"
