"""Weights by TransformerLens names: shapes, views of the HF parameters, the config fields, the bridge's values."""

from __future__ import annotations

import pytest
import torch
from einops import repeat

from attnlab.errors import UnsupportedModel

from ._tl import ARCHS, BRIDGED, boot_bridge, maxdiff, perturbed

PER_LAYER_VIEWS = {"attn": ("W_Q", "W_O"), "mlp": ("W_in", "W_out")}  # W_K/W_V: views only without GQA


def _shares_memory(view: torch.Tensor, model) -> bool:
    storages = {p.untyped_storage().data_ptr() for p in model.hf_model.parameters()}
    return view.untyped_storage().data_ptr() in storages


@pytest.mark.parametrize("arch", ARCHS)
def test_shapes(arch):
    model = perturbed(arch)
    c = model.cfg
    n, h, m, d, f = c.n_layers, c.n_heads, c.d_model, c.d_head, c.d_mlp
    expected = {
        "W_Q": (n, h, m, d), "W_K": (n, h, m, d), "W_V": (n, h, m, d), "W_O": (n, h, d, m),
        "b_Q": (n, h, d), "b_K": (n, h, d), "b_V": (n, h, d), "b_O": (n, m),
        "W_in": (n, m, f), "W_out": (n, f, m), "b_in": (n, f), "b_out": (n, m), "W_E": (c.d_vocab, m),
    }
    if c.has_lm_head:
        expected.update(W_U=(m, c.d_vocab), b_U=(c.d_vocab,))
    for name, shape in expected.items():
        assert tuple(getattr(model, name).shape) == shape, name
    assert tuple(model.blocks[1].attn.W_Q.shape) == (h, m, d)
    assert tuple(model.blocks[1].attn._W_K.shape) == (c.n_kv_heads, m, d)


@pytest.mark.parametrize("arch", ARCHS)
def test_per_layer_weights_are_views_of_the_hf_parameters(arch):
    model = perturbed(arch)
    views = [getattr(getattr(model.blocks[1], part), name) for part, names in PER_LAYER_VIEWS.items() for name in names]
    views += [model.blocks[1].attn._W_K, model.blocks[1].attn._W_V, model.W_E]
    if model.cfg.n_kv_heads == model.cfg.n_heads:
        views += [model.blocks[1].attn.W_K, model.blocks[1].attn.W_V]
    if model.cfg.has_lm_head:
        views.append(model.W_U)
    if model.layout.pos_embed is not None:
        views.append(model.W_pos)
    for view in views:
        assert _shares_memory(view, model)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_write_through_either_side_is_seen_by_the_other(arch):
    model = perturbed(arch)
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    with torch.no_grad():
        before = model("the nurse said that", return_type="hidden")
        attn.W_Q[1, 2, 3] += 5.0  # through the view: the model computes with it
        after = model("the nurse said that", return_type="hidden")
        assert maxdiff(after, before) > 1e-3
        attn.W_Q[1, 2, 3] -= 5.0
        assert maxdiff(model("the nurse said that", return_type="hidden"), before) <= 1e-6
        # through the HF parameter: the view shows it, and so does the stacked copy built afterwards
        hf_out = model.layout.blocks[0].mlp_down
        if type(hf_out).__name__ == "Conv1D":
            hf_out.weight[4, 6] = 42.0  # [in, out]
        else:
            hf_out.weight[6, 4] = 42.0  # [out, in]
        assert mlp.W_out[4, 6] == 42.0
        assert model.W_out[0, 4, 6] == 42.0


def test_gqa_keys_and_values_are_one_per_query_head(tiny_llama):
    model = tiny_llama
    group = model.cfg.n_heads // model.cfg.n_kv_heads
    attn = model.blocks[1].attn
    for head in range(model.cfg.n_heads):
        assert torch.equal(attn.W_K[head], attn._W_K[head // group])
        assert torch.equal(attn.W_V[head], attn._W_V[head // group])
    assert torch.equal(model.W_K[1], attn.W_K)


def test_stacked_weights_follow_the_current_parameters(tiny_gpt2):
    stacked = tiny_gpt2.W_Q
    with torch.no_grad():
        tiny_gpt2.blocks[0].attn.W_Q[0, 0, 0] = 9.0
    assert tiny_gpt2.W_Q[0, 0, 0, 0] == 9.0  # rebuilt on access
    assert stacked[0, 0, 0, 0] != 9.0  # an earlier stacked copy is a copy


def test_missing_biases_are_zeros_and_missing_matrices_raise(tiny_llama, tiny_gpt2):
    assert torch.equal(tiny_llama.b_Q, torch.zeros_like(tiny_llama.b_Q))
    assert torch.equal(tiny_llama.b_U, torch.zeros(tiny_llama.cfg.d_vocab))
    assert tiny_gpt2.blocks[0].attn.b_Q.abs().sum() >= 0  # GPT-2 has q biases (zero-initialised here)
    with pytest.raises(UnsupportedModel, match="rotary positions: W_pos exists only for learned absolute positions"):
        tiny_llama.W_pos
    with pytest.raises(UnsupportedModel, match="no gate"):
        tiny_gpt2.W_gate


def test_bert_without_lm_head_has_no_unembedding(tiny_bert):
    with pytest.raises(UnsupportedModel, match="has no LM head"):
        tiny_bert.W_U
    with pytest.raises(UnsupportedModel, match="has no LM head"):
        tiny_bert.tokens_to_residual_directions(5)


@pytest.mark.parametrize(
    "arch, d_mlp, act_fn, norm, offset",
    [("gpt2", 128, "gelu_new", "LN", 0.0), ("bert", 64, "gelu", "LN", 0.0), ("llama", 64, "silu", "RMS", 0.0),
     ("gemma3", 64, "gelu_pytorch_tanh", "RMS", 1.0)],
)
def test_config_fields(arch, d_mlp, act_fn, norm, offset):
    cfg = perturbed(arch).cfg
    assert (cfg.d_mlp, cfg.act_fn, cfg.normalization_type, cfg.norm_weight_offset) == (d_mlp, act_fn, norm, offset)
    assert cfg.d_vocab == 140


def test_norm_weights_by_tl_names_are_views(tiny_gemma):
    block = tiny_gemma.blocks[0]
    for norm in (block.ln1, block.ln2, block.ln1_post, block.ln2_post, tiny_gemma.tree.ln_final):
        assert _shares_memory(norm.w, tiny_gemma)
        assert norm.b is None


@pytest.mark.parametrize("arch", list(BRIDGED))
def test_weights_equal_the_bridges(arch):
    """TL 4.3's bridge builds its own stacked tensors from the same HF weights: the values agree."""
    pytest.importorskip("transformer_lens.model_bridge")
    bridge, _, _ = boot_bridge(arch)
    model = perturbed(arch)
    group = model.cfg.n_heads // model.cfg.n_kv_heads
    names = ["W_Q", "W_O", "W_in", "W_out", "W_U", "W_E", "b_U"]
    if model.layout.pos_embed is not None:
        names.append("W_pos")
    if arch in ("gpt2", "bert-mlm"):  # the bridge raises AttributeError for biases a model does not have
        names += ["b_Q", "b_K", "b_V", "b_O", "b_in", "b_out"]
    for name in names:
        assert maxdiff(getattr(model, name), getattr(bridge, name)) <= 1e-6, name
    for name in ("W_K", "W_V"):  # the bridge keeps one per kv head; attnlab one per query head
        theirs = repeat(getattr(bridge, name), "n kvh m d -> n (kvh g) m d", g=group)
        assert maxdiff(getattr(model, name), theirs) <= 1e-6, name
    assert maxdiff(model.blocks[1].attn.W_Q, bridge.blocks[1].attn.W_Q) <= 1e-6
    assert (model.cfg.d_mlp, model.cfg.act_fn, model.cfg.normalization_type) == (
        bridge.cfg.d_mlp, bridge.cfg.act_fn, bridge.cfg.normalization_type)
