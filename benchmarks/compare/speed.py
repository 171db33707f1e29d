"""Forward pass with one head's pattern edited on Gemma-3-270m (batch 8 x 64 tokens), one process.

Run:  OMP_NUM_THREADS=1 python benchmarks/compare/speed.py [rounds]
Setups are timed in interleaved rounds (each setup once per round). With one thread, this
process's CPU time (``time.process_time``) is the main measure: on a shared machine, wall
time swings with other jobs' load, CPU time much less. The table shows medians and the
ratio to plain transformers sdpa without an edit.
"""

from __future__ import annotations

import statistics
import sys
import time
import warnings

import torch

from _common import gemma_hf, prev_token_pattern

warnings.simplefilter("ignore")
L, H = 17, 1


def edit(p):
    p = p.clone()
    p[:, H] = prev_token_pattern(p.shape[-2], p.shape[-1])
    return p


def setups(ids):
    """(label, zero-argument function) pairs; each library gets its own copy of the weights."""
    hf, tok = gemma_hf("sdpa")
    out = [("HF sdpa, no edit", lambda: hf(input_ids=ids))]
    hf_eager, _ = gemma_hf("eager")
    out.append(("HF eager, no edit", lambda: hf_eager(input_ids=ids)))

    import attnlab
    from attnlab.interventions import SetPattern

    model = attnlab.load("gemma-3-270m")
    spec = SetPattern(L, H, fn=lambda p: prev_token_pattern(p.shape[-2], p.shape[-1]).expand_as(p))

    def run_attnlab():
        with model.intervene(spec):
            model(ids)
    out.append(("attnlab SetPattern", run_attnlab))

    try:
        from check_tl_bridge import boot

        hf_tl, _ = gemma_hf("eager")
        bridge = boot(hf_tl, tok)
        hook = (f"blocks.{L}.attn.hook_pattern", lambda p, hook: edit(p))
        out.append(("TL bridge hook_pattern", lambda: bridge.run_with_hooks(ids, fwd_hooks=[hook])))
    except ImportError as err:
        print("skip TransformerBridge:", err)

    try:
        from nnsight import NNsight

        hf_nn, _ = gemma_hf("eager")
        nn_model = NNsight(hf_nn)
        attn = nn_model.model.layers[L].self_attn

        def run_nnsight():
            with nn_model.trace(ids):
                op = attn.source.attention_interface_1.source.nn_functional_dropout_0
                op.output = edit(op.output)
        out.append(("nnsight .source edit", run_nnsight))
    except ImportError as err:
        print("skip nnsight:", err)
    return out


def main(rounds: int):
    if gemma_hf("sdpa")[0] is None:
        print("SKIP: Gemma-3-270m is not in the attnlab cache")
        return
    torch.manual_seed(0)
    ids = torch.randint(10, 1000, (8, 64))
    runs = setups(ids)
    times: dict[str, list[float]] = {label: [] for label, _ in runs}
    walls: dict[str, list[float]] = {label: [] for label, _ in runs}
    with torch.no_grad():
        for _, fn in runs:  # warm-up
            fn()
        for r in range(rounds):
            for label, fn in runs:
                t, c = time.perf_counter(), time.process_time()
                fn()
                times[label].append(time.process_time() - c)
                walls[label].append(time.perf_counter() - t)
            print(f"  round {r + 1}/{rounds} (cpu s): " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in times.items()),
                  flush=True)
    base = statistics.median(times["HF sdpa, no edit"])
    wbase = statistics.median(walls["HF sdpa, no edit"])
    print(f"\n{'setup':<24} | median cpu s | x HF sdpa (cpu) | median wall s | x HF sdpa (wall)")
    print("-" * 92)
    for label, values in times.items():
        med, wmed = statistics.median(values), statistics.median(walls[label])
        print(f"{label:<24} | {med:12.2f} | {med / base:15.2f} | {wmed:13.2f} | {wmed / wbase:5.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
