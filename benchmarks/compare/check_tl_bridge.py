"""TransformerLens 4 TransformerBridge against the hand-written reference.

Run:  OMP_NUM_THREADS=1 python benchmarks/compare/check_tl_bridge.py [--real]
(BERT is checked as BertForMaskedLM: the bridge has no adapter for a bare BertModel.)
"""

from __future__ import annotations

import sys
import warnings
from importlib.metadata import version

import torch

from _common import (
    DIM, EDIT_HEAD, Table, count_torch_hooks, foreign_hook_survives, diff, eager_patterns, gemma_hf, greedy_reference, ids_for,
    prev_token_pattern, reference, run_out, saved_tokenizer, skip_unless, tiny, verdict_close,
)

tl = skip_unless("transformer_lens")
from transformer_lens.model_bridge import TransformerBridge  # noqa: E402

H = EDIT_HEAD
ARCH_CLASS = {"gpt2": "GPT2LMHeadModel", "bert-mlm": "BertForMaskedLM", "llama": "LlamaForCausalLM",
              "gemma3": "Gemma3ForCausalLM"}


def boot(hf, tok):
    hf.config.architectures = hf.config.architectures or [ARCH_CLASS[hf.config.model_type.replace("bert", "bert-mlm")
                                                                       .replace("gemma3_text", "gemma3")]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TransformerBridge.boot_transformers(hf.config.architectures[0], hf_model=hf, tokenizer=tok)


def bridge_out(b, ids):
    with torch.no_grad():
        return b(ids)


def caught(fn):
    """Run fn, returning (result, [warning messages])."""
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        res = fn()
    return res, [str(x.message) for x in w if "discard" in str(x.message) or "modified tensor" in str(x.message)]


def checks(table: Table, name: str, make, ids, *, generate: bool, n_new: int = 6):
    ref_model, b = make()
    n_layers = len(b.blocks)
    L = n_layers - 1
    n_heads = ref_model.config.num_attention_heads
    n_kv = getattr(ref_model.config, "num_key_value_heads", None) or n_heads
    group = n_heads // n_kv
    rotary = "blocks.0.attn.hook_rot_k" in b.hook_dict
    qn, kn = (f"blocks.{L}.attn.hook_rot_q", f"blocks.{L}.attn.hook_rot_k") if rotary else \
        (f"blocks.{L}.attn.hook_q", f"blocks.{L}.attn.hook_k")
    clean = run_out(ref_model, ids)

    def expect(site, fn):
        with reference(ref_model, {(L, site): fn}):
            return run_out(ref_model, ids)

    def read_pattern():
        want = eager_patterns(ref_model, ids)
        with torch.no_grad():
            _, cache = b.run_with_cache(ids, names_filter=lambda n: n.endswith("attn.hook_pattern"))
        err = max(diff(cache[f"blocks.{i}.attn.hook_pattern"], w) for i, w in enumerate(want))
        return ("yes" if err < 1e-5 else "no"), f"max|pattern-eager|={err:.2e} all layers"

    def set_pattern():
        def ref_edit(p):
            p = p.clone()
            p[:, H] = prev_token_pattern(p.shape[-2], p.shape[-1])
            return p
        want = expect("pattern", ref_edit)

        def hook(p, hook):
            return ref_edit(p)
        got, warns = caught(lambda: b.run_with_hooks(ids, fwd_hooks=[(f"blocks.{L}.attn.hook_pattern", hook)]))
        v, num = verdict_close(diff(got, want), diff(clean, want))
        if warns:
            num += f"; max|lib-clean|={diff(got, clean):.1e}; WARNING: '{warns[0][:150]}...'"
        return v, num

    def edit_scores():
        def ref_edit(x):
            x = x.clone()
            x[:, H] = x[:, H] + 5.0 * prev_token_pattern(x.shape[-2], x.shape[-1])
            return x
        want = expect("scores", ref_edit)
        got, warns = caught(lambda: b.run_with_hooks(ids, fwd_hooks=[(f"blocks.{L}.attn.hook_attn_scores",
                                                                       lambda x, hook: ref_edit(x))]))
        v, num = verdict_close(diff(got, want), diff(clean, want))
        if warns:
            num += f"; max|lib-clean|={diff(got, clean):.1e}; WARNING: '{warns[0][:60]}...'"
        return v, num

    def read_qk():
        with reference(ref_model) as cap, torch.no_grad():
            run_out(ref_model, ids)
            want_q, want_k = cap[(L, "q")], cap[(L, "k")]
        with torch.no_grad():
            _, cache = b.run_with_cache(ids, names_filter=[qn, kn])
        q, k = cache[qn].transpose(1, 2), cache[kn].transpose(1, 2)
        err = max(diff(q, want_q), diff(k, want_k[:, ::group]))
        per_query = k.shape[1] == n_heads
        v = "yes" if err < 1e-4 and per_query else ("partial" if err < 1e-4 else "no")
        return v, f"{kn.split('.')[-1]} {tuple(cache[kn].shape)} (kv heads={n_kv}); max|qk-ref|={err:.2e}"

    def edit_k(dims, label):
        def ref_query_head(k):
            k = k.clone()
            k[:, H, :, dims] = 0
            return k

        def ref_group(k):
            k = k.clone()
            g0 = (H // group) * group
            k[:, g0:g0 + group, :, dims] = 0
            return k
        want, want_group = expect("k", ref_query_head), expect("k", ref_group)

        def hook(k, hook):
            k = k.clone()
            k[:, :, H // group, dims] = 0
            return k
        got, warns = caught(lambda: b.run_with_hooks(ids, fwd_hooks=[(kn, hook)]))
        err, err_group = diff(got, want), diff(got, want_group)
        if err < 1e-4:
            return "yes", f"via {kn.split('.')[-1]}: max|lib-ref|={err:.2e} (edit effect {diff(clean, want):.2e})"
        if group > 1 and err_group < 1e-4:
            return "partial", (f"only per kv head: edits all {group} query heads of the group "
                               f"(max|lib-ref(query head)|={err:.2e}, vs group edit {err_group:.2e})")
        return "no", f"max|lib-ref|={err:.2e}" + (f"; WARNING '{warns[0][:90]}...'" if warns else "")

    def ablate():
        def ref_edit(z):
            z = z.clone()
            z[:, H] = 0
            return z
        want = expect("z", ref_edit)

        def hook(z, hook):
            z = z.clone()
            z[:, :, H] = 0
            return z
        got = b.run_with_hooks(ids, fwd_hooks=[(f"blocks.{L}.attn.hook_z", hook)])
        return verdict_close(diff(got, want), diff(clean, want))

    def gen():
        def ref_edit(p):
            p = p.clone()
            p[:, H] = prev_token_pattern(p.shape[-2], p.shape[-1])
            return p
        want = greedy_reference(ref_model, ids, {(L, "pattern"): ref_edit}, n_new)
        clean_tok = greedy_reference(ref_model, ids, {}, n_new)

        def hook(p, hook):
            return ref_edit(p)
        with b.hooks(fwd_hooks=[(f"blocks.{L}.attn.hook_pattern", hook)]), torch.no_grad():
            out, warns = caught(lambda: b.generate(ids, max_new_tokens=n_new, do_sample=False, use_past_kv_cache=True,
                                                    verbose=False, return_type="tokens"))
        got = out[:, ids.shape[1]:]
        same = int((got == want).sum())
        changed = int((want != clean_tok).sum())
        with torch.no_grad():
            plain = b.generate(ids, max_new_tokens=n_new, do_sample=False, use_past_kv_cache=True, verbose=False,
                               return_type="tokens")[:, ids.shape[1]:]
            nocache = b.generate(ids, max_new_tokens=n_new, do_sample=False, use_past_kv_cache=False, verbose=False,
                                 return_type="tokens")[:, ids.shape[1]:]
        return ("yes" if same == want.numel() else "no"), (
            f"{same}/{want.numel()} cached tokens = recompute ({changed} differ from clean); without any hook: "
            f"cached {int((plain == clean_tok).sum())}/{want.numel()}, uncached {int((nocache == clean_tok).sum())}/"
            f"{want.numel()} = clean recompute")

    def cleanup():
        before = count_torch_hooks(b)

        def hook(z, hook):
            z = z.clone()
            z[:, :, H] = 0
            return z
        try:
            with b.hooks(fwd_hooks=[(f"blocks.{L}.attn.hook_z", hook)]):
                raise RuntimeError("boom")
        except RuntimeError:
            pass
        left = count_torch_hooks(b) - before
        err = diff(bridge_out(b, ids), clean)
        return ("yes" if left == 0 and err < 1e-4 else "no"), f"hooks left={left}; max|out-clean|={err:.2e}"

    table.attempt(name, "1 read pattern = eager softmax", read_pattern)
    table.attempt(name, "2 set one head's pattern", set_pattern)
    table.attempt(name, "2 add to one head's scores", edit_scores)
    table.attempt(name, "3 read post-rotary q/k per head", read_qk)
    table.attempt(name, "3 edit k of one query head (GQA)", lambda: edit_k(slice(None), "head"))
    table.attempt(name, "4 edit one k dim (neuron)", lambda: edit_k(DIM, "dim"))
    table.attempt(name, "5 zero-ablate one head", ablate)
    if generate:
        table.attempt(name, "6 KV-cache generate w/ edit", gen)
    table.attempt(name, "7 hooks removed after exception", cleanup)

    def foreign():
        def hook(z, hook):
            z = z.clone()
            z[:, :, H] = 0
            return z
        return foreign_hook_survives(b.original_model.get_input_embeddings(),
                                     lambda: b.run_with_hooks(ids, fwd_hooks=[(f"blocks.{L}.attn.hook_z", hook)]))
    table.attempt(name, "other code's hooks survive a call", foreign)


def main(real: bool):
    table = Table("TransformerBridge (transformer-lens " + version("transformer-lens") + ")")
    for arch in ("gpt2", "bert-mlm", "llama", "gemma3"):
        def make(arch=arch):
            ref, tok = tiny(arch, "eager")
            hf, _ = tiny(arch, "eager")
            return ref, boot(hf, saved_tokenizer(tok))
        _, tok = tiny(arch)
        try:
            checks(table, f"tiny-{arch}", make, ids_for(arch, tok), generate=arch != "bert-mlm")
        except Exception as err:  # noqa: BLE001
            table.add(f"tiny-{arch}", "boot", "error", f"{type(err).__name__}: {str(err)[:120]}")
    if real:
        ref, tok = gemma_hf("eager")
        if ref is not None:
            ids = tok(["The nurse said that", "The doctor said that"], return_tensors="pt")["input_ids"]

            def make_gemma():
                hf, _ = gemma_hf("eager")
                return ref, boot(hf, tok)
            checks(table, "gemma-270m", make_gemma, ids, generate=True, n_new=5)
    table.print()


if __name__ == "__main__":
    main("--real" in sys.argv)
