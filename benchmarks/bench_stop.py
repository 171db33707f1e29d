"""Benchmark: passes that read an early layer stop after it (vs running every layer).

A pass with no logits and no final hidden state (a site read, mean-ablation means, patch
sources) stops after the last layer where a hook acts. On Gemma-3-270m with the 32 sweep
prompts, in this process: ``run(logits=None, read=[blocks.L.attn.hook_z])`` with the stop
(the default) against ``stop_early=False``, for several layers ``L``, alternating,
``--repeats`` times (medians of wall seconds), the values read checked equal. Mean-ablation
means, patch sources, attribution's counterfactual values and the corpus analyses read
through this same pass.

Run: ``python benchmarks/bench_stop.py [--threads N] [--repeats N]``.
"""

from __future__ import annotations

import statistics

import torch

from bench_sweep import prompts  # the same 32 prompts as the sweep benchmark
from timing import parse_args, timed


def main() -> None:
    args = parse_args(__doc__, repeats=7)

    import attnlab
    from attnlab.engine import forward
    from attnlab.engine.locations import hook_name

    model = attnlab.load("gemma-3-270m")
    texts = prompts(32)
    tokens = model.tokens(texts)
    n = model.cfg.n_layers
    print(f"gemma-3-270m, {len(texts)} prompts, {torch.get_num_threads()} thread(s), {n} layers")

    def compare(label, fn_stop, fn_full):
        stop, full = [], []
        for _ in range(args.repeats):
            a, w, _ = timed(fn_stop)
            stop.append(w)
            b, w, _ = timed(fn_full)
            full.append(w)
        same = float((a - b).abs().max())
        s, f = statistics.median(stop), statistics.median(full)
        print(f"| {label} | {f:.3f} | {s:.3f} | {f / s:.2f}x | {same:.1e} |", flush=True)

    print("\n| pass | every layer (s) | stopped (s) | speed-up | largest difference |\n|---|---|---|---|---|")
    for layer in (0, 5, 11, 17):
        name = hook_name(layer, "z")
        compare(f"read `{name}`",
                lambda name=name: forward.run(model, tokens, logits=None, read=[name]).cache[name],
                lambda name=name: forward.run(model, tokens, logits=None, read=[name], stop_early=False).cache[name])


if __name__ == "__main__":
    main()
