"""Hostile arguments to the measuring floor's entry points: typed errors, never silent nonsense."""

from __future__ import annotations

import re

import numpy as np
import pytest

from attnlab.errors import InvalidInput, InvalidSpec
from attnlab.interventions import AblateHead
from attnlab.measure import LogitDiff, TokenProb, effect, score

PROMPTS = ["the nurse said that", "the man said that"]


def test_logit_diff_refuses_the_same_text_as_target_and_foil():
    with pytest.raises(InvalidSpec, match=r"^LogitDiff: target and foil are the same text ' she', so the difference is 0"):
        LogitDiff(" she", " she")


@pytest.mark.parametrize("target, foil, bad", [
    ([" she", " he"], [" he", " he"], r"prompt 1 \(' he' and ' he'\)"),  # equal in one prompt's pair
    (" she", "she", r"prompt 0 \(' she' and 'she'\) are the same tokens for tiny-gpt2 \(\['she'\]\)"),  # alike once tokenized
])
def test_logit_diff_refuses_a_target_and_foil_that_are_the_same_tokens(tiny_gpt2, target, foil, bad):
    with pytest.raises(InvalidInput, match=bad + r".*difference is 0 whatever the model does"):
        score(tiny_gpt2, PROMPTS, LogitDiff(target, foil))
    with pytest.raises(InvalidInput, match=bad):
        effect(tiny_gpt2, PROMPTS, LogitDiff(target, foil), [AblateHead(1, 0)], progress=False)
    assert tiny_gpt2.count_hooks() == 0


@pytest.mark.parametrize("metric, what, given", [
    (lambda: LogitDiff(1, " he"), "target", "int 1"),
    (lambda: LogitDiff(" she", None), "foil", "NoneType None"),
    (lambda: TokenProb(5), "token", "int 5"),
    (lambda: LogitDiff({" she": 1, " he": 2}, " he"), "target", "dict"),
])
def test_a_continuation_that_is_not_text_is_a_typed_error(tiny_gpt2, metric, what, given):
    with pytest.raises(InvalidInput, match=rf"{what} must be a string or a list of strings \(one per prompt\), got {given}"):
        score(tiny_gpt2, PROMPTS, metric())


def test_per_prompt_targets_may_be_any_sequence_of_strings(tiny_gpt2):
    listed = score(tiny_gpt2, PROMPTS, LogitDiff([" she", " he"], [" he", " she"]))
    as_array = score(tiny_gpt2, PROMPTS, LogitDiff(np.array([" she", " he"]), (" he", " she")))
    np.testing.assert_array_equal(listed, as_array)


def test_a_huge_n_boot_is_refused_before_the_measurement_runs(tiny_gpt2):
    from attnlab.measure import sweep_heads

    calls = []
    handle = tiny_gpt2.hf_model.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        for run in (lambda n: effect(tiny_gpt2, PROMPTS, LogitDiff(" she", " he"), [AblateHead(1, 0)], n_boot=n, progress=False),
                    lambda n: sweep_heads(tiny_gpt2, PROMPTS, LogitDiff(" she", " he"), n_boot=n, progress=False)):
            with pytest.raises(InvalidInput, match=r"^n_boot must be a non-negative integer, at most 1,000,000, got 1000001$"):
                run(1_000_001)
            with pytest.raises(InvalidInput, match=r"at most 1,000,000, got 1000000000000$"):
                run(10**12)
    finally:
        handle.remove()
    assert calls == []


@pytest.mark.parametrize("values, given", [(["a", "b"], r"list \"\['a', 'b'\]\""), ([[1.0, 2.0], [3.0]], r"list '\[\[1.0, 2.0\], \[3.0\]\]'")])
def test_bootstrap_of_values_that_are_not_numbers_is_a_typed_error(values, given):
    from attnlab.measure import bootstrap

    with pytest.raises(InvalidInput, match=r"^bootstrap needs numbers \(an array, or a list of equal-length rows\), got " + given):
        bootstrap(values)
    with pytest.raises(InvalidInput, match="^bootstrap needs numbers"):
        bootstrap((np.ones(len(values)), values), lambda a, b: 0.0)


@pytest.mark.parametrize("level", ["0.9", True, None, float("nan")])
def test_bootstrap_level_must_be_a_number_in_the_open_unit_interval(level):
    from attnlab.measure import bootstrap

    with pytest.raises(InvalidInput, match=rf"^level must lie in \(0, 1\), got {re.escape(repr(level))}$"):
        bootstrap(np.ones(3), level=level)


def test_bootstrap_draws_the_same_interval_however_the_resamples_are_chunked(monkeypatch):
    from attnlab.measure import bootstrap, stats

    values = np.random.default_rng(1).normal(size=(7, 23))
    whole = [bootstrap(values, s, n_boot=500, seed=3) for s in ("mean", "median")]
    monkeypatch.setattr(stats, "_CHUNK_VALUES", 7 * 23 * 3)  # three resamples per step, the last step shorter
    chunked = [bootstrap(values, s, n_boot=500, seed=3) for s in ("mean", "median")]
    for a, b in zip(whole, chunked):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    picks = np.random.default_rng(3).integers(0, 23, size=(500, 23))
    expected = np.quantile(values[:, picks].mean(axis=-1), [0.025, 0.975], axis=-1)
    np.testing.assert_allclose(chunked[0][1], expected[0], rtol=1e-12)
    np.testing.assert_allclose(chunked[0][2], expected[1], rtol=1e-12)


@pytest.mark.parametrize("k", [-1, 0, "3", 2.0, True, None])
def test_top_k_must_be_a_positive_integer(tiny_gpt2, k):
    """top(-1) gave every row but the last one; top("3") a raw TypeError."""
    from attnlab.measure import attribute, sweep_heads

    sweep = sweep_heads(tiny_gpt2, PROMPTS, LogitDiff(" she", " he"), n_boot=0, progress=False)
    estimate = attribute(tiny_gpt2, PROMPTS, LogitDiff(" she", " he"), n_boot=0, progress=False)
    for result in (sweep, estimate):
        with pytest.raises(InvalidInput, match=rf"^k must be a positive integer \(how many rows to keep\), got {re.escape(repr(k))}$"):
            result.top(k)
    assert len(sweep.top(np.int64(3))) == 3 and len(estimate.top(3)) == 3
    assert sweep.top(100).shape == sweep.table.shape


@pytest.mark.parametrize("metric", [
    lambda v: TokenProb(" she", log=v), lambda v: LogitDiff(" she", " he", single_token=v),
    lambda v: __import__("attnlab.measure", fromlist=["Loss"]).Loss(perplexity=v),
])
@pytest.mark.parametrize("value", ["False", "no", 0, 1, None])
def test_a_metric_switch_must_be_a_bool(metric, value):
    """bool("False") is True: Loss(perplexity="False") silently reported perplexities."""
    with pytest.raises(InvalidSpec, match=rf"^\w+ must be True or False, got {re.escape(repr(value))}$"):
        metric(value)


def test_numpy_bools_are_switches_too():
    from attnlab.measure import Loss

    assert Loss(perplexity=np.bool_(True)).name == "perplexity" and TokenProb(" she", log=np.False_).name == "prob"


@pytest.mark.parametrize("given, shown", [
    (LogitDiff(" she", " he"), r"LogitDiff: LogitDiff\(target=' she', foil=' he'\)"),  # two metrics: a raw TypeError before
    ({"kind": "ablate_head", "layer": 0}, r"dict: \{'kind': 'ablate_head'"),  # a spec's dict: its keys were read as specs
    (3, r"int: 3"),
])
def test_interventions_that_are_not_specs_are_named_as_given(tiny_gpt2, given, shown):
    with pytest.raises(InvalidInput, match=r"^interventions must be an intervention spec or a list of them \(AblateHead, "
                                           r"Patch, \.\.\.\), got " + shown):
        effect(tiny_gpt2, PROMPTS, LogitDiff(" she", " he"), given, progress=False)
    with pytest.raises(InvalidInput, match=r"^interventions must be an intervention spec or a list of them"):
        score(tiny_gpt2, PROMPTS, LogitDiff(" she", " he"), given)


def test_the_old_sweep_neurons_order_takes_a_numpy_layer(tiny_gpt2):
    """sweep_neurons(model, prompts, layer, head, metric=...) with numpy.int64(0) was a raw 'multiple values' TypeError."""
    from attnlab.measure import sweep_neurons

    new = sweep_neurons(tiny_gpt2, PROMPTS, LogitDiff(" she", " he"), 0, 1, dims=[2], n_boot=0, progress=False)
    with pytest.warns(DeprecationWarning, match=r"sweep_neurons\(model, prompts, layer, head\) is deprecated"):
        old = sweep_neurons(tiny_gpt2, PROMPTS, np.int64(0), np.int64(1), metric=LogitDiff(" she", " he"), dims=[2],
                            n_boot=0, progress=False)
    assert old.table.equals(new.table)


@pytest.mark.parametrize("model, shown", [("gpt2", "str 'gpt2'"), (None, "NoneType None")])
def test_a_model_that_is_not_an_attnlab_model_is_a_typed_error(model, shown):
    """A model name or None got a raw AttributeError ("'str' object has no attribute 'cfg'")."""
    from attnlab.measure import attribute, perplexity, sweep_heads, sweep_interventions, sweep_neurons

    metric = LogitDiff(" she", " he")
    calls = [
        lambda: effect(model, PROMPTS, metric, [AblateHead(0)], progress=False), lambda: score(model, PROMPTS, metric),
        lambda: perplexity(model, PROMPTS), lambda: sweep_heads(model, PROMPTS, metric, progress=False),
        lambda: sweep_neurons(model, PROMPTS, metric, 0, progress=False), lambda: attribute(model, PROMPTS, metric, progress=False),
        lambda: sweep_interventions(model, PROMPTS, metric, {"a": [AblateHead(0)]}, progress=False),
    ]
    for call in calls:
        with pytest.raises(InvalidInput, match=rf"^model must be an attnlab model \(attnlab.load\(name\), .*\), got {shown}$"):
            call()


@pytest.mark.parametrize("method, extra", [("zero", {}), ("patch", {"counterfactuals": ["the doctor said that", "the woman said that"]})])
def test_sweep_heads_refuses_references_its_method_ignores(tiny_gpt2, method, extra):
    """sweep_heads(..., "zero", reference=[...]) ran a zero ablation, silently, where a mean one was likely meant."""
    from attnlab.measure import sweep_heads

    with pytest.raises(InvalidInput, match=rf"^reference= is only used by method='mean' or method='resample', not '{method}'$"):
        sweep_heads(tiny_gpt2, PROMPTS, LogitDiff(" she", " he"), method, reference=["the cat sat"], progress=False, **extra)
