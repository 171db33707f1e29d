"""Pearson's r for bias tables: NaN where too few distinct points make it meaningless."""

from __future__ import annotations

import numpy as np

__all__ = ["n_points", "pearson"]


def n_points(x, y) -> int:
    """How many distinct (x, y) points (a resample repeats some)."""
    return len(np.unique(np.column_stack([x, y]), axis=0))


def pearson(x, y) -> float:
    """NaN unless there are 3 distinct (x, y) points: any 2 points give r = +-1, which says nothing."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if n_points(x, y) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])
