"""The bias intervention experiment and the demo pipeline, on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnlab.bias import bias_experiment, pronoun_bias, run_bias_demo
from attnlab.bias.experiment import perplexity
from attnlab.bias.pronouns import PronounBias
from attnlab.engine.forward import token_logprobs
from attnlab.errors import InvalidInput, InvalidLocation
from attnlab.interventions import AblateHead, EditNeuron
from attnlab.testing import tiny_model

OCC = ["nurse", "mechanic", "teacher", "librarian", "carpenter"]
TEXT = ["the cat sat on the house .", "a dog ran to the city at night ."]
PROMPTS = ["the cat sat on the", "the dog ran to"]


def _token_logprobs(model, texts):
    """Per text, log p(token_t | tokens_<t) for t = 1 .. n-1, one text at a time."""
    out = []
    for text in texts:
        tokens = model.tokens(text)
        with torch.no_grad():
            out.append(token_logprobs(model(text), tokens)[0, 1:].numpy())
    return out


def test_before_after_match_direct_measurements():
    model = tiny_model("gpt2")
    specs = [AblateHead(1, 0), AblateHead(0, 3)]
    exp = bias_experiment(model, specs, occupations=OCC, neutral_text=TEXT, neutral_prompts=PROMPTS, n_boot=100)
    before = pronoun_bias(model, occupations=OCC, n_boot=100)
    with model.intervene(*specs):
        after = pronoun_bias(model, occupations=OCC, n_boot=100)
        nll_after = -np.concatenate(_token_logprobs(model, TEXT))
    t = exp.table.set_index("metric")
    assert t.loc["pearson_r", "before"] == pytest.approx(before.value("pearson_r"))
    assert t.loc["mean_abs_log_ratio", "after"] == pytest.approx(after.value("mean_abs_log_ratio"))
    assert t.loc["perplexity", "after"] == pytest.approx(float(np.exp(nll_after.mean())), rel=1e-5)
    assert t.loc["next_token_kl", "after"] > 0
    assert np.allclose(t.change, t.after - t.before)
    assert model.count_hooks() == 0
    from matplotlib.figure import Figure

    assert isinstance(exp.figure(), Figure)


def test_plot_on_given_axes():
    """plot(ax=<one Axes>) raised TypeError ('Axes' object is not subscriptable); it takes None or 2 Axes."""
    from matplotlib.figure import Figure

    exp = bias_experiment(tiny_model("gpt2"), [AblateHead(1, 0)], occupations=OCC, neutral_text=TEXT,
                          neutral_prompts=PROMPTS, n_boot=0)
    fig = Figure()
    left, right = fig.subplots(1, 2)
    assert exp.plot(ax=[left, right]) is fig and len(right.patches) == 4  # 2 metrics x before/after
    assert len(exp.plot().axes) == 2
    for ax in (left, [left], [left, right, left], "ab"):
        with pytest.raises(InvalidInput, match=r"BiasExperiment\.plot draws 2 panel\(s\): pass ax=None or a list of 2 Axes"):
            exp.plot(ax=ax)


def test_identity_intervention_costs_nothing():
    model = tiny_model("llama")
    exp = bias_experiment(model, [EditNeuron(0, 1, site="q", dim=0, scale=1.0)], occupations=OCC,
                          neutral_text=TEXT, neutral_prompts=PROMPTS, n_boot=0)
    t = exp.table.set_index("metric")
    assert abs(t.loc["next_token_kl", "after"]) < 1e-6
    assert np.allclose(t.before, t.after, atol=1e-5)


def test_perplexity_by_hand():
    model = tiny_model("gemma3")
    ids = model.to_tokens(TEXT[0])
    with torch.no_grad():
        lp = model(ids)[0].float().log_softmax(-1)
    nll = -lp[:-1].gather(-1, ids[0, 1:, None]).mean()
    assert perplexity(model, TEXT[:1], n_boot=0)[0] == pytest.approx(float(nll.exp()), rel=1e-5)


def test_bad_input_leaves_model_clean():
    model = tiny_model("gpt2")
    with pytest.raises(InvalidInput, match="no interventions"):
        bias_experiment(model, [], occupations=OCC)
    with pytest.raises(InvalidLocation, match="layer 5 out of range"):
        bias_experiment(model, [AblateHead(5, 0)], occupations=OCC)
    with pytest.raises(InvalidInput, match="neutral_text"):
        bias_experiment(model, [AblateHead(0, 0)], occupations=OCC, neutral_text=[])
    assert model.count_hooks() == 0


def test_a_neutral_text_too_long_is_refused_before_the_bias_runs(monkeypatch):
    """It was refused by the perplexity step, after both pronoun_bias runs had been paid for."""
    from attnlab.bias import experiment

    model = tiny_model("gpt2")
    ran = []
    monkeypatch.setattr(experiment, "pronoun_bias", lambda *a, **k: ran.append(1))
    long = " ".join(["the cat sat on the mat ."] * 40)  # > 128 tokens of the tiny GPT-2
    with pytest.raises(InvalidInput, match=r"has \d+ tokens but tiny-gpt2 handles at most 128"):
        bias_experiment(model, [AblateHead(0, 0)], occupations=OCC, neutral_text=[long], neutral_prompts=PROMPTS)
    with pytest.raises(InvalidInput, match=r"has \d+ tokens but tiny-gpt2 handles at most 128"):
        bias_experiment(model, [AblateHead(0, 0)], occupations=OCC, neutral_text=TEXT, neutral_prompts=[long])
    assert ran == [] and model.count_hooks() == 0


def test_baseline_must_match_the_experiment(monkeypatch):
    """A baseline on other occupations or pronouns was accepted: per_prompt paired its log ratios with other prompts."""
    model = tiny_model("gpt2")
    base = pronoun_bias(model, occupations=OCC[:2], n_boot=0)
    from attnlab.bias import experiment

    monkeypatch.setattr(experiment, "pronoun_bias", lambda *a, **k: pytest.fail("measured before checking the baseline"))
    cases = [
        (dict(occupations=OCC[2:4], n_boot=0),
         r"occupations \['nurse', 'mechanic'\] \(this experiment: \['teacher', 'librarian'\]\)"),
        (dict(occupations=OCC[:2], templates=["The {occupation} said that"], n_boot=0), r"templates \['The \{occupation\} said that', "),
        (dict(occupations=OCC[:2], pronouns=("her", "him"), n_boot=0), r"pronouns \('she', 'he'\) \(this experiment: \('her', 'him'\)\)"),
        (dict(occupations=OCC[:2], n_boot=10), r"n_boot=0, seed=0 \(this experiment: n_boot=10, seed=0\)"),
        (dict(occupations=OCC[:2], n_boot=0, seed=1), r"n_boot=0, seed=0 \(this experiment: n_boot=0, seed=1\)"),
        (dict(occupations=OCC[1::-1], n_boot=0), r"occupations \['nurse', 'mechanic'\] \(this experiment: \['mechanic', 'nurse'\]\)"),
    ]
    for kw, message in cases:
        with pytest.raises(InvalidInput, match="baseline does not match this experiment; it was measured with " + message):
            bias_experiment(model, [AblateHead(1, 0)], baseline=base, **kw)
    other = PronounBias(base.per_prompt, base.table, base.summary, "other", base.pronouns, n_boot=0, seed=0)
    with pytest.raises(InvalidInput, match=rf"measured with model 'other' \(this experiment: '{model.cfg.name}'\)"):
        bias_experiment(model, [AblateHead(1, 0)], occupations=OCC[:2], baseline=other, n_boot=0)


def test_matching_baseline_gives_the_measured_numbers():
    model = tiny_model("gpt2")
    base = pronoun_bias(model, occupations=OCC[:3], n_boot=0)
    exp = bias_experiment(model, [AblateHead(1, 0)], occupations=OCC[:3], baseline=base, n_boot=0)
    after = pronoun_bias(model, occupations=OCC[:3], interventions=[AblateHead(1, 0)], n_boot=0)
    np.testing.assert_array_equal(exp.per_prompt.log_ratio_before, base.per_prompt.log_ratio)
    np.testing.assert_allclose(exp.per_prompt.log_ratio_after, after.per_prompt.log_ratio, rtol=1e-6)


def test_demo_pipeline_writes_files(tmp_path):
    model = tiny_model("gpt2")
    demo = run_bias_demo(model, tmp_path / "out", occupations=OCC, k=2, n_mediation_occupations=2, n_boot=50, progress=False)
    assert sorted(p.name for p in demo.files) == sorted(
        ["bias_scatter.png", "mediation_heatmap.png", "bias_experiment.png", "bias_per_occupation.csv",
         "mediation_per_head.csv", "bias_experiment.csv", "top_heads.csv"]
    )
    assert all(p.stat().st_size > 0 for p in demo.files)
    assert demo.top_heads == demo.mediation.top_heads(2)
    assert [(s.layer, s.heads[0]) for s in demo.experiment.interventions] == demo.top_heads
    assert demo.numbers["pearson_r_before"] == pytest.approx(demo.bias.value("pearson_r"))
    assert "top mediating heads" in demo.report()
    with pytest.raises(InvalidInput, match="k must be an integer in 1..8"):
        run_bias_demo(model, None, k=9)
