"""Directories that appear whole or not at all (caches, reference statistics)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def build_dir_once(path: Path, build: Callable[[Path], None]) -> None:
    """Run `build(tmp)` in a temporary directory beside `path`, then rename it into place.

    A killed build leaves only a hidden temporary directory (never half a result); if another
    process finished first, its result is kept and ours is discarded.
    """
    path = Path(path)
    if path.is_dir():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        build(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the result is for every process that may read it
        try:
            os.rename(tmp, path)
        except OSError:
            if not path.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
