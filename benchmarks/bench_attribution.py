"""Benchmark: attribution patching vs the exact sweeps on Gemma-3-270m (speed and fidelity).

Every stage runs both methods in this process, on the same model, prompts and metric:

* heads: all 18 x 4 = 72 heads x 32 prompts (the bias templates x occupations), logit
  difference " she" - " he": zero ablation and mean ablation at ``z`` (``attribute`` vs
  ``sweep_heads``), and pattern patching on 32 mediation pairs x -> x' (stereotypical minus
  anti-stereotypical pronoun);
* q/k dimensions of one layer (4 heads x 256 dims each, zeroed): ``attribute(site="q"/"k")``,
  plain and with the QK fix, vs ``sweep_neurons`` (``--dims-sites q_pre_rotary,k_pre_rotary``: the
  dimensions before the rotary embedding instead);
* MLP neurons of one layer (2048, zeroed): ``attribute(site="post")`` vs the exact sweep
  (``sweep_interventions`` with one ``EditMLPNeuron`` per variant).

Every estimate also runs with ``precision="bfloat16"`` (the blocks' linear layers multiply in
bfloat16 from kept rounded weights; label "(bf16)"), scored against the same float32 exact
sweep. For context, the zero and mean ablation stages also run the sweep itself with
``precision="bfloat16"``, scored like an estimate (its speed-up and its rounding error).

After a short warm-up of both code paths, each exact sweep runs once per stage and each
estimate ``--repeats`` times (default 5; a sub-second time varies by 20-40% from run to
run on a shared machine), its median time reported. Means and patch sources cached on the
model are dropped before every timed run, so each run pays for its own. For each: wall
and CPU seconds of both, the time ratio, Spearman's correlation of the
estimated and exact mean effects over all units, the overlap of the two top-10 sets (by
|effect|; by the GradDrop score for AtP*) and the largest absolute error.

Run: ``python benchmarks/bench_attribution.py [--threads N] [--stages heads,dims,mlp]
[--dims-layer L] [--dims-sites q,k] [--mlp-layer L] [--repeats N] [--json out.json]``; ``--stages heads,floor`` adds
what a bare HF forward and forward + backward cost on the same batch (the ceiling of any gradient estimate's speed-up).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from scipy.stats import spearmanr

from timing import timed


def fidelity(estimate: np.ndarray, exact: np.ndarray, rank_by: np.ndarray | None = None, k: int = 10) -> dict:
    rank_by = np.abs(estimate) if rank_by is None else rank_by
    top_est = set(np.argsort(-rank_by)[:k])
    top_exact = set(np.argsort(-np.abs(exact))[:k])
    return {
        "spearman": float(spearmanr(estimate, exact).correlation),
        "top10_overlap": len(top_est & top_exact),
        "max_abs_error": float(np.abs(estimate - exact).max()),
        "largest_exact": float(np.abs(exact).max()),
    }


def with_bf16(estimate_fns):
    """Each ``(label, fn(**options))`` as given and again with ``precision="bfloat16"``.

    Only where the CPU multiplies bfloat16 in hardware: elsewhere (AVX2) the estimates would be
    25-30x slower and say nothing about the method, so they are left out (printed once).
    """
    from attnlab.engine.precision import has_native_products

    if not has_native_products(torch.bfloat16, torch.device("cpu")):
        if not getattr(with_bf16, "said", False):
            print("no bfloat16 units on this CPU: the bfloat16 rows are left out", flush=True)
            with_bf16.said = True
        return list(estimate_fns)
    return [(label, lambda fn=fn: fn()) for label, fn in estimate_fns] + [
        (f"{label} (bf16)", lambda fn=fn: fn(precision="bfloat16")) for label, fn in estimate_fns]


def compare(name, rows, exact_fn, estimate_fns, repeats: int = 1, fresh=None):
    """Time the exact sweep once and every estimate (median of ``repeats`` runs); record each one's fidelity.

    ``fresh()`` runs before every timed call: each pays for the means it needs (none reuses another's).
    """
    exact, ew, ec = timed(exact_fn, fresh)
    exact_eff = exact.table.effect.to_numpy()
    print(f"[{name}] exact: {ew:.1f} s wall / {ec:.1f} s CPU, {len(exact_eff)} units", flush=True)
    for label, fn in estimate_fns:
        runs = [timed(fn, fresh) for _ in range(repeats if "exact" not in label else 1)]
        est = runs[-1][0]
        w, c = float(np.median([r[1] for r in runs])), float(np.median([r[2] for r in runs]))
        eff = est.table.effect.to_numpy()
        rank = est.table.graddrop.to_numpy() if "graddrop" in est.table.columns else None
        row = {"stage": name, "estimate": label, "units": len(eff), "exact_wall_s": ew, "exact_cpu_s": ec,
               "estimate_wall_s": w, "estimate_cpu_s": c, "ratio_wall": ew / w, "ratio_cpu": ec / c,
               **fidelity(eff, exact_eff, rank)}
        rows.append(row)
        print(f"[{name}] {label}: {w:.2f} s wall / {c:.2f} s CPU -> {ew / w:.1f}x wall, {ec / c:.1f}x CPU; "
              f"Spearman {row['spearman']:.3f}, top-10 overlap {row['top10_overlap']}/10, "
              f"max |error| {row['max_abs_error']:.3g} (largest |exact| {row['largest_exact']:.3g})", flush=True)


def floor(model, prompts, rows, repeats: int) -> None:
    """What any gradient estimate must pay on this batch, as plain transformers code: one forward, one backward.

    Times the HF model body on the padded batch without gradients ("one forward") and with the
    gradient to the input embeddings ("forward + backward", weights' gradients not computed;
    every activation's gradient is then available, which is all AtP needs). With the heads
    stage in the same run it prints the exact sweep in forwards and the ratio no estimate that
    needs a forward and a backward can exceed here.
    """
    body = model.hf_model.get_decoder()
    batch = model.tokenizer(prompts, return_tensors="pt", padding=True)

    def forward():
        with torch.no_grad():
            return body(**batch).last_hidden_state

    def forward_backward():
        embeds = body.get_input_embeddings()(batch.input_ids).detach().requires_grad_(True)
        out = body(inputs_embeds=embeds, attention_mask=batch.attention_mask).last_hidden_state
        return torch.autograd.grad(out[:, -1].sum(), embeds)[0]

    fwd = [timed(forward)[1:] for _ in range(repeats)]
    both = [timed(forward_backward)[1:] for _ in range(repeats)]
    f_wall, f_cpu = np.median([t[0] for t in fwd]), np.median([t[1] for t in fwd])
    b_wall, b_cpu = np.median([t[0] for t in both]), np.median([t[1] for t in both])
    print(f"[floor] batch {tuple(batch.input_ids.shape)}: one forward {f_wall:.3f} s wall / {f_cpu:.3f} s CPU; "
          f"forward + backward {b_wall:.3f} / {b_cpu:.3f} s", flush=True)
    for r in rows:
        if r["stage"].startswith("72 heads") and r["estimate"] in ("AtP", "AtP* (GradDrop)"):
            print(f"[floor] {r['stage']}, {r['estimate']}: exact sweep = {r['exact_cpu_s'] / f_cpu:.1f} forwards; "
                  f"estimate = {r['estimate_cpu_s'] / b_cpu:.2f}x a bare forward + backward; ceiling for any "
                  f"forward+backward estimate: {r['exact_cpu_s'] / b_cpu:.1f}x (CPU s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared machine)")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--stages", default="heads,dims,mlp")
    parser.add_argument("--dims-layer", type=int, default=15, help="layer whose q/k dims are swept")
    parser.add_argument("--dims-sites", default="q,k", help="sites of the dims stage (q, k, q_pre_rotary, k_pre_rotary)")
    parser.add_argument("--mlp-layer", type=int, default=15, help="layer whose MLP neurons are swept")
    parser.add_argument("--batch-size", type=int, default=128, help="rows per forward of the exact sweeps")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each estimate; the median time is reported")
    parser.add_argument("--json", default=None, help="write the result rows to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import attnlab
    from attnlab.bias.mediation import mediation_pairs
    from attnlab.bias.templates import occupations, templates
    from attnlab.engine.precision import has_native_products
    from attnlab.interventions import EditMLPNeuron
    from attnlab.measure import LogitDiff, attribute, sweep_heads, sweep_interventions, sweep_neurons

    model = attnlab.load("gemma-3-270m")

    occ = list(occupations().occupation)
    frames = templates()
    prompts = [t.causal(o) for t in frames for o in occ][: args.prompts]
    metric = LogitDiff(" she", " he")
    pairs, _ = mediation_pairs(model)
    pairs = pairs[: args.prompts]
    base, counter = [p.base for p in pairs], [p.counterfactual for p in pairs]
    pair_metric = LogitDiff([p.stereotypical for p in pairs], [p.anti for p in pairs])
    opts = {"progress": False, "n_boot": 100}

    def compare_here(*a):
        compare(*a, repeats=args.repeats, fresh=model._prepared.clear)  # means and sources: computed in every run

    stages = set(args.stages.split(","))
    rows: list[dict] = []
    print(f"gemma-3-270m, {len(prompts)} prompts, {torch.get_num_threads()} thread(s); "
          f"first prompt {prompts[0]!r}, first pair {base[0]!r} -> {counter[0]!r}", flush=True)

    # warm-up: first calls pay one-off costs (allocator, lazily built hook dispatchers)
    sweep_heads(model, prompts[:4], metric, "zero", layers=[17], heads=[0], progress=False, n_boot=10)
    attribute(model, prompts[:4], metric, layers=[17], heads=[0], progress=False, n_boot=10)
    native_bf16 = has_native_products(torch.bfloat16, torch.device("cpu"))
    if native_bf16:
        attribute(model, prompts[:4], metric, layers=[17], heads=[0], progress=False, n_boot=10, precision="bfloat16")

    if "heads" in stages:
        for method in ("zero", "mean"):
            compare_here(f"72 heads, {method} ablation", rows,
                    lambda method=method: sweep_heads(model, prompts, metric, method, batch_size=args.batch_size, **opts),
                    with_bf16([("AtP", lambda method=method, **o: attribute(model, prompts, metric, site="z", method=method,
                                                                            **opts, **o)),
                               ("AtP* (GradDrop)", lambda method=method, **o: attribute(
                                   model, prompts, metric, site="z", method=method, correction="atp*", **opts, **o))])
                    + ([("exact sweep, precision='bfloat16'", lambda method=method: sweep_heads(
                        model, prompts, metric, method, batch_size=args.batch_size, precision="bfloat16", **opts))]
                        if native_bf16 else []))
        compare_here("72 heads, pattern patching x -> x'", rows,
                lambda: sweep_heads(model, base, pair_metric, "patch", counterfactuals=counter, batch_size=args.batch_size,
                                    **opts),
                with_bf16([("AtP", lambda **o: attribute(model, base, pair_metric, site="pattern", method="patch",
                                                         counterfactuals=counter, **opts, **o)),
                           ("AtP* (GradDrop)", lambda **o: attribute(model, base, pair_metric, site="pattern", method="patch",
                                                                     counterfactuals=counter, correction="atp*", **opts, **o))]))
    if "dims" in stages:
        layer = args.dims_layer
        for site in args.dims_sites.split(","):
            compare_here(f"{site} dims of layer {layer} (4 x 256), zeroed", rows,
                    lambda site=site: sweep_neurons(model, prompts, metric, layer, site=site, batch_size=args.batch_size,
                                                    **opts),
                    with_bf16([("AtP", lambda site=site, **o: attribute(model, prompts, metric, site=site, layers=[layer],
                                                                        **opts, **o)),
                               ("AtP + QK fix", lambda site=site, **o: attribute(model, prompts, metric, site=site, layers=[layer],
                                                                                 correction="qk", **opts, **o))]))
    if "mlp" in stages:
        layer = args.mlp_layer
        width = model.cfg.d_mlp
        variants = {f"L{layer}N{n}": [EditMLPNeuron(layer, n, scale=0.0)] for n in range(width)}
        compare_here(f"MLP neurons of layer {layer} ({width}), zeroed", rows,
                lambda: sweep_interventions(model, prompts, metric, variants, batch_size=args.batch_size, **opts),
                with_bf16([("AtP", lambda **o: attribute(model, prompts, metric, site="post", layers=[layer], **opts, **o))]))

    if "floor" in stages:
        floor(model, prompts, rows, args.repeats)

    print("\n| stage | estimate | units | exact (s wall / CPU) | estimate (s wall / CPU) | ratio wall / CPU | Spearman | top-10 overlap | max abs error (largest exact) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['stage']} | {r['estimate']} | {r['units']} | {r['exact_wall_s']:.1f} / {r['exact_cpu_s']:.1f} | "
              f"{r['estimate_wall_s']:.2f} / {r['estimate_cpu_s']:.2f} | {r['ratio_wall']:.1f}x / {r['ratio_cpu']:.1f}x | "
              f"{r['spearman']:.3f} | {r['top10_overlap']}/10 | {r['max_abs_error']:.3g} ({r['largest_exact']:.3g}) |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
