"""attnlab against the hand-written reference: the same checks the other libraries get.

Run:  OMP_NUM_THREADS=1 python benchmarks/compare/check_attnlab.py [--real]
"""

from __future__ import annotations

import sys

import torch

from _common import (
    ARCHS, DIM, EDIT_HEAD, Table, diff, eager_patterns, gemma_hf, greedy_reference, ids_for, minilm_hf,
    foreign_hook_survives, prev_token_pattern, reference, reference_sanity, run_out, tiny, verdict_close,
)

import attnlab
from attnlab.engine.model import HookedModel
from attnlab.interventions import AblateHead, EditNeuron, EditScores, SetPattern

H = EDIT_HEAD


def prev_fn(p):
    return prev_token_pattern(p.shape[-2], p.shape[-1]).to(p.dtype).expand_as(p)


def checks(table: Table, name: str, make, ids: torch.Tensor, *, generate: bool, n_new: int = 6) -> None:
    """``make()`` returns (clean eager HF model, wrapped attnlab model) with identical weights."""
    ref_model, model = make()
    L = model.cfg.n_layers - 1
    clean = run_out(ref_model, ids)

    def read_pattern():
        want = eager_patterns(ref_model, ids)
        names = [f"blocks.{i}.attn.hook_pattern" for i in range(model.cfg.n_layers)]
        with torch.no_grad():
            _, cache = model.run_with_cache(ids, names_filter=names)
        err = max(diff(cache[n], w) for n, w in zip(names, want))
        return ("yes" if err < 1e-5 else "no"), f"max|pattern-eager|={err:.2e} all layers"

    def expect(site, fn):
        with reference(ref_model, {(L, site): fn}):
            return run_out(ref_model, ids)

    def set_pattern():
        def edit(p):
            p = p.clone()
            p[:, H] = prev_token_pattern(p.shape[-2], p.shape[-1])
            return p
        want = expect("pattern", edit)
        with torch.no_grad(), model.intervene(SetPattern(L, H, fn=prev_fn)):
            got = model(ids)
        return verdict_close(diff(got, want), diff(clean, want))

    def edit_scores():
        def ref_edit(x):
            x = x.clone()
            x[:, H] = x[:, H] + 5.0 * prev_token_pattern(x.shape[-2], x.shape[-1])
            return x
        want = expect("scores", ref_edit)
        q = ids.shape[1]
        with torch.no_grad(), model.intervene(EditScores(L, H, add=5.0 * prev_token_pattern(q, q))):
            got = model(ids)
        return verdict_close(diff(got, want), diff(clean, want))

    def read_qk():
        with reference(ref_model) as cap, torch.no_grad():
            run_out(ref_model, ids)
            want_q, want_k = cap[(L, "q")], cap[(L, "k")]
        with torch.no_grad():
            _, cache = model.run_with_cache(ids, names_filter=[f"blocks.{L}.attn.hook_q", f"blocks.{L}.attn.hook_k"])
        q, k = cache[f"blocks.{L}.attn.hook_q"].transpose(1, 2), cache[f"blocks.{L}.attn.hook_k"].transpose(1, 2)
        err = max(diff(q, want_q), diff(k, want_k))
        return ("yes" if err < 1e-4 else "no"), f"k per query head: {tuple(k.shape)}; max|qk-ref|={err:.2e}"

    def edit_k_one_query_head():
        def edit(k):
            k = k.clone()
            k[:, H] = 0
            return k
        want = expect("k", edit)
        with torch.no_grad(), model.intervene(EditNeuron(L, H, site="k", dim=list(range(model.cfg.d_head)), scale=0.0)):
            got = model(ids)
        return verdict_close(diff(got, want), diff(clean, want))

    def edit_neuron():
        def edit(k):
            k = k.clone()
            k[:, H, :, DIM] = 0
            return k
        want = expect("k", edit)
        with torch.no_grad(), model.intervene(EditNeuron(L, H, site="k", dim=DIM, scale=0.0)):
            got = model(ids)
        return verdict_close(diff(got, want), diff(clean, want))

    def ablate():
        def edit(z):
            z = z.clone()
            z[:, H] = 0
            return z
        want = expect("z", edit)
        with torch.no_grad(), model.intervene(AblateHead(L, H)):
            got = model(ids)
        return verdict_close(diff(got, want), diff(clean, want))

    def gen():
        def edit(p):
            p = p.clone()
            p[:, H] = prev_token_pattern(p.shape[-2], p.shape[-1])
            return p
        want = greedy_reference(ref_model, ids, {(L, "pattern"): edit}, n_new)
        clean_tok = greedy_reference(ref_model, ids, {}, n_new)
        with torch.no_grad(), model.intervene(SetPattern(L, H, fn=prev_fn)):
            out = model.hf_model.generate(input_ids=ids, max_new_tokens=n_new, do_sample=False, use_cache=True,
                                          pad_token_id=0)
        got = out[:, ids.shape[1]:]
        same = int((got == want).sum())
        changed = int((want != clean_tok).sum())
        return ("yes" if same == want.numel() else "no"), (
            f"{same}/{want.numel()} cached tokens = recompute ({changed} differ from clean)")

    def cleanup():
        try:
            with model.intervene(AblateHead(L, H)):
                raise RuntimeError("boom")
        except RuntimeError:
            pass
        left = model.count_hooks()
        with torch.no_grad():
            err = diff(model(ids), clean)
        return ("yes" if left == 0 and err < 1e-4 else "no"), f"hooks left={left}; max|out-clean|={err:.2e}"

    table.attempt(name, "1 read pattern = eager softmax", read_pattern)
    table.attempt(name, "2 set one head's pattern", set_pattern)
    table.attempt(name, "2 add to one head's scores", edit_scores)
    table.attempt(name, "3 read post-rotary q/k per head", read_qk)
    table.attempt(name, "3 edit k of one query head (GQA)", edit_k_one_query_head)
    table.attempt(name, "4 edit one k dim (neuron)", edit_neuron)
    table.attempt(name, "5 zero-ablate one head", ablate)
    if generate:
        table.attempt(name, "6 KV-cache generate w/ edit", gen)
    table.attempt(name, "7 hooks removed after exception", cleanup)

    def foreign():
        def run():
            with torch.no_grad(), model.intervene(AblateHead(L, H)):
                model(ids)
        return foreign_hook_survives(model.hf_model.get_input_embeddings(), run)
    table.attempt(name, "other code's hooks survive a call", foreign)


def main(real: bool) -> None:
    table = Table(f"attnlab {attnlab.__version__}")
    reference_sanity(table)
    for arch in ARCHS:
        def make(arch=arch):
            ref, tok = tiny(arch, "eager")
            wrapped, _ = tiny(arch, "sdpa")
            return ref, HookedModel(wrapped, tok, name=f"tiny-{arch}")
        _, tok = tiny(arch)
        checks(table, f"tiny-{arch}", make, ids_for(arch, tok), generate=arch != "bert")
    if real:
        ref, tok = gemma_hf("eager")
        if ref is None:
            print("SKIP gemma-3-270m: not in the attnlab cache")
        else:
            ids = tok(["The nurse said that", "The doctor said that"], return_tensors="pt")["input_ids"]
            checks(table, "gemma-270m", lambda: (ref, attnlab.load("gemma-3-270m")), ids, generate=True, n_new=5)
        ref, tok = minilm_hf("eager")
        ids = tok(["The nurse said that she was tired.", "The doctor said that he was tired."], return_tensors="pt")["input_ids"]
        checks(table, "minilm", lambda: (ref, attnlab.load("minilm")), ids, generate=False)
    table.print()


if __name__ == "__main__":
    main("--real" in sys.argv)
