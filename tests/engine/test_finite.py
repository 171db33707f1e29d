"""all_finite: the cheap sum-based check must agree with torch.isfinite(x).all() everywhere."""

import pytest
import torch

from attnlab.engine.finite import all_finite


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("bad", [None, float("inf"), float("-inf"), float("nan")])
def test_matches_isfinite(dtype, bad):
    x = torch.randn(4, 5, 6).to(dtype)
    if bad is not None:
        x[2, 3, 1] = bad
    assert all_finite(x) == bool(torch.isfinite(x).all()) == (bad is None)


def test_inf_and_minus_inf_together_are_caught():
    x = torch.zeros(10)
    x[0], x[1] = float("inf"), float("-inf")  # the sum is NaN, not inf
    assert not all_finite(x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_finite_values_whose_sum_overflows_are_finite(dtype):
    big = torch.finfo(dtype).max
    x = torch.full((8,), big, dtype=dtype)  # float32 sum overflows to inf (float16's max fits in float32)
    assert all_finite(x)


def test_integer_and_complex_tensors():
    assert all_finite(torch.arange(5))
    z = torch.tensor([1 + 1j, complex(float("nan"), 0)])
    assert not all_finite(z)
    assert all_finite(z[:1])


@pytest.mark.parametrize("bad", [None, float("inf"), float("nan")])
def test_masked_scores_that_overflow_the_sum(bad):
    """Scores hold float32's minimum where masked: the sum overflows, the min/max decide."""
    scores = torch.randn(2, 3, 8, 8)
    scores.masked_fill_(torch.ones(8, 8, dtype=torch.bool).triu(1), torch.finfo(torch.float32).min)
    if bad is not None:
        scores[1, 2, 5, 3] = bad
    assert not bool(torch.isfinite(scores.sum()))
    assert all_finite(scores) == (bad is None)


def test_empty_and_zero_dim():
    assert all_finite(torch.empty(0, 3))
    assert all_finite(torch.tensor(1.0)) and not all_finite(torch.tensor(float("nan")))
