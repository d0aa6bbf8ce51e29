"""Curve metrics (docs/science.md, "Curve metrics"): one number per curve, vectorised over curves.

A curve d_0..d_N may end early: `last[b]` is the last point metrics look at (the target's step, or
the one before it with `cut: before_target`, when the scan stops at the target), so every metric is
of d_0..d_last. The settings are the job's `metrics` block (`spec.MetricsSpec`, their one home); the
names of the metrics are the result columns declared in `synthact.results` (METRICS, JS_METRICS).
"""

from __future__ import annotations

import numpy as np

from synthact.results import JS_METRICS, METRICS
from synthact.spec import MetricsSpec

EARLY_FRACTION = 0.1
# fallback "constant": what the authors' functions return for a curve that never crosses the threshold
# (find_blowup_max_slope: num_steps - 1 with num_steps = 100; find_activation_plateau_length: 100).
AUTHORS_MAX_SLOPE_STEP_FALLBACK = 99
AUTHORS_PLATEAU_FALLBACK = 100


def last_point(stop_at: np.ndarray | None, steps: int, settings: MetricsSpec) -> np.ndarray | None:
    """The last point the metrics read of a scan that stops at the point `stop_at [B]` (None: it does not
    stop, they read to N): that point (`cut: through_target`) or the one before it (`before_target`)."""
    if stop_at is None:
        return None
    last = np.minimum(np.asarray(stop_at, np.int64), steps)
    return np.maximum(last - 1, 0) if settings.cut == "before_target" else last


def curve_metrics(
    curves: np.ndarray,
    step_size: np.ndarray,
    last: np.ndarray | None = None,
    settings: MetricsSpec | None = None,
    js: bool = False,
) -> dict[str, np.ndarray]:
    """Metrics of curves `[B, N+1]` (N >= 1) scanned with per-curve step `step_size [B]`, each up to point `last [B]`.

    With s_n = d_n - d_{n-1} (n >= 1) and s_0 := s_1:
    - max_slope_step: the n of the largest s_n (the paper's "blow-up" step); ties: the latest n, synthact's rule (the
      authors' unstable `np.argsort` leaves ties to the numpy build and CPU: docs/science.md);
    - max_slope: max_n s_n / step (per unit of perturbation distance); max_slope_start: the n of the
      steepest step d_n -> d_{n+1} (first on ties);
    - plateau_len: first n with d_n >= threshold (absolute, or `threshold * d_last` relative);
    - early_slope_ratio: mean slope over the first 10% of the steps / max_slope;
    - final: d_last (`final_l2` for L2 curves, `js_final` with `js`).
    Where no s_n exceeds `slope_threshold` / no d_n reaches the plateau threshold, max_slope_step and
    plateau_len take the fallback: `last` and `last + 1` (synthact), or the authors' constants 99 / 100.
    Keys: the L2 metric columns, or the JS ones with `js`.
    """
    s = settings or MetricsSpec()
    curves = np.asarray(curves, dtype=np.float64)
    b, points = curves.shape
    last = np.full(b, points - 1, np.int64) if last is None else np.clip(np.asarray(last, np.int64), 0, points - 1)
    step = np.asarray(step_size, dtype=np.float64)
    n = np.arange(points)[None, :]
    inside = n <= last[:, None]
    constant = s.fallback == "constant"

    has_slope = last >= 1
    diffs = np.diff(curves, axis=1)  # diffs[:, n-1] = s_n
    padded = np.concatenate([diffs[:, :1], diffs], axis=1)  # s_0 := s_1
    masked = np.where(inside & has_slope[:, None], padded, -np.inf)
    latest_max = points - 1 - np.argmax(masked[:, ::-1], axis=1)
    steep = (masked > s.slope_threshold).any(axis=1)
    max_slope_step = np.where(steep, latest_max, AUTHORS_MAX_SLOPE_STEP_FALLBACK if constant else last)
    steps_inside = np.where(inside[:, 1:], diffs, -np.inf)
    max_slope = np.where(has_slope, steps_inside.max(axis=1) / step, 0.0)
    max_slope_start = np.where(has_slope, steps_inside.argmax(axis=1), 0)

    final = curves[np.arange(b), last]
    threshold = s.plateau_threshold * (final if s.plateau_mode == "relative" else np.ones(b))
    reached = (curves >= threshold[:, None]) & inside
    plateau_len = np.where(reached.any(axis=1), reached.argmax(axis=1), AUTHORS_PLATEAU_FALLBACK if constant else last + 1)

    n_early = np.maximum(1, np.rint(EARLY_FRACTION * last).astype(np.int64))
    early_mask = (n[:, 1:] <= n_early[:, None]) & inside[:, 1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        early = (np.where(early_mask, diffs, 0.0).sum(axis=1) / np.maximum(early_mask.sum(axis=1), 1)) / step
        ratio = np.where((max_slope > 0) & has_slope, early / max_slope, np.nan)
    values = (max_slope_step.astype(np.int32), max_slope, max_slope_start.astype(np.int32),
              plateau_len.astype(np.int32), ratio, final)
    return dict(zip(JS_METRICS if js else METRICS, values, strict=True))
