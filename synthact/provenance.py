"""What a result needs to be recomputed: package versions and the machine it ran on."""

from __future__ import annotations

import functools
import platform
from importlib import metadata

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
