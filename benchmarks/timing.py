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


def parse_args(doc: str, *, repeats: int, extra=None):
    """The options every same-process benchmark takes (``--threads``, ``--repeats``), parsed; threads set.

    ``extra(parser)`` adds a benchmark's own options.
    """
    import argparse

    import torch

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared machine)")
    parser.add_argument("--repeats", type=int, default=repeats, help="timed runs of each side; medians reported")
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args
