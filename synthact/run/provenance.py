"""What a result needs to be recomputed: package versions, the machine, and its local inputs' contents."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
from importlib import metadata
from pathlib import Path

from synthact.layout import cache_dir

PACKAGES = ("synthact", "torch", "transformer_lens", "sae_lens", "numpy", "pyarrow", "ray", "wandb", "pydantic")


@functools.cache
def package_versions() -> dict[str, str]:
    """Installed versions of the packages a result depends on, plus Python's."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def input_fingerprints(job) -> dict[str, str]:
    """Content digests of the job's local inputs (model and SAE directories, corpus file), by path.

    A resume compares them with the ones recorded when the directory was claimed, so rows
    computed from a changed file are never mixed with rows from the old one.
    """
    paths = {m.local for m in job.model if m.local}
    paths |= {s.local.format(layer=layer) for s in job.sae if s.local for layer in job.layers}
    if job.corpus.file:
        paths.add(job.corpus.file)
    return {p: fingerprint(Path(p).expanduser()) for p in sorted(paths)}


def fingerprint(path: Path) -> str:
    """sha256 over a file's (or a directory's files') names and contents; 'missing' if absent.

    Each file's hash is cached on disk by (path, inode, size, mtime, ctime), so unchanged inputs are
    not reread; a rewrite that restores size and mtime still changes ctime.
    """
    if not path.exists():
        return "missing"
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    cache_file = cache_dir() / "fingerprints.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    total = hashlib.sha256()
    for f in files:
        st = f.stat()
        key = f"{f.resolve()}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"  # ctime: not settable
        if key not in cache:
            h = hashlib.sha256()
            with open(f, "rb") as stream:
                for block in iter(lambda: stream.read(1 << 20), b""):
                    h.update(block)
            cache[key] = h.hexdigest()
        total.update(f"{f.relative_to(path) if path.is_dir() else f.name}:{cache[key]}\n".encode())
    with contextlib.suppress(OSError):
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, cache_file)
    return total.hexdigest()
