"""Benchmark: the all-heads exact sweep of Gemma-3-270m on 2 processes x 1 thread vs 1 process x 1 thread.

    python benchmarks/bench_distributed.py [--procs 2] [--prompts 32] [--batch-size 64] [--repeats 3] [--layers 0,1]

Same run, same prompts (occupation prompts from ``attnlab.bias`` templates), same metric
(``LogitDiff(" she", " he")``), zero ablation of every head:

* one process: ``sweep_heads`` in this process, 1 torch thread;
* N processes: ``run_parallel(sweep_heads, N, ..., model="gemma-3-270m", threads=1)``; each
  process loads its own model, then the sweep is timed inside the processes (after a
  barrier, so loading is not counted) and, separately, the whole call (launch + loading).

Conditions are interleaved (one process, then N, repeated) and the medians compared, so a
busy machine slows both alike. Prints the sweep times, the ratio (target >= 1.7x for 2
processes), the launch overhead and the largest difference between the two effect tables.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

TARGET = 1.7


def bias_prompts(n: int) -> list[str]:
    """``n`` occupation prompts: every shipped template with every occupation, interleaved."""
    from attnlab.bias import occupations, templates

    frames, jobs = templates(), list(occupations().occupation)
    out = [frame.causal(job) for job in jobs for frame in frames]
    return (out * (n // len(out) + 1))[:n]


def timed_sweep(model, prompts, layers, batch_size, repeats):
    """In each process: warm up, then time ``repeats`` sweeps, each started together (barrier)."""
    import torch.distributed as dist

    from attnlab.measure import LogitDiff, sweep_heads

    metric = LogitDiff(" she", " he")
    sweep_heads(model, prompts[:2], metric, "zero", layers=layers[-1:], heads=[0], n_boot=10, progress=False)
    times, cpu, result = [], [], None
    for _ in range(repeats):
        dist.barrier()
        w0, c0 = time.perf_counter(), time.process_time()
        result = sweep_heads(model, prompts, metric, "zero", layers=layers, batch_size=batch_size, n_boot=200,
                             progress=False)
        times.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return result, times, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of each condition (median)")
    parser.add_argument("--layers", help="comma-separated layers to sweep (default: all; a few for a quick check)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    import attnlab
    from attnlab.measure import LogitDiff, run_parallel, sweep_heads

    model = attnlab.load("gemma-3-270m")
    cfg = model.cfg
    layers = [int(x) for x in args.layers.split(",")] if args.layers else list(range(cfg.n_layers))
    prompts = bias_prompts(args.prompts)
    metric = LogitDiff(" she", " he")
    sweep_heads(model, prompts[:2], metric, "zero", layers=layers[-1:], heads=[0], n_boot=10, progress=False)  # warm-up

    one_wall, one_cpu, many_wall, launch_wall = [], [], [], []
    for _ in range(args.repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        one = sweep_heads(model, prompts, metric, "zero", layers=layers, batch_size=args.batch_size, n_boot=200,
                          progress=False)
        one_wall.append(time.perf_counter() - w0)
        one_cpu.append(time.process_time() - c0)
        w0 = time.perf_counter()
        many, times, _ = run_parallel(timed_sweep, args.procs, prompts, layers, args.batch_size, 1,
                                      model="gemma-3-270m", threads=1)
        launch_wall.append(time.perf_counter() - w0)
        many_wall.extend(times)

    diff = float(np.abs(one.per_prompt["intervened"].to_numpy() - many.per_prompt["intervened"].to_numpy()).max())
    t1, tn = statistics.median(one_wall), statistics.median(many_wall)
    n_heads = len(layers) * cfg.n_heads
    print(f"model: {cfg.name}, {len(layers)} layers x {cfg.n_heads} heads = {n_heads} heads zero-ablated, "
          f"{len(prompts)} prompts, batch_size={args.batch_size}, 1 thread per process, {args.repeats} repeat(s)")
    print(f"1 process  x 1 thread: sweep wall {t1:8.2f} s (cpu {statistics.median(one_cpu):.2f} s)")
    print(f"{args.procs} processes x 1 thread: sweep wall {tn:8.2f} s (inside the processes, after loading)")
    print(f"speed ratio: {t1 / tn:.2f}x (target >= {TARGET}x for 2 processes)")
    print(f"whole run_parallel call (launch + {args.procs} model loads + sweep): {statistics.median(launch_wall):.1f} s")
    print(f"max |intervened difference|, {n_heads} heads x {len(prompts)} prompts: {diff:.2e}")


if __name__ == "__main__":
    main()
