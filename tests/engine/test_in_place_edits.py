"""An edit made in place (``x += d; return x`` or no return) acts exactly like a replacement (``return x + d``).

TransformerLens scripts patch in place (``x[:, pos] = source; return x``). Where attnlab hands a hook a
tensor that is not the one the model reads next (a norm's scale, ``resid_mid`` of pre-norm blocks) or one
the model also reads elsewhere (``hook_mlp_in`` is the residual the MLP is added to), an in-place edit
used to be dropped or to leak into the stream.
"""

from __future__ import annotations

import pytest
import torch

from ._tl import ARCHS, TEXT, maxdiff, perturbed


def _delta(shape, seed):
    return 0.3 * torch.randn(shape[-1], generator=torch.Generator().manual_seed(seed))


def _edits(i: int):
    """The same edit three ways: returning an edited copy, editing in place and returning it, or returning nothing."""
    def replaced(x, hook):
        return x + _delta(x.shape, i).to(x.dtype)

    def in_place(x, hook):
        x += _delta(x.shape, i).to(x.dtype)
        return x

    def in_place_no_return(x, hook):
        x += _delta(x.shape, i).to(x.dtype)

    return replaced, in_place, in_place_no_return


def _points(model):
    """Every hook point of layer 1 and outside the blocks, attention sites included."""
    return [n for n in model.hook_dict if n.startswith("blocks.1.") or not n.startswith("blocks.")]


@pytest.mark.parametrize("arch", [a for a in ARCHS if a != "bert-mlm"])
def test_in_place_equals_replaced_at_every_point(arch):
    model = perturbed(arch)
    with torch.no_grad():
        clean = model(TEXT)
    moved = []
    for i, name in enumerate(_points(model)):
        replaced, in_place, in_place_no_return = _edits(i)
        with torch.no_grad():
            want = model.run_with_hooks(TEXT, fwd_hooks=[(name, replaced)])
            for fn in (in_place, in_place_no_return):
                got = model.run_with_hooks(TEXT, fwd_hooks=[(name, fn)])
                assert maxdiff(got, want) <= 1e-6, (name, fn.__name__)
        if maxdiff(want, clean) > 1e-4:
            moved.append(name)
    # the edits did something at the points that matter for these claims
    for needed in ("blocks.1.hook_resid_mid", "blocks.1.hook_mlp_in", "blocks.1.ln2.hook_scale", "blocks.1.hook_q_input"):
        assert needed in moved, needed
    assert model.count_hooks() == 0


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3"])
def test_an_in_place_mlp_in_edit_leaves_the_stream(arch):
    model = perturbed(arch)
    names = ["blocks.0.hook_resid_mid", "blocks.0.hook_mlp_out", "blocks.0.hook_resid_post"]

    def in_place(x, hook):
        x[:, 1:] = 0.0  # the MLP reads zeros after the first token
        return x

    with torch.no_grad():
        _, clean = model.run_with_cache(TEXT, names_filter=names)
        with model.hooks(fwd_hooks=[("blocks.0.hook_mlp_in", in_place)]):
            _, edited = model.run_with_cache(TEXT, names_filter=names)
    assert maxdiff(edited["mlp_out", 0], clean["mlp_out", 0]) > 1e-3
    assert torch.equal(edited["resid_mid", 0], clean["resid_mid", 0])
    assert maxdiff(edited["resid_post", 0], clean["resid_mid", 0] + edited["mlp_out", 0]) <= 1e-6


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3"])
def test_an_in_place_key_edit_is_applied_once_per_step_of_generate(arch):
    """The KV cache stores the model's keys; an in-place edit of them used to be applied again at each new step."""
    model = perturbed(arch)
    delta = 4.0 * torch.randn(model.cfg.d_head, generator=torch.Generator().manual_seed(5))

    def replaced(x, hook):
        if hook.key_offset != 0:
            return x
        x = x.clone()
        x[:, 0] = x[:, 0] + delta  # the first token's key
        return x

    def in_place(x, hook):
        if hook.key_offset == 0:
            x[:, 0] += delta

    runs = {}
    for fn in (replaced, in_place):
        for site in ("k", "v"):
            runs[fn.__name__, site] = model.generate(TEXT, 8, fwd_hooks=[(f"blocks.{l}.attn.hook_{site}", fn) for l in range(2)],
                                                     return_type="tokens", stop_at_eos=False)
    for site in ("k", "v"):
        assert torch.equal(runs["in_place", site], runs["replaced", site])
    assert model.count_hooks() == 0


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3", "bert"])
def test_in_place_equals_replaced_with_gradients_on(arch):
    """With autograd on, an in-place edit also backpropagates like the replacement (GPT-2's q was a view of the fused
    projection and every hook_scale the norm's own sqrt output: both raised)."""
    model = perturbed(arch)
    weight = model.hf_model.get_input_embeddings().weight

    def run(name, fn):
        with model.hooks(fwd_hooks=[(name, fn)]):
            out = model(TEXT)
            (out.float() ** 2).mean().backward()
        grad = weight.grad.clone()
        model.hf_model.zero_grad(set_to_none=True)
        return out.detach(), grad

    for i, name in enumerate(_points(model)):
        replaced, in_place, _ = _edits(i)
        want_out, want_grad = run(name, replaced)
        got_out, got_grad = run(name, in_place)
        assert maxdiff(got_out, want_out) <= 1e-6, name
        assert maxdiff(got_grad, want_grad) <= 1e-6 * max(1.0, float(want_grad.abs().max())), name
