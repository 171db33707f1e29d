"""A TransformerLens-style analysis on Gemma-3-270m: who writes " she" over " he" after "The nurse said that"?

Written the way a TransformerLens user writes it (``run_with_cache``, ``cache["resid_pre", L]``,
``utils.get_act_name``, ``cache.stack_head_results``, ``cache.logit_attrs``, hooks with
``functools.partial``), on the embedded Gemma-3-270m base model (18 layers x 4 heads, offline):

0. The metric: the logit difference " she" - " he" for the next token, read safely from a
   batch of prompts of different lengths (and what the ``[:, -1]`` habit reads instead).
1. Direct logit attribution per layer (``decompose_resid``) and per head
   (``stack_head_results``): which components write the she-he direction into the final
   residual stream. They sum to the logit difference (Gemma has no biases).
   Then the logit lens: ``model(prompt, stop_at_layer=k)`` runs blocks 0..k-1 only and
   returns the residual stream; ``model.unembed(model.ln_final(resid))`` reads it as logits
   (after all 18 blocks: the model's own answer; after fewer, a rough view of what the stream
   already says — on Gemma it swings, +7.6 after the embeddings, +1.6 after 9 blocks).
2. Activation patching of ``hook_resid_pre`` by (layer, position): run the counterfactual
   "The man said that", patch in the residual stream of "The nurse said that" at one layer
   and one position, and see how much of the logit difference comes back
   (0 = the counterfactual's, 1 = the stereotyped prompt's).
   Then path patching into one head's inputs (``hook_q_input`` / ``hook_k_input`` /
   ``hook_v_input``, TransformerLens' split inputs): for the head with the largest direct
   attribution, patch the clean residual stream into its query only, its keys only or its
   values only, and see which one carries the difference. Gemma-3-270m has one kv head per
   layer, so the key and value copies feed all four heads of the layer. As a check, patching
   every copy of the layer equals patching what they all read, ``ln1.hook_normalized``.
3. One figure: per-layer attribution, per-head attribution, and the patching map.

    python examples/tl_style_analysis.py --out tl_style.png [--json numbers.json]
"""

from __future__ import annotations

import argparse
import json
from functools import partial

import torch
from matplotlib.figure import Figure

import attnlab
from attnlab import utils

CLEAN = "The nurse said that"
CORRUPT = "The man said that"
ANSWER, WRONG = " she", " he"


def logit_diff(logits: torch.Tensor, model) -> torch.Tensor:
    """" she" - " he" at the last position, per batch row (the rows here are unpadded)."""
    she, he = model.to_single_token(ANSWER), model.to_single_token(WRONG)
    return logits[:, -1, she] - logits[:, -1, he]


def padding_trap(model) -> dict[str, float]:
    """The she-he difference of CLEAN read from a batch three ways (only two are right)."""
    prompts = [CLEAN, "The nurse said that she was very tired and"]  # CLEAN is the shorter row
    she, he = model.to_single_token(ANSWER), model.to_single_token(WRONG)
    right_padded = model(prompts)[:, -1]  # row 0 ends in padding: reads a pad position
    left_padded = model(prompts, padding_side="left")[:, -1]
    per_row = model.next_token_logits(prompts)
    return {name: float(x[0, she] - x[0, he]) for name, x in
            [("[:, -1] of a right-padded batch", right_padded), ("[:, -1] of a left-padded batch", left_padded),
             ("next_token_logits", per_row)]}


def direct_logit_attribution(model, cache):
    """Per layer component and per head contribution to the she-he logit difference at the last token."""
    per_layer, labels = cache.decompose_resid(pos_slice=-1, return_labels=True)  # [component, batch, d_model]
    layer_attrs = cache.logit_attrs(per_layer, ANSWER, WRONG, pos_slice=-1)[:, 0]
    heads = cache.stack_head_results(pos_slice=-1)  # [layer * head, batch, d_model]
    head_attrs = cache.logit_attrs(heads, ANSWER, WRONG, pos_slice=-1)[:, 0]
    return dict(zip(labels, layer_attrs.tolist())), head_attrs.reshape(model.cfg.n_layers, model.cfg.n_heads)


def logit_lens(model) -> list[float]:
    """The she-he difference read from the residual stream after each number of blocks (0 .. n_layers)."""
    she, he = model.to_single_token(ANSWER), model.to_single_token(WRONG)
    out = []
    for k in range(model.cfg.n_layers + 1):
        resid = model(CLEAN, stop_at_layer=k)  # [batch, pos, d_model]: blocks 0..k-1 ran, the rest did not
        logits = model.unembed(model.ln_final(resid[:, -1]))
        out.append(float(logits[0, she] - logits[0, he]))
    return out


def patch_position(resid, hook, clean_cache, position):
    """Overwrite one position of the residual stream with the clean run's value."""
    resid[:, position] = clean_cache[hook.name][:, position]
    return resid


def patch_resid_pre(model, clean_cache, clean_diff: float, corrupt_diff: float) -> torch.Tensor:
    """``[layer, position]``: fraction of the clean logit difference restored by patching one residual vector."""
    corrupt_tokens = model.to_tokens(CORRUPT)
    n_pos = corrupt_tokens.shape[1]
    result = torch.zeros(model.cfg.n_layers, n_pos)
    for layer in range(model.cfg.n_layers):
        for position in range(n_pos):
            hook = partial(patch_position, clean_cache=clean_cache, position=position)
            logits = model.run_with_hooks(corrupt_tokens, fwd_hooks=[(utils.get_act_name("resid_pre", layer), hook)])
            result[layer, position] = (logit_diff(logits, model) - corrupt_diff) / (clean_diff - corrupt_diff)
    return result


def patch_copies(copies, hook, clean_cache, heads):
    """Give the chosen heads' copies of the residual stream (``[batch, pos, head, d_model]``) the clean run's value."""
    layer = hook.layer()
    for h in heads:
        copies[:, :, h] = clean_cache["resid_pre", layer]
    return copies


def patch_head_inputs(model, layer: int, head: int, clean_cache, clean_diff: float, corrupt_diff: float) -> dict:
    """Fraction of the clean difference restored by patching only the query, keys or values one head reads."""
    def restored(fwd_hooks) -> float:
        logits = model.run_with_hooks(CORRUPT, fwd_hooks=fwd_hooks)
        return float((logit_diff(logits, model) - corrupt_diff) / (clean_diff - corrupt_diff))

    group = model.cfg.n_heads // model.cfg.n_kv_heads
    kv_head = head // group
    out = {}
    for site, h in (("q_input", head), ("k_input", kv_head), ("v_input", kv_head)):
        out[site] = restored([(utils.get_act_name(site, layer), partial(patch_copies, clean_cache=clean_cache, heads=[h]))])
    every = [(utils.get_act_name(site, layer), partial(patch_copies, clean_cache=clean_cache, heads=range(n)))
             for site, n in (("q_input", model.cfg.n_heads), ("k_input", model.cfg.n_kv_heads), ("v_input", model.cfg.n_kv_heads))]
    out["all copies of the layer"] = restored(every)
    normalized = f"blocks.{layer}.ln1.hook_normalized"
    out["ln1.hook_normalized"] = restored([(normalized, lambda x, hook: clean_cache[normalized])])
    return out


def plot(model, layer_attrs: dict, head_attrs: torch.Tensor, patching: torch.Tensor) -> Figure:
    fig = Figure(figsize=(15, 4.8), layout="constrained")
    bars, heads, patch = fig.subplots(1, 3, width_ratios=[2.2, 1, 1])
    names = list(layer_attrs)
    bars.bar(range(len(names)), list(layer_attrs.values()),
             color=["tab:blue" if "attn" in n else "tab:orange" if "mlp" in n else "tab:gray" for n in names])
    bars.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    bars.axhline(0, color="black", linewidth=0.5)
    bars.set_title(f"Residual decomposition: direct logit attribution of {ANSWER!r} - {WRONG!r}\n"
                   "(blue: attention, orange: MLP; they sum to the logit difference)")
    limit = float(head_attrs.abs().max())
    image = heads.imshow(head_attrs, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    heads.set_xlabel("head")
    heads.set_ylabel("layer")
    heads.set_title("Per-head attribution")
    fig.colorbar(image, ax=heads)
    image = patch.imshow(patching, cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
    patch.set_xticks(range(patching.shape[1]), model.to_str_tokens(CLEAN), rotation=45)
    patch.set_ylabel("layer")
    patch.set_title(f"Patching resid_pre: {CORRUPT!r}\n<- {CLEAN!r} (fraction restored)")
    fig.colorbar(image, ax=patch)
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-o", "--out", required=True, help="where to save the figure (.png, .pdf, .svg)")
    parser.add_argument("--json", help="also write the numbers to this JSON file")
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    model = attnlab.load("gemma-3-270m")
    clean_logits, clean_cache = model.run_with_cache(CLEAN)
    corrupt_logits = model(CORRUPT)
    clean_diff, corrupt_diff = float(logit_diff(clean_logits, model)), float(logit_diff(corrupt_logits, model))
    print(f"logit difference {ANSWER!r} - {WRONG!r}: {clean_diff:.3f} after {CLEAN!r}, {corrupt_diff:.3f} after {CORRUPT!r}")
    print(f"resid_pre of layer 3 at the last token: norm {float(clean_cache['resid_pre', 3][0, -1].norm()):.1f}")

    print("\n0. Reading the next token from a batch of different lengths:")
    trap = padding_trap(model)
    for name, value in trap.items():
        print(f"   {name:32s} {value:7.3f}")

    layer_attrs, head_attrs = direct_logit_attribution(model, clean_cache)
    total = sum(layer_attrs.values())
    print(f"\n1. Direct logit attribution: the {len(layer_attrs)} components sum to {total:.3f} (logit difference {clean_diff:.3f})")
    top_layers = sorted(layer_attrs.items(), key=lambda kv: -abs(kv[1]))[:5]
    print("   largest components: " + ", ".join(f"{name} {value:+.2f}" for name, value in top_layers))
    order = head_attrs.flatten().abs().argsort(descending=True)[:5]
    print("   largest heads: " + ", ".join(
        f"L{int(i) // model.cfg.n_heads}H{int(i) % model.cfg.n_heads} {float(head_attrs.flatten()[i]):+.2f}" for i in order))

    lens = logit_lens(model)
    print(f"   logit lens (stop_at_layer=k, then ln_final and unembed): " + ", ".join(
        f"k={k} {v:+.2f}" for k, v in enumerate(lens) if k % 3 == 0 or k == len(lens) - 1))

    patching = patch_resid_pre(model, clean_cache, clean_diff, corrupt_diff)
    tokens = model.to_str_tokens(CLEAN)
    print(f"\n2. Patching hook_resid_pre from {CLEAN!r} into {CORRUPT!r} (fraction of the difference restored):")
    print("   layer " + "".join(f"{t!r:>10}" for t in tokens))
    for layer in range(0, model.cfg.n_layers, 3):
        print(f"   {layer:5d} " + "".join(f"{float(v):10.2f}" for v in patching[layer]))

    top = int(head_attrs.flatten().abs().argmax())
    layer, head = divmod(top, model.cfg.n_heads)
    inputs = patch_head_inputs(model, layer, head, clean_cache, clean_diff, corrupt_diff)
    print(f"\n   Path patching into L{layer}H{head}'s inputs only (the clean stream into {CORRUPT!r}; fraction restored):")
    for name, value in inputs.items():
        print(f"   {name:26s} {value:+.3f}")

    fig = plot(model, layer_attrs, head_attrs, patching)
    fig.savefig(args.out, dpi=120)
    print(f"\n3. Figure saved to {args.out}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"clean_diff": clean_diff, "corrupt_diff": corrupt_diff, "padding_trap": trap,
                       "layer_attrs": layer_attrs, "head_attrs": head_attrs.tolist(), "logit_lens": lens,
                       "patching": patching.tolist(), "head_inputs": {"layer": layer, "head": head, **inputs},
                       "tokens": tokens}, f, indent=1)


if __name__ == "__main__":
    main()
