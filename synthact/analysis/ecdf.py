"""Empirical CDFs of samples on a shared grid of values: what inference.py's KS statistics, resamples and
large-sample (Gaussian) approximations are computed from. Pure numpy, no I/O.

A sample is held as integer *codes* into the grid (the sorted distinct values of the pooled samples, or
at most a given number of cut points at quantiles of them: `coarsen`): the ECDF at grid point j is the share of codes <= j,
which is exact at every grid point and needs no sorting per resample. Ties (the integer max-slope step)
are kept as they are: equal values share a code, as scipy's `ks_2samp` treats them.

- Small samples: `counts` of many resamples at once (index arrays or weights, in `blocks` of bounded size).
- Large samples: the Gaussian limit of resampled ECDFs: `ecdf_noise` for one sample (O(draws x points)),
  and for paired samples the covariance of the gap processes F_x - F_y from counts and joint counts
  (`paired_gap_covariance`, `paired_null_covariance`: O(n + points^2)) with `gaussian` draws of it.
"""

from __future__ import annotations

import numpy as np

BLOCK_ELEMENTS = 2_000_000  # resamples per block x max(n, grid points): bounds memory


def codes(*arrays: np.ndarray, max_points: int | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """Each array as integer codes into a grid, and the grid: the sorted distinct values of all arrays
    together, or with `max_points` and more distinct values than that, `coarsen`'s cut points."""
    pooled = np.concatenate(arrays)
    grid, inverse = np.unique(pooled, return_inverse=True)
    cuts = np.cumsum([len(a) for a in arrays])[:-1]
    out = np.split(inverse.ravel(), cuts), grid
    return coarsen(*out, max_points) if max_points is not None else out


def coarsen(codes_: list[np.ndarray], grid: np.ndarray, max_points: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Codes on a grid of at most `max_points` cut points where the grid has more: the pooled values'
    quantiles at 1/max_points, 2/max_points, ..., 1 (the smallest value reaching each share, as
    np.quantile's inverted_cdf; ties merge), a value's code being the first cut point >= it. The ECDF at a
    cut point is exact. O(n + grid points)."""
    if grid.size <= max_points:
        return codes_, grid
    pooled = np.concatenate(codes_)
    cumulative = np.cumsum(np.bincount(pooled, minlength=grid.size))
    shares = np.ceil(np.arange(1, max_points + 1) * pooled.size / max_points)
    kept = np.unique(np.searchsorted(cumulative, shares, side="left"))
    mapping = np.searchsorted(kept, np.arange(grid.size), side="left")
    return [mapping[c] for c in codes_], grid[kept]


def counts(codes_: np.ndarray, size: int, index: np.ndarray | None = None,
           weights: np.ndarray | None = None) -> np.ndarray:
    """[R, size] counts per grid point: resample r takes codes_[index[r]] (or weights[r] of each element)."""
    if index is not None:
        rows, picked, w = index.shape[0], codes_[index], None
    else:
        rows, picked, w = weights.shape[0], np.broadcast_to(codes_, weights.shape), weights.ravel().astype(float)
    flat = (np.arange(rows)[:, None] * size + picked).ravel()
    return np.bincount(flat, weights=w, minlength=rows * size).reshape(rows, size)


def cdf(count: np.ndarray) -> np.ndarray:
    """ECDF at the grid points, per row of a count matrix (or of one count vector)."""
    return np.cumsum(count, -1) / count.sum(-1, keepdims=True)


def ks(cx: np.ndarray, cy: np.ndarray) -> np.ndarray:
    """KS distance max |F_x - F_y| over the grid, per row of two count matrices over the same grid (one
    cumulative sum of n_y c_x - n_x c_y: exact on integer counts)."""
    nx, ny = cx.sum(-1, keepdims=True), cy.sum(-1, keepdims=True)
    return np.abs(np.cumsum(cx * ny - cy * nx, -1)).max(-1) / (nx * ny)[..., 0]


def blocks(total: int, width: int):
    """Sizes of the blocks that `total` resamples of `width` elements each are drawn in."""
    size = max(1, BLOCK_ELEMENTS // max(width, 1))
    for start in range(0, total, size):
        yield min(size, total - start)


# --------------------------------------------------------------------------- large samples


def ecdf_noise(p: np.ndarray, n: float, draws: int, rng: np.random.Generator) -> np.ndarray:
    """[draws, points] draws of F* - F, where F* is the ECDF of n values drawn from grid probabilities p:
    the multinomial's Gaussian limit, cumsum(sqrt(p) z - p (sqrt(p) . z)) / sqrt(n), in O(draws x points)."""
    root = np.sqrt(p)
    z = rng.standard_normal((draws, p.size)) * root
    return np.cumsum(z - np.outer(z.sum(-1), p), -1) / np.sqrt(n)


def joint_cdf(cx: np.ndarray, cy: np.ndarray, size: int) -> np.ndarray:
    """P(x <= t_s, y <= t_t) for paired codes (row i of both is base i), as a [size, size] matrix."""
    table = np.bincount(cx * size + cy, minlength=size * size).reshape(size, size)
    return table.cumsum(0).cumsum(1) / cx.size


def _min_cdf(f: np.ndarray) -> np.ndarray:
    """P(x <= t_s, x <= t_t) = F(min(t_s, t_t))."""
    return f[np.minimum.outer(np.arange(f.size), np.arange(f.size))]


def paired_gap_covariance(real: np.ndarray, a: np.ndarray, b: np.ndarray, size: int) -> np.ndarray:
    """The covariance of the gaps F_a - F_real and F_b - F_real (stacked: 2 x size points) as estimated by
    their means over n bases (row i of each array is base i): the covariance of the per-base vectors
    1{k_i <= t} - 1{real_i <= t} divided by n, from joint counts in O(n + size^2)."""
    f = {id(x): cdf(np.bincount(x, minlength=size)) for x in (real, a, b)}

    def both(x, y):  # E[1{x <= s} 1{y <= t}]
        return _min_cdf(f[id(x)]) if x is y else joint_cdf(x, y, size)

    def block(x, y):
        second = both(x, y) - both(x, real) - both(real, y) + both(real, real)
        return (second - np.outer(f[id(x)] - f[id(real)], f[id(y)] - f[id(real)])) / real.size

    ab = block(a, b)
    return np.block([[block(a, a), ab], [ab.T, block(b, b)]])


def paired_null_covariance(cx: np.ndarray, cy: np.ndarray, size: int) -> np.ndarray:
    """The covariance of the gap F_x - F_y when the two values of each base are swapped at random (the paired
    permutation null): E[d(s) d(t)] / n for the per-base d_i(t) = 1{x_i <= t} - 1{y_i <= t}."""
    fx, fy = (cdf(np.bincount(c, minlength=size)) for c in (cx, cy))
    xy = joint_cdf(cx, cy, size)
    return (_min_cdf(fx) - xy - xy.T + _min_cdf(fy)) / cx.size


def gaussian(cov: np.ndarray, draws: int, rng: np.random.Generator) -> np.ndarray:
    """[draws, dim] centred Gaussian vectors with covariance `cov` (positive semidefinite)."""
    return rng.standard_normal((draws, cov.shape[0])) @ _cholesky(cov).T


def _cholesky(cov: np.ndarray) -> np.ndarray:
    """L with L L^T = cov for a positive semidefinite cov, columns of (numerically) dependent points left 0.
    Elementwise numpy, not LAPACK: LAPACK's multithreaded small factorisations stall on a loaded machine
    (seconds for 256 points where this takes milliseconds)."""
    k = cov.shape[0]
    out = np.zeros_like(cov, dtype=float)
    tol = 1e-10 * max(float(cov.diagonal().max()), 1e-300)
    for j in range(k):
        d = cov[j, j] - (out[j, :j] ** 2).sum()
        if d > tol:
            out[j, j] = np.sqrt(d)
            out[j + 1:, j] = (cov[j + 1:, j] - (out[j + 1:, :j] * out[j, :j]).sum(1)) / out[j, j]
    return out
