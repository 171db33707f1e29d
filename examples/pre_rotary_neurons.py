"""Query/key neurons before and after the rotary embedding, on Gemma-3-270m.

A "query neuron" can mean two things on a rotary model. Before the rotation it is one output
unit of the q projection (TransformerLens' ``hook_q``; attnlab's ``hook_q_pre_rotary``), the
same direction at every position. After it (attnlab's ``hook_q``, what the scores are computed
from) dimension d is mixed with its rotary partner d + d_head/2 by an angle that grows with the
position. This script reads both on the embedded Gemma-3-270m and checks what follows:

1. Which dimensions are largest before the rotation, and in which rotary pair (frequency). On
   this head the key's largest sit in low-frequency pairs (p near d_head/2), which barely turn
   over a short text, so their values look almost the same after the rotation.
2. A rotary pair scaled before the rotation is the same edit as the pair scaled after it
   (the rotation acts within the pair): the head's pattern agrees to float precision
   (1.2e-7 here, against a 0.15 change from the edit itself).
3. One dimension zeroed before the rotation is not one dimension zeroed after it: the
   patterns differ (by 0.001 here, for a slowly turning pair; more for fast ones). Edit
   ``*_pre_rotary`` to act on a projection unit, ``q``/``k`` to act on what the score sums.
4. Gemma-3 also normalises each head's q and k (``q_norm``/``k_norm``) before the rotation, so
   a unit of the k projection itself (``hook_k_pre_norm``, TransformerLens' ``hook_k`` here; one
   key for all four heads of the layer) is a third place. Zeroing the same pair there, the norm
   rescales the rest of the key to the same size: the pattern moves differently from the same
   pair zeroed after the norm.

    python examples/pre_rotary_neurons.py [--layer 5] [--head 0] [--json numbers.json]
"""

from __future__ import annotations

import argparse
import json

import torch

import attnlab
from attnlab.bias.templates import neutral_text
from attnlab.interventions import EditNeuron


def pattern_under(model, text: str, layer: int, head: int, specs) -> torch.Tensor:
    name = f"blocks.{layer}.attn.hook_pattern"
    with torch.no_grad(), model.intervene(*specs):
        _, cache = model.run_with_cache(text, names_filter=[name])
    return cache[name][0, head]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layer", type=int, default=5)
    ap.add_argument("--head", type=int, default=0)
    ap.add_argument("--json", help="write the numbers to this JSON file")
    args = ap.parse_args()

    model = attnlab.load("gemma-3-270m")
    layer, head, half = args.layer, args.head, model.cfg.d_head // 2
    text = " ".join(neutral_text())[:600]
    names = [f"blocks.{layer}.attn.hook_{s}" for s in ("q_pre_rotary", "q", "k_pre_rotary", "k")]
    with torch.no_grad():
        _, cache = model.run_with_cache(text, names_filter=names)
    n_tokens = cache[names[0]].shape[1]
    print(f"Gemma-3-270m, layer {layer}, head {head}, {n_tokens} tokens of the packaged neutral text")

    numbers: dict = {"layer": layer, "head": head, "tokens": n_tokens}
    print("\n1. Mean |value| per dimension (position 0, the sink, left out); rotary pair p = dims p and p + "
          f"{half}, frequency falling with p")
    for site in ("q", "k"):
        pre = cache[f"blocks.{layer}.attn.hook_{site}_pre_rotary"][0, 1:, head].abs().mean(0)  # [d_head]
        post = cache[f"blocks.{layer}.attn.hook_{site}"][0, 1:, head].abs().mean(0)
        top = torch.topk(pre, 3).indices.tolist()
        share = float(torch.topk(pre, 3).values.sum() / pre.sum())
        print(f"   {site}: largest before the rotation: dims {top} (pairs {[d % half for d in top]} of {half}), "
              f"{share:.0%} of the head's total; the same dims after it: "
              f"{[round(float(post[d]), 2) for d in top]} vs {[round(float(pre[d]), 2) for d in top]} before")
        numbers[f"{site}_top_dims"] = top
        numbers[f"{site}_top3_share"] = share

    pair = numbers["k_top_dims"][0] % half
    dims = [pair, pair + half]
    clean = pattern_under(model, text, layer, head, [])
    before = pattern_under(model, text, layer, head, [EditNeuron(layer, head, site="k_pre_rotary", dim=dims, scale=0.0)])
    after = pattern_under(model, text, layer, head, [EditNeuron(layer, head, site="k", dim=dims, scale=0.0)])
    pair_gap, pair_effect = float((before - after).abs().max()), float((before - clean).abs().max())
    print(f"\n2. Key pair {pair} (dims {dims}) zeroed before vs after the rotation: patterns differ by at most "
          f"{pair_gap:.1e} (the edit itself moves the pattern by up to {pair_effect:.3f})")

    one = numbers["k_top_dims"][0]
    before = pattern_under(model, text, layer, head, [EditNeuron(layer, head, site="k_pre_rotary", dim=one, scale=0.0)])
    after = pattern_under(model, text, layer, head, [EditNeuron(layer, head, site="k", dim=one, scale=0.0)])
    one_gap = float((before - after).abs().max())
    print(f"3. Key dim {one} alone zeroed before vs after the rotation: patterns differ by up to {one_gap:.3f}")
    numbers.update(pair=dims, pair_gap=pair_gap, pair_effect=pair_effect, one_dim=one, one_dim_gap=one_gap)

    # before the norm, k has one entry per kv head: Gemma-3-270m's one key (kv head 0) serves all four heads
    before_norm = pattern_under(model, text, layer, head, [EditNeuron(layer, 0, site="k_pre_norm", dim=dims, scale=0.0)])
    after_norm = pattern_under(model, text, layer, head, [EditNeuron(layer, head, site="k_pre_rotary", dim=dims, scale=0.0)])
    norm_gap, norm_effect = float((before_norm - after_norm).abs().max()), float((before_norm - clean).abs().max())
    print(f"4. Key pair {pair} zeroed before Gemma's k norm vs after it: patterns differ by up to {norm_gap:.3f} "
          f"(the edit before the norm moves the pattern by up to {norm_effect:.3f})")
    numbers.update(norm_gap=norm_gap, norm_effect=norm_effect)
    assert model.count_hooks() == 0
    if args.json:
        with open(args.json, "w") as f:
            json.dump(numbers, f, indent=1)


if __name__ == "__main__":
    main()
