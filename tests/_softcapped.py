"""A tiny Gemma-2-style decoder whose attention scores are soft-capped, for the views and analyses that recompute scores."""

from __future__ import annotations

import torch


def tiny_softcapped(cap: float):
    """A tiny Gemma-2-style decoder whose attention scores are soft-capped: cap * tanh(s / cap)."""
    import transformers as tf

    from attnlab.engine.model import HookedModel
    from attnlab.testing import VOCAB, tiny_tokenizer

    torch.manual_seed(0)
    cfg = tf.Gemma2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
        intermediate_size=64, vocab_size=len(VOCAB), max_position_embeddings=128, attn_logit_softcapping=cap,
        query_pre_attn_scalar=8, sliding_window=64, bos_token_id=2, eos_token_id=3, pad_token_id=0,
    )
    hf = tf.Gemma2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.ndim == 2 and "embed" not in name:
                p.mul_(6.0)
    return HookedModel(hf, tiny_tokenizer("decoder"), name="tiny-gemma2")
