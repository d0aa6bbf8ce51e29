"""Curve metrics (docs/science.md, "Curve metrics"): one number per curve, vectorised over curves.

A curve d_0..d_N may end early: `last[b]` is the last point metrics look at (the target's step
when the scan stops at the target), so every metric is of d_0..d_last.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EARLY_FRACTION = 0.1


@dataclass(frozen=True)
class MetricSettings:
    """The thresholds of the metrics (the job's `metrics` block)."""

    slope_threshold: float = 0.02  # max_slope_step: below this on every step, the step is the last point
    plateau_threshold: float = 20.0  # plateau_len: absolute L2 distance, or the fraction of d_last (relative)
    plateau_mode: str = "absolute"  # "absolute" (the paper) or "relative"


def curve_metrics(
    curves: np.ndarray,
    step_size: np.ndarray,
    prefix: str = "",
    last: np.ndarray | None = None,
    settings: MetricSettings | None = None,
) -> dict[str, np.ndarray]:
    """Metrics of curves `[B, N+1]` (N >= 1) scanned with per-curve step `step_size [B]`, each up to point `last [B]`.

    With s_n = d_n - d_{n-1} (n >= 1) and s_0 := s_1:
    - max_slope_step: the n of the largest s_n (ties: the latest n); `last` if no s_n exceeds
      `slope_threshold` (the paper's "blow-up" step);
    - max_slope: max_n s_n / step (per unit of perturbation distance); blowup_step: the n of the
      steepest step d_n -> d_{n+1} (first on ties);
    - plateau_len: first n with d_n >= threshold (absolute, or `threshold * d_last` relative),
      else last + 1 (the number of points looked at);
    - early_slope_ratio: mean slope over the first 10% of the steps / max_slope;
    - final: d_last (`final_l2` for L2 curves).
    """
    s = settings or MetricSettings()
    curves = np.asarray(curves, dtype=np.float64)
    b, points = curves.shape
    last = np.full(b, points - 1, np.int64) if last is None else np.clip(np.asarray(last, np.int64), 0, points - 1)
    step = np.asarray(step_size, dtype=np.float64)
    n = np.arange(points)[None, :]
    inside = n <= last[:, None]

    has_slope = last >= 1
    diffs = np.diff(curves, axis=1)  # diffs[:, n-1] = s_n
    padded = np.concatenate([diffs[:, :1], diffs], axis=1)  # s_0 := s_1
    masked = np.where(inside & has_slope[:, None], padded, -np.inf)
    latest_max = points - 1 - np.argmax(masked[:, ::-1], axis=1)
    steep = (masked > s.slope_threshold).any(axis=1)
    max_slope_step = np.where(steep, latest_max, last)
    steps_inside = np.where(inside[:, 1:], diffs, -np.inf)
    max_slope = np.where(has_slope, steps_inside.max(axis=1) / step, 0.0)
    blowup = np.where(has_slope, steps_inside.argmax(axis=1), 0)

    final = curves[np.arange(b), last]
    threshold = s.plateau_threshold * (final if s.plateau_mode == "relative" else np.ones(b))
    reached = (curves >= threshold[:, None]) & inside
    plateau_len = np.where(reached.any(axis=1), reached.argmax(axis=1), last + 1)

    n_early = np.maximum(1, np.rint(EARLY_FRACTION * last).astype(np.int64))
    early_mask = (n[:, 1:] <= n_early[:, None]) & inside[:, 1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        early = (np.where(early_mask, diffs, 0.0).sum(axis=1) / np.maximum(early_mask.sum(axis=1), 1)) / step
        ratio = np.where((max_slope > 0) & has_slope, early / max_slope, np.nan)
    return {
        f"{prefix}max_slope_step": max_slope_step.astype(np.int32),
        f"{prefix}max_slope": max_slope,
        f"{prefix}blowup_step": blowup.astype(np.int32),
        f"{prefix}plateau_len": plateau_len.astype(np.int32),
        f"{prefix}early_slope_ratio": ratio,
        f"{prefix}final{'_l2' if not prefix else ''}": final,
    }
