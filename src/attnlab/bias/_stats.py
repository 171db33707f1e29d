"""Bootstrap intervals for the bias metrics (percentile bootstrap, fixed seed).

Kept local to ``attnlab.bias`` so the bias floor does not wait on ``attnlab.measure``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from attnlab.errors import InvalidInput

__all__ = ["bootstrap_ci", "mean_ci"]


def bootstrap_ci(
    statistic: Callable[..., float],
    *samples: np.ndarray,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``(estimate, low, high)``: ``statistic`` on the data and its percentile bootstrap interval.

    Several ``samples`` of equal length are resampled with the same row indices (paired
    bootstrap), so ``statistic(x, y)`` can be a correlation. Resamples where the statistic
    is undefined (NaN) are dropped.
    """
    arrays = [np.asarray(s, dtype=float) for s in samples]
    if not arrays or len(arrays[0]) == 0:
        raise InvalidInput("bootstrap needs at least one observation")
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise InvalidInput(f"paired samples must have equal length, got {[len(a) for a in arrays]}")
    if not 0 < level < 1:
        raise InvalidInput(f"level must lie in (0, 1), got {level}")
    estimate = float(statistic(*arrays))
    if n < 2 or n_boot < 1:
        return estimate, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    with np.errstate(all="ignore"):
        values = np.array([statistic(*(a[i] for a in arrays)) for i in idx], dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return estimate, float("nan"), float("nan")
    alpha = (1 - level) / 2
    return estimate, float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def mean_ci(values: np.ndarray, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Mean and its bootstrap interval (vectorised: fast for thousands of resamples)."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        raise InvalidInput("bootstrap needs at least one observation")
    if len(x) < 2 or n_boot < 1:
        return float(x.mean()), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(x.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))
