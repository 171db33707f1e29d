"""pyvene against the hand-written reference: which models are mapped, what its components see.

Run:  OMP_NUM_THREADS=1 python benchmarks/compare/check_pyvene.py
pyvene addresses *module* inputs/outputs (its model cards map names like ``query_output`` to
``q_proj``); values computed inside a function (rotary q/k, the softmax) have no module.
"""

from __future__ import annotations

from importlib.metadata import version

import torch

from _common import (
    ARCHS, EDIT_HEAD, Table, count_torch_hooks, diff, ids_for, reference, run_out, skip_unless, tiny, verdict_close,
)

pv = skip_unless("pyvene")
H = EDIT_HEAD


def main():
    table = Table(f"pyvene {version('pyvene')}")
    from pyvene.models.intervenable_modelcard import type_to_module_mapping

    for arch in ARCHS:
        hf, tok = tiny(arch, "eager")
        mapping = type_to_module_mapping.get(type(hf), {})
        table.add(f"tiny-{arch}", "model class mapped", "yes" if mapping else "no",
                  f"{type(hf).__name__}; attention_weight component: {'attention_weight' in mapping}")
        if not mapping:
            continue
        ids = ids_for(arch, tok)
        b, p = ids.shape
        L = 1

        def read_pattern():
            if "attention_weight" not in mapping:
                return "no", "no attention_weight component for this model class"
            module_path = mapping["attention_weight"][0] % L
            module = eval("hf." + module_path)  # noqa: S307 - a fixed path from pyvene's own model card
            calls = []
            handle = module.register_forward_pre_hook(lambda mod, args: calls.append(1))
            try:
                cfg = pv.IntervenableConfig([{"layer": L, "component": "attention_weight",
                                              "intervention_type": pv.CollectIntervention}])
                m = pv.IntervenableModel(cfg, model=hf)
                try:
                    m(base={"input_ids": ids}, unit_locations={"base": [[list(range(p))]] * b})
                    err = "ran"
                except KeyError as e:
                    err = f"KeyError {e}"
            finally:
                handle.remove()
            return "no", f"mapped to {module_path} which ran {len(calls)} times in a forward pass; pyvene: {err}"
        table.attempt(f"tiny-{arch}", "1/2 attention_weight component", read_pattern)

        def query_component():
            path = mapping["query_output"][0] % L
            q_out = {}
            target = eval("hf." + path)  # noqa: S307 - a fixed path from pyvene's own model card
            handle = target.register_forward_hook(lambda mod, a, out: q_out.setdefault("q", out))
            try:
                with reference(hf) as cap, torch.no_grad():
                    run_out(hf, ids)
                    want = cap[(L, "q")]
            finally:
                handle.remove()
            q = q_out["q"]
            if q.shape[-1] != want.shape[1] * want.shape[-1]:  # GPT-2's c_attn holds q, k, v together
                q = q[..., : want.shape[1] * want.shape[-1]]
            got = q.reshape(b, p, want.shape[1], want.shape[-1]).transpose(1, 2)
            err = diff(got, want)
            return ("yes" if err < 1e-5 else "no"), f"query_output = {path}; vs post-rotary q: max diff {err:.2e}"
        table.attempt(f"tiny-{arch}", "3 query_output is post-rotary q", query_component)

        d_head = hf.config.hidden_size // hf.config.num_attention_heads

        def zero_head(base, source=None, subspaces=None):
            base = base.clone()
            base[..., H * d_head:(H + 1) * d_head] = 0
            return base

        def ref_zero(z):
            z = z.clone()
            z[:, H] = 0
            return z

        def ablate():
            with reference(hf, {(L, "z"): ref_zero}):
                want = run_out(hf, ids)
            clean = run_out(hf, ids)
            cfg = pv.IntervenableConfig([{"layer": L, "component": "attention_value_output", "unit": "pos",
                                          "intervention": zero_head}])
            m = pv.IntervenableModel(cfg, model=hf)
            _, out = m(base={"input_ids": ids}, unit_locations={"base": list(range(p))})
            return verdict_close(diff(out.logits, want), diff(clean, want))

        def gen(n_new=6):
            from _common import greedy_reference
            want = greedy_reference(hf, ids, {(L, "z"): ref_zero}, n_new)
            clean_tok = greedy_reference(hf, ids, {}, n_new)
            cfg = pv.IntervenableConfig([{"layer": L, "component": "attention_value_output", "intervention": zero_head}])
            m = pv.IntervenableModel(cfg, model=hf)
            _, out = m.generate({"input_ids": ids}, unit_locations=None, intervene_on_prompt=True,
                                max_new_tokens=n_new, do_sample=False, pad_token_id=0)
            got = out[:, p:]
            same = int((got == want).sum())
            return ("yes" if same == want.numel() else "no"), (
                f"{same}/{want.numel()} cached tokens = recompute ({int((want != clean_tok).sum())} differ from clean)")

        def foreign_hooks():
            calls = []
            handle = hf.get_input_embeddings().register_forward_hook(lambda mod, a, out: calls.append(1))
            m = pv.IntervenableModel(pv.IntervenableConfig([{"layer": L, "component": "attention_value_output",
                                                             "unit": "pos", "intervention": zero_head}]), model=hf)
            m(base={"input_ids": ids}, unit_locations={"base": list(range(p))})
            alive = handle.id in hf.get_input_embeddings()._forward_hooks
            handle.remove()
            return ("yes" if alive and calls else "no"), (
                f"a user's torch hook: fired {len(calls)} times, still registered: {alive}")

        table.attempt(f"tiny-{arch}", "5 zero-ablate one head", ablate)
        table.attempt(f"tiny-{arch}", "6 generate w/ edit (all positions)", gen)
        table.attempt(f"tiny-{arch}", "other code's hooks survive a call", foreign_hooks)

        def cleanup():
            def boom(base, source=None, subspaces=None):
                raise RuntimeError("boom")
            before = count_torch_hooks(hf)
            clean = run_out(hf, ids)
            m = pv.IntervenableModel(pv.IntervenableConfig([{"layer": L, "component": "block_output",
                                                             "intervention": boom}]), model=hf)
            try:
                m(base={"input_ids": ids}, unit_locations={"base": [[list(range(p))]] * b})
            except RuntimeError:
                pass
            left = count_torch_hooks(hf) - before
            err = diff(run_out(hf, ids), clean)
            return ("yes" if left == 0 and err < 1e-6 else "no"), f"torch hooks left={left}; max|out-clean|={err:.2e}"
        table.attempt(f"tiny-{arch}", "7 hooks removed after exception", cleanup)
    table.print()


if __name__ == "__main__":
    main()
