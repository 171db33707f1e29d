"""Helpers shared by the engine tests: the same tiny model wrapped and bare, and a common batch."""

from __future__ import annotations

import pytest
import torch

from attnlab.testing import tiny_hf_model, tiny_tokenizer

ARCHS = ("gpt2", "bert", "llama", "gemma3")
TEXTS = ["the nurse said that she was happy", "he ran to the house"]


def encode(arch: str, texts=TEXTS) -> dict[str, torch.Tensor]:
    tok = tiny_tokenizer("encoder" if arch.startswith("bert") else "decoder")
    return dict(tok(list(texts), return_tensors="pt", padding=True))


def hf_output(hf_model, **inputs) -> torch.Tensor:
    """Logits, or the last hidden state for an encoder without an LM head.

    A decoder runs without its KV cache, as attnlab runs it: the cache stores keys and values
    contiguously, and a product over another layout may round differently on some CPUs.
    """
    if hasattr(hf_model, "lm_head"):
        inputs = {"use_cache": False, **inputs}
    with torch.no_grad():
        out = hf_model(**inputs)
    logits = getattr(out, "logits", None)
    return logits if logits is not None else out.last_hidden_state


@pytest.fixture
def bare():
    """``bare(arch, impl)``: the un-wrapped tiny HF model (same seed, same weights as tiny_model)."""
    return lambda arch, impl="sdpa": tiny_hf_model(arch, attn_implementation=impl)
