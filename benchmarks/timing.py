"""The one timer of the benchmarks: a call's result with its wall and CPU seconds."""

from __future__ import annotations

import time


def timed(fn, fresh=None):
    """``(fn(), wall seconds, CPU seconds)``; ``fresh()`` runs first, untimed (e.g. to drop cached means)."""
    if fresh is not None:
        fresh()
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu
