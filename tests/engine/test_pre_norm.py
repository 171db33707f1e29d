"""q and k before the model's own q/k norm: ``blocks.L.attn.hook_q_pre_norm`` / ``hook_k_pre_norm``.

Only models that normalise q and k per head (Gemma-3, Qwen3, OLMo-2) have them: there they are
TransformerLens' ``hook_q`` / ``hook_k`` (its ``hook_q_normed`` is attnlab's ``hook_q_pre_rotary``).
Checked against the projections' outputs and an edit there against a PyTorch hook on the projection.
"""

from __future__ import annotations

import pytest
import torch

from attnlab.testing import tiny_model
from tests._generation import assert_generate_matches_full_passes

TEXTS = ["the nurse said that she was happy", "the cat"]
LAYER, HEAD, DIM = 1, 1, 3


def _scale_dim(x, hook):
    x = x.clone()
    x[:, :, HEAD if hook.name.endswith("q_pre_norm") else 0, DIM] *= 4.0
    return x


def _projection(model, site):
    return getattr(model.hf_model.get_decoder().layers[LAYER].self_attn, f"{site}_proj")


@pytest.mark.parametrize("site", ["q", "k"])
def test_the_pre_norm_site_holds_the_projection_output_per_head(site):
    model = tiny_model("gemma3")
    seen = {}
    handle = _projection(model, site).register_forward_hook(lambda mod, args, out: seen.__setitem__("hf", out.detach()))
    try:
        _, cache = model.run_with_cache(TEXTS, names_filter=f"blocks.{LAYER}.attn.hook_{site}_pre_norm")
    finally:
        handle.remove()
    value = cache[f"blocks.{LAYER}.attn.hook_{site}_pre_norm"]
    heads = model.cfg.n_heads if site == "q" else model.hf_model.config.num_key_value_heads
    assert value.shape == (2, seen["hf"].shape[1], heads, model.cfg.d_head)
    assert torch.equal(value.flatten(-2), seen["hf"])
    assert model.count_hooks() == 0
    # the norm sits between this point and hook_q_pre_rotary: they differ
    _, after = model.run_with_cache(TEXTS, names_filter=f"blocks.{LAYER}.attn.hook_{site}_pre_rotary")
    assert (after[f"blocks.{LAYER}.attn.hook_{site}_pre_rotary"][..., : heads, :] - value).abs().max() > 1e-2


def test_only_models_that_normalise_q_and_k_have_the_points():
    assert "blocks.0.attn.hook_q_pre_norm" in tiny_model("gemma3").hook_dict
    for arch in ("llama", "gpt2", "bert"):
        names = tiny_model(arch).hook_dict
        assert not any("pre_norm" in n for n in names), arch
    _, cache = tiny_model("gemma3").run_with_cache("the cat")  # a cache of every point includes them
    assert "blocks.1.attn.hook_k_pre_norm" in cache


@pytest.mark.parametrize("site", ["q", "k"])
def test_an_edit_before_the_norm_equals_the_same_edit_of_the_projection_output(site):
    model = tiny_model("gemma3")
    ids = model.to_tokens(TEXTS, padding_side="right")
    with torch.no_grad():
        clean = model(ids)
        with model.hooks(fwd_hooks=[(f"blocks.{LAYER}.attn.hook_{site}_pre_norm", lambda x, hook: x)]):
            assert torch.equal(model(ids), clean)  # an identity hook changes nothing, bit for bit
        with model.hooks(fwd_hooks=[(f"blocks.{LAYER}.attn.hook_{site}_pre_norm", _scale_dim)]):
            ours = model(ids)
        with model.hooks(fwd_hooks=[(f"blocks.{LAYER}.attn.hook_{site}_pre_rotary", _scale_dim)]):
            after_norm = model(ids)

        def edit(mod, args, out):
            out = out.clone().unflatten(-1, (-1, model.cfg.d_head))
            out[:, :, HEAD if site == "q" else 0, DIM] *= 4.0
            return out.flatten(-2)

        handle = _projection(model, site).register_forward_hook(edit)
        try:
            theirs = model(ids)
        finally:
            handle.remove()
    assert (ours - clean).abs().max() > 1e-3
    assert (ours - theirs).abs().max() < 1e-5
    assert (ours - after_norm).abs().max() > 1e-4  # the norm rescales the head: before it is another edit
    assert model.count_hooks() == 0


def test_an_edited_query_input_reaches_the_pre_norm_point():
    """The split input is upstream of the projection: its edit must be in what hook_q_pre_norm sees."""
    model = tiny_model("gemma3")
    name = f"blocks.{LAYER}.attn.hook_q_pre_norm"
    _, clean = model.run_with_cache(TEXTS, names_filter=name)
    with model.hooks(fwd_hooks=[(f"blocks.{LAYER}.hook_q_input", lambda x, hook: x * 0.0)]):
        _, edited = model.run_with_cache(TEXTS, names_filter=name)
    attention = model.hf_model.get_decoder().layers[LAYER].self_attn
    bias = attention.q_proj.bias
    expected = torch.zeros_like(clean[name]) + (0.0 if bias is None else bias.view(-1, model.cfg.d_head))
    assert (clean[name] - expected).abs().max() > 1e-2
    assert torch.allclose(edited[name], expected, atol=1e-6)


def test_generate_under_a_pre_norm_edit_gives_the_tokens_of_full_forward_passes():
    """Each step's new keys are edited before the norm and cached edited, as a full pass computes them."""
    model = tiny_model("gemma3")
    hooks = [(f"blocks.{LAYER}.attn.hook_k_pre_norm", _scale_dim), (f"blocks.{LAYER}.attn.hook_q_pre_norm", _scale_dim)]
    assert_generate_matches_full_passes(model, TEXTS, lambda: model.hooks(fwd_hooks=hooks))


def test_transformerlens_normed_names_point_to_the_pre_rotary_sites():
    from attnlab.errors import InvalidLocation

    model = tiny_model("gemma3")
    with pytest.raises(InvalidLocation, match=r"hook_q_normed.*blocks\.L\.attn\.hook_q_pre_rotary in attnlab \(before the "
                                              r"norm: hook_q_pre_norm\)"):
        model.run_with_cache("the cat", names_filter="blocks.0.attn.hook_q_normed")
    assert model.count_hooks() == 0


@pytest.mark.parametrize("site", ["q", "k"])
def test_edit_neuron_before_the_norm_equals_the_hand_written_hook(site):
    from attnlab.interventions import EditNeuron, from_dict

    model = tiny_model("gemma3")
    head = HEAD if site == "q" else 0  # k: one entry per kv head (Gemma-3 tiny: one)
    spec = EditNeuron(LAYER, head, site=f"{site}_pre_norm", dim=DIM, scale=4.0)
    assert from_dict(spec.to_dict()) == spec
    ids = model.to_tokens(TEXTS, padding_side="right")
    with torch.no_grad():
        with model.intervene(spec):
            ours = model(ids)
        with model.hooks(fwd_hooks=[(f"blocks.{LAYER}.attn.hook_{site}_pre_norm", _scale_dim)]):
            theirs = model(ids)
        clean = model(ids)

        def at_position_2(x, hook):
            x = x.clone()
            x[:, 2, head, DIM] = 0.0
            return x

        with model.intervene(EditNeuron(LAYER, head, site=f"{site}_pre_norm", dim=DIM, value=0.0, positions=[2])):
            one = model(ids)
        with model.hooks(fwd_hooks=[(f"blocks.{LAYER}.attn.hook_{site}_pre_norm", at_position_2)]):
            hand = model(ids)
    assert (ours - clean).abs().max() > 1e-3 and torch.equal(ours, theirs)
    assert (one - clean).abs().max() > 1e-4 and torch.equal(one, hand)
    assert model.count_hooks() == 0


def test_edit_neuron_before_the_norm_is_refused_where_it_cannot_act():
    from attnlab.errors import InvalidLocation
    from attnlab.interventions import EditNeuron

    gemma, llama = tiny_model("gemma3"), tiny_model("llama")
    with pytest.raises(InvalidLocation, match=r"^head 2 out of range for site 'k_pre_norm', whose keys are one per kv "
                                              r"head: tiny-gemma3 has kv heads 0\.\.0$"):
        with gemma.intervene(EditNeuron(LAYER, 2, site="k_pre_norm", dim=DIM, scale=0.0)):
            pass
    with pytest.raises(InvalidLocation, match=r"no hook point 'blocks\.1\.attn\.hook_q_pre_norm' in tiny-llama \(only models "
                                              r"that normalise q and k \(Gemma-3, Qwen3, OLMo-2\) have it"):
        with llama.intervene(EditNeuron(LAYER, 0, site="q_pre_norm", dim=DIM, scale=0.0)):
            llama("the cat")
    assert gemma.count_hooks() == 0 and llama.count_hooks() == 0


@pytest.mark.parametrize("site, heads", [("q_pre_norm", 4), ("k_pre_norm", 1)])
def test_sweep_neurons_before_the_norm_equals_one_edit_at_a_time(site, heads):
    """k before the norm is per kv head: the sweep's heads are the kv heads (1 on the tiny Gemma-3)."""
    from attnlab.interventions import EditNeuron
    from attnlab.measure import LogitDiff, effect, sweep_neurons

    model = tiny_model("gemma3")
    metric = LogitDiff(" she", " he")
    swept = sweep_neurons(model, TEXTS, metric, LAYER, site=site, dims=[0, DIM], progress=False, n_boot=10)
    assert len(swept.table) == heads * 2 and sorted(set(swept.table["head"])) == list(range(heads))
    for row in swept.table.itertuples():
        one = effect(model, TEXTS, metric, [EditNeuron(LAYER, row.head, site=site, dim=row.dim, scale=0.0)],
                     progress=False, n_boot=10)
        assert row.effect == pytest.approx(one.mean, abs=1e-6)
    assert swept.table.effect.abs().max() > 1e-4
    from attnlab.errors import InvalidLocation

    with pytest.raises(InvalidLocation, match=r"head 1 out of range for site 'k_pre_norm'"):
        sweep_neurons(model, TEXTS, metric, LAYER, site="k_pre_norm", head=[0, 1], progress=False, n_boot=10)
    assert model.count_hooks() == 0
