"""Benchmark: every layer's mean head output from one pass over the references vs one pass per layer.

A mean-ablation sweep over all heads needs each layer's mean ``z`` over the reference prompts
(by default the prompts themselves). ``reference_means`` reads every layer in one batched
pass; before, ``head_means`` ran one pass per layer. Both run in this process on Gemma-3-270m
with the same 32 prompts (cache dropped before each timed run), alternating, ``--repeats``
times; medians of wall and CPU seconds, the ratio, and the largest difference of the means.
Also times the whole mean-ablation sweep once, for the share the means take in it.

Run: ``python benchmarks/bench_reference_means.py [--threads N] [--repeats N]``.
"""

from __future__ import annotations

import statistics

import torch

from bench_sweep import prompts  # the same 32 prompts as the sweep benchmark
from timing import parse_args, timed


def main() -> None:
    args = parse_args(__doc__, repeats=5)

    import attnlab
    from attnlab.engine.locations import hook_name
    from attnlab.interventions.reference_means import reference_means
    from attnlab.measure import LogitDiff, sweep_heads

    model = attnlab.load("gemma-3-270m")
    texts = prompts(32)
    names = [hook_name(l, "z") for l in range(model.cfg.n_layers)]

    def one_pass():
        model._prepared.clear()
        return reference_means(model, names, texts)

    def pass_per_layer():
        model._prepared.clear()
        return {n: reference_means(model, [n], texts)[n] for n in names}

    one_pass(), pass_per_layer()  # warm-up
    runs = {"one pass": [], "a pass per layer": []}
    for _ in range(args.repeats):
        for label, fn in (("one pass", one_pass), ("a pass per layer", pass_per_layer)):
            out, wall, cpu = timed(fn)
            runs[label].append((wall, cpu, out))
    med = {k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v)) for k, v in runs.items()}
    a, b = runs["one pass"][-1][2], runs["a pass per layer"][-1][2]
    diff = max(float((a[n] - b[n]).abs().max()) for n in names)
    (w1, c1), (w2, c2) = med["one pass"], med["a pass per layer"]
    print(f"gemma-3-270m, {len(texts)} prompts, {len(names)} layers, {torch.get_num_threads()} thread(s), "
          f"{args.repeats} repeats (medians)")
    print(f"one pass:         {w1:.2f} s wall / {c1:.2f} s CPU")
    print(f"a pass per layer: {w2:.2f} s wall / {c2:.2f} s CPU")
    print(f"ratio: {w2 / w1:.1f}x wall, {c2 / c1:.1f}x CPU; largest difference of the means {diff:.1e}")
    model._prepared.clear()
    _, sw, sc = timed(lambda: sweep_heads(model, texts, LogitDiff(" she", " he"), "mean", batch_size=128,
                                          progress=False, n_boot=100))
    print(f"mean-ablation sweep over all 72 heads (means included): {sw:.1f} s wall / {sc:.1f} s CPU")


if __name__ == "__main__":
    main()
