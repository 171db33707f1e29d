"""(model, prompts, metric, ...) everywhere; the previous orders still work for one release, with a warning."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from attnlab.interventions import AblateHead, EditNeuron
from attnlab.measure import KL, LogitDiff, effect, score, sweep_heads, sweep_interventions, sweep_neurons

PROMPTS = ["the nurse said that", "the doctor said that he was"]
SPECS = [AblateHead(1, 0)]


def _no_warning(call):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        return call()


def _old(call, new_spelling):
    with pytest.warns(DeprecationWarning, match=new_spelling):
        return call()


def test_effect_old_order_warns_and_gives_the_same_numbers(tiny_gpt2):
    metric = LogitDiff(" she", " he")
    new = _no_warning(lambda: effect(tiny_gpt2, PROMPTS, metric, SPECS, progress=False))
    old = _old(lambda: effect(tiny_gpt2, PROMPTS, SPECS, metric, progress=False),
               r"effect\(model, prompts, metric, interventions\)")
    kw = _old(lambda: effect(tiny_gpt2, PROMPTS, SPECS, metric=metric, progress=False), "effect")
    assert np.array_equal(new.per_prompt.effect, old.per_prompt.effect)
    assert np.array_equal(new.per_prompt.effect, kw.per_prompt.effect)
    assert _no_warning(lambda: effect(tiny_gpt2, PROMPTS, metric=metric, interventions=SPECS, progress=False)).mean == new.mean
    # score always had this order: no warning
    assert np.allclose(_no_warning(lambda: score(tiny_gpt2, PROMPTS, metric, SPECS)), new.per_prompt.intervened, atol=1e-6)


def test_sweep_heads_old_order(tiny_gpt2):
    new = _no_warning(lambda: sweep_heads(tiny_gpt2, PROMPTS, KL(), "zero", layers=[1], progress=False))
    old = _old(lambda: sweep_heads(tiny_gpt2, PROMPTS, "zero", KL(), layers=[1], progress=False),
               r"sweep_heads\(model, prompts, metric, method\)")
    no_metric = _old(lambda: sweep_heads(tiny_gpt2, PROMPTS, "zero", layers=[1], progress=False), "sweep_heads")
    assert np.array_equal(new.table.effect, old.table.effect)
    assert np.array_equal(new.table.effect, no_metric.table.effect)  # KL is the default metric


def test_sweep_interventions_and_neurons_old_order(tiny_gemma):
    variants = {"L0": [AblateHead(0)], "L1": [AblateHead(1)]}
    new = _no_warning(lambda: sweep_interventions(tiny_gemma, PROMPTS, KL(), variants, progress=False))
    old = _old(lambda: sweep_interventions(tiny_gemma, PROMPTS, variants, KL(), progress=False),
               r"sweep_interventions\(model, prompts, metric, variants\)")
    assert np.array_equal(new.table.effect, old.table.effect)
    new = _no_warning(lambda: sweep_neurons(tiny_gemma, PROMPTS, KL(), 2, [0, 1], dims=[0, 3], progress=False))
    old = _old(lambda: sweep_neurons(tiny_gemma, PROMPTS, 2, [0, 1], dims=[0, 3], metric=KL(), progress=False),
               r"sweep_neurons\(model, prompts, metric, layer, head\)")
    assert np.array_equal(new.table.effect, old.table.effect)
    naive = effect(tiny_gemma, PROMPTS, KL(), [EditNeuron(2, 1, site="q", dim=3, scale=0.0)], progress=False).mean
    assert new.table.effect.iloc[-1] == pytest.approx(naive, abs=1e-5)


def test_old_order_mistakes_are_still_type_errors(tiny_gpt2):
    with pytest.raises(TypeError, match="multiple values for argument 'interventions'"), pytest.warns(DeprecationWarning):
        effect(tiny_gpt2, PROMPTS, SPECS, KL(), interventions=SPECS)
