"""The tests and intervals of `synthact compare` (docs/science.md, "Statistics"): one kind against real, the
difference between two kinds (rungs), Holm's correction across a grid. Calibrated by simulation:
`synthact bench --calibration` (synthact/bench/calibration.py) and docs/benchmarks.md.

Pure functions over numpy arrays (no I/O), so a reader calls them once per panel: arrays in, one dict out.

- `distance_to_real(values, real, paired)`: the KS distance of one kind to real and the permutation
  p-value of "same distribution" (paired: the two values of a base swapped at random; else labels
  shuffled), and mean(values) - mean(real) with its t interval and p. No interval of the KS distance
  itself: none we measured covers (a percentile bootstrap of KS never covers 0, and the KS estimate is
  biased upward by up to a standard error at 100 bases, by an amount that depends on the shapes).
- `paired_difference(real, a, b, paired)`: KS(b, real) - KS(a, real), tested against the null that the two
  distances are equal (not that a and b are exchangeable), and mean(b) - mean(a), each with an interval
  and the p-value of the same computation (the interval excludes 0 exactly when p < 1 - level).
- `holm(p)`: Holm's step-down adjustment.

How, and at which sizes:
- KS difference: estimate +- z * se, p = 2 Phi(-|estimate| / se), se the standard deviation of the KS
  difference over bootstrap resamples (paired: bases resampled with all three of their values; a
  resample's KS over at most `BOOT_POINTS` quantiles of the pooled values: every value of an integer
  metric). Up to `EXACT_MAX_N` values a sample the resamples are drawn (`n_boot`); above, the resampled
  ECDFs are their Gaussian limit on a grid of at most `GRID_POINTS` points (ecdf.ecdf_noise,
  ecdf.paired_gap_covariance), at the points where each KS can be attained: O(n + points^2), not
  O(n_boot * n).
- Permutation p of one kind against real: drawn permutations up to EXACT_MAX_N values (exact enumeration
  of the 2^n swaps of a paired sample when that is at most n_perm); above, the permutation distribution's
  Gaussian limit on the grid (ecdf.paired_null_covariance; a Brownian bridge in the pooled ECDF
  unpaired), the KS then taken over the grid's points (every value of an integer metric).
- Means: the paired t interval, or Welch's where unpaired, and the t-test's p.
- Ties (the integer max-slope step): ECDFs on the distinct values, as scipy.stats.ks_2samp; resamples keep
  them; a permutation statistic equal to the observed one (within scipy's relative tolerance) counts as
  extreme.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from synthact.analysis import ecdf

EXACT_MAX_N = 2000  # above this many values in a sample: the Gaussian (large-sample) path
GRID_POINTS = 128  # grid points of the Gaussian path (quantiles of the pooled values where there are more)
BOOT_POINTS = 1024  # grid points of the resampled KS differences (only continuous metrics have more values)
CANDIDATE_SDS = 10.0  # grid points within this many standard deviations of a KS distance can attain it
CANDIDATES = 128  # at most this many such points per kind (evenly thinned, the maximum kept)
TIE_RTOL = 1e4 * np.finfo(float).eps  # statistics this close to the observed one are ties (as scipy.stats)
LEVEL = 0.95


def _clean(*arrays, paired: bool) -> list[np.ndarray]:
    arrays = [np.asarray(a, dtype=float) for a in arrays]
    if paired:
        if len({a.shape for a in arrays}) != 1:
            raise ValueError(f"paired samples need equal lengths, got {[a.shape[0] for a in arrays]}")
        keep = np.all([np.isfinite(a) for a in arrays], axis=0)
        return [a[keep] for a in arrays]
    return [a[np.isfinite(a)] for a in arrays]


def _ks(cx: np.ndarray, cy: np.ndarray, size: int) -> float:
    """The two-sample KS distance of two samples' codes on a grid of `size` points (on the grid of every
    distinct value: scipy's ks_2samp statistic, ties included)."""
    return float(ecdf.ks(np.bincount(cx, minlength=size), np.bincount(cy, minlength=size)))


def _normal(estimate: float, se: float, level: float) -> tuple[float, float, float]:
    """(lo, hi, p) of estimate +- z se and the two-sided normal p of estimate = 0."""
    if not se > 0:
        return estimate, estimate, 1.0 if estimate == 0 else 0.0
    z = stats.norm.ppf((1 + level) / 2)
    return float(estimate - z * se), float(estimate + z * se), float(2 * stats.norm.sf(abs(estimate) / se))


def mean_difference(x: np.ndarray, y: np.ndarray, *, paired: bool, level: float = LEVEL) -> dict:
    """mean(x) - mean(y) with its standard error, t interval and two-sided t-test p (paired: on x_i - y_i;
    else Welch's, unequal variances)."""
    if paired:
        d = x - y
        diff, se, df = float(d.mean()), float(d.std(ddof=1) / math.sqrt(d.size)), d.size - 1
    else:
        vx, vy = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
        diff, se = float(x.mean() - y.mean()), float(math.sqrt(vx + vy))
        df = (vx + vy) ** 2 / (vx**2 / (x.size - 1) + vy**2 / (y.size - 1)) if vx + vy > 0 else 1.0
    if not se > 0:
        lo = hi = diff
        p = 1.0 if diff == 0 else 0.0
    else:
        half = stats.t.ppf((1 + level) / 2, df) * se
        lo, hi, p = float(diff - half), float(diff + half), float(2 * stats.t.sf(abs(diff) / se, df))
    return {"mean_diff": diff, "mean_diff_se": se, "mean_diff_lo": lo, "mean_diff_hi": hi, "mean_diff_p": p}


# --------------------------------------------------------------------------- one kind against real


DISTANCE_KEYS = ("ks", "ks_p", "mean_diff", "mean_diff_se", "mean_diff_lo", "mean_diff_hi", "mean_diff_p")


def distance_to_real(values, real, *, paired: bool = False, n_perm: int = 2000, level: float = LEVEL,
                     seed: int = 0) -> dict:
    """The KS distance of `values` to `real`, the permutation p-value of "same distribution" (`ks_p`), and
    mean(values) - mean(real) with its interval and p (`mean_diff*`, mean_difference).

    `paired`: row i of both arrays comes from base i (the permutation swaps the two values of a base);
    otherwise the permutation shuffles the labels of the pooled values. Non-finite entries are dropped
    (with their partner when paired). `n`, `n_real`: the values used."""
    x, y = _clean(values, real, paired=paired)
    out = {"n": int(x.size), "n_real": int(y.size)}
    if x.size < 2 or y.size < 2:
        return out | dict.fromkeys(DISTANCE_KEYS, math.nan)
    (cx, cy), grid = ecdf.codes(x, y)
    ks = _ks(cx, cy, grid.size)
    rng = np.random.default_rng(seed)
    if max(x.size, y.size) > EXACT_MAX_N:
        p = _permutation_p_gaussian(*ecdf.coarsen([cx, cy], grid, GRID_POINTS), paired, n_perm, rng)
    else:
        p = _permutation_p(cx, cy, grid.size, ks, paired, n_perm, rng)
    return out | {"ks": ks, "ks_p": p} | mean_difference(x, y, paired=paired, level=level)


def _permutation_p(cx: np.ndarray, cy: np.ndarray, u: int, ks: float, paired: bool, n_perm: int,
                   rng: np.random.Generator) -> float:
    """P(KS of a permuted pair >= the observed KS), by drawn permutations (+1, as scipy) or, paired with
    2^n <= n_perm, over all 2^n swaps."""
    n = cx.size
    exact = paired and 2**n <= n_perm
    total = 2**n if exact else n_perm
    both = np.concatenate([cx, cy])
    null, start = [], 0
    for r in ecdf.blocks(total, max(both.size, u)):
        if paired:
            flip = (((np.arange(start, start + r)[:, None] >> np.arange(n)[None]) & 1).astype(bool) if exact
                    else rng.random((r, n)) < 0.5)
            ca = ecdf.counts(cx, u, weights=~flip) + ecdf.counts(cy, u, weights=flip)
            cb = ecdf.counts(cx, u, weights=flip) + ecdf.counts(cy, u, weights=~flip)
        else:
            perm = rng.permuted(np.broadcast_to(np.arange(both.size), (r, both.size)), axis=1)
            ca, cb = ecdf.counts(both, u, perm[:, :n]), ecdf.counts(both, u, perm[:, n:])
        null.append(ecdf.ks(ca, cb))
        start += r
    null = np.concatenate(null)
    extreme = (null >= ks - TIE_RTOL * ks).sum()
    return float(extreme / null.size if exact else (extreme + 1) / (null.size + 1))


def _permutation_p_gaussian(codes_: list[np.ndarray], grid: np.ndarray, paired: bool, n_perm: int,
                            rng: np.random.Generator) -> float:
    """The permutation p from the permutation distribution's Gaussian limit, the KS taken over the grid:
    paired, the gap under random swaps within bases; unpaired, a Brownian bridge in the pooled ECDF."""
    (cx, cy), size = codes_, grid.size
    ks = _ks(cx, cy, size)
    if paired:
        null = ecdf.gaussian(ecdf.paired_null_covariance(cx, cy, size), n_perm, rng)
    else:
        total = cx.size + cy.size
        pooled = np.bincount(np.concatenate([cx, cy]), minlength=size) / total
        scale = math.sqrt((1 / cx.size + 1 / cy.size) * total / (total - 1))  # a bridge of variance H(1 - H) scaled
        null = ecdf.ecdf_noise(pooled, 1.0, n_perm, rng) * scale
    null = np.abs(null).max(-1)
    return float(((null >= ks - TIE_RTOL * ks).sum() + 1) / (n_perm + 1))


# --------------------------------------------------------------------------- two kinds


DIFFERENCE_KEYS = ("ks_a", "ks_b", "ks_diff", "ks_diff_se", "ks_diff_lo", "ks_diff_hi", "ks_diff_p", "mean_diff",
                   "mean_diff_se", "mean_diff_lo", "mean_diff_hi", "mean_diff_p")


def paired_difference(real, a, b, *, paired: bool = True, n_boot: int = 1000, level: float = LEVEL,
                      seed: int = 0, labels: tuple[str, str] = ("a", "b")) -> dict:
    """Kind b against kind a: ks_diff = KS(b, real) - KS(a, real) (negative: b is closer to real) with its
    bootstrap standard error, interval and p-value of KS(a, real) = KS(b, real); mean_diff = mean(b) - mean(a)
    with its t interval and p; a `verdict` states the KS difference with its interval, naming the kinds by
    `labels`; `se_method` says how the standard error was computed ("bootstrap" or "gaussian").

    `paired` (kinds a and b built for the same bases as the real values, row i = base i): bases resampled
    with their three values, mean_diff = mean(b - a); bases with a non-finite value in any of the three are
    dropped. Unpaired (where the kinds' bases differ): each sample resampled on its own, Welch's t."""
    y, xa, xb = _clean(real, a, b, paired=paired)
    out = {"n": int(xa.size), "n_b": int(xb.size), "n_real": int(y.size), "paired": paired}
    if min(y.size, xa.size, xb.size) < 2:
        return out | dict.fromkeys(DIFFERENCE_KEYS, math.nan) | {"se_method": None, "verdict": "too few bases"}
    codes_, grid = ecdf.codes(y, xa, xb)
    ks_a, ks_b = _ks(codes_[1], codes_[0], grid.size), _ks(codes_[2], codes_[0], grid.size)
    diff = ks_b - ks_a
    rng = np.random.default_rng(seed)
    large = max(y.size, xa.size, xb.size) > EXACT_MAX_N
    if large:
        se = _se_gaussian(*ecdf.coarsen(codes_, grid, GRID_POINTS), paired, n_boot, rng)
    else:
        se = _se_bootstrap(*ecdf.coarsen(codes_, grid, BOOT_POINTS), paired, n_boot, rng)
    lo, hi, p = _normal(diff, se, level)
    return out | {"ks_a": ks_a, "ks_b": ks_b, "ks_diff": diff, "ks_diff_se": se, "ks_diff_lo": lo, "ks_diff_hi": hi,
                  "ks_diff_p": p} | mean_difference(xb, xa, paired=paired, level=level) | {
        "se_method": "gaussian" if large else "bootstrap", "verdict": _verdict(diff, lo, hi, p, level, labels)}


def _se_bootstrap(codes_: list[np.ndarray], grid: np.ndarray, paired: bool, n_boot: int,
                  rng: np.random.Generator) -> float:
    """The standard deviation of KS(b*, real*) - KS(a*, real*) over n_boot bootstrap resamples, on the grid of
    the codes (real, a, b)."""
    (cy, ca, cb), u = codes_, grid.size
    out = []
    for r in ecdf.blocks(n_boot, max(cy.size + ca.size + cb.size, u)):
        ia = rng.integers(0, ca.size, (r, ca.size))
        ib, iy = (ia, ia) if paired else (rng.integers(0, cb.size, (r, cb.size)), rng.integers(0, cy.size, (r, cy.size)))
        c_real = ecdf.counts(cy, u, iy)
        out.append(ecdf.ks(ecdf.counts(cb, u, ib), c_real) - ecdf.ks(ecdf.counts(ca, u, ia), c_real))
    return float(np.concatenate(out).std(ddof=1))


def _se_gaussian(codes_: list[np.ndarray], grid: np.ndarray, paired: bool, n_boot: int,
                 rng: np.random.Generator) -> float:
    """The same standard deviation with the resampled gaps F_k* - F_real* drawn from their Gaussian limit on
    the grid, at the points where each KS can be attained (paired: the three values of a base together)."""
    (cy, ca, cb), size = codes_, grid.size
    f = [np.bincount(c, minlength=size) / c.size for c in (cy, ca, cb)]
    gaps = [np.cumsum(f[k]) - np.cumsum(f[0]) for k in (1, 2)]
    if paired:
        cov = ecdf.paired_gap_covariance(cy, ca, cb, size)
        sds = [math.sqrt(cov.diagonal()[k * size:(k + 1) * size].max()) for k in (0, 1)]
        picked = [_candidates(g, sd) for g, sd in zip(gaps, sds)]
        index = np.concatenate([picked[0], size + picked[1]])
        h = ecdf.gaussian(cov[np.ix_(index, index)], n_boot, rng)
        noise = [h[:, :picked[0].size], h[:, picked[0].size:]]
    else:
        real, *kinds = (ecdf.ecdf_noise(p, c.size, n_boot, rng) for p, c in zip(f, (cy, ca, cb)))
        sds = [math.sqrt(np.max(p.cumsum() * (1 - p.cumsum())) * (1 / c.size + 1 / cy.size)) for p, c in
               zip(f[1:], (ca, cb))]
        picked = [_candidates(g, sd) for g, sd in zip(gaps, sds)]
        noise = [(k - real)[:, points] for k, points in zip(kinds, picked)]
    t = [np.abs(g[points] + e).max(-1) for g, points, e in zip(gaps, picked, noise)]
    return float((t[1] - t[0]).std(ddof=1))


def _candidates(gap: np.ndarray, sd: float) -> np.ndarray:
    """The grid points where |gap + noise| can be the maximum (within CANDIDATE_SDS noise standard deviations
    of it), at most CANDIDATES of them: evenly thinned, the maximum kept."""
    top = np.abs(gap).max()
    points = np.flatnonzero(np.abs(gap) >= top - CANDIDATE_SDS * sd)
    if points.size > CANDIDATES:
        keep = points[np.linspace(0, points.size - 1, CANDIDATES).round().astype(int)]
        points = np.union1d(keep, [int(np.abs(gap).argmax())])
    return points


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
    family-wise error rate at alpha under any dependence between the tests, given p-values that are valid
    one by one (it needs no calibration of its own). Chosen over Benjamini-Hochberg because the
    comparisons of one grid share the real curves and the bases (dependent tests), and a verdict per rung
    should not rest on a false-discovery budget."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = order.size
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adjusted, 1.0)
    return out
