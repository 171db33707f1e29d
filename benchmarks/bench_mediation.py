"""Benchmark: causal mediation of every Gemma-3-270m head, attnlab vs a naive loop of patched forwards.

Both run in this process, on the same weights and the same 36 prompt pairs: the shipped
templates (all six) x the three most female (secretary, receptionist, hairdresser) and the
three most male (electrician, plumber, mechanic) shipped occupations, built by
``mediation_pairs`` (x = "The nurse said that", x' = "The man said that", ...); no
combination is skipped on Gemma.

* attnlab: ``causal_mediation(model, pairs, levels=("head",), effects=("nie",))`` — the NIE
  of all 18 x 4 heads as one sweep of per-prompt pattern patches (prefix reuse, several
  heads per batch, LM head only at the last token);
* naive loop: the counterfactual patterns cached once (``run_with_cache``), then one
  ``run_with_hooks`` per head over the 36 right-padded base prompts with a hook that puts
  that head's x' pattern in place (72 forwards), the log odds read at each prompt's last token.

Prints wall and CPU times (CPU time is steadier on a shared machine), the speed ratio and
the largest absolute difference between the two 36 x 72 NIE matrices; with
``--all-levels`` also the time of the full call (heads, layers and the whole model; NIE
and NDE). Run: ``python benchmarks/bench_mediation.py [--threads N] [--batch-size N]``.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import torch

from timing import timed


def mediation_prompt_pairs(model):
    """The 36 pairs: the 3 most female and the 3 most male shipped occupations x the 6 shipped templates."""
    from attnlab.bias import mediation_pairs, occupations, templates

    occ = occupations().sort_values("share_women", kind="stable")
    chosen = pd.concat([occ.tail(3), occ.head(3)])
    pairs, skipped = mediation_pairs(model, occupations=chosen, templates=templates())
    return pairs, skipped


@torch.no_grad()
def naive_nie(model, pairs) -> np.ndarray:
    """One pattern-patched forward of all pairs per head: ``[pair, head]`` NIE (odds ratio - 1)."""
    from attnlab.engine.locations import hook_name

    bases = [p.base for p in pairs]
    anti = torch.tensor([model.to_single_token(p.anti) for p in pairs])
    stereo = torch.tensor([model.to_single_token(p.stereotypical) for p in pairs])
    last = model.tokens(bases, padding_side="right").lengths - 1
    rows = torch.arange(len(pairs))

    def log_odds(logits):
        logp = logits[rows, last].float().log_softmax(-1)
        return (logp[rows, anti] - logp[rows, stereo]).double()

    names = [hook_name(layer, "pattern") for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache([p.counterfactual for p in pairs], padding_side="right", names_filter=names)
    base = log_odds(model(bases, padding_side="right"))
    out = []
    for layer in range(model.cfg.n_layers):
        source = cache[names[layer]]
        for head in range(model.cfg.n_heads):
            def patch(pattern, hook, head=head, source=source):
                pattern[:, head] = source[:, head]
                return pattern

            logits = model.run_with_hooks(bases, padding_side="right", fwd_hooks=[(names[layer], patch)])
            out.append(torch.expm1(log_odds(logits) - base))
    return torch.stack(out, dim=1).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared machine)")
    parser.add_argument("--batch-size", type=int, default=256, help="attnlab rows per forward pass")
    parser.add_argument("--all-levels", action="store_true", help="also time heads + layers + model, NIE and NDE, in one call")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import attnlab
    from attnlab.bias import causal_mediation

    model = attnlab.load("gemma-3-270m")
    cfg = model.cfg
    pairs, skipped = mediation_prompt_pairs(model)
    print(f"model: {cfg.name} ({cfg.n_layers} layers x {cfg.n_heads} heads), {len(pairs)} pairs "
          f"({len(skipped)} combinations skipped), {torch.get_num_threads()} thread(s), batch_size={args.batch_size}")
    print("occupations:", ", ".join(dict.fromkeys(p.label for p in pairs)))

    # warm up both paths once (allocator, kernels)
    causal_mediation(model, pairs[:2], levels=("layer",), effects=("nie",), n_boot=10)
    with torch.no_grad():
        model([p.base for p in pairs[:2]], padding_side="right")

    ours, t_ours, cpu_ours = timed(lambda: causal_mediation(model, pairs, levels=("head",), effects=("nie",),
                                                            batch_size=args.batch_size))
    naive, t_naive, cpu_naive = timed(lambda: naive_nie(model, pairs))

    ours_nie = ours.per_prompt["nie"].to_numpy().reshape(cfg.n_layers * cfg.n_heads, len(pairs)).T  # [pair, head]
    diff = float(np.abs(ours_nie - naive).max())
    print(f"attnlab causal_mediation (head NIE): wall {t_ours:8.2f} s   cpu {cpu_ours:8.2f} s")
    print(f"naive run_with_hooks loop:           wall {t_naive:8.2f} s   cpu {cpu_naive:8.2f} s  "
          f"({cfg.n_layers * cfg.n_heads} forwards of {len(pairs)} pairs)")
    print(f"speed ratio (naive / attnlab):       wall {t_naive / t_ours:8.2f} x   cpu {cpu_naive / cpu_ours:8.2f} x")
    print(f"max |NIE difference|:                {diff:.2e}  (largest |NIE| {np.abs(naive).max():.3f})")
    print(f"TE: mean {ours.te[0]:.2f} [{ours.te[1]:.2f}, {ours.te[2]:.2f}]")
    print("top heads by mean NIE:", ours.top_heads(3))
    if args.all_levels:
        full, t_full, cpu_full = timed(lambda: causal_mediation(model, pairs, levels=("head", "layer", "model"),
                                                                batch_size=args.batch_size))
        print(f"all levels (72 heads + 18 layers + model), NIE and NDE: wall {t_full:8.2f} s   cpu {cpu_full:8.2f} s")
        same = np.abs(full.table[full.table["level"] == "head"]["nie"].to_numpy() - ours.table["nie"].to_numpy()).max()
        print(f"  head NIE equal to the head-only call: max |difference| {same:.1e}")


if __name__ == "__main__":
    main()
