"""Shared pieces of the library comparison: tiny models, a hand-written reference, tables.

Not part of attnlab and never imported by it or its tests. The reference attention below
is written here from the transformers eager formula (softmax(q k^T * scale + mask) v),
independently of every library compared, and lets a test apply one edit at one site
(q, k, v, scores, pattern, z) to get the output an edit *should* give.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

torch.set_num_threads(1)

__all__ = [
    "ARCHS", "EDIT_HEAD", "DIM", "tiny", "ids_for", "run_out", "eager_patterns", "reference",
    "prev_token_pattern", "greedy_recompute", "greedy_reference", "Table", "skip_unless", "median_time",
    "gemma_hf", "minilm_hf", "count_torch_hooks", "saved_tokenizer", "foreign_hook_survives",
]

ARCHS = ("gpt2", "bert", "llama", "gemma3")
EDIT_HEAD = 1
DIM = 3
TEXTS = {
    "decoder": ["the nurse said that she was happy", "the doctor told the patient that he"],
    "encoder": ["the nurse said that she was happy", "the doctor told the patient that he"],
}


def skip_unless(module: str):
    """Import ``module`` or print a message and exit 0 (the comparison is optional)."""
    try:
        return __import__(module)
    except Exception as err:  # noqa: BLE001 - any import failure means "not available here"
        print(f"SKIP: {module} is not importable in this environment ({type(err).__name__}: {err})")
        sys.exit(0)


def tiny(arch: str, impl: str = "eager"):
    """A fresh tiny random HF model (same seed -> same weights every call) and its tokenizer."""
    from attnlab.testing import tiny_hf_model, tiny_tokenizer

    model = tiny_hf_model(arch, attn_implementation=impl)
    return model, tiny_tokenizer("encoder" if arch.startswith("bert") else "decoder")


def saved_tokenizer(tok):
    """The same tokenizer reloaded from a local folder (some libraries need ``name_or_path``)."""
    from transformers import AutoTokenizer

    folder = tempfile.mkdtemp(prefix="cmp-tok-")
    tok.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def ids_for(arch: str, tok) -> torch.Tensor:
    enc = tok(TEXTS["encoder" if arch.startswith("bert") else "decoder"], return_tensors="pt", padding=True)
    assert bool(enc["attention_mask"].all()), "comparison inputs are chosen with equal lengths (no padding)"
    return enc["input_ids"]


def run_out(model, ids) -> torch.Tensor:
    """Logits (decoders) or last hidden state (BERT without a head) of a plain HF model."""
    with torch.no_grad():
        out = model(input_ids=ids)
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def eager_patterns(model, ids) -> list[torch.Tensor]:
    """The model's own eager attention probabilities (``output_attentions=True``)."""
    with torch.no_grad():
        out = model(input_ids=ids, output_attentions=True)
    return [a.detach() for a in out.attentions]


def prev_token_pattern(q_len: int, k_len: int) -> torch.Tensor:
    """[q, k] one-hot on the previous token (position 0 attends to itself); valid causal or not."""
    q_abs = torch.arange(k_len - q_len, k_len)
    target = (q_abs - 1).clamp_min(0)
    return torch.nn.functional.one_hot(target, k_len).float()


# -- the reference attention -------------------------------------------------------------

_EDITS: dict[tuple[int, str], object] = {}
_CAPTURE: dict[tuple[int, str], torch.Tensor] = {}
_REGISTERED = False


def _ref_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    layer = module.layer_idx
    n_heads, q_len, k_len = query.shape[1], query.shape[2], key.shape[2]
    group = n_heads // key.shape[1]
    key = key.repeat_interleave(group, dim=1)  # one key/value per query head
    value = value.repeat_interleave(group, dim=1)

    def site(name, x):
        _CAPTURE[(layer, name)] = x.detach().clone()
        fn = _EDITS.get((layer, name))
        return fn(x) if fn is not None else x

    query, key, value = site("q", query), site("k", key), site("v", value)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scale
    softcap = kwargs.get("softcap")
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask[..., :k_len]
    elif getattr(module, "is_causal", False) and q_len > 1:
        allowed = torch.arange(k_len - q_len, k_len)[:, None] >= torch.arange(k_len)[None, :]
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    scores = site("scores", scores)
    probs = site("pattern", torch.softmax(scores.float(), dim=-1).to(query.dtype))
    z = site("z", torch.matmul(probs, value))  # [b, h, q, d]
    return z.transpose(1, 2).contiguous(), probs


def _register():
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register("cmp_reference", _ref_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register("cmp_reference", eager_mask)
    _REGISTERED = True


def _set_impl(model, name):
    seen = set()
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and id(cfg) not in seen:
            seen.add(id(cfg))
            cfg._attn_implementation = name


@contextmanager
def reference(model, edits: dict | None = None):
    """Run ``model`` with the hand-written attention; ``edits[(layer, site)] = fn(x) -> x``.

    Sites see [batch, head, q, k] (scores, pattern) or [batch, head, pos, d_head] (q, k, v, z),
    with k/v already one per query head. Yields the capture dict.
    """
    _register()
    old = model.config._attn_implementation
    _set_impl(model, "cmp_reference")
    _EDITS.clear()
    _EDITS.update(edits or {})
    _CAPTURE.clear()
    try:
        yield _CAPTURE
    finally:
        _EDITS.clear()
        _set_impl(model, old)


def greedy_recompute(step_logits, ids: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy tokens recomputing the whole sequence every step (no KV cache)."""
    seq = ids
    for _ in range(n):
        nxt = step_logits(seq)[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    return seq[:, ids.shape[1]:]


def greedy_reference(model, ids, edits, n: int) -> torch.Tensor:
    def step(seq):
        with reference(model, edits):
            return run_out(model, seq)

    return greedy_recompute(step, ids, n)


def count_torch_hooks(module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def foreign_hook_survives(module, run) -> tuple[str, str]:
    """Register a plain torch hook on ``module``, call ``run()``; is it still there and did it fire?"""
    calls = []
    handle = module.register_forward_hook(lambda mod, args, out: calls.append(1))
    try:
        run()
        alive = handle.id in module._forward_hooks
    finally:
        handle.remove()
    return ("yes" if alive and calls else "no"), f"a user's torch hook: fired {len(calls)}x, still registered: {alive}"


def median_time(fn, repeats: int = 3, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def gemma_hf(impl: str = "eager"):
    """A clean (unwrapped) Gemma-3-270m from attnlab's dequantised cache, or None."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from attnlab.engine.loading import gemma_cache_path

    folder = gemma_cache_path()
    if not (folder / "model.safetensors").is_file():
        return None, None
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, attn_implementation=impl)
    return model.eval(), AutoTokenizer.from_pretrained(str(folder))


def minilm_hf(impl: str = "eager"):
    from transformers import AutoModel, AutoTokenizer

    from attnlab.engine.loading import _minilm_path

    path = str(_minilm_path())
    return AutoModel.from_pretrained(path, attn_implementation=impl).eval(), AutoTokenizer.from_pretrained(path)


class Table:
    """Rows of (model, check, verdict, number); printed as a fixed-width table."""

    def __init__(self, library: str):
        self.library = library
        self.rows: list[tuple[str, str, str, str]] = []

    def add(self, model: str, check: str, verdict: str, number: str = "") -> None:
        self.rows.append((model, check, verdict, number))
        print(f"  [{self.library}] {model:<11} {check:<34} {verdict:<8} {number}", flush=True)

    def attempt(self, model: str, check: str, fn) -> None:
        """Run ``fn() -> (verdict, number)``; an exception becomes a 'no' row naming it."""
        try:
            verdict, number = fn()
        except Exception as err:  # noqa: BLE001 - a failure is a measured result here
            msg = f"{type(err).__name__}: {str(err).splitlines()[0][:110] if str(err) else ''}"
            verdict, number = "error", msg
        self.add(model, check, verdict, number)

    def print(self) -> None:
        print(f"\n== {self.library} ==")
        print(f"{'model':<11} | {'check':<34} | {'result':<8} | number")
        print("-" * 100)
        for row in self.rows:
            print(f"{row[0]:<11} | {row[1]:<34} | {row[2]:<8} | {row[3]}")


def reference_sanity(table: "Table") -> None:
    """The reference with no edit must reproduce transformers' own eager output."""
    for arch in ARCHS:
        model, tok = tiny(arch, "eager")
        ids = ids_for(arch, tok)
        plain = run_out(model, ids)
        with reference(model):
            mine = run_out(model, ids)
        err = diff(plain, mine)
        table.add(f"tiny-{arch}", "0 reference = HF eager (sanity)", "yes" if err < 1e-5 else "no", f"max diff {err:.2e}")


def diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def verdict_close(err: float, effect: float, tol: float = 1e-4) -> tuple[str, str]:
    """'yes' when the library's output matches the reference and the edit had an effect."""
    ok = err <= tol
    return ("yes" if ok else "no"), f"max|lib-ref|={err:.2e} (edit effect {effect:.2e})"


__all__ += ["diff", "verdict_close", "reference_sanity"]
