"""TransformerLens' own ``transformer_lens.patching`` functions run unchanged on an attnlab model.

They call ``run_with_hooks``, ``clean_cache[name]``, ``utils.get_act_name``, ``cfg.n_layers``,
``cfg.n_heads``, ``cfg.n_key_value_heads`` and ``cfg.device``, and refuse a model with any
submodule in training mode. The numbers are compared with the same functions on TL 4.3's bridge
around the same weights.
"""

from __future__ import annotations

import pickle

import pytest
import torch

from ._tl import TEXT, boot_bridge, maxdiff, perturbed

OTHER = "the doctor said that he was sad"
DIRECTION = torch.randn(256, generator=torch.Generator().manual_seed(0))  # the metric: last logits along it

pytest.importorskip("transformer_lens.model_bridge")


def _metric(logits):
    return (logits[:, -1] @ DIRECTION[: logits.shape[-1]]).mean()


def _run(model, names):
    from transformer_lens import patching

    clean, corrupt = model.to_tokens(TEXT), model.to_tokens(OTHER)
    with torch.no_grad():
        _, cache = model.run_with_cache(clean)
        return {n: getattr(patching, n)(model, corrupt, cache, _metric) for n in names}


EVERY_ARCH = ["get_act_patch_resid_pre", "get_act_patch_attn_head_out_all_pos",
              "get_act_patch_attn_head_pattern_all_pos", "get_act_patch_block_every", "get_act_patch_attn_head_q_by_pos"]


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3"])
def test_tl_patching_functions_give_the_bridges_numbers(arch):
    names = EVERY_ARCH + (["get_act_patch_attn_head_v_by_pos"] if arch == "gpt2" else [])
    ours = _run(perturbed(arch), names)
    theirs = _run(boot_bridge(arch)[0], names)
    for name in names:
        assert ours[name].shape == theirs[name].shape, name
        assert maxdiff(ours[name], theirs[name]) <= 2e-5 * max(1.0, float(theirs[name].abs().max())), name
    # a real check of the patching, not only of agreement: at layer 0 only the positions where the texts
    # differ carry the difference, and patching all of them restores the clean metric
    model = perturbed(arch)
    with torch.no_grad():
        clean_metric = float(_metric(model(TEXT)))
        corrupt_metric = float(_metric(model(OTHER)))
    resid0 = ours["get_act_patch_resid_pre"][0]
    same = (model.to_tokens(TEXT) == model.to_tokens(OTHER))[0]
    assert torch.allclose(resid0[same], torch.full_like(resid0[same], corrupt_metric), atol=1e-5)
    assert abs(clean_metric - corrupt_metric) > 1e-3


def test_under_grouped_query_attention_k_and_v_follow_attnlabs_heads():
    """TL iterates k and v over kv heads; attnlab's k and v have one entry per query head, so its
    k/v patching covers the first n_kv_heads *query* heads (docs/comparison.md)."""
    model = perturbed("llama")
    out = _run(model, ["get_act_patch_attn_head_v_by_pos"])["get_act_patch_attn_head_v_by_pos"]
    assert out.shape[-1] == model.cfg.n_kv_heads


def test_the_wrapper_is_in_eval_mode_and_its_config_knows_the_device():
    model = perturbed("gpt2")
    assert not model.training and not any(m.training for m in model.modules())
    assert model.cfg.device == model.device
    copy = pickle.loads(pickle.dumps(model.cfg))  # the link to the model does not travel
    assert copy == model.cfg and copy.n_heads == model.cfg.n_heads
    for same_process in (__import__("copy").copy(model.cfg), __import__("copy").deepcopy(model.cfg)):
        assert same_process == model.cfg and same_process.device == model.device  # a copy here keeps it
