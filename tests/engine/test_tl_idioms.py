"""TransformerLens idioms written from memory (logit lens, direct logit attribution, patching, patterns) run unchanged.

Each test checks numbers: the tensor an idiom returns is the one TransformerLens' semantics
name, compared with the canonical spelling or a hand computation.
"""

from __future__ import annotations

import pytest
import torch

from attnlab.errors import InvalidLocation
from attnlab.utils import get_act_name

TEXT = "the nurse said that she was happy"


def _cache(model, **kwargs):
    with torch.no_grad():
        return model.run_with_cache(TEXT, **kwargs)


# -- cache keys ------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "gemma3"])
def test_negative_layers_in_cache_keys_count_from_the_end(arch, request):
    model = request.getfixturevalue({"gpt2": "tiny_gpt2", "gemma3": "tiny_gemma"}[arch])
    _, cache = _cache(model)
    n = model.cfg.n_layers
    assert torch.equal(cache["z", -1], cache[f"blocks.{n - 1}.attn.hook_z"])
    assert torch.equal(cache["resid_post", -1], cache[f"blocks.{n - 1}.hook_resid_post"])
    assert torch.equal(cache["pattern", -n], cache["blocks.0.attn.hook_pattern"])
    assert torch.equal(cache["scale", -1, "ln1"], cache[f"blocks.{n - 1}.ln1.hook_scale"])
    assert ("z", -1) in cache
    with pytest.raises(InvalidLocation, match=f"layer {-n - 1} out of range"):
        cache["z", -n - 1]


def test_string_shorthands_in_cache_keys(tiny_gpt2):
    _, cache = _cache(tiny_gpt2)
    assert torch.equal(cache["embed"], cache["hook_embed"])
    assert torch.equal(cache["pos_embed"], cache["hook_pos_embed"])
    assert torch.equal(cache["k1"], cache["blocks.1.attn.hook_k"])
    assert torch.equal(cache["resid_pre1"], cache["blocks.1.hook_resid_pre"])
    assert torch.equal(cache["scale"], cache["ln_final.hook_scale"])
    assert torch.equal(cache["scale0ln2"], cache["blocks.0.ln2.hook_scale"])
    assert torch.equal(cache["attn_logits", 0], cache["blocks.0.attn.hook_attn_scores"])
    assert "embed" in cache and "nonsense" not in cache
    with pytest.raises(InvalidLocation, match="'nonsense' is not in this cache"):
        cache["nonsense"]


def test_get_act_name_shorthand_and_aliases():
    assert get_act_name("k6") == "blocks.6.attn.hook_k"
    assert get_act_name("pre5") == "blocks.5.mlp.hook_pre"
    assert get_act_name("z0a") == "blocks.0.attn.hook_z"
    assert get_act_name("resid_pre5") == "blocks.5.hook_resid_pre"
    assert get_act_name("scale4ln1") == "blocks.4.ln1.hook_scale"
    assert get_act_name("scale") == "ln_final.hook_scale"
    assert get_act_name("query", 1) == "blocks.1.attn.hook_q"
    assert get_act_name("value", 1) == "blocks.1.attn.hook_v"
    assert get_act_name("attn_logits", 2) == "blocks.2.attn.hook_attn_scores"


def test_rot_q_is_attnlabs_rotated_q(tiny_llama):
    """TL's hook_rot_q is q after the rotary embedding: attnlab's hook_q (checked against q_proj + rotary by hand)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    model = tiny_llama
    _, cache = _cache(model)
    assert get_act_name("rot_q", 0) == "blocks.0.attn.hook_q"
    resid = cache["resid_pre", 0][0]
    x = model.hf_model.model.layers[0].input_layernorm(resid)
    q = torch.einsum("pm,hmd->hpd", x, model.blocks[0].attn.W_Q)[None]  # [1, head, pos, d_head]
    k = torch.einsum("pm,hmd->hpd", x, model.blocks[0].attn.W_K)[None]
    pos = torch.arange(resid.shape[0])[None]
    cos, sin = model.hf_model.model.rotary_emb(resid[None], pos)
    q_rot, _ = apply_rotary_pos_emb(q, k, cos, sin)
    assert (cache["rot_q", 0][0] - q_rot[0].transpose(0, 1)).abs().max() <= 1e-5
    assert torch.equal(cache["rot_k", 0], cache["k", 0])


def test_cache_to_accepts_move_model(tiny_gpt2):
    _, cache = _cache(tiny_gpt2)
    moved = cache.to("cpu", move_model=False)
    assert torch.equal(moved["pattern", 1], cache["pattern", 1])
