"""ActivationCache analyses: decompositions sum to the stream, attributions sum to the logit difference, TL's numbers.

Tiny models with random norm weights and biases (see ``_tl.py``); fp32 throughout.
"""

from __future__ import annotations

import pytest
import torch

from attnlab.errors import InvalidInput, InvalidLocation, UnsupportedModel

from ._tl import ARCHS, TEXT, boot_bridge, maxdiff, perturbed

SUM_TOL = 1e-4
DECODERS = ("gpt2", "llama", "gemma3")


def _cache(model, text=TEXT, **kwargs):
    with torch.no_grad():
        return model.run_with_cache(text, **kwargs)


@pytest.fixture(params=ARCHS)
def model(request):
    return perturbed(request.param)


def _ids(model, word):
    return model.to_single_token(word)


# -- decompositions sum to the stream -----------------------------------------------------------


def test_full_decomposition_sums_to_the_last_resid_post(model):
    _, c = _cache(model)
    target = c["resid_post", model.cfg.n_layers - 1]
    for expand in (True, False):
        stack, labels = c.get_full_resid_decomposition(expand_neurons=expand, return_labels=True)
        assert len(labels) == stack.shape[0]
        assert maxdiff(stack.sum(0), target) <= SUM_TOL
    n_components = model.cfg.n_layers * (model.cfg.n_heads + model.cfg.d_mlp)
    embeds = ["embed", "pos_embed", "token_type_embed"][: 1 + ("hook_pos_embed" in c) + ("hook_token_type_embed" in c)]
    assert labels[: model.cfg.n_heads] == [f"L0H{h}" for h in range(model.cfg.n_heads)]
    assert labels[-len(embeds) - 1:] == [*embeds, "bias"]
    assert c.get_full_resid_decomposition().shape[0] == n_components + len(embeds) + 1


def test_every_layer_and_mlp_input_decomposes(model):
    _, c = _cache(model)
    for L in range(model.cfg.n_layers):
        assert maxdiff(c.decompose_resid(L).sum(0), c["resid_pre", L]) <= SUM_TOL
        assert maxdiff(c.decompose_resid(L, mlp_input=True).sum(0), c["resid_mid", L]) <= SUM_TOL
        assert maxdiff(c.get_full_resid_decomposition(L).sum(0), c["resid_pre", L]) <= SUM_TOL
        assert maxdiff(c.get_full_resid_decomposition(L, mlp_input=True).sum(0), c["resid_mid", L]) <= SUM_TOL
        heads = c.stack_head_results(L, incl_remainder=True)
        assert heads.shape[0] == L * model.cfg.n_heads + 1
        assert maxdiff(heads.sum(0), c["resid_pre", L]) <= SUM_TOL


def test_layer_decomposition_labels(model):
    _, c = _cache(model)
    _, labels = c.decompose_resid(return_labels=True)
    layers = [f"{L}_{part}" for L in range(model.cfg.n_layers) for part in ("attn_out", "mlp_out")]
    if model.layout.kind == "post_norm":  # BERT: the LayerNorms' biases are a component of their own
        assert labels == ["embed", "pos_embed", "token_type_embed", *layers, "bias"]
    else:
        assert labels == ["embed", *(["pos_embed"] if "hook_pos_embed" in c else []), *layers]
    _, attn_only = c.decompose_resid(mode="attn", incl_embeds=False, return_labels=True)
    assert attn_only == [f"{L}_attn_out" for L in range(model.cfg.n_layers)]
    with pytest.raises(InvalidInput, match="mode must be 'all', 'attn' or 'mlp'"):
        c.decompose_resid(mode="heads")


def test_pre_norm_components_are_the_raw_hooks(tiny_gpt2):
    """Where the stream is a plain sum, components are exactly the cached tensors (TransformerLens' numbers)."""
    _, c = _cache(tiny_gpt2)
    stack = c.decompose_resid()
    assert torch.equal(stack[0], c["hook_embed"]) and torch.equal(stack[2], c["attn_out", 0])
    heads = c.stack_head_results()
    assert torch.equal(heads[5], c["result", 1][:, :, 1])


def test_gemma_heads_pass_through_the_frozen_post_attention_norm():
    model = perturbed("gemma3")
    _, c = _cache(model)
    heads = c.stack_head_results(2)
    s, w = c["scale", 1, "ln1_post"], model.blocks[1].ln1_post.w
    by_hand = c["result", 1][:, :, 3] / s * (1 + w)
    assert maxdiff(heads[model.cfg.n_heads + 3], by_hand) <= 1e-6
    assert maxdiff(heads[model.cfg.n_heads:].sum(0), c["attn_out", 1]) <= 1e-5  # heads sum to what attention adds


def test_bert_components_are_carried_through_every_later_layernorm():
    model = perturbed("bert")
    _, c = _cache(model)
    stack, labels = c.decompose_resid(1, return_labels=True)  # target: resid_pre[1] = LN2_0(...)
    attn0 = c["attn_out", 0]
    ln1, ln2 = model.tree.norms["blocks.0.ln1"], model.tree.norms["blocks.0.ln2"]
    carried = ln1.weigh(ln1.normalize(attn0, c["scale", 0, "ln1"]), bias=False)
    carried = ln2.weigh(ln2.normalize(carried, c["scale", 0, "ln2"]), bias=False)
    assert maxdiff(stack[labels.index("0_attn_out")], carried) <= 1e-5
    assert maxdiff(stack.sum(0), c["resid_pre", 1]) <= SUM_TOL


def test_scales_missing_from_the_cache_are_recomputed_from_its_inputs(model):
    _, full = _cache(model)
    _, partial = _cache(model, names_filter=lambda name: "hook_scale" not in name and "hook_result" not in name)
    assert not any("hook_scale" in k for k in partial.keys())
    for method in ("get_full_resid_decomposition", "decompose_resid", "stack_head_results"):
        assert maxdiff(getattr(partial, method)(apply_ln=True), getattr(full, method)(apply_ln=True)) <= 1e-5, method


def test_a_missing_input_names_what_to_cache(tiny_llama):
    _, c = _cache(tiny_llama, names_filter="blocks.0.hook_resid_pre")
    with pytest.raises(InvalidLocation, match=r"decompose_resid needs 'hook_embed'.*names_filter"):
        c.decompose_resid()
    with pytest.raises(InvalidLocation, match=r"layer must be in 0..2"):
        c.decompose_resid(7)


def test_slices_follow_transformerlens(model):
    _, c = _cache(model)
    whole = c.get_full_resid_decomposition(expand_neurons=False, apply_ln=True)
    assert maxdiff(c.get_full_resid_decomposition(expand_neurons=False, apply_ln=True, pos_slice=-1), whole[:, :, -1]) <= 1e-6
    assert maxdiff(c.decompose_resid(pos_slice=(1, 4), apply_ln=True), c.decompose_resid(apply_ln=True)[:, :, 1:4]) <= 1e-6
    assert maxdiff(c.stack_head_results(pos_slice=[0, 2]), c.stack_head_results()[:, :, [0, 2]]) <= 1e-6
    with pytest.raises(InvalidInput, match="pos_slice indexes an axis of size .*: give None, an int"):
        c.decompose_resid(pos_slice="last")


def test_without_a_batch_axis(model):
    _, c = _cache(model)
    one = c.remove_batch_dim()
    assert maxdiff(one.get_full_resid_decomposition(apply_ln=True), c.get_full_resid_decomposition(apply_ln=True)[:, 0]) <= 1e-6


def test_compute_head_results_from_z(model):
    _, hooked = _cache(model)
    _, c = _cache(model, names_filter=lambda n: not n.endswith("hook_result"))
    assert "blocks.0.attn.hook_result" not in c
    c.compute_head_results()
    for L in range(model.cfg.n_layers):
        assert maxdiff(c["result", L], hooked["result", L]) <= 1e-5


# -- norms, logit lens and logit attributions -------------------------------------------------


def test_apply_ln_centres_and_divides_by_the_cached_scale(model):
    _, c = _cache(model)
    stack = c.decompose_resid(1)
    scaled = c.apply_ln_to_stack(stack, 1, mlp_input=True)
    ln = "ln1" if model.layout.kind == "post_norm" else "ln2"  # the norm that reads resid_mid
    centred = stack - stack.mean(-1, keepdim=True) if model.cfg.normalization_type == "LN" else stack
    assert maxdiff(scaled, centred / c["scale", 1, ln]) <= 1e-6


def test_logit_lens_final_layer_is_the_final_norm(model):
    if not model.cfg.is_causal:
        return
    _, c = _cache(model)
    lens = c.accumulated_resid(apply_ln=True)
    assert lens.shape[0] == model.cfg.n_layers + 1
    assert maxdiff(lens[-1], c["ln_final.hook_normalized"]) <= 1e-5


@pytest.mark.parametrize("arch", DECODERS)
def test_logit_attributions_sum_to_the_logit_difference(arch):
    model = perturbed(arch)
    logits, c = _cache(model)
    she, he = _ids(model, "she"), _ids(model, "he")
    attrs = c.logit_attrs(c.get_full_resid_decomposition(), she, he)
    direction = model.W_U[:, she] - model.W_U[:, he]
    final_bias = model.tree.ln_final.b
    offset = (model.b_U[she] - model.b_U[he]) + (final_bias @ direction if final_bias is not None else 0.0)
    assert maxdiff(attrs.sum(0), logits[..., she] - logits[..., he] - offset) <= SUM_TOL
    per_token = c.logit_attrs(c.decompose_resid(), torch.tensor([she]))  # one token per batch row
    assert per_token.shape == (len(c.decompose_resid()), 1, logits.shape[1])


def test_per_head_attribution_by_hand_on_gemma():
    model = perturbed("gemma3")
    _, c = _cache(model)
    she, he = _ids(model, "she"), _ids(model, "he")
    attrs = c.logit_attrs(c.stack_head_results(pos_slice=-1, apply_ln=False), "she", "he", pos_slice=-1)
    L, h = 2, 1
    r = c["result", L][:, -1, h]
    into_stream = r / c["scale", L, "ln1_post"][:, -1] * (1 + model.blocks[L].ln1_post.w)
    normalized = into_stream / c["ln_final.hook_scale"][:, -1]
    direction = (model.W_U[:, she] - model.W_U[:, he]) * (1 + model.tree.ln_final.w)
    assert maxdiff(attrs[L * model.cfg.n_heads + h], normalized @ direction) <= 1e-5


def test_tokens_to_residual_directions(model):
    if model.layout.head_transform is not None or not model.cfg.has_lm_head:
        with pytest.raises(UnsupportedModel, match="LM head"):
            model.tokens_to_residual_directions(5)
        return
    she = _ids(model, "she")
    one = model.tokens_to_residual_directions("she")
    weight = model.tree.ln_final.w + model.cfg.norm_weight_offset
    assert maxdiff(one, model.W_U[:, she] * weight) <= 1e-7
    many = model.tokens_to_residual_directions(torch.tensor([[she, 5], [6, she]]))
    assert many.shape == (2, 2, model.cfg.d_model) and maxdiff(many[1, 1], one) == 0
    assert maxdiff(_cache(model)[1].tokens_to_residual_directions(she), one) == 0
    with pytest.raises(InvalidInput, match="token ids must be integers in 0..139"):
        model.tokens_to_residual_directions(500)
    with pytest.raises(InvalidInput, match="is 2 tokens"):
        model.tokens_to_residual_directions("she said")


def test_scale_keys_by_transformerlens_tuple(tiny_gemma):
    _, c = _cache(tiny_gemma)
    assert c["scale", 1, "ln2_post"] is c["blocks.1.ln2_post.hook_scale"]
    assert c["scale", None] is c["ln_final.hook_scale"]
    with pytest.raises(InvalidLocation, match="a block's scale needs its norm"):
        c["scale", 1]


# -- against TransformerLens 4.3's bridge on the same weights ----------------------------------

LAYER_LEVEL = {
    "accumulated_resid": lambda c: c.accumulated_resid(incl_mid=True),
    "accumulated_resid(apply_ln)": lambda c: c.accumulated_resid(apply_ln=True),
    "decompose_resid": lambda c: c.decompose_resid(),
    "decompose_resid(apply_ln)": lambda c: c.decompose_resid(apply_ln=True),
    "decompose_resid(1, mlp_input, apply_ln)": lambda c: c.decompose_resid(1, mlp_input=True, apply_ln=True),
    "apply_ln_to_stack": lambda c: c.apply_ln_to_stack(c.accumulated_resid(), 1),
    "get_neuron_results": lambda c: c.get_neuron_results(1),
}
PER_COMPONENT = {
    "stack_head_results(apply_ln)": lambda c: c.stack_head_results(apply_ln=True),
    "stack_head_results(1, incl_remainder)": lambda c: c.stack_head_results(1, incl_remainder=True),
    "get_full_resid_decomposition": lambda c: c.get_full_resid_decomposition(),
    "get_full_resid_decomposition(expand_neurons=False, apply_ln)": lambda c: c.get_full_resid_decomposition(
        expand_neurons=False, apply_ln=True),
    "stack_neuron_results": lambda c: c.stack_neuron_results(2),
}


def _both(arch):
    pytest.importorskip("transformer_lens.model_bridge")
    bridge, _, tok = boot_bridge(arch)
    model = perturbed(arch)
    ids = tok([TEXT], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        _, theirs = bridge.run_with_cache(ids)
    return model, _cache(model, ids)[1], bridge, theirs, tok


@pytest.mark.parametrize("arch", DECODERS)
def test_layer_level_analyses_equal_the_bridges(arch):
    _, ours, _, theirs, _ = _both(arch)
    for name, method in LAYER_LEVEL.items():
        with torch.no_grad():
            assert maxdiff(method(ours), method(theirs)) <= 1e-5, name


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_per_component_analyses_equal_the_bridges_on_pre_norm_models(arch):
    _, ours, _, theirs, _ = _both(arch)
    for name, method in PER_COMPONENT.items():
        with torch.no_grad():
            assert maxdiff(method(ours), method(theirs)) <= 1e-5, name


def test_bridge_per_head_stack_on_gemma_ignores_the_post_attention_norm():
    """TL 4.3 stacks Gemma's raw head results: they do not sum to the stream; attnlab's do."""
    _, ours, _, theirs, _ = _both("gemma3")
    last = ours["resid_post", 2]
    with torch.no_grad():
        assert maxdiff(theirs.get_full_resid_decomposition().sum(0), last) > 0.1
    assert maxdiff(ours.get_full_resid_decomposition().sum(0), last) <= SUM_TOL


@pytest.mark.parametrize("arch", DECODERS)
def test_logit_difference_attributions_equal_the_bridge_in_compatibility_mode(arch):
    """The bridge folds the final norm into W_U only in compatibility mode; then its numbers are attnlab's."""
    import logging

    model, ours, bridge, _, tok = _both(arch)
    logging.disable(logging.WARNING)
    try:
        bridge.enable_compatibility_mode()
    finally:
        logging.disable(logging.NOTSET)
    ids = tok([TEXT], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        _, theirs = bridge.run_with_cache(ids)
    she, he = torch.tensor([_ids(model, "she")]), torch.tensor([_ids(model, "he")])
    with torch.no_grad():
        assert maxdiff(ours.logit_attrs(ours.decompose_resid(), she, he), theirs.logit_attrs(theirs.decompose_resid(), she, he)) <= 1e-5


@pytest.mark.slow
def test_gemma_per_head_she_he_attribution_by_hand(gemma):
    """Real Gemma-3-270m, "The nurse said that": per-head DLA of " she" - " he" equals a hand computation."""
    text = "The nurse said that"
    logits, c = _cache(gemma, text)
    she, he = gemma.to_single_token(" she"), gemma.to_single_token(" he")
    attrs = c.logit_attrs(c.stack_head_results(pos_slice=-1), " she", " he", pos_slice=-1).detach()  # [layer * head, batch]
    assert attrs.shape == (gemma.cfg.n_layers * gemma.cfg.n_heads, 1)
    direction = (gemma.W_U[:, she] - gemma.W_U[:, he]) * (1 + gemma.tree.ln_final.w)
    final_scale = c["ln_final.hook_scale"][0, -1]
    for L, h in [(0, 0), (5, 2), (17, 3)]:
        r = c["result", L][0, -1, h]
        into_stream = r / c["scale", L, "ln1_post"][0, -1] * (1 + gemma.blocks[L].ln1_post.w)
        expected = ((into_stream / final_scale) @ direction).detach()
        assert abs(float(attrs[L * gemma.cfg.n_heads + h, 0]) - float(expected)) <= 1e-4 * max(1.0, abs(float(expected)))
    # the whole decomposition accounts for the logit difference (Gemma-3 has no biases)
    full = c.logit_attrs(c.get_full_resid_decomposition(pos_slice=-1, expand_neurons=False), " she", " he", pos_slice=-1).detach()
    true = logits[0, -1, she] - logits[0, -1, he]
    assert abs(float(full.sum()) - float(true)) <= 1e-3 * max(1.0, abs(float(true)))
