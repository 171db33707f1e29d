"""nnsight against the hand-written reference (edits reach inside the attention function via ``.source``).

Run:  OMP_NUM_THREADS=1 python benchmarks/compare/check_nnsight.py
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import version

import torch

from _common import (
    ARCHS, DIM, EDIT_HEAD, Table, count_torch_hooks, diff, eager_patterns, foreign_hook_survives, gemma_hf,
    greedy_reference, ids_for, prev_token_pattern, reference, run_out, skip_unless, tiny, verdict_close,
)

skip_unless("nnsight")
from nnsight import LanguageModel, NNsight  # noqa: E402

H = EDIT_HEAD


def parts(m, arch, layer):
    """(attention envoy, output-projection envoy) of one layer."""
    if arch == "gpt2":
        blk = m.transformer.h[layer]
        return blk.attn, blk.attn.c_proj
    if arch == "bert":
        blk = m.encoder.layer[layer]
        return blk.attention.self, blk.attention.E_output.dense  # nnsight renames the 'output' submodule
    blk = m.model.layers[layer]
    return blk.self_attn, blk.self_attn.o_proj


def op_names(listing: str) -> list[tuple[str, str]]:
    """(operation name, code line) pairs parsed from an nnsight source listing."""
    out, code = [], ""
    for line in listing.splitlines():
        mt = re.match(r"^\s*(\S+)\s+->\s+(\+|\d+)\s*(.*)$", line)
        if mt:
            if mt.group(2) != "+":
                code = mt.group(3)
            out.append((mt.group(1), code))
    return out


def find(listing: str, code_part: str, name_part: str) -> str:
    for name, code in op_names(listing):
        if code_part in code and name_part in name:
            return name
    raise LookupError(f"no op with {name_part!r} on a line containing {code_part!r}")


def checks(table: Table, arch: str, real=None, n_new: int = 6):
    """``real``: (name, clean eager model, second copy, tokenizer, ids) instead of a tiny model."""
    if real is None:
        ref_model, tok = tiny(arch, "eager")
        hf, _ = tiny(arch, "eager")
        ids = ids_for(arch, tok)
        name = f"tiny-{arch}"
    else:
        name, ref_model, hf, tok, ids = real
    m = LanguageModel(hf, tokenizer=tok) if arch != "bert" else NNsight(hf)
    L = ref_model.config.num_hidden_layers - 1 if hasattr(ref_model.config, "num_hidden_layers") else 1
    clean = run_out(ref_model, ids)
    attn, oproj = parts(m, arch, L)
    iface = find(str(attn.source), "attention_interface(", "attention_interface")
    d_head = ref_model.config.hidden_size // ref_model.config.num_attention_heads
    d_head = getattr(ref_model.config, "head_dim", None) or d_head

    def out_of(res):
        return res.logits if getattr(res, "logits", None) is not None else res.last_hidden_state

    def expect(site, fn):
        with reference(ref_model, {(L, site): fn}):
            return run_out(ref_model, ids)

    def inner():
        return getattr(attn.source, iface)

    box = {}  # values set inside a trace are pushed back to plain locals only; use a container here
    with torch.no_grad(), m.trace(ids):  # the eager function's operations are only listed inside a trace
        box["listing"] = str(inner().source)
    listing = box["listing"]
    drop_name = find(listing, "dropout(", "dropout")
    kt_name = find(listing, "matmul(query", "transpose")

    def dropout_name(src):
        return drop_name

    def read_pattern():
        want = eager_patterns(ref_model, ids)
        with torch.no_grad(), m.trace(ids):
            f = inner()
            pat = getattr(f.source, dropout_name(f.source)).output.save()
        err = diff(pat, want[L])
        return ("yes" if err < 1e-5 else "no"), f"max|pattern-eager|={err:.2e} (layer {L}, via .source of the eager fn)"

    def set_pattern():
        def ref_edit(p):
            p = p.clone()
            p[:, H] = prev_token_pattern(p.shape[-2], p.shape[-1])
            return p
        want = expect("pattern", ref_edit)
        with torch.no_grad(), m.trace(ids):
            f = inner()
            op = getattr(f.source, dropout_name(f.source))
            op.output = ref_edit(op.output)
            res = m.output.save()
        return verdict_close(diff(out_of(res), want), diff(clean, want))

    def read_qk():
        with reference(ref_model) as cap, torch.no_grad():
            run_out(ref_model, ids)
            want_q, want_k = cap[(L, "q")], cap[(L, "k")]
        with torch.no_grad(), m.trace(ids):
            f = inner()
            q = f.inputs[0][1].save()
            kt = getattr(f.source, kt_name).output.save()
        k = kt.transpose(-1, -2)
        err = max(diff(q, want_q), diff(k, want_k))
        return ("yes" if err < 1e-4 else "no"), f"k per query head {tuple(k.shape)}; max|qk-ref|={err:.2e}"

    def edit_k(dims):
        def ref_edit(k):
            k = k.clone()
            k[:, H, :, dims] = 0
            return k
        want = expect("k", ref_edit)
        with torch.no_grad(), m.trace(ids):
            f = inner()
            op = getattr(f.source, kt_name)
            kt = op.output.clone()
            kt[:, H, dims, :] = 0
            op.output = kt
            res = m.output.save()
        return verdict_close(diff(out_of(res), want), diff(clean, want))

    def ablate():
        def ref_edit(z):
            z = z.clone()
            z[:, H] = 0
            return z
        want = expect("z", ref_edit)
        with torch.no_grad(), m.trace(ids):
            x = oproj.input.clone()
            x[:, :, H * d_head:(H + 1) * d_head] = 0
            oproj.input = x
            res = m.output.save()
        return verdict_close(diff(out_of(res), want), diff(clean, want))

    def gen():
        def ref_edit(p):
            p = p.clone()
            p[:, H] = prev_token_pattern(p.shape[-2], p.shape[-1])
            return p
        want = greedy_reference(ref_model, ids, {(L, "pattern"): ref_edit}, n_new)
        clean_tok = greedy_reference(ref_model, ids, {}, n_new)
        with m.generate(ids, max_new_tokens=n_new, do_sample=False, pad_token_id=0) as tracer:
            with tracer.all():
                f = inner()
                op = getattr(f.source, drop_name)
                op.output = ref_edit(op.output)
                box.setdefault("steps", []).append(m.output.logits[:, -1].argmax(-1).save())
        out = torch.cat([ids, torch.stack(box["steps"], dim=1)], dim=1)  # greedy token of every step
        got = out[:, ids.shape[1]:]
        same = int((got == want).sum())
        return ("yes" if same == want.numel() else "no"), (
            f"{same}/{want.numel()} cached tokens = recompute ({int((want != clean_tok).sum())} differ from clean)")

    def cleanup():
        before = count_torch_hooks(hf)
        try:
            with torch.no_grad(), m.trace(ids):
                x = oproj.input.clone()
                x[:, :, H * d_head:(H + 1) * d_head] = 0
                oproj.input = x
                raise RuntimeError("boom")
        except Exception:  # noqa: BLE001 - nnsight may re-raise as its own type
            pass
        left = count_torch_hooks(hf) - before
        err = diff(run_out(hf, ids), clean)
        return ("yes" if left <= 0 and err < 1e-4 else "no"), f"new torch hooks left={left}; max|out-clean|={err:.2e}"

    table.attempt(name, "1 read pattern = eager softmax", read_pattern)
    table.attempt(name, "2 set one head's pattern", set_pattern)
    table.attempt(name, "3 read post-rotary q/k per head", read_qk)
    table.attempt(name, "3 edit k of one query head (GQA)", lambda: edit_k(slice(None)))
    table.attempt(name, "4 edit one k dim (neuron)", lambda: edit_k(DIM))
    table.attempt(name, "5 zero-ablate one head", ablate)
    if arch != "bert":
        table.attempt(name, "6 KV-cache generate w/ edit", gen)
    table.attempt(name, "7 hooks removed after exception", cleanup)

    def foreign():
        def run():
            with torch.no_grad(), m.trace(ids):
                x = oproj.input.clone()
                x[:, :, H * d_head:(H + 1) * d_head] = 0
                oproj.input = x
        return foreign_hook_survives(hf.get_input_embeddings(), run)
    table.attempt(name, "other code's hooks survive a call", foreign)


def main(real: bool):
    table = Table(f"nnsight {version('nnsight')}")
    for arch in ARCHS:
        try:
            checks(table, arch)
        except Exception as err:  # noqa: BLE001
            table.add(f"tiny-{arch}", "setup", "error", f"{type(err).__name__}: {str(err)[:120]}")
    if real:
        ref, tok = gemma_hf("eager")
        if ref is not None:
            ids = tok(["The nurse said that", "The doctor said that"], return_tensors="pt")["input_ids"]
            checks(table, "gemma3", real=("gemma-270m", ref, gemma_hf("eager")[0], tok, ids), n_new=5)
    table.print()


if __name__ == "__main__":
    main("--real" in sys.argv)
