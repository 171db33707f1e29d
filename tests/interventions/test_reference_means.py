"""Reference means: one batched pass over the references gives every site's mean, as a per-site pass would."""

from __future__ import annotations

import pytest
import torch

from attnlab.engine.locations import hook_name
from attnlab.errors import InvalidInput
from attnlab.interventions import head_means
from attnlab.interventions.reference_means import reference_means
from attnlab.testing import tiny_model

REFERENCE = ["the cat sat on the car", "a dog ran", "the king gave her a book and a pen", "she said"]


def by_hand(model, name):
    enc = model.tokenize(REFERENCE)
    _, cache = model.run_with_cache(enc["input_ids"], attention_mask=enc["attention_mask"], names_filter=name)
    return cache[name][enc["attention_mask"].bool()].double().mean(0).float()


def count_forwards(model):
    calls = []
    handle = model.decoder_layers()[0].register_forward_pre_hook(lambda *a: calls.append(1))  # one call a pass
    return calls, handle


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_every_layer_from_one_pass_in_batches_equals_a_pass_per_site(arch):
    model = tiny_model(arch)
    names = [hook_name(l, "z") for l in range(model.cfg.n_layers)] + [hook_name(1, "post"), hook_name(0, "resid_mid")]
    calls, handle = count_forwards(model)
    try:
        means = reference_means(model, names, REFERENCE, batch_size=3)  # 4 prompts: two batches, the second shorter
        assert len(calls) == 2
        again = reference_means(model, names, REFERENCE, batch_size=3)  # cached on the model
        assert len(calls) == 2 and again is means
    finally:
        handle.remove()
    for name in names:
        torch.testing.assert_close(means[name], by_hand(model, name), rtol=0, atol=1e-6)


def test_head_means_of_every_layer_come_from_the_first_call():
    """A mean sweep over all layers asks for every layer's means: one pass, not one per layer."""
    model = tiny_model("llama", n_layers=3)
    calls, handle = count_forwards(model)
    try:
        got = [head_means(model, layer, REFERENCE) for layer in range(3)]
    finally:
        handle.remove()
    assert len(calls) == 1
    for layer, mean in enumerate(got):
        torch.testing.assert_close(mean, by_hand(model, hook_name(layer, "z")), rtol=0, atol=1e-6)


def test_means_come_from_the_unedited_model():
    from attnlab.interventions import AblateHead

    model = tiny_model("llama")
    clean = reference_means(model, [hook_name(1, "z")], REFERENCE)[hook_name(1, "z")]
    model._prepared.clear()
    with model.intervene(AblateHead(0, [0, 1, 2, 3])):
        inside = reference_means(model, [hook_name(1, "z")], REFERENCE)[hook_name(1, "z")]
    torch.testing.assert_close(inside, clean, rtol=0, atol=0)


@pytest.mark.parametrize("bad", ["one string", [], ["ok", ""], [3]])
def test_bad_reference_is_refused(bad):
    with pytest.raises(InvalidInput, match="reference prompts must be a non-empty list of non-empty strings"):
        reference_means(tiny_model("llama"), [hook_name(0, "z")], bad)


def test_sites_without_a_position_axis_second_are_refused():
    model = tiny_model("llama")
    for site in ("pattern", "attn_scores"):
        with pytest.raises(InvalidInput, match=rf"hook_{site} is laid out \[batch, head, query, key\]"):
            reference_means(model, [hook_name(0, "z"), hook_name(0, site)], REFERENCE)


def test_repeated_names_count_once_and_batch_size_bounds_the_rows_of_a_pass():
    model = tiny_model("llama")
    name = hook_name(1, "z")
    rows = []
    handle = model.decoder_layers()[0].register_forward_pre_hook(lambda mod, args: rows.append(args[0].shape[0]))
    try:
        twice = reference_means(model, [name, name], REFERENCE, batch_size=3)[name]
    finally:
        handle.remove()
    assert rows == [3, 1]
    torch.testing.assert_close(twice, by_hand(model, name), rtol=0, atol=1e-6)
    with pytest.raises(InvalidInput, match="batch_size must be a positive integer, got 0"):
        reference_means(model, [name], REFERENCE, batch_size=0)


def test_reference_prompts_may_come_from_a_generator(tiny_gpt2):
    """The check used to read the generator up, so the means were taken over no prompts ("no text given")."""
    from attnlab.interventions.ablation import head_means
    from attnlab.interventions.reference_means import reference_means

    prompts = ["the cat sat", "a dog ran on the car"]
    listed = head_means(tiny_gpt2, 0, prompts)
    torch.testing.assert_close(head_means(tiny_gpt2, 0, (p for p in prompts)), listed, rtol=0, atol=0)
    name = "blocks.1.attn.hook_z"
    torch.testing.assert_close(reference_means(tiny_gpt2, [name], iter(prompts))[name],
                               reference_means(tiny_gpt2, [name], prompts)[name], rtol=0, atol=0)
    for bad in (3, {"the cat": 1}, b"the cat"):
        with pytest.raises(InvalidInput, match=r"^reference prompts must be a non-empty list of non-empty strings, got"):
            head_means(tiny_gpt2, 0, bad)
