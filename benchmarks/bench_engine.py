"""Engine overhead on the embedded models, as ratios against plain Hugging Face in one process.

    python benchmarks/bench_engine.py [--repeats 7] [--batch 8] [--tokens 128] [--models gemma-3-270m minilm]

For each model (batch 8 x 128 tokens, median of several repeats, conditions interleaved so a
noisy machine hurts every condition alike):

* attnlab, no hook        vs  the same HF model with its own sdpa attention   (target <= 1.05)
* run_with_cache(every pattern)  vs  HF eager with output_attentions=True     (target <= 1.10)
* one head ablated        vs  the same HF model with its own sdpa attention   (target <= 1.10)

and the time of ``attnlab.load("gemma-3-270m")`` from its cache (target <= 5 s). Prints a
table (a pandas DataFrame) and returns it from :func:`run`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import pandas as pd
import torch

import attnlab
from attnlab.engine.adapters import restore_implementation
from attnlab.interventions import AblateHead

__all__ = ["run", "main"]

TARGETS = {"no hook / HF sdpa": 1.05, "cache all patterns / HF eager+attentions": 1.10, "one head ablated / HF sdpa": 1.10}


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_model(name: str, *, batch: int, tokens: int, repeats: int) -> list[dict]:
    model = attnlab.load(name)
    hf = model.hf_model
    vocab = hf.get_input_embeddings().num_embeddings
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(10, min(vocab, 30_000), (batch, tokens), generator=gen)
    mask = torch.ones_like(ids)
    ours = hf.config._attn_implementation  # attnlab_sdpa
    layer, head = model.cfg.n_layers // 2, 0

    def hf_with(impl: str, **kwargs):
        restore_implementation(hf, impl)
        try:
            hf(input_ids=ids, attention_mask=mask, **kwargs)
        finally:
            restore_implementation(hf, ours)

    conditions = {
        "hf_sdpa": lambda: hf_with("sdpa"),
        "hf_eager_attentions": lambda: hf_with("eager", output_attentions=True),
        "attnlab": lambda: model(ids, attention_mask=mask),
        "attnlab_cache_patterns": lambda: model.run_with_cache(
            ids, attention_mask=mask, names_filter=lambda n: n.endswith("hook_pattern")
        ),
        "attnlab_one_head": lambda: _ablated(model, ids, mask, layer, head),
    }
    times: dict[str, list[float]] = {k: [] for k in conditions}
    with torch.inference_mode():
        for fn in conditions.values():  # warm-up
            fn()
        for _ in range(repeats):
            for key, fn in conditions.items():
                times[key].append(_timed(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = [
        ("no hook / HF sdpa", med["attnlab"], med["hf_sdpa"]),
        ("cache all patterns / HF eager+attentions", med["attnlab_cache_patterns"], med["hf_eager_attentions"]),
        ("one head ablated / HF sdpa", med["attnlab_one_head"], med["hf_sdpa"]),
    ]
    return [
        {"model": name, "comparison": what, "attnlab_s": a, "baseline_s": b, "ratio": a / b, "target": TARGETS[what]}
        for what, a, b in rows
    ]


def _ablated(model, ids, mask, layer, head):
    with model.intervene(AblateHead(layer, head)):
        model(ids, attention_mask=mask)


def bench_gemma_load(repeats: int = 3) -> dict:
    attnlab.load("gemma-3-270m")  # make sure the cache exists (first run builds it)
    times = [_timed(lambda: attnlab.load("gemma-3-270m")) for _ in range(repeats)]
    t = statistics.median(times)
    return {"model": "gemma-3-270m", "comparison": "load from cache (s)", "attnlab_s": t, "baseline_s": float("nan"),
            "ratio": t, "target": 5.0}


def run(*, models=("gemma-3-270m", "minilm"), batch: int = 8, tokens: int = 128, repeats: int = 7) -> pd.DataFrame:
    rows = []
    for name in models:
        rows += bench_model(name, batch=batch, tokens=tokens, repeats=repeats)
    rows.append(bench_gemma_load())
    table = pd.DataFrame(rows)
    table["ok"] = table["ratio"] <= table["target"]
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--models", nargs="+", default=["gemma-3-270m", "minilm"])
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    table = run(models=args.models, batch=args.batch, tokens=args.tokens, repeats=args.repeats)
    with pd.option_context("display.width", 160, "display.float_format", "{:.3f}".format):
        print(table.to_string(index=False))


if __name__ == "__main__":
    main()
