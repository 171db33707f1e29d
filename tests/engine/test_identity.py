"""Identity hooks change nothing: bit-exact against HF eager, equal to HF sdpa up to rounding."""

from __future__ import annotations

import pytest
import torch

from attnlab.engine.locations import SITES
from attnlab.testing import tiny_model

from .conftest import ARCHS, TEXTS, encode, hf_output


def _identity(x, hook):
    return x


@pytest.mark.parametrize("arch", ARCHS)
def test_no_hooks_is_bit_exact_with_hf_sdpa(arch, bare):
    model, enc = tiny_model(arch), encode(arch)
    expected = hf_output(bare(arch, "sdpa"), **enc)
    with torch.no_grad():
        got = model(enc["input_ids"], attention_mask=enc["attention_mask"])
    assert torch.equal(got, expected)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("site", SITES)
def test_identity_hook_at_every_layer_is_bit_exact_with_hf_eager(arch, site, bare):
    model, enc = tiny_model(arch), encode(arch)
    eager = hf_output(bare(arch, "eager"), **enc)
    sdpa = hf_output(bare(arch, "sdpa"), **enc)
    seen = []

    def identity(x, hook):
        seen.append(hook.layer_index)
        return x

    with torch.no_grad():
        got = model.run_with_hooks(
            enc["input_ids"], attention_mask=enc["attention_mask"],
            fwd_hooks=[(lambda name: name.endswith(f"hook_{site}"), identity)],
        )
    assert sorted(seen) == list(range(model.cfg.n_layers))  # the hook really ran on every layer
    assert torch.equal(got, eager)
    # sdpa and eager agree up to rounding on real tokens (padded query rows of a causal
    # sliding-window model are fully masked, where the two kernels legitimately differ)
    real = enc["attention_mask"].bool()
    assert (got - sdpa)[real].abs().max() <= 1e-5


@pytest.mark.parametrize("arch", ARCHS)
def test_identity_on_one_layer_mixes_fast_and_explicit_paths_exactly(arch, bare):
    """Layer 0 explicit, the rest fused: still the eager result on layer 0's arithmetic."""
    model, enc = tiny_model(arch), encode(arch, TEXTS[:1])
    with torch.no_grad():
        got = model.run_with_hooks(enc["input_ids"], fwd_hooks=[("blocks.0.attn.hook_pattern", _identity)])
    sdpa = hf_output(bare(arch, "sdpa"), input_ids=enc["input_ids"])
    assert (got - sdpa).abs().max() <= 1e-5


def test_hook_receives_documented_shapes(any_tiny):
    model = any_tiny
    enc = model.tokenize(["the nurse said that she was happy", "he ran"])
    batch, pos = enc["input_ids"].shape
    cfg = model.cfg
    _, cache = model.run_with_cache(enc["input_ids"], attention_mask=enc["attention_mask"])
    for layer in range(cfg.n_layers):
        for site in ("q", "k", "v", "z"):
            assert cache[f"blocks.{layer}.attn.hook_{site}"].shape == (batch, pos, cfg.n_heads, cfg.d_head)
        for site in ("attn_scores", "pattern"):
            assert cache[f"blocks.{layer}.attn.hook_{site}"].shape == (batch, cfg.n_heads, pos, pos)
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]
        assert torch.allclose(pattern.sum(-1), torch.ones(()), atol=1e-5)
    if cfg.is_causal:  # scores above the diagonal are masked with the dtype minimum
        scores = cache["blocks.0.attn.hook_attn_scores"]
        assert (scores[0, :, 0, 1:] == torch.finfo(scores.dtype).min).all()
