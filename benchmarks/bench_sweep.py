"""Benchmark: all-heads zero-ablation sweep on Gemma-3-270m, attnlab vs the TransformerLens way.

Both sweeps run in this process on the same prompts and weights:

* attnlab: ``sweep_heads(model, prompts, LogitDiff(" she", " he"), "zero")`` (prefix reuse,
  several heads per batch, LM head only at the read positions);
* TransformerLens: a ``TransformerBridge`` booted on a fresh copy of the same HF model, then
  one ``run_with_hooks`` per head zeroing ``blocks.L.attn.hook_z[:, :, h]`` (18 x 4 = 72
  forwards of the 32-prompt batch), logit difference read at each prompt's last token.

Prints wall and CPU times (CPU time is steadier on a shared machine), the speed ratios and the largest absolute difference between the two
72 x 32 effect matrices. Run: ``python benchmarks/bench_sweep.py [--threads N] [--prompts N]``.
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import torch

OCCUPATIONS = [
    "nurse", "engineer", "secretary", "mechanic", "librarian", "carpenter", "receptionist", "lawyer",
    "dancer", "surgeon", "cashier", "pilot", "teacher", "farmer", "hairdresser", "plumber",
]
TEMPLATES = ["The {} said that", "The {} told the customer that"]


def prompts(n: int) -> list[str]:
    out = [t.format(o) for t in TEMPLATES for o in OCCUPATIONS]
    return (out * (n // len(out) + 1))[:n]


def boot_bridge(tokenizer_path: str):
    """A TransformerBridge around a fresh float32 copy of the embedded Gemma weights."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(tokenizer_path, attn_implementation="sdpa", dtype=torch.float32).eval()
    hf.config.architectures = ["Gemma3ForCausalLM"]  # the bridge picks its adapter from this
    tok = AutoTokenizer.from_pretrained(tokenizer_path)
    tok.init_kwargs.update(name_or_path="gemma-3-270m-local", add_bos_token=True)  # do not refetch from the hub
    logging.disable(logging.WARNING)
    try:
        return TransformerBridge.boot_transformers("google/gemma-3-270m", hf_model=hf, tokenizer=tok)
    finally:
        logging.disable(logging.NOTSET)


@torch.no_grad()
def tl_sweep(bridge, ids: torch.Tensor, last: torch.Tensor, she: int, he: int, n_layers: int, n_heads: int):
    """The TransformerLens way: one run_with_hooks per head. Returns clean [prompt], intervened [layer*head, prompt]."""
    rows = torch.arange(ids.shape[0])

    def logit_diff(logits):
        at = logits[rows, last]
        return (at[:, she] - at[:, he]).float()

    clean = logit_diff(bridge(ids))
    out = []
    for layer in range(n_layers):
        for head in range(n_heads):
            def zero_head(z, hook, head=head):
                z[:, :, head] = 0.0
                return z

            logits = bridge.run_with_hooks(ids, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", zero_head)])
            out.append(logit_diff(logits))
    return clean.numpy(), torch.stack(out).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared machine)")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128, help="attnlab rows per forward pass")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import attnlab
    from attnlab.engine.loading import gemma_cache_path
    from attnlab.measure import LogitDiff, sweep_heads

    model = attnlab.load("gemma-3-270m")
    texts = prompts(args.prompts)
    metric = LogitDiff(" she", " he", single_token=True)
    rows = metric.rows(model, texts)  # right-padded ids, the same for both sweeps
    last = rows.attention_mask.sum(dim=1) - 1
    she, he = model.to_single_token(" she"), model.to_single_token(" he")
    cfg = model.cfg

    bridge = boot_bridge(str(gemma_cache_path()))

    # warm up both paths once (allocator, kernels)
    sweep_heads(model, texts[:4], metric, "zero", layers=[cfg.n_layers - 1], heads=[0], progress=False, n_boot=10)
    with torch.no_grad():
        bridge(rows.input_ids[:4])

    # wall time and this process's CPU time: on a shared machine the CPU time is the steadier number
    w0, c0 = time.perf_counter(), time.process_time()
    ours = sweep_heads(model, texts, metric, "zero", batch_size=args.batch_size, progress=False)
    t_ours, cpu_ours = time.perf_counter() - w0, time.process_time() - c0

    w0, c0 = time.perf_counter(), time.process_time()
    clean, inter = tl_sweep(bridge, rows.input_ids, last, she, he, cfg.n_layers, cfg.n_heads)
    t_tl, cpu_tl = time.perf_counter() - w0, time.process_time() - c0

    ours_eff = ours.per_prompt.effect.to_numpy().reshape(cfg.n_layers * cfg.n_heads, len(texts))
    tl_eff = inter - clean[None, :]
    diff = float(np.abs(ours_eff - tl_eff).max())
    print(f"model: {cfg.name} ({cfg.n_layers} layers x {cfg.n_heads} heads), {len(texts)} prompts, "
          f"{torch.get_num_threads()} thread(s), attnlab batch_size={args.batch_size}")
    print(f"attnlab sweep_heads:              wall {t_ours:8.2f} s   cpu {cpu_ours:8.2f} s")
    print(f"TransformerBridge run_with_hooks: wall {t_tl:8.2f} s   cpu {cpu_tl:8.2f} s  ({cfg.n_layers * cfg.n_heads} forwards)")
    print(f"speed ratio (TL / attnlab):       wall {t_tl / t_ours:8.2f} x   cpu {cpu_tl / cpu_ours:8.2f} x")
    print(f"max |effect difference|:         {diff:.2e}  (largest |effect| {np.abs(tl_eff).max():.3f})")
    top = ours.top(3)
    print("top heads by |effect| (attnlab):")
    print(top[["layer", "head", "effect", "ci_low", "ci_high"]].to_string(index=False))


if __name__ == "__main__":
    main()
