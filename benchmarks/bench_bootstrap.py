"""Benchmark: the bootstrap interval every result carries, against numpy's NaN-skipping quantiles.

Every sweep, estimate and effect ends in :func:`attnlab.measure.bootstrap`; for a sub-second
estimate (attribution patching of 72 heads in bfloat16 takes about 0.45 s) its interval is
part of the time. The baseline is the previous rule, ``numpy.nanquantile`` over every row; attnlab
takes ``numpy.quantile`` where every resample is defined and the NaN-skipping path only for the
rows that need it. Same process, same statistics; the intervals must be equal to the bit.

Run: ``python benchmarks/bench_bootstrap.py [--repeats N]``.
"""

from __future__ import annotations

import warnings

import numpy as np

from timing import parse_args, timed


def nan_skipping(boots: np.ndarray, level: float):
    """The previous rule: every row through numpy's NaN-skipping quantiles."""
    boots = np.where(np.isfinite(boots), boots, np.nan)
    alpha = (1.0 - level) / 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanquantile(boots, alpha, axis=-1), np.nanquantile(boots, 1.0 - alpha, axis=-1)


def main() -> None:
    args = parse_args(__doc__, repeats=20)
    from attnlab.measure.stats import _quantiles, bootstrap

    rng = np.random.default_rng(0)
    print("| statistics [units x resamples] | undefined rows | nanquantile (ms) | attnlab (ms) | ratio | equal |")
    print("|---|---|---|---|---|---|")
    for units, n_boot, ragged in ((72, 100, 0), (72, 1000, 0), (1024, 1000, 0), (72, 1000, 3)):
        boots = rng.normal(size=(units, n_boot))
        boots[:ragged, ::7] = np.nan  # a few rows with undefined resamples take the slow path
        old = [timed(lambda: nan_skipping(boots, 0.95)) for _ in range(args.repeats)]
        new = [timed(lambda: _quantiles(boots, 0.95)) for _ in range(args.repeats)]
        same = all(np.array_equal(a, b, equal_nan=True) for a, b in zip(old[-1][0], new[-1][0]))
        t_old, t_new = np.median([r[1] for r in old]) * 1e3, np.median([r[1] for r in new]) * 1e3
        print(f"| {units} x {n_boot} | {ragged} | {t_old:.2f} | {t_new:.2f} | {t_old / t_new:.1f}x | {same} |")
    effects = rng.normal(size=(72, 32))
    whole = [timed(lambda: bootstrap(effects, n_boot=100)) for _ in range(args.repeats)]
    print(f"\nbootstrap() of 72 units x 32 prompts, 100 resamples: {np.median([r[1] for r in whole]) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
