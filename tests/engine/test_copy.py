"""Deep copies and pickles: of a HookedModel, and of an HF model attnlab has wrapped.

Researchers copy a model to edit one copy's weights and keep the other clean. The hook tree
(locks, dispatchers on the HF modules) belongs to one model, so it is never copied: a copy
gets its own tree, and hooks on one model never act on the other.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from attnlab.engine.model import HookedModel
from attnlab.interventions import AblateHead

TEXT = ["the nurse said that she was", "a doctor"]


def _logits(model):
    with torch.no_grad():
        return model(TEXT)


def _clean_tree(hf_model) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in hf_model.modules())


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copy_computes_the_same_and_is_independent(any_tiny, how):
    model = any_tiny
    before = _logits(model)
    twin = copy.deepcopy(model) if how == "deepcopy" else pickle.loads(pickle.dumps(model))
    assert twin.hf_model is not model.hf_model and twin.tree is not model.tree
    torch.testing.assert_close(_logits(twin), before, rtol=0, atol=0)

    # a hook on the copy does not act on the original, and the other way round
    with twin.intervene(AblateHead(0, 0)):
        edited = _logits(twin)
        torch.testing.assert_close(_logits(model), before, rtol=0, atol=0)
    assert (edited - before).abs().max() > 1e-4
    with model.intervene(AblateHead(0, 0)):
        torch.testing.assert_close(_logits(twin), before, rtol=0, atol=0)

    # the weights are separate tensors
    with torch.no_grad():
        next(twin.hf_model.parameters()).add_(1.0)
    torch.testing.assert_close(_logits(model), before, rtol=0, atol=0)
    assert _clean_tree(model.hf_model) and _clean_tree(twin.hf_model)


def test_a_copied_hf_model_runs_unhooked_and_can_be_wrapped_again(tiny_llama):
    from attnlab.engine.model import HookedModel

    model = tiny_llama
    before = _logits(model)
    hf_copy = copy.deepcopy(model.hf_model)
    assert hf_copy.__dict__.get("_attnlab_tree") is None
    ids = model.tokenizer(TEXT[0], return_tensors="pt").input_ids
    with model.intervene(AblateHead(1, 0)):  # the original's hooks must not reach the copy
        with torch.no_grad():
            plain = hf_copy(ids).logits
    with torch.no_grad():
        torch.testing.assert_close(plain, model.hf_model(ids).logits, rtol=0, atol=0)

    wrapped = HookedModel(hf_copy, model.tokenizer, name="copy")
    assert wrapped.tree is not model.tree
    torch.testing.assert_close(_logits(wrapped), before, rtol=0, atol=0)
    with wrapped.intervene(AblateHead(1, 0)):
        assert (_logits(wrapped) - before).abs().max() > 1e-4


def test_a_copy_keeps_training_mode_and_settings(tiny_gpt2):
    model = tiny_gpt2
    model.train()
    model.hf_model.transformer.h[0].eval()  # a mix of modes
    model.padding_side = "left"
    twin = copy.deepcopy(model)
    assert [m.training for m in twin.hf_model.modules()] == [m.training for m in model.hf_model.modules()]
    assert twin.training and twin.padding_side == "left"


def test_a_copy_made_inside_blocks_has_no_hooks_and_stays_independent(tiny_llama):
    """Copies made while blocks are open (edge dispatchers sit on the HF modules then) carry none of them:
    a dispatcher copied with its module does nothing and takes itself off (it used to call the original's points)."""
    model = tiny_llama
    before = _logits(model)
    seen = []
    model.add_hook("blocks.0.attn.hook_pattern", lambda x, hook: seen.append(1))  # a persistent hook
    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: x * 2)]):
        twin = copy.deepcopy(model)
        hf_copy = copy.deepcopy(model.hf_model)
    model.reset_hooks(including_permanent=True)
    seen.clear()
    torch.testing.assert_close(_logits(twin), before, rtol=0, atol=0)
    ids = model.tokenizer(TEXT[0], return_tensors="pt").input_ids
    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: x * 3)]):
        with torch.no_grad():
            plain = hf_copy(ids).logits  # the original's block must not reach the copy
        torch.testing.assert_close(_logits(twin), before, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(plain, model.hf_model(ids).logits, rtol=0, atol=0)
    assert not seen
    assert _clean_tree(hf_copy) and _clean_tree(twin.hf_model)  # the left-behind hooks took themselves off
    pickle.loads(pickle.dumps(hf_copy))


def test_a_mean_taken_while_dropout_acts_is_not_kept_past_eval(tiny_gpt2):
    """A source computed in training mode with dropout is one random draw: it is neither kept nor reused."""
    model = tiny_gpt2
    spec = AblateHead(1, 0, method="mean", reference=["a doctor said that", "the nurse was"])
    with model.intervene(spec):
        expected = _logits(model)
    model.forget_prepared()
    model.train()
    torch.manual_seed(0)
    with model.intervene(spec):
        model(TEXT)  # the mean is taken with dropout acting
    model.eval()
    with model.intervene(spec):
        torch.testing.assert_close(_logits(model), expected, rtol=0, atol=0)


@pytest.mark.parametrize("what", ["model", "hf_model"])
def test_a_copy_made_while_a_pass_resumes_from_a_prefix_runs_its_own_layers(what):
    """Sweeps resume at a later layer by swapping the earlier layers' forward for the pass; a copy made then
    (a hook here, another thread in practice) inherited the swap and ran the original's layers."""
    from attnlab.engine.forward import Resume, run
    from attnlab.testing import tiny_model

    model = tiny_model("llama", n_layers=3)
    tokens = model.tokens(TEXT[0])
    kept = run(model, tokens, logits="last", keep_layers={1})
    made = {}

    def copy_now(x, hook):
        made["copy"] = copy.deepcopy(model if what == "model" else model.hf_model)
        made["pickled"] = pickle.dumps(model if what == "model" else model.hf_model)

    run(model, tokens, logits="last", resume=Resume(kept.prefix, 2), hooks=[("blocks.2.attn.hook_z", copy_now)])
    twin = made["copy"] if what == "model" else HookedModel(made["copy"], model.tokenizer, name="copy")
    before = _logits(twin)
    torch.testing.assert_close(before, _logits(model), rtol=0, atol=0)
    with torch.no_grad():
        for p in model.decoder_layers()[0].parameters():
            p.mul_(0.0)  # the original changes; the copy must not
    torch.testing.assert_close(_logits(twin), before, rtol=0, atol=0)
    unpickled = pickle.loads(made["pickled"])
    twin2 = unpickled if what == "model" else HookedModel(unpickled, model.tokenizer, name="copy")
    torch.testing.assert_close(_logits(twin2), before, rtol=0, atol=0)
