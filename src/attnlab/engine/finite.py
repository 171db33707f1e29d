"""A cheap test that a tensor holds no inf or NaN, for checks that run in every hooked forward.

``torch.isfinite(x).all()`` builds two temporaries and costs ~35x a plain sum on CPU; it
ran after every hooked attention layer. Any inf or NaN makes the float32 sum non-finite, so
a finite sum proves the tensor finite. A non-finite sum can also come from finite values
that overflow when added (float32 is summed, so only values near 1e38 can); the exact test
then decides.
"""

from __future__ import annotations

import torch

__all__ = ["all_finite"]


def all_finite(x: torch.Tensor) -> bool:
    """True when no element of ``x`` is inf or NaN (exactly ``torch.isfinite(x).all()``)."""
    if not x.is_floating_point() and not x.is_complex():
        return True
    if x.is_floating_point() and bool(torch.isfinite(x.sum(dtype=torch.float32 if x.dtype != torch.float64 else None))):
        return True
    return bool(torch.isfinite(x).all())
