"""Distances to real with error bars, paired differences between kinds, permutation p-values, Holm's
correction across a grid, and the power of the two-sample KS test (docs/science.md, "Beyond the paper").

Pure functions over numpy arrays (no I/O), so a reader calls them once per panel: arrays in, one dict out.

- `distance_to_real(values, real, paired)`: KS, Wasserstein and difference of means of one kind against
  real, each with a percentile bootstrap interval, and a permutation p-value of the KS distance.
- `paired_difference(real, a, b)`: for a paired design (kinds a and b built for the same bases, row i of
  each array is base i), KS(b, real) - KS(a, real) and mean(b - a) with a paired bootstrap interval over
  bases and a sign-flip permutation p-value (H0: a and b are exchangeable within each base); with
  `paired=False` (kinds built for different bases) the same with independent resamples and label shuffles.
- `holm(p)`: Holm's step-down adjustment (family-wise error; valid under any dependence, which the
  comparisons of one grid have: they share the real curves and the bases).
- `ks_power(d, n)`, `detectable_ks_difference(n)`: power of the two-sample KS test between two kinds whose
  distributions are d apart in KS distance, and the smallest d detected with the asked power.

Every resampling works on index (or weight) arrays over integer codes of the pooled values, in blocks of
bounded size, so memory stays O(block * max(n, distinct values)) whatever the number of resamples. Ties
(the max-slope step is an integer) are handled exactly: ECDFs are built on the distinct values, and a
permutation statistic equal to the observed one (within scipy's relative tolerance) counts as extreme.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import special, stats

BLOCK_ELEMENTS = 2_000_000  # resamples per block x max(n, distinct values): bounds memory
TIE_RTOL = 1e4 * np.finfo(float).eps  # statistics this close to the observed one are ties (as scipy.stats)


# --------------------------------------------------------------------------- ECDF machinery


def _codes(*arrays: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Each array as integer codes into the sorted distinct values of all of them, and those values."""
    grid, inverse = np.unique(np.concatenate(arrays), return_inverse=True)
    cuts = np.cumsum([len(a) for a in arrays])[:-1]
    return np.split(inverse, cuts), grid


def _counts(codes: np.ndarray, n_values: int, index: np.ndarray | None = None,
            weights: np.ndarray | None = None) -> np.ndarray:
    """[R, n_values] counts of codes per resample: resample r takes codes[index[r]] (or weights[r] per element)."""
    if index is not None:
        rows, picked, w = index.shape[0], codes[index], None
    else:
        rows, picked, w = weights.shape[0], np.broadcast_to(codes, weights.shape), weights.ravel().astype(float)
    flat = (np.arange(rows)[:, None] * n_values + picked).ravel()
    return np.bincount(flat, weights=w, minlength=rows * n_values).reshape(rows, n_values)


def _gap(cx: np.ndarray, cy: np.ndarray) -> np.ndarray:
    """ECDF(x) - ECDF(y) on the grid, per row of two count matrices over the same grid."""
    return np.cumsum(cx, -1) / cx.sum(-1, keepdims=True) - np.cumsum(cy, -1) / cy.sum(-1, keepdims=True)


def _ks(cx: np.ndarray, cy: np.ndarray) -> np.ndarray:
    """KS distance per row (what the permutation nulls need)."""
    return np.abs(_gap(cx, cy)).max(-1)


def _ks_w1(cx: np.ndarray, cy: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """KS and Wasserstein-1 distances per row of two count matrices over the same grid."""
    gap = np.abs(_gap(cx, cy))
    return gap.max(-1), (gap[..., :-1] * np.diff(grid)).sum(-1)


def _blocks(total: int, width: int):
    size = max(1, BLOCK_ELEMENTS // max(width, 1))
    for start in range(0, total, size):
        yield min(size, total - start)


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _p_two_sided(observed: float, null: np.ndarray, exact: bool) -> float:
    """scipy.stats.permutation_test's two-sided p: twice the smaller tail, ties counted as extreme, +1 when sampled."""
    tol = TIE_RTOL * abs(observed)
    adj = 0 if exact else 1
    greater = ((null >= observed - tol).sum() + adj) / (null.size + adj)
    less = ((null <= observed + tol).sum() + adj) / (null.size + adj)
    return float(min(1.0, 2 * min(greater, less)))


def _clean(*arrays, paired: bool) -> list[np.ndarray]:
    arrays = [np.asarray(a, dtype=float) for a in arrays]
    if paired:
        if len({a.shape for a in arrays}) != 1:
            raise ValueError(f"paired samples need equal lengths, got {[a.shape[0] for a in arrays]}")
        keep = np.all([np.isfinite(a) for a in arrays], axis=0)
        return [a[keep] for a in arrays]
    return [a[np.isfinite(a)] for a in arrays]


# --------------------------------------------------------------------------- one kind against real


def distance_to_real(values, real, *, paired: bool = False, n_boot: int = 2000, n_perm: int = 2000,
                     level: float = 0.95, seed: int = 0) -> dict:
    """KS, Wasserstein and mean(values) - mean(real), each with a percentile bootstrap interval, and the
    permutation p-value of the KS distance.

    `paired`: row i of both arrays comes from base i (resampled together; the permutation swaps the two
    within a base); otherwise each sample is resampled on its own and the permutation shuffles labels.
    Non-finite entries are dropped (with their partner when paired)."""
    x, y = _clean(values, real, paired=paired)
    out = {"n": int(x.size), "n_real": int(y.size)}
    if x.size < 2 or y.size < 2:
        return out | {k: math.nan for k in ("ks", "ks_lo", "ks_hi", "ks_p", "wasserstein", "w_lo", "w_hi",
                                            "mean_diff", "mean_diff_lo", "mean_diff_hi")}
    rng = np.random.default_rng(seed)
    (cx, cy), grid = _codes(x, y)
    u = grid.size
    ks, w1 = (float(v[0]) for v in _ks_w1(_counts(cx, u, np.arange(x.size)[None]),
                                          _counts(cy, u, np.arange(y.size)[None]), grid))
    boot_ks, boot_w, boot_m = [], [], []
    for r in _blocks(n_boot, max(x.size + y.size, u)):
        ix = rng.integers(0, x.size, (r, x.size))
        iy = ix if paired else rng.integers(0, y.size, (r, y.size))
        k, w = _ks_w1(_counts(cx, u, ix), _counts(cy, u, iy), grid)
        boot_ks.append(k), boot_w.append(w), boot_m.append(x[ix].mean(1) - y[iy].mean(1))
    null = []
    for r in _blocks(n_perm, max(x.size + y.size, u)):
        if paired:
            flip = rng.random((r, x.size)) < 0.5
            ca = _counts(cx, u, weights=~flip) + _counts(cy, u, weights=flip)
            cb = _counts(cx, u, weights=flip) + _counts(cy, u, weights=~flip)
        else:
            both = np.concatenate([cx, cy])
            perm = rng.permuted(np.broadcast_to(np.arange(both.size), (r, both.size)), axis=1)
            ca, cb = _counts(both, u, perm[:, : x.size]), _counts(both, u, perm[:, x.size:])
        null.append(_ks(ca, cb))
    null = np.concatenate(null)
    tol = TIE_RTOL * ks
    mean_diff = float(x.mean() - y.mean())
    return out | {
        "ks": ks, **dict(zip(("ks_lo", "ks_hi"), _interval(np.concatenate(boot_ks), level))),
        "ks_p": float(((null >= ks - tol).sum() + 1) / (null.size + 1)),
        "wasserstein": w1, **dict(zip(("w_lo", "w_hi"), _interval(np.concatenate(boot_w), level))),
        "mean_diff": mean_diff, **dict(zip(("mean_diff_lo", "mean_diff_hi"), _interval(np.concatenate(boot_m), level))),
    }


# --------------------------------------------------------------------------- two kinds, paired


def paired_difference(real, a, b, *, paired: bool = True, n_boot: int = 2000, n_perm: int = 2000,
                      level: float = 0.95, seed: int = 0, labels: tuple[str, str] = ("a", "b")) -> dict:
    """Kind b against kind a: ks_diff = KS(b, real) - KS(a, real) (negative: b is closer to real) and
    mean_diff = mean(b) - mean(a), each with a percentile bootstrap interval and a two-sided permutation
    p-value; a `verdict` states the KS difference with its interval, naming the kinds by `labels`.

    `paired` (kinds a and b built for the same bases as the real targets, row i = base i): one index array
    resamples all three, mean_diff is mean(b - a), and the permutation flips a and b within a base (exact
    enumeration when 2^n <= n_perm, as scipy does); bases with a non-finite value in any of the three are
    dropped. Unpaired (the fallback where the kinds' bases differ): each sample resampled on its own, and
    the permutation shuffles the a and b labels of the pooled values (real kept); non-finite values dropped."""
    y, xa, xb = _clean(real, a, b, paired=paired)
    out = {"n": int(xa.size), "n_b": int(xb.size), "n_real": int(y.size), "paired": paired}
    if min(y.size, xa.size, xb.size) < 2:
        return out | {k: math.nan for k in ("ks_a", "ks_b", "ks_diff", "ks_diff_lo", "ks_diff_hi", "ks_diff_p",
                                            "mean_diff", "mean_diff_lo", "mean_diff_hi", "mean_diff_p")} | {
            "verdict": "too few bases"}
    rng = np.random.default_rng(seed)
    (cy, ca, cb), grid = _codes(y, xa, xb)
    u = grid.size
    ks_a = _ks_w1(_counts(ca, u, np.arange(xa.size)[None]), _counts(cy, u, np.arange(y.size)[None]), grid)[0][0]
    ks_b = _ks_w1(_counts(cb, u, np.arange(xb.size)[None]), _counts(cy, u, np.arange(y.size)[None]), grid)[0][0]
    ks_diff = float(ks_b - ks_a)
    mean_diff = float((xb - xa).mean() if paired else xb.mean() - xa.mean())
    width = max(y.size + xa.size + xb.size, u)
    boot_ks, boot_m = [], []
    for r in _blocks(n_boot, width):
        ia = rng.integers(0, xa.size, (r, xa.size))
        ib, iy = (ia, ia) if paired else (rng.integers(0, xb.size, (r, xb.size)), rng.integers(0, y.size, (r, y.size)))
        c_real = _counts(cy, u, iy)
        boot_ks.append(_ks_w1(_counts(cb, u, ib), c_real, grid)[0] - _ks_w1(_counts(ca, u, ia), c_real, grid)[0])
        boot_m.append(xb[ib].mean(1) - xa[ia].mean(1))
    n = xa.size
    exact = paired and 2**n <= n_perm
    if exact:
        flips = ((np.arange(2**n)[:, None] >> np.arange(n)[None]) & 1).astype(bool)
    pooled_codes, pooled = np.concatenate([ca, cb]), np.concatenate([xa, xb])
    c_real = _counts(cy, u, np.arange(y.size)[None])
    c_a0 = _counts(ca, u, np.arange(n)[None])
    c_both = c_a0 + _counts(cb, u, np.arange(xb.size)[None])
    null_ks, null_m = [], []
    for start, r in _starts(2**n if exact else n_perm, width):
        if paired:  # a flipped base moves its a value to b and its b value to a; a and b's counts sum to both's
            flip = flips[start: start + r] if exact else rng.random((r, n)) < 0.5
            c_a = c_a0 + _counts(cb, u, weights=flip) - _counts(ca, u, weights=flip)
            c_b = c_both - c_a
            null_m.append(np.where(flip, xa - xb, xb - xa).mean(1))
        else:
            perm = rng.permuted(np.broadcast_to(np.arange(pooled.size), (r, pooled.size)), axis=1)
            c_a, c_b = _counts(pooled_codes, u, perm[:, :n]), _counts(pooled_codes, u, perm[:, n:])
            null_m.append(pooled[perm[:, n:]].mean(1) - pooled[perm[:, :n]].mean(1))
        null_ks.append(_ks(c_b, c_real) - _ks(c_a, c_real))
    lo, hi = _interval(np.concatenate(boot_ks), level)
    p = _p_two_sided(ks_diff, np.concatenate(null_ks), exact)
    return out | {
        "ks_a": float(ks_a), "ks_b": float(ks_b), "ks_diff": ks_diff, "ks_diff_lo": lo, "ks_diff_hi": hi,
        "ks_diff_p": p, "mean_diff": mean_diff,
        **dict(zip(("mean_diff_lo", "mean_diff_hi"), _interval(np.concatenate(boot_m), level))),
        "mean_diff_p": _p_two_sided(mean_diff, np.concatenate(null_m), exact),
        "verdict": _verdict(ks_diff, lo, hi, p, level, labels),
    }


def _starts(total: int, width: int):
    start = 0
    for r in _blocks(total, width):
        yield start, r
        start += r


def _verdict(diff: float, lo: float, hi: float, p: float, level: float, labels: tuple[str, str]) -> str:
    a, b = labels
    ci = f"KS({b}) - KS({a}) = {diff:+.3f} [{lo:+.3f}, {hi:+.3f}] ({level:.0%} CI), p = {p:.2g}"
    if hi < 0:
        return f"{b} closer to real than {a}: {ci}"
    if lo > 0:
        return f"{a} closer to real than {b}: {ci}"
    return f"no detectable difference: {ci}"


# --------------------------------------------------------------------------- across a grid


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN): reject where adjusted p <= alpha controls the
    family-wise error rate at alpha under any dependence between the tests. Chosen over Benjamini-Hochberg
    because the comparisons of one grid share the real curves and the bases (dependent tests), and a
    verdict per rung should not rest on a false-discovery budget."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = order.size
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adjusted, 1.0)
    return out


# --------------------------------------------------------------------------- power


POWER_GRID = 2000  # quantile bins of the power simulation (resolution 1 / POWER_GRID in probability)


def ks_power(d: float, n: int, *, alpha: float = 0.05, n_sim: int = 2000, seed: int = 0) -> float:
    """Power of the two-sample KS test at level alpha, n values per kind, when the two kinds' distributions
    are a location shift of each other at KS distance d (normals: a shift of 2 Phi^-1((1 + d) / 2) standard
    deviations). The max-slope step is an integer: ties lose some power (at d = 0.042, n = 1000: 0.53
    for continuous draws, 0.45 for draws rounded to integers), so this is an upper bound for it. By simulation on POWER_GRID quantile bins of the first distribution (multinomial counts
    per bin, so one simulation costs O(POWER_GRID), not O(n log n)); the critical value is the smallest
    D = h / n whose simulated null tail (d = 0, same bins) is <= alpha, as an exact test would use."""
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
    for r in _blocks(n_sim, POWER_GRID):
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
