"""A model in training mode whose dropout acts is refused by every measurement; one without dropout is measured.

Dropout makes every forward pass random, so an effect, a sweep or an attribution of such a
model would be a different number on every call (and a sweep would warn that resuming
from a prefix does not reproduce the clean output).
"""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch

import attnlab.engine.dropout
from attnlab.bias import pronoun_bias
from attnlab.bias.experiment import bias_experiment
from attnlab.bias.mediation import MediationPair, causal_mediation
from attnlab.engine.dropout import active_dropout
from attnlab.errors import InvalidInput
from attnlab.interventions import AblateHead
from attnlab.measure import (
    GenerationDiff,
    LogitDiff,
    attribute,
    effect,
    perplexity,
    score,
    sweep_heads,
    sweep_interventions,
    sweep_neurons,
)
from attnlab.testing import tiny_hf_model, tiny_model

PROMPTS = ["the nurse said that", "the doctor said that"]
METRIC = LogitDiff(" she", " he")
REFUSED = r"tiny-gpt2 is in training mode and its dropout acts \(transformer\.drop \(Dropout, p=0\.1\), .* and \d+ more\).*call model\.eval\(\) first"

MEASUREMENTS = {
    "effect": lambda m: effect(m, PROMPTS, METRIC, [AblateHead(1, 0)], progress=False, n_boot=0),
    "effect(GenerationDiff)": lambda m: effect(m, PROMPTS, GenerationDiff(2), [AblateHead(1, 0)], progress=False, n_boot=0),
    "score": lambda m: score(m, PROMPTS, METRIC),
    "perplexity": lambda m: perplexity(m, PROMPTS, n_boot=0),
    "sweep_heads": lambda m: sweep_heads(m, PROMPTS, METRIC, "mean", progress=False, n_boot=0),
    "sweep_neurons": lambda m: sweep_neurons(m, PROMPTS, METRIC, layer=0, head=1, progress=False, n_boot=0),
    "sweep_interventions": lambda m: sweep_interventions(m, PROMPTS, METRIC, {"a": [AblateHead(1, 0)]},
                                                         progress=False, n_boot=0),
    "attribute": lambda m: attribute(m, PROMPTS, METRIC, method="mean", progress=False, n_boot=0),
    "pronoun_bias": lambda m: pronoun_bias(m, occupations=["nurse", "mechanic"], n_boot=0),
    "bias_experiment": lambda m: bias_experiment(m, [AblateHead(1, 0)], occupations=["nurse", "mechanic"], n_boot=0),
    "causal_mediation": lambda m: causal_mediation(
        m, [MediationPair("the nurse said that", "the man said that", stereotypical=" she", anti=" he")],
        levels=("head",), n_boot=0),
}


def _untouched(model) -> None:
    assert model.training and model.hf_model.training
    assert all(module.training for module in model.hf_model.modules())
    assert model.count_hooks() == 0
    assert not model._prepared  # no mean or patch source computed with dropout and kept


@pytest.mark.parametrize("name", list(MEASUREMENTS))
def test_a_train_mode_model_with_dropout_is_refused(name):
    model = tiny_model("gpt2").train()
    with pytest.raises(InvalidInput, match=REFUSED):
        MEASUREMENTS[name](model)
    _untouched(model)


def test_verify_refuses_a_model_put_in_training_mode_after_attribute():
    model = tiny_model("gpt2")
    estimate = attribute(model, PROMPTS, METRIC, progress=False, n_boot=0)
    model.train()
    with pytest.raises(InvalidInput, match=REFUSED):
        estimate.verify(2)
    assert model.count_hooks() == 0 and model.training


def test_a_train_mode_model_without_dropout_measures_as_in_eval_mode():
    model = tiny_model("llama")  # attention_dropout=0.0, no dropout module
    measured = {}
    for mode in ("eval", "train"):
        getattr(model, mode)()
        measured[mode] = [
            effect(model, PROMPTS, METRIC, [AblateHead(1, 0)], progress=False, n_boot=0).per_prompt["effect"].to_numpy(),
            sweep_heads(model, PROMPTS, METRIC, "mean", progress=False, n_boot=0).table["effect"].to_numpy(),
            attribute(model, PROMPTS, METRIC, progress=False, n_boot=0).table["effect"].to_numpy(),
            score(model, PROMPTS, METRIC),
        ]
    assert model.training
    for eval_values, train_values in zip(measured["eval"], measured["train"]):
        np.testing.assert_array_equal(train_values, eval_values)


def test_dropout_set_to_zero_is_measured():
    model = tiny_model("gpt2").train()
    for module in model.hf_model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    with pytest.raises(InvalidInput, match=r"config\.attn_pdrop=0\.1"):  # the config's attention dropout still says 0.1
        score(model, PROMPTS, METRIC)
    model.hf_model.config.attn_pdrop = 0.0
    train_values = score(model, PROMPTS, METRIC)
    np.testing.assert_array_equal(train_values, score(model.eval(), PROMPTS, METRIC))


def test_the_engine_still_runs_a_train_mode_model():
    model = tiny_model("gpt2").train()
    torch.manual_seed(0)
    first = model(PROMPTS[0])
    second = model(PROMPTS[0])
    assert not torch.equal(first, second)  # dropout acts: training with hooks is the caller's business
    _, cache = model.run_with_cache(PROMPTS[0], names_filter="blocks.0.attn.hook_pattern")
    assert cache["blocks.0.attn.hook_pattern"].shape[-1] == model.to_tokens(PROMPTS[0]).shape[1]
    assert model.training


def test_active_dropout_names_what_drops():
    assert doctest.testmod(attnlab.engine.dropout).failed == 0
    bert = tiny_hf_model("bert").train()
    assert "encoder.layer.1.attention.self.dropout (Dropout, p=0.1)" in active_dropout(bert)
    assert "config.attention_probs_dropout_prob=0.1" in active_dropout(bert)
    assert active_dropout(bert.eval()) == []
    llama = tiny_hf_model("llama")
    for layer in llama.model.layers:
        layer.self_attn.attention_dropout = 0.2  # a probability the layer hands to the attention function
    assert active_dropout(llama) == []
    assert active_dropout(llama.train()) == [f"model.layers.{i}.self_attn.attention_dropout=0.2" for i in range(2)]
    llama.config.attention_dropout = 0.3
    assert active_dropout(llama)[-1] == "config.attention_dropout=0.3"
    for module in llama.modules():  # training mode switched off where the probabilities are kept: nothing acts there
        module.training = module is llama
    assert active_dropout(llama) == ["config.attention_dropout=0.3"]


def test_an_attention_module_in_training_mode_reading_its_eval_mode_dropouts_p_is_found():
    """GPT-2's attention passes ``self.attn_dropout.p if self.training`` on: the module's mode decides, not the child's."""
    model = tiny_model("gpt2")
    model.eval()
    model.hf_model.transformer.h[0].attn.train()
    for module in model.hf_model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.eval()
    assert any("attn_dropout.p=0.1" in part for part in active_dropout(model.hf_model))
    with pytest.raises(InvalidInput, match="training mode and its dropout acts"):
        score(model, PROMPTS, METRIC, progress=False)
