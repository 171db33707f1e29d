"""The one bootstrap: its draws, its statistics, and the rule for fewer than 2 values."""

from __future__ import annotations

import numpy as np
import pytest

from attnlab.errors import InvalidInput
from attnlab.interventions import AblateHead
from attnlab.measure import KL, LogitDiff, bootstrap, bootstrap_mean, effect, sweep_heads

VALUES = np.array([0.3, -1.2, 2.5, 0.7, 0.1, 4.0, -0.4, 1.1])


def _by_hand(values, reduce, n_boot, seed, level=0.95):
    picks = np.random.default_rng(seed).integers(0, len(values), size=(n_boot, len(values)))
    stats = np.array([reduce(values[p]) for p in picks])
    return np.quantile(stats, (1 - level) / 2), np.quantile(stats, (1 + level) / 2)


@pytest.mark.parametrize("statistic, reduce", [("mean", np.mean), ("median", np.median)])
def test_percentile_interval_by_hand(statistic, reduce):
    est, low, high = bootstrap(VALUES, statistic, n_boot=400, seed=5)
    want_low, want_high = _by_hand(VALUES, reduce, 400, 5)
    assert est == pytest.approx(reduce(VALUES))
    assert (low, high) == (pytest.approx(want_low), pytest.approx(want_high))
    assert low < est < high


def test_paired_statistic_resamples_pairs_together():
    x = np.arange(8.0)
    y = x * 2 + np.array([0.3, -0.2, 0.1, 0.0, -0.4, 0.2, 0.1, -0.1])
    corr = lambda a, b: float(np.corrcoef(a, b)[0, 1])  # noqa: E731
    est, low, high = bootstrap((x, y), corr, n_boot=300, seed=1)
    picks = np.random.default_rng(1).integers(0, 8, size=(300, 8))
    stats = np.array([corr(x[p], y[p]) for p in picks])
    assert est == pytest.approx(corr(x, y))
    assert low == pytest.approx(np.quantile(stats, 0.025)) and high == pytest.approx(np.quantile(stats, 0.975))


def test_rows_share_the_same_draws():
    other = VALUES[::-1] * 3
    mean, low, high = bootstrap(np.stack([VALUES, other]), n_boot=200, seed=2)
    alone = bootstrap(VALUES, n_boot=200, seed=2)
    assert (mean[0], low[0], high[0]) == pytest.approx(alone)
    assert bootstrap_mean(VALUES[None], n_boot=200, seed=2)[1][0] == pytest.approx(alone[1])


def test_fewer_than_two_values_give_a_nan_interval():
    assert bootstrap(np.array([0.25])) == (0.25, pytest.approx(np.nan, nan_ok=True), pytest.approx(np.nan, nan_ok=True))
    est, low, high = bootstrap(np.array([0.25]), "median")
    assert est == 0.25 and np.isnan(low) and np.isnan(high)
    est, low, high = bootstrap(VALUES, n_boot=0)
    assert est == pytest.approx(VALUES.mean()) and np.isnan(low) and np.isnan(high)
    est, low, high = bootstrap((np.array([1.0]), np.array([2.0])), lambda a, b: float(a[0] + b[0]))
    assert est == 3.0 and np.isnan(low) and np.isnan(high)
    # a row with one real value among NaNs has no interval; the other rows keep theirs
    rows = np.stack([VALUES, np.r_[np.nan * np.ones(7), 1.5]])
    mean, low, high = bootstrap(rows, n_boot=100)
    assert mean[1] == 1.5 and np.isnan(low[1]) and np.isnan(high[1])
    assert low[0] < mean[0] < high[0]
    est, low, high = bootstrap(np.array([]))
    assert np.isnan(est) and np.isnan(low)


def test_nan_values_are_left_out():
    with_nan = np.r_[VALUES, np.nan]
    est, low, high = bootstrap(with_nan, n_boot=100)
    assert est == pytest.approx(VALUES.mean())
    assert np.isfinite(low) and np.isfinite(high)


def test_the_rule_reaches_effects_and_sweeps(tiny_gpt2):
    one = effect(tiny_gpt2, ["the nurse said that"], KL(), [AblateHead(1, 0)], progress=False)
    assert np.isfinite(one.mean) and np.isnan(one.interval[0]) and np.isnan(one.interval[1])
    res = sweep_heads(tiny_gpt2, ["the nurse said that"], LogitDiff(" she", " he"), layers=[0], progress=False)
    assert res.table.ci_low.isna().all() and res.table.effect.notna().all()


def test_bad_options():
    with pytest.raises(InvalidInput, match="unknown statistic 'meen'; did you mean 'mean'"):
        bootstrap(VALUES, "meen")
    with pytest.raises(InvalidInput, match=r"level must lie in \(0, 1\)"):
        bootstrap(VALUES, level=95)
    with pytest.raises(InvalidInput, match="n_boot must be a non-negative integer"):
        bootstrap(VALUES, n_boot=-1)
    with pytest.raises(InvalidInput, match="equal length"):
        bootstrap((VALUES, VALUES[:3]), lambda a, b: 0.0)


def test_interval_rows_with_undefined_resamples_match_numpys_nan_skipping_quantiles():
    """The fast path (all resamples defined) and the NaN-skipping path give numpy's nanquantile exactly."""
    import warnings

    from attnlab.measure.stats import _quantiles

    rng = np.random.default_rng(0)
    boots = rng.normal(size=(6, 4, 50))
    boots[1, 2, 3] = np.nan  # one undefined resample
    boots[2, 0, :] = np.inf  # none defined
    boots[3, 1, 5] = -np.inf
    for level in (0.95, 0.5):
        alpha = (1 - level) / 2
        for x in (boots, boots[1], boots[1, 2], boots[2, 0], boots[0, 0]):
            expected_in = np.where(np.isfinite(x), x, np.nan)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                expected = np.nanquantile(expected_in, alpha, axis=-1), np.nanquantile(expected_in, 1 - alpha, axis=-1)
            got = _quantiles(x, level)
            for g, e in zip(got, expected):
                assert np.shape(g) == np.shape(e)
                np.testing.assert_array_equal(g, e)
    assert np.isnan(_quantiles(boots, 0.95)[0][2, 0]) and np.isfinite(_quantiles(boots, 0.95)[0][1, 2])
