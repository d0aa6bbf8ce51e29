"""The power of the two-sample KS test between two kinds, and the smallest KS distance between them that
a job's bases per kind detect (`synthact validate` prints it; docs/science.md, "Beyond the paper").

- `ks_power(d, n)`: power at level alpha, n values per kind, between a distribution and its location
  shift at KS distance d.
- `detectable_ks_difference(n)`: the smallest d detected with the asked power.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import special, stats

from synthact.analysis.ecdf import blocks

POWER_GRID = 2000  # quantile bins of the power simulation (resolution 1 / POWER_GRID in probability)


def ks_power(d: float, n: int, *, alpha: float = 0.05, n_sim: int = 2000, seed: int = 0) -> float:
    """Power of the two-sample KS test at level alpha, n values per kind, when the two kinds' distributions
    are a location shift of each other at KS distance d (normals: a shift of 2 Phi^-1((1 + d) / 2) standard
    deviations). The max-slope step is an integer: ties lose some power (at d = 0.042, n = 1000: 0.53
    for continuous draws, 0.45 for draws rounded to integers), so this is an upper bound for it. By
    simulation on POWER_GRID quantile bins of the first distribution (multinomial counts per bin, so one
    simulation costs O(POWER_GRID), not O(n log n)); the critical value is the smallest D = h / n whose
    simulated null tail (d = 0, same bins) is <= alpha, as an exact test would use."""
    if not 0 <= d < 1:
        raise ValueError(f"KS distance {d} must be in [0, 1)")
    edges = special.ndtri(np.linspace(0, 1, POWER_GRID + 1)[1:-1])
    critical = _critical_h(n, alpha, n_sim, seed)
    shifted = _binned_ks(special.ndtr(edges - 2 * special.ndtri((1 + d) / 2)) - special.ndtr(edges), n, n_sim,
                         seed + 1)
    return float((np.round(shifted * n) >= critical).mean())


@functools.lru_cache(maxsize=32)
def _critical_h(n: int, alpha: float, n_sim: int, seed: int) -> int:
    """The smallest h with simulated P(n * D_null >= h) <= alpha."""
    h = np.sort(np.round(_binned_ks(np.zeros(POWER_GRID - 1), n, n_sim, seed) * n))
    tail = 1 - np.searchsorted(h, np.arange(n + 2), side="left") / h.size
    return int(np.argmax(tail <= alpha))


def _binned_ks(cdf_gap: np.ndarray, n: int, n_sim: int, seed: int) -> np.ndarray:
    """n_sim KS statistics of two samples of n, the first uniform over POWER_GRID bins, the second with
    bin CDF = the first's + cdf_gap at the inner edges."""
    rng = np.random.default_rng(seed)
    inner = np.linspace(0, 1, POWER_GRID + 1)[1:-1]
    p_b = np.diff(np.concatenate([[0.0], np.clip(inner + cdf_gap, 0, 1), [1.0]]))
    out = []
    for r in blocks(n_sim, POWER_GRID):
        ca = rng.multinomial(n, np.full(POWER_GRID, 1 / POWER_GRID), size=r)
        cb = rng.multinomial(n, np.maximum(p_b, 0), size=r)
        out.append(np.abs(np.cumsum(ca - cb, -1)).max(-1) / n)
    return np.concatenate(out)


def detectable_ks_difference(n: int, *, power: float = 0.8, alpha: float = 0.05, n_sim: int = 1000,
                             seed: int = 0) -> float:
    """The smallest KS distance between two kinds that the two-sample KS test at level alpha detects with
    `power` at n values per kind (bisection on `ks_power`, same random draws at every d, to 0.001)."""
    lo, hi = 0.0, min(0.999, 4 * stats.kstwobign.isf(alpha) * math.sqrt(2 / n))
    while hi - lo > 1e-3:
        mid = (lo + hi) / 2
        if ks_power(mid, n, alpha=alpha, n_sim=n_sim, seed=seed) >= power:
            hi = mid
        else:
            lo = mid
    return round(hi, 3)
