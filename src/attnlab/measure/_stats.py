"""Percentile bootstrap of a mean over prompts (the interval every effect and sweep reports)."""

from __future__ import annotations

import numpy as np

__all__ = ["bootstrap_mean"]


def bootstrap_mean(
    values: np.ndarray, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over the last axis and its percentile-bootstrap interval.

    ``values`` is ``[..., n_prompts]``; every leading row (e.g. every head of a sweep) is
    resampled with the *same* prompt indices, so intervals of different heads are comparable
    and the result does not depend on how many heads were swept together.
    Returns ``(mean, low, high)``, each of shape ``values.shape[:-1]``. NaN values (a prompt
    a metric could not score) are left out of the mean.
    """
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[-1]
    mean = np.nanmean(values, axis=-1) if n else np.full(values.shape[:-1], np.nan)
    if n < 2 or n_boot < 1:
        return mean, mean.copy(), mean.copy()
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n, size=(n_boot, n))  # [n_boot, n_prompts]
    boots = np.nanmean(values[..., picks], axis=-1)  # [..., n_boot]
    alpha = (1.0 - level) / 2.0
    low = np.quantile(boots, alpha, axis=-1)
    high = np.quantile(boots, 1.0 - alpha, axis=-1)
    return mean, low, high
