"""Gender bias through attention heads, after Vig et al. (2020), on the embedded Gemma-3-270m.

1. Profession pronoun bias: for 38 occupations and 6 templates ("The nurse said that"),
   log p(she)/p(he) of the next word, against the share of women in the occupation
   (US BLS, 2023).
2. Causal mediation: pairs x = "The nurse said that", x' = "The man said that"; the
   natural indirect effect (NIE) of each head is the change in the odds
   p(anti-stereotypical pronoun)/p(stereotypical pronoun) when that head alone attends
   as it does on x'.
3. Intervention: ablate the k heads with the largest NIE and measure the bias again,
   with the cost on neutral text (perplexity) and neutral prompts (next-token KL).

Run:  python examples/bias_intervention.py [--out attnlab-out] [--k 2] [--method mean]
Takes a few minutes on 2 CPU cores; writes PNG figures and CSV tables into --out.
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="attnlab-out", help="folder for figures and tables (default: attnlab-out)")
    parser.add_argument("--k", type=int, default=2, help="number of top-NIE heads to ablate (default: 2)")
    parser.add_argument("--method", choices=("mean", "zero"), default="mean", help="ablation method (default: mean)")
    parser.add_argument("--model", default="gemma-3-270m", help="model to load (default: gemma-3-270m)")
    args = parser.parse_args()

    import torch

    import attnlab
    from attnlab.bias.demo import run_bias_demo

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    start = time.time()
    model = attnlab.load(args.model)
    print(model)
    demo = run_bias_demo(model, args.out, k=args.k, method=args.method, progress=True)

    print("\n== profession pronoun bias (log p(she)/p(he) per occupation, most female-associated first) ==")
    per_occ = demo.bias.table.sort_values("log_ratio", ascending=False)
    print(per_occ[["occupation", "share_women", "log_ratio"]].to_string(index=False, float_format="%.2f"))
    print("\n== top heads by natural indirect effect (over prompt pairs, 95% intervals) ==")
    print("   nie: mean of odds ratio - 1; nie_log: mean log odds ratio; nie_median: median of odds ratio - 1")
    top = demo.mediation.table.sort_values("nie", ascending=False).iloc[:8]
    columns = ["layer", "head", "nie", "nie_low", "nie_high", "nie_log", "nie_log_low", "nie_log_high", "nie_median"]
    print(top[columns].to_string(index=False, float_format="%.3f"))
    te = demo.mediation.summary.query("effect == 'te'")
    print("\n== total effect of occupation -> man/woman, three readouts ==")
    print(te[["readout", "value", "low", "high"]].to_string(index=False, float_format="%.3f"))
    print("\n== bias before / after ablating the top heads, and the cost ==")
    print(demo.experiment.table.to_string(index=False, float_format="%.3f"))
    print("\n" + demo.report())
    print(f"\nwrote {len(demo.files)} files to {args.out}/ in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
