"""Numpy integers are integers everywhere, and bad resampling options fail before any forward pass."""

from __future__ import annotations

import numpy as np
import pytest

from attnlab.errors import InvalidInput
from attnlab.interventions import AblateHead
from attnlab.measure import LogitDiff, attribute, bootstrap, effect, perplexity, sweep_heads, sweep_neurons

PROMPTS = ["the nurse said that", "the doctor said that he"]
METRIC = LogitDiff(" she", " he")


def test_numpy_integers_select_the_same_units(tiny_llama):
    ours = sweep_heads(tiny_llama, PROMPTS, METRIC, "zero", layers=np.int64(1), heads=[np.int64(0)], progress=False,
                       n_boot=np.int64(50), seed=np.int64(3))
    plain = sweep_heads(tiny_llama, PROMPTS, METRIC, "zero", layers=1, heads=[0], progress=False, n_boot=50, seed=3)
    assert ours.table.equals(plain.table) and ours.per_prompt.equals(plain.per_prompt)
    dims = sweep_neurons(tiny_llama, PROMPTS, METRIC, np.int64(1), dims=np.arange(2), progress=False, n_boot=10)
    assert dims.table.dim.tolist() == [0, 1] * tiny_llama.cfg.n_heads and (dims.table.layer == 1).all()
    estimate = attribute(tiny_llama, PROMPTS, METRIC, layers=[1], progress=False, n_boot=np.int64(10), seed=np.int32(2))
    arrays = attribute(tiny_llama, PROMPTS, METRIC, layers=np.array([1]), heads=np.array([0, 2]), progress=False,
                       n_boot=10, seed=2)
    picked = estimate.table[estimate.table["head"].isin([0, 2])].set_index(["layer", "head"]).effect
    assert np.allclose(arrays.table.set_index(["layer", "head"]).effect.loc[picked.index], picked)
    assert len(estimate.verify(np.int64(2), progress=False).table) == 2
    assert bootstrap(np.arange(5.0), n_boot=np.int64(20), seed=np.uint8(1)) == bootstrap(np.arange(5.0), n_boot=20, seed=1)


def _forwards(model):
    calls = []
    handle = model.hf_model.register_forward_pre_hook(lambda *a: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("bad, message", [({"seed": -1}, "seed must be an integer"), ({"seed": 1.5}, "seed must be"),
                                          ({"seed": "x"}, "seed must be"), ({"n_boot": -1}, "n_boot must be a non-negative"),
                                          ({"n_boot": 2.0}, "n_boot must be")])
def test_bad_resampling_options_fail_before_any_pass(tiny_llama, bad, message):
    calls, handle = _forwards(tiny_llama)
    try:
        for run in (lambda: effect(tiny_llama, PROMPTS, METRIC, [AblateHead(0, 0)], progress=False, **bad),
                    lambda: sweep_heads(tiny_llama, PROMPTS, METRIC, "zero", progress=False, **bad),
                    lambda: sweep_neurons(tiny_llama, PROMPTS, METRIC, 0, progress=False, **bad),
                    lambda: attribute(tiny_llama, PROMPTS, METRIC, progress=False, **bad),
                    lambda: perplexity(tiny_llama, PROMPTS, **bad),
                    lambda: bootstrap(np.arange(5.0), **bad)):
            with pytest.raises(InvalidInput, match=message):
                run()
    finally:
        handle.remove()
    assert calls == []


def test_a_selection_that_is_not_a_list_is_named(tiny_llama):
    with pytest.raises(InvalidInput, match=r"layers must be None \(all\), an int or a list of ints, got 1.5"):
        sweep_heads(tiny_llama, PROMPTS, METRIC, "zero", layers=1.5, progress=False)


def test_numpy_integers_as_metric_and_attribution_counts(tiny_llama):
    """TopKChange(k=), GenerationDiff(max_new_tokens=) and attribute(probes=) took only Python ints."""
    from attnlab.errors import InvalidSpec
    from attnlab.measure import KL, GenerationDiff, TopKChange

    ablate = [AblateHead(1, 0)]
    top = TopKChange(k=np.int64(3))
    assert type(top.k) is int and top.name == TopKChange(k=3).name == "top3_jaccard_change"
    ours = effect(tiny_llama, PROMPTS, top, ablate, progress=False, n_boot=0).per_prompt
    plain = effect(tiny_llama, PROMPTS, TopKChange(k=3), ablate, progress=False, n_boot=0).per_prompt
    assert ours.equals(plain)
    generation = GenerationDiff(max_new_tokens=np.int64(2))
    assert type(generation.max_new_tokens) is int
    ours = effect(tiny_llama, PROMPTS, generation, ablate, progress=False, n_boot=0).per_prompt
    assert ours.equals(effect(tiny_llama, PROMPTS, GenerationDiff(max_new_tokens=2), ablate, progress=False, n_boot=0).per_prompt)
    ours = attribute(tiny_llama, PROMPTS, KL(), layers=[1], probes=np.int64(2), progress=False, n_boot=0, seed=1)
    plain = attribute(tiny_llama, PROMPTS, KL(), layers=[1], probes=2, progress=False, n_boot=0, seed=1)
    assert ours.table.equals(plain.table)
    for bad in (np.float64(2.0), True, np.int64(0)):
        with pytest.raises(InvalidSpec, match=rf"^k must be a positive integer, got {bad!r}$".replace("(", r"\(").replace(")", r"\)")):
            TopKChange(k=bad)
        with pytest.raises(InvalidSpec, match=r"^max_new_tokens must be a positive integer, got "):
            GenerationDiff(max_new_tokens=bad)
        with pytest.raises(InvalidSpec, match=r"^probes must be a positive integer, got "):
            attribute(tiny_llama, PROMPTS, KL(), probes=bad, progress=False)
