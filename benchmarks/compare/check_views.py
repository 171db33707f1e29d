"""bertviz vs attnlab views: offline HTML (external URLs), model coverage of the neuron view, diff view.

Run:  OMP_NUM_THREADS=1 python benchmarks/compare/check_views.py
"""

from __future__ import annotations

import re
from importlib.metadata import version

import torch

from _common import Table, ids_for, tiny

URL = re.compile(r"https?://[^\s\"'<>)]+")


def externals(html: str) -> list[str]:
    """URLs the page would fetch: script/link sources and require.js paths (not plain text links)."""
    loads = re.findall(r"(?:src|href)\s*=\s*[\"'](https?://[^\"']+)", html)
    loads += re.findall(r"[\"'](https?://[^\"']*(?:\.min|\.js)[^\"']*)[\"']", html)
    return sorted(set(loads))


def bertviz_rows(table: Table) -> None:
    try:
        from bertviz import head_view, model_view
    except ImportError as err:
        print(f"SKIP bertviz: not importable in this environment ({err})")
        return

    for arch in ("gpt2", "llama"):
        hf, tok = tiny(arch, "eager")
        ids = ids_for(arch, tok)[:1]
        with torch.no_grad():
            att = hf(input_ids=ids, output_attentions=True).attentions
        toks = tok.convert_ids_to_tokens(ids[0])
        for label, fn in (("head_view", head_view), ("model_view", model_view)):
            def run(fn=fn):
                html = fn(att, toks, html_action="return").data
                ext = externals(html)
                return ("no" if ext else "yes"), f"{len(ext)} external loads: {', '.join(u.split('/')[-1] for u in ext)}"
            table.attempt(f"tiny-{arch}", f"{label} offline", run)

    def neuron_other():
        from bertviz.neuron_view import show

        hf, tok = tiny("llama", "eager")
        show(hf, "llama", tok, "the nurse said that she", html_action="return")
        return "yes", "ran"
    table.attempt("tiny-llama", "neuron_view on a non-bundled model", neuron_other)

    def neuron_hf_gpt2():
        from bertviz.neuron_view import show

        hf, tok = tiny("gpt2", "eager")
        show(hf, "gpt2", tok, "the nurse said that she", html_action="return")
        return "yes", "ran on a transformers GPT2LMHeadModel"
    table.attempt("tiny-gpt2", "neuron_view on HF (not bundled) GPT-2", neuron_hf_gpt2)

    import bertviz
    import pkgutil

    names = [m.name for m in pkgutil.iter_modules(bertviz.__path__)]
    has_diff = any("diff" in n for n in names) or any("diff" in a.lower() for a in dir(bertviz))
    table.add("-", "diff (clean vs intervened) view", "yes" if has_diff else "no", f"modules: {', '.join(names)}")


def attnlab_rows(table: Table) -> None:
    try:
        from attnlab.viz import diff_view, head_view, model_view, neuron_view
    except ImportError as err:
        table.add("-", "attnlab views", "missing", str(err))
        return
    from attnlab.interventions import AblateHead
    from attnlab.testing import tiny_model

    for arch in ("gpt2", "llama", "gemma3"):
        model = tiny_model(arch)
        text = "the nurse said that she"
        views = {
            "head_view": lambda: head_view(model, text),
            "model_view": lambda: model_view(model, text),
            "neuron_view": lambda: neuron_view(model, text),
            "diff_view": lambda: diff_view(model, text, [AblateHead(0, 1)]),
        }
        for label, fn in views.items():
            def run(fn=fn):
                html = fn().html
                ext = externals(html)
                return ("no" if ext else "yes"), f"{len(ext)} external loads; {len(URL.findall(html))} URLs of any kind; {len(html) // 1024} KiB"
            table.attempt(f"tiny-{arch}", f"{label} offline", run)


def main():
    try:
        bv = version("bertviz")
    except Exception:  # noqa: BLE001
        bv = "absent"
    table = Table(f"bertviz {bv}")
    bertviz_rows(table)
    table.print()
    table2 = Table("attnlab views")
    attnlab_rows(table2)
    table2.print()


if __name__ == "__main__":
    main()
