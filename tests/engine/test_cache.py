"""``run_with_cache`` caches only what is asked; hook names are checked with a did-you-mean."""

from __future__ import annotations

import pytest
import re

import torch

from attnlab.errors import InvalidLocation

TEXT = "the nurse said that she was happy"


def test_names_filter_caches_only_what_is_asked(any_tiny):
    model = any_tiny
    _, one = model.run_with_cache(TEXT, names_filter="blocks.1.attn.hook_pattern")
    assert list(one.keys()) == ["blocks.1.attn.hook_pattern"]
    _, two = model.run_with_cache(TEXT, names_filter=["blocks.0.attn.hook_q", "blocks.1.attn.hook_z"])
    assert sorted(two.keys()) == ["blocks.0.attn.hook_q", "blocks.1.attn.hook_z"]
    _, patterns = model.run_with_cache(TEXT, names_filter=lambda name: name.endswith("hook_pattern"))
    assert sorted(patterns.keys()) == [f"blocks.{i}.attn.hook_pattern" for i in range(model.cfg.n_layers)]
    _, everything = model.run_with_cache(TEXT)
    # no filter caches every hook point: the six attention sites of every layer (and q, k before the rotary
    # embedding where the model has one), and the block edges
    attention = [k for k in everything.keys() if ".attn.hook_" in k and not k.endswith(("hook_result", "_pre_norm"))]
    assert len(attention) == (8 if model.cfg.rotary else 6) * model.cfg.n_layers
    # and q, k before their norm where the model normalises them (Gemma-3)
    pre_norm = [k for k in everything.keys() if k.endswith("_pre_norm")]
    has_norm = hasattr(model.layout.blocks[0].attention, "q_norm")
    assert len(pre_norm) == (2 * model.cfg.n_layers if has_norm else 0)
    assert any(k.endswith("hook_q_pre_rotary") for k in attention) == model.cfg.rotary
    assert {"blocks.0.hook_resid_pre", "blocks.1.hook_resid_post", "blocks.1.attn.hook_result"} <= set(everything.keys())
    # layer 0 ran fused in the first call and explicitly in the last: equal up to rounding
    assert torch.allclose(one["blocks.1.attn.hook_pattern"], everything["blocks.1.attn.hook_pattern"], atol=1e-5)
    assert model.count_hooks() == 0


def test_cache_does_not_change_the_output(any_tiny):
    model = any_tiny
    with torch.no_grad():
        clean = model(TEXT)
    out, _ = model.run_with_cache(TEXT)
    assert (out - clean).abs().max() <= 1e-5  # explicit (eager) arithmetic vs the fused sdpa path


def test_unknown_hook_name_in_run_with_cache_suggests_the_right_one(tiny_gpt2):
    with pytest.raises(InvalidLocation, match=r"no hook point 'blocks.1.attn.hook_patern' .*did you mean 'blocks.1.attn.hook_pattern'"):
        tiny_gpt2.run_with_cache(TEXT, names_filter=["blocks.1.attn.hook_patern"])
    assert tiny_gpt2.count_hooks() == 0


def test_unknown_hook_name_in_run_with_hooks_suggests_the_right_one(tiny_llama):
    with pytest.raises(InvalidLocation, match=r"no hook point 'blocks.0.attn.hook_zz' .*did you mean 'blocks.0.attn.hook_z'"):
        tiny_llama.run_with_hooks(TEXT, fwd_hooks=[("blocks.0.attn.hook_zz", lambda x, hook: x)])
    with pytest.raises(InvalidLocation, match=r"no hook point 'blocks.5.attn.hook_q' .*blocks.<0..1>.attn.hook_<q\|k\|v"):
        tiny_llama.run_with_hooks(TEXT, fwd_hooks=[("blocks.5.attn.hook_q", lambda x, hook: x)])
    assert tiny_llama.count_hooks() == 0


def test_hook_pair_must_be_name_and_function(tiny_llama):
    with pytest.raises(InvalidLocation, match="hooks must be \\(name or name filter, function\\) pairs"):
        tiny_llama.run_with_hooks(TEXT, fwd_hooks=[("blocks.0.attn.hook_q", "not a function")])


def test_cache_layers_may_be_numpy_integers_but_not_bools(tiny_gpt2):
    import numpy as np

    _, cache = tiny_gpt2.run_with_cache(TEXT)
    last = cache["blocks.1.attn.hook_z"]
    assert cache["z", np.int64(-1)] is last and cache["z", np.int32(1)] is last  # np.int64(-1) was 'blocks.-1...'
    assert cache["scale", np.int64(0), "ln1"] is cache["blocks.0.ln1.hook_scale"]
    assert [cache["z", layer] is cache["z", i] for i, layer in enumerate(torch.arange(2))] == [True, True]  # 0-d tensors
    for bad in (True, 1.0, "1", torch.tensor(1.0), torch.tensor(True)):
        with pytest.raises(InvalidLocation, match=rf"the layer in cache key \('z', {re.escape(repr(bad))}\) must be an integer in layers "
                                                  r"0\.\.1 \(or -2\.\.-1 from the end\)"):
            cache["z", bad]  # True silently read layer 1
    with pytest.raises(InvalidLocation, match="layer 2 out of range"):
        cache["z", np.int64(2)]


@pytest.mark.parametrize("bad", [3, True, 2.5])
def test_a_names_filter_of_another_kind_is_named(tiny_gpt2, bad):
    from attnlab.errors import InvalidInput

    with pytest.raises(InvalidInput, match=rf"names_filter must be a hook name, a list of hook names, a predicate on names "
                                           rf"\(name -> bool\) or None \(every hook point\), got {bad!r}"):
        tiny_gpt2.run_with_cache(TEXT, names_filter=bad)
    assert tiny_gpt2.count_hooks() == 0
