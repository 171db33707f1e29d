"""A cheap test that a tensor holds no inf or NaN, for checks that run in every hooked forward.

``torch.isfinite(x).all()`` builds two temporaries and costs ~35x a plain sum on CPU; it
ran after every hooked attention layer. Any inf or NaN makes the float32 sum non-finite, so
a finite sum proves the tensor finite. A non-finite sum can also come from finite values
that overflow when added (masked scores hold float32's minimum on purpose); then the
smallest and largest element decide (both are NaN when any element is), still without a
temporary the size of the tensor.
"""

from __future__ import annotations

import torch

__all__ = ["all_finite"]

_SUMMED = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def all_finite(x: torch.Tensor) -> bool:
    """True when no element of ``x`` is inf or NaN: ``torch.isfinite(x).all()``, cheaper.

    Integer and bool tensors are finite; other dtypes and layouts (complex, float8, sparse)
    take ``torch.isfinite`` itself.
    """
    if not x.is_floating_point() and not x.is_complex():
        return True
    if x.dtype not in _SUMMED or x.layout != torch.strided:
        return bool(torch.isfinite(x).all())
    if x.numel() == 0:
        return True
    if bool(torch.isfinite(x.sum(dtype=torch.float32 if x.dtype != torch.float64 else None))):
        return True
    low, high = x.aminmax()
    return bool(torch.isfinite(low)) and bool(torch.isfinite(high))
