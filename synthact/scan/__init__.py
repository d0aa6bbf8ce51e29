"""The scan: push A_n = A + c_n D through the model from the SAE's hook and measure the read layers.

`scan_plain` (plain.py) is the reference path a researcher would write; `scan_fast` (fast.py) the
kernel that gives the same result; `scan` picks the fast one when the model allows it. `metrics.py`
turns curves into the per-curve metrics.
"""

from __future__ import annotations

import logging
import warnings

from synthact.scan.fast import scan_fast
from synthact.scan.plain import DTYPES, ScanResult, js_distance, matmul_precision, scan_plain
from synthact.scan.weights import fast_path_unsupported

__all__ = ["DTYPES", "ScanResult", "fast_path_unsupported", "js_distance", "matmul_precision", "scan", "scan_fast",
           "scan_plain"]

log = logging.getLogger(__name__)


def scan(
    model, layer, read_layers, tokens, base, direction, coeffs, js=False, dtype="float32", hook=None
) -> ScanResult:
    """The fast path when the model allows it, else the plain path with a logged warning."""
    why = fast_path_unsupported(model)
    if why is None:
        return scan_fast(model, layer, read_layers, tokens, base, direction, coeffs, js=js, dtype=dtype, hook=hook)
    log.warning("fast scan path unsupported (%s); using the plain path (much slower)", why)
    if dtype != "float32":
        warnings.warn(f"the plain scan path runs in the model's own precision; dtype '{dtype}' is ignored")
    return scan_plain(model, layer, read_layers, tokens, base, direction, coeffs, js=js, hook=hook)
