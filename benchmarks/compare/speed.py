"""Forward pass with one head's pattern edited on Gemma-3-270m (batch 8 x 64 tokens), one process.

Run:  OMP_NUM_THREADS=1 python benchmarks/compare/speed.py   (ratios vs plain HF sdpa; rough on a shared machine)
"""

from __future__ import annotations

import warnings

import torch

from _common import gemma_hf, median_time, prev_token_pattern

warnings.simplefilter("ignore")
L, H = 17, 1


def edit(p):
    p = p.clone()
    p[:, H] = prev_token_pattern(p.shape[-2], p.shape[-1])
    return p


def main():
    hf, tok = gemma_hf("sdpa")
    if hf is None:
        print("SKIP: Gemma-3-270m not in the attnlab cache")
        return
    torch.manual_seed(0)
    ids = torch.randint(10, 1000, (8, 64))
    times = {}

    def record(label, fn):
        times[label] = median_time(fn, repeats=3, warmup=1)
        print(f"  {label}: {times[label]:.3f} s", flush=True)
    with torch.no_grad():
        record("HF sdpa, no edit", lambda: hf(input_ids=ids))
        import attnlab
        from attnlab.interventions import SetPattern
        model = attnlab.load("gemma-3-270m")

        def al():
            with model.intervene(SetPattern(L, H, fn=lambda p: prev_token_pattern(p.shape[-2], p.shape[-1]).expand_as(p))):
                model(ids)
        record("attnlab SetPattern", al)
        del model
        hf_e, _ = gemma_hf("eager")
        record("HF eager, no edit", lambda: hf_e(input_ids=ids))
        del hf_e
        try:
            from check_tl_bridge import boot
            hf2, _ = gemma_hf("eager")
            b = boot(hf2, tok)
            record("TL bridge hook_pattern",
                   lambda: b.run_with_hooks(ids, fwd_hooks=[(f"blocks.{L}.attn.hook_pattern", lambda p, hook: edit(p))]))
            del b, hf2
        except ImportError as err:
            print("skip TL:", err)
        try:
            from nnsight import NNsight
            hf3, _ = gemma_hf("eager")
            m = NNsight(hf3)
            attn = m.model.layers[L].self_attn
            box = {}
            with m.trace(ids):
                box["l"] = str(attn.source.attention_interface_1.source)

            def nn():
                with m.trace(ids):
                    op = attn.source.attention_interface_1.source.nn_functional_dropout_0
                    op.output = edit(op.output)
            record("nnsight .source edit", nn)
        except ImportError as err:
            print("skip nnsight:", err)
    base = times["HF sdpa, no edit"]
    print(f"{'setup':<26} | median s | x HF sdpa")
    for k, v in times.items():
        print(f"{k:<26} | {v:8.3f} | {v / base:5.2f}")


if __name__ == "__main__":
    main()
