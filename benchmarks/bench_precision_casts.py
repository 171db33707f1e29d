"""Benchmark: bfloat16 estimates with and without the two cast savings of ``engine/precision.py``, on Gemma-3-270m.

With ``precision="bfloat16"`` the blocks' products run on rounded weights; around them the
path keeps (on) or does not keep (off) the MLPs' hidden activations in bfloat16 between the
MLP's linear layers (``KEEP_MLP_HIDDEN``), and rounds an input shared by several products
(q/k/v, gate/up) once (``SHARE_CASTS``). Both conditions run in this process on the same
model, prompts and metric, alternating, so a busy machine slows both alike:

* ``attribute(..., site="z", method="zero" / "mean")`` over the 72 heads x 32 prompts;
* ``attribute(..., site="pattern", method="patch")`` on the 32 mediation pairs.

After one warm-up of each, every condition runs ``--repeats`` times (cached means dropped
before each), medians of CPU seconds reported with the off/on ratio and the largest
difference of the estimates. Run: ``python benchmarks/bench_precision_casts.py [--threads N] [--repeats N]``.
"""

from __future__ import annotations

import statistics

import numpy as np

from timing import parse_args, timed


def main() -> None:
    args = parse_args(__doc__, repeats=7)

    import attnlab
    import attnlab.engine.precision as precision
    from attnlab.bias.mediation import mediation_pairs
    from attnlab.bias.templates import occupations, templates
    from attnlab.measure import LogitDiff, attribute

    model = attnlab.load("gemma-3-270m")
    prompts = [t.causal(o) for t in templates() for o in occupations().occupation][:32]
    metric = LogitDiff(" she", " he")
    pairs = mediation_pairs(model)[0][:32]
    base, counter = [p.base for p in pairs], [p.counterfactual for p in pairs]
    pair_metric = LogitDiff([p.stereotypical for p in pairs], [p.anti for p in pairs])
    opts = {"progress": False, "n_boot": 100, "precision": "bfloat16"}
    calls = {
        "72 heads, zero": lambda: attribute(model, prompts, metric, site="z", method="zero", **opts),
        "72 heads, mean": lambda: attribute(model, prompts, metric, site="z", method="mean", **opts),
        "72 heads, pattern patching": lambda: attribute(model, base, pair_metric, site="pattern", method="patch",
                                                        counterfactuals=counter, **opts),
    }

    def switch(on: bool) -> None:
        precision.KEEP_MLP_HIDDEN = precision.SHARE_CASTS = on

    times: dict = {}
    effects: dict = {}
    for name, fn in calls.items():
        for on in (True, False):
            switch(on)
            effects[name, on] = fn().table.effect.to_numpy()  # warm-up
    for _ in range(args.repeats):
        for name, fn in calls.items():
            for on in (True, False):
                switch(on)
                times.setdefault((name, on), []).append(timed(fn, model._prepared.clear)[2])
    switch(True)
    print("| estimate (bfloat16) | off (CPU s) | on (CPU s) | off / on | max abs difference (largest) |")
    print("|---|---|---|---|---|")
    for name in calls:
        off, on = statistics.median(times[name, False]), statistics.median(times[name, True])
        diff = float(np.abs(effects[name, True] - effects[name, False]).max())
        print(f"| {name} | {off:.3f} | {on:.3f} | {off / on:.2f}x | {diff:.2g} ({np.abs(effects[name, False]).max():.2g}) |")


if __name__ == "__main__":
    main()
