"""Stable identities: digests of JSON-able data and the seeds derived from them."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def digest(obj: Any) -> str:
    """Stable hex digest of JSON-able data."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any JSON-able parts (sweep seed, cell settings, base index, role)."""
    return int(digest(list(parts))[:15], 16)

