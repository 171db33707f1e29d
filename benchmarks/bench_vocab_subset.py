"""Benchmark: the LM head restricted to the metric's vocabulary ids, on vs off, on Gemma-3-270m.

``LogitDiff(" she", " he")`` reads two logits, so the engine computes two rows of Gemma's
262k-row unembedding instead of all of them (``Metric.vocab``, ``run(vocab=...)``). Both
conditions run in this process on the same model, prompts and metric; "off" sets
``attnlab.engine.forward.SUBSET_HEAD = False`` (full logits, then indexed: the previous path):

* the all-72-heads zero-ablation sweep, ``sweep_heads(..., "zero", batch_size=128)``;
* ``attribute(..., site="z")`` (one forward and one backward pass).

After one warm-up of both, each condition runs ``--repeats`` times, on and off alternating
so that a busy machine slows both alike; the medians are reported (wall and CPU seconds, the
off/on ratios) with the largest absolute difference of the per-prompt numbers.
Run: ``python benchmarks/bench_vocab_subset.py [--threads N] [--prompts N] [--repeats N]``.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch

from bench_sweep import prompts  # the same 32 prompts as the sweep benchmark
from timing import timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared machine)")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import attnlab
    from attnlab.engine import forward
    from attnlab.measure import LogitDiff, attribute, sweep_heads

    model = attnlab.load("gemma-3-270m")
    texts = prompts(args.prompts)
    metric = LogitDiff(" she", " he", single_token=True)
    cfg = model.cfg
    stages = {
        "sweep_heads (72 heads, zero)": lambda: sweep_heads(
            model, texts, metric, "zero", batch_size=args.batch_size, n_boot=10, progress=False
        ),
        "attribute (site=z, zero)": lambda: attribute(model, texts, metric, site="z", n_boot=10, progress=False),
    }

    def run(stage, subset: bool):
        forward.SUBSET_HEAD = subset
        try:
            return timed(stages[stage])
        finally:
            forward.SUBSET_HEAD = True

    for subset in (True, False):  # warm-up (allocator, kernels)
        forward.SUBSET_HEAD = subset
        sweep_heads(model, texts[:4], metric, "zero", layers=[cfg.n_layers - 1], heads=[0], n_boot=10, progress=False)
        attribute(model, texts[:4], metric, site="z", layers=[cfg.n_layers - 1], n_boot=10, progress=False)
    forward.SUBSET_HEAD = True

    print(f"model: {cfg.name} ({cfg.n_layers} layers x {cfg.n_heads} heads, vocabulary {cfg.d_vocab}), "
          f"{len(texts)} prompts, {torch.get_num_threads()} thread(s), {args.repeats} repeat(s), metric {metric!r}")
    for stage in stages:
        times = {True: [], False: []}
        results = {}
        for _ in range(args.repeats):
            for subset in (True, False):
                results[subset], wall, cpu = run(stage, subset)
                times[subset].append((wall, cpu))
        on, off = results[True].per_prompt, results[False].per_prompt
        diff = max(float(np.abs(on[c].to_numpy(float) - off[c].to_numpy(float)).max())
                   for c in on.columns if on[c].dtype.kind == "f")
        med = {s: (statistics.median(w for w, _ in t), statistics.median(c for _, c in t)) for s, t in times.items()}
        print(f"[{stage}]")
        print(f"  subset on : wall {med[True][0]:8.2f} s   cpu {med[True][1]:8.2f} s")
        print(f"  subset off: wall {med[False][0]:8.2f} s   cpu {med[False][1]:8.2f} s")
        print(f"  off / on  : wall {med[False][0] / med[True][0]:8.2f} x   cpu {med[False][1] / med[True][1]:8.2f} x")
        print(f"  max |per-prompt difference|: {diff:.2e}", flush=True)


if __name__ == "__main__":
    main()
