"""q and k before the rotary embedding: ``blocks.L.attn.hook_q_pre_rotary`` / ``hook_k_pre_rotary``.

TransformerLens' ``hook_q``/``hook_k`` are these on a rotary model (its ``hook_rot_q``/``hook_rot_k``
are attnlab's ``hook_q``/``hook_k``). Each is checked against the tensor transformers itself rotates
(``q_proj``'s output per head on Llama, ``q_norm``'s on Gemma-3), and an edit there against the same
edit made by a PyTorch hook on that module.
"""

from __future__ import annotations

import pytest
import torch

from attnlab.interventions import EditNeuron, Patch
from attnlab.testing import tiny_model
from tests._generation import assert_generate_matches_full_passes

TEXTS = ["the nurse said that she was happy", "the cat"]  # two lengths: right padding in a batch
LAYER, HEAD, DIMS = 1, 1, [2, 5]


def _ident(x, hook):
    return x


def _module_before_rotation(model, site):
    """The HF module whose output transformers rotates next, and its output as [batch, pos, head, d_head]."""
    attention = model.hf_model.get_decoder().layers[LAYER].self_attn
    norm = getattr(attention, f"{site}_norm", None)  # Gemma-3: q_proj -> per head -> q_norm -> rotary
    if norm is not None:
        return norm, lambda out: out.transpose(1, 2)
    proj = getattr(attention, f"{site}_proj")
    return proj, lambda out: out.view(*out.shape[:2], -1, model.cfg.d_head)


def _expand_kv(model, x):
    """One entry per query head, as attnlab's sites hold k."""
    return x.repeat_interleave(model.cfg.n_heads // x.shape[2], dim=2)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("site", ["q", "k"])
def test_the_pre_rotary_site_holds_what_transformers_rotates(arch, site):
    model = tiny_model(arch)
    module, per_head = _module_before_rotation(model, site)
    seen = {}
    handle = module.register_forward_hook(lambda mod, args, out: seen.__setitem__("hf", per_head(out)))
    try:
        with torch.no_grad():
            _, cache = model.run_with_cache(TEXTS, names_filter=[f"blocks.{LAYER}.attn.hook_{site}_pre_rotary",
                                                                 f"blocks.{LAYER}.attn.hook_{site}"])
    finally:
        handle.remove()
    pre, post = cache[f"blocks.{LAYER}.attn.hook_{site}_pre_rotary"], cache[f"blocks.{LAYER}.attn.hook_{site}"]
    want = seen["hf"] if site == "q" else _expand_kv(model, seen["hf"])
    assert pre.shape == post.shape == want.shape
    assert (pre - want).abs().max() < 1e-5
    assert (pre - post)[:, 1:].abs().max() > 1e-2  # the rotation moves every position after the first
    assert torch.allclose(pre[:, 0], post[:, 0], atol=1e-6)  # position 0 is not rotated
    assert model.count_hooks() == 0


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
def test_an_identity_hook_before_the_rotation_keeps_the_model_bit_for_bit(arch):
    model = tiny_model(arch)
    with torch.no_grad():
        with model.hooks(fwd_hooks=[(f"blocks.{LAYER}.attn.hook_z", _ident)]):  # the same explicit attention path
            reference = model(TEXTS)
        with model.hooks(fwd_hooks=[(f"blocks.{LAYER}.attn.hook_q_pre_rotary", _ident),
                                    (f"blocks.{LAYER}.attn.hook_k_pre_rotary", _ident)]):
            hooked = model(TEXTS)
    assert torch.equal(hooked, reference)
    assert model.count_hooks() == 0


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("site", ["q", "k"])
def test_a_pre_rotary_neuron_edit_equals_the_edit_of_the_projection_output(arch, site):
    model = tiny_model(arch)
    module, _ = _module_before_rotation(model, site)
    kv_head = HEAD // (model.cfg.n_heads // model.cfg.n_key_value_heads) if site == "k" else HEAD
    heads = [HEAD] if site == "q" else [
        h for h in range(model.cfg.n_heads) if h // (model.cfg.n_heads // model.cfg.n_key_value_heads) == kv_head]

    def edit_hf(mod, args, out):  # scale dims 2 and 5 of one (kv) head, as transformers lays it out
        out = out.clone()
        if out.ndim == 4:  # [batch, head, pos, d_head] (after the per-head norm)
            out[:, kv_head, :, DIMS] *= 4.0
        else:  # [batch, pos, head * d_head]
            view = out.view(*out.shape[:2], -1, model.cfg.d_head)
            view[:, :, kv_head, DIMS] *= 4.0
        return out

    with torch.no_grad():
        with model.hooks(fwd_hooks=[(f"blocks.{LAYER}.attn.hook_z", _ident)]):
            clean = model(TEXTS)
        # a kv head's edit acts on every query head of its group: the same edit at each of them
        with model.intervene(*[EditNeuron(LAYER, h, site=f"{site}_pre_rotary", dim=DIMS, scale=4.0) for h in heads]):
            ours = model(TEXTS)
        handle = module.register_forward_hook(edit_hf)
        try:
            with model.hooks(fwd_hooks=[(f"blocks.{LAYER}.attn.hook_z", _ident)]):
                theirs = model(TEXTS)
        finally:
            handle.remove()
    assert (theirs - clean).abs().max() > 1e-2
    assert (ours - theirs).abs().max() < 1e-5
    assert model.count_hooks() == 0


@pytest.mark.parametrize("site", ["q_pre_rotary", "k_pre_rotary"])
def test_generate_under_a_pre_rotary_edit_gives_the_tokens_of_full_forward_passes(site):
    """The KV cache holds rotated keys; each cached column is rotated back with its own position's angles
    (Gemma-3's sliding-window layers keep only the last 4 keys)."""
    model = tiny_model("gemma3")
    spec = EditNeuron(LAYER, HEAD, site=site, dim=DIMS, scale=4.0)
    assert_generate_matches_full_passes(model, TEXTS, lambda: model.intervene(spec))


def test_on_a_model_without_rotary_embedding_before_is_after():
    model = tiny_model("gpt2")
    with torch.no_grad():
        _, cache = model.run_with_cache(TEXTS[0], names_filter=lambda name: name.startswith(f"blocks.{LAYER}.attn.hook_"))
        with model.intervene(EditNeuron(LAYER, HEAD, site="q_pre_rotary", dim=DIMS, scale=4.0)):
            pre = model(TEXTS[0])
        with model.intervene(EditNeuron(LAYER, HEAD, site="q", dim=DIMS, scale=4.0)):
            post = model(TEXTS[0])
    assert torch.equal(cache[f"blocks.{LAYER}.attn.hook_q_pre_rotary"], cache[f"blocks.{LAYER}.attn.hook_q"])
    assert torch.equal(cache[f"blocks.{LAYER}.attn.hook_k_pre_rotary"], cache[f"blocks.{LAYER}.attn.hook_k"])
    assert torch.equal(pre, post)


def test_patching_a_pre_rotary_key_from_another_run_by_position():
    """Patch with a source cached at the same site: the patched run's key is the source's at every position."""
    model = tiny_model("llama")
    name = f"blocks.{LAYER}.attn.hook_k_pre_rotary"
    with torch.no_grad():
        _, source = model.run_with_cache("the doctor said that he was happy", names_filter=[name])
        with model.intervene(Patch(LAYER, HEAD, site="k_pre_rotary", source=source)):
            _, patched = model.run_with_cache(TEXTS[0], names_filter=[name, f"blocks.{LAYER}.attn.hook_k"])
        _, other = model.run_with_cache("the doctor said that he was happy", names_filter=[f"blocks.{LAYER}.attn.hook_k"])
    assert torch.equal(patched[name][:, :, HEAD], source[name][:, :, HEAD])
    # after the rotation, the patched head's key is the source run's key (same positions, same angles)
    post = patched[f"blocks.{LAYER}.attn.hook_k"][:, :, HEAD]
    assert (post - other[f"blocks.{LAYER}.attn.hook_k"][:, :, HEAD]).abs().max() < 1e-5


def test_the_rotary_capture_is_on_the_attention_module_only_while_a_pre_rotary_site_is_hooked():
    model = tiny_model("llama")
    attention = model.hf_model.get_decoder().layers[LAYER].self_attn
    before = len(attention._forward_pre_hooks)
    with model.hooks(fwd_hooks=[(f"blocks.{LAYER}.attn.hook_q_pre_rotary", _ident),
                                (f"blocks.{LAYER}.attn.hook_k_pre_rotary", _ident)]):
        assert len(attention._forward_pre_hooks) == before + 1  # one capture for both sites
    assert len(attention._forward_pre_hooks) == before
    with pytest.raises(RuntimeError, match="boom"):
        with model.intervene(EditNeuron(LAYER, HEAD, site="k_pre_rotary", dim=DIMS, scale=0.0)):
            raise RuntimeError("boom")
    assert len(attention._forward_pre_hooks) == before and model.count_hooks() == 0


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_gradients_reach_the_pre_rotary_sites_rotated_back(arch):
    """A reading hook keeps the pre-rotary tensor in the graph: its gradient is the post-rotary one rotated back
    (each rotary pair's gradient keeps its length; the identity shortcut used to drop it from the graph)."""
    model = tiny_model(arch)
    names = [f"blocks.{LAYER}.attn.hook_{s}" for s in ("q_pre_rotary", "q", "k_pre_rotary", "k")]
    _, cache = model.run_with_cache(TEXTS[0], names_filter=names, incl_bwd=True, return_type="loss")
    half = model.cfg.d_head // 2
    for site in ("q", "k"):
        pre, post = cache[f"blocks.{LAYER}.attn.hook_{site}_pre_rotary_grad"], cache[f"blocks.{LAYER}.attn.hook_{site}_grad"]
        pair_length = lambda g: (g[..., :half] ** 2 + g[..., half:] ** 2).sqrt()  # noqa: E731
        assert post.abs().max() > 1e-4
        assert (pair_length(pre) - pair_length(post)).abs().max() < 1e-7
        assert (pre - post)[:, 1:].abs().max() > 1e-5  # rotated: not the same numbers
    assert model.count_hooks() == 0
