"""Curve metrics (science.md, "Curve metrics"): one number per curve, vectorised over curves."""

from __future__ import annotations

import numpy as np

PLATEAU_THETA = 0.1
EARLY_FRACTION = 0.1


def curve_metrics(curves: np.ndarray, step_size: np.ndarray, prefix: str = "") -> dict[str, np.ndarray]:
    """Metrics of curves `[B, N+1]` scanned with per-curve step `step_size [B]`.

    - max_slope: max_n (d_{n+1} - d_n) / s
    - blowup_step: the n of that maximum
    - plateau_len: first n with d_n >= theta * d_N (theta = 0.1)
    - early_slope_ratio: mean slope over the first 10% of steps / max_slope
    - final: d_N (`final_l2` for L2 curves)
    """
    curves = np.asarray(curves, dtype=np.float64)
    step = np.asarray(step_size, dtype=np.float64)[:, None]
    n_steps = curves.shape[1] - 1
    slopes = np.diff(curves, axis=1) / step
    max_slope = slopes.max(axis=1)
    final = curves[:, -1]
    reached = curves >= PLATEAU_THETA * final[:, None]
    plateau_len = reached.argmax(axis=1)
    n_early = max(1, int(round(EARLY_FRACTION * n_steps)))
    early = slopes[:, :n_early].mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(max_slope > 0, early / max_slope, np.nan)
    return {
        f"{prefix}max_slope": max_slope,
        f"{prefix}blowup_step": slopes.argmax(axis=1).astype(np.int32),
        f"{prefix}plateau_len": plateau_len.astype(np.int32),
        f"{prefix}early_slope_ratio": ratio,
        f"{prefix}final{'_l2' if not prefix else ''}": final,
    }
