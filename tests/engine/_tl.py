"""Helpers for the TransformerLens-face tests: tiny models whose norms and biases are not trivial.

A freshly initialised HF model has every norm weight at 1 (0 for Gemma, which stores w - 1)
and most biases at 0, so a test could not tell ``w`` from ``1 + w`` or a forgotten bias from
a kept one. ``perturbed_hf`` draws every 1-D parameter (norm weights and biases) at random,
deterministically, so two calls give the same weights (one for attnlab, one for a bridge).
"""

from __future__ import annotations

import logging
import warnings

import torch

from attnlab.engine.model import HookedModel
from attnlab.testing import tiny_hf_model, tiny_tokenizer

ARCHS = ("gpt2", "bert", "bert-mlm", "llama", "gemma3")
TEXT = "the nurse said that she was happy"

# tiny architecture -> (a model name TransformerLens' bridge knows, the HF class it dispatches on)
BRIDGED = {
    "gpt2": ("gpt2", "GPT2LMHeadModel"),
    "bert-mlm": ("google-bert/bert-base-uncased", "BertForMaskedLM"),
    "llama": ("meta-llama/Llama-3.2-1B", "LlamaForCausalLM"),
    "gemma3": ("google/gemma-3-270m", "Gemma3ForCausalLM"),
}


def tokenizer_of(arch: str):
    return tiny_tokenizer("encoder" if arch.startswith("bert") else "decoder")


def perturbed_hf(arch: str, *, seed: int = 0):
    """The tiny HF model of ``arch`` with every norm weight and bias drawn at random."""
    hf = tiny_hf_model(arch, seed=seed)
    gen = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.ndim == 1:
                noise = torch.randn(p.shape, generator=gen)
                p.copy_(p + 0.3 * noise)  # norm weights move off 1 (or 0), biases off 0
    return hf.eval()


def perturbed(arch: str, *, seed: int = 0) -> HookedModel:
    return HookedModel(perturbed_hf(arch, seed=seed), tokenizer_of(arch), name=f"tiny-{arch}")


def boot_bridge(arch: str, hf=None):
    """TransformerLens 4's TransformerBridge around ``hf`` (default: a fresh perturbed tiny model)."""
    from transformer_lens.model_bridge import TransformerBridge

    name, cls = BRIDGED[arch]
    hf = perturbed_hf(arch) if hf is None else hf
    hf.config.architectures = [cls]
    tok = tokenizer_of(arch)
    tok.init_kwargs.update(name_or_path="tiny", add_bos_token=True)  # else TL reloads it from the hub name
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bridge = TransformerBridge.boot_transformers(name, hf_model=hf, tokenizer=tok)
    finally:
        logging.disable(logging.NOTSET)
    return bridge, hf, tok


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (tuple(a.shape), tuple(b.shape))
    return float((a.detach().float() - b.detach().float()).abs().max())
