"""What an intervention computes from the model (means, patch sources) comes from the unedited model, always."""

from __future__ import annotations

import copy

import pytest
import torch

from attnlab.interventions import AblateHead, EditNeuron, Patch, head_means
from attnlab.testing import tiny_model

TEXT = "the nurse said that she was happy"
OTHER = "the doctor said that he was sad"
REFERENCE = ["the cat sat on the car", "a dog ran", "the king gave her a book"]
OUTER = EditNeuron(0, None, site="v", dim=[0, 1, 2], scale=5.0)  # changes layer 1's z everywhere


@pytest.mark.parametrize("arch", ["gpt2", "bert", "llama", "gemma3"])
def test_mean_first_used_inside_another_edit_is_the_clean_mean(arch):
    clean_model, model = tiny_model(arch), tiny_model(arch)
    expected = head_means(clean_model, 1, REFERENCE)
    spec = AblateHead(1, 2, method="mean", reference=REFERENCE)
    with torch.no_grad(), model.intervene(OUTER):
        with model.intervene(spec):  # first use: inside OUTER
            model(TEXT)
    assert torch.allclose(spec.prepare(model).mean, expected, atol=1e-6)
    assert spec.mean is None  # nothing was stored on the spec
    with torch.no_grad(), model.intervene(spec):
        again = model(TEXT)
    with torch.no_grad(), clean_model.intervene(AblateHead(1, 2, method="mean", mean=expected)):
        assert torch.allclose(again, clean_model(TEXT), atol=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "bert", "llama", "gemma3"])
def test_patch_source_text_first_used_inside_another_edit_is_clean(arch):
    model = tiny_model(arch)
    spec = Patch(1, 0, site="z", source=[OTHER])
    with torch.no_grad():
        with model.intervene(spec):
            reference = model(TEXT)
    fresh = tiny_model(arch)
    with torch.no_grad(), fresh.intervene(OUTER):
        with fresh.intervene(Patch(1, 0, site="z", source=[OTHER])):
            fresh(TEXT)
        # after the first (nested) use, the cached source must be the clean one
    with torch.no_grad(), fresh.intervene(Patch(1, 0, site="z", source=[OTHER])):
        assert torch.allclose(fresh(TEXT), reference, atol=1e-6)


def test_specs_are_immutable_data():
    spec = AblateHead(1, [0, 2], method="mean", reference=REFERENCE, positions=[1])
    model = tiny_model("llama")
    with torch.no_grad(), model.intervene(spec):
        model(TEXT)
    assert spec == copy.deepcopy(spec)
    assert repr(spec) == "AblateHead(layer=1, head=[0, 2], positions=[1], method='mean', reference=[3 prompts])"
    with pytest.raises(AttributeError, match="AblateHead is immutable"):
        spec.mean = torch.zeros(4, 8)
    long = AblateHead(0, method="mean", reference=[f"prompt {i}" for i in range(40)])
    assert repr(long) == "AblateHead(layer=0, method='mean', reference=[40 prompts])"


def test_means_and_sources_follow_weight_edits():
    """A cached mean or patch source is of the weights it was computed from: an in-place edit or a new Parameter redoes it."""
    model, twin = tiny_model("llama"), tiny_model("llama")
    before = head_means(model, 1, REFERENCE)
    source = Patch(1, 0, site="z", source=[OTHER])
    first = source.prepare_values(model)["source"]
    for m in (model, twin):
        with torch.no_grad():
            m.hf_model.model.layers[0].self_attn.v_proj.weight.mul_(3.0)  # in place: the version counter moves
    edited = head_means(model, 1, REFERENCE)
    assert torch.allclose(edited, head_means(twin, 1, REFERENCE), atol=1e-6)
    assert (edited - before).abs().max() > 1e-3
    again = source.prepare_values(model)["source"]
    assert torch.allclose(again, source.prepare_values(twin)["source"], atol=1e-6)
    assert (again - first).abs().max() > 1e-3
    v_proj = model.hf_model.model.layers[0].self_attn.v_proj
    v_proj.weight = torch.nn.Parameter(v_proj.weight.detach() / 3.0)  # a new Parameter: back to the start
    assert torch.allclose(head_means(model, 1, REFERENCE), before, atol=1e-6)
    with torch.no_grad():
        v_proj.weight.data.mul_(2.0)  # through .data: the counter does not see it ...
    assert torch.allclose(head_means(model, 1, REFERENCE), before, atol=1e-6)
    model.forget_prepared()  # ... so the caller drops the cache
    assert (head_means(model, 1, REFERENCE) - before).abs().max() > 1e-3


def test_forget_prepared_also_drops_rounded_weights():
    model = tiny_model("llama")
    model.run("a cat sat", logits="last", precision="bfloat16")
    head_means(model, 1, REFERENCE)
    assert model.__dict__.get("_rounded_weights") and len(model._prepared)
    model.forget_prepared()
    assert not model.__dict__.get("_rounded_weights") and not len(model._prepared)
