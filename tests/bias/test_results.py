"""Every bias result has the one shape (table, per_prompt, summary, plot without pyplot); old names still work."""

from __future__ import annotations

import matplotlib
import pandas as pd
import pytest
from matplotlib.figure import Figure

from attnlab.bias import MediationPair, bias_experiment, causal_mediation, coref_bias, pronoun_bias
from attnlab.errors import InvalidInput
from attnlab.interventions import AblateHead
from attnlab.measure import Result
from attnlab.testing import tiny_model

OCC = ["nurse", "mechanic", "teacher", "carpenter"]


def _check_shape(result, *, axes=1) -> None:
    import matplotlib.pyplot as plt

    assert isinstance(result, Result)
    for part in ("table", "per_prompt", "summary"):
        assert isinstance(getattr(result, part), pd.DataFrame) and len(getattr(result, part)) > 0
    backend, open_figures = matplotlib.get_backend(), plt.get_fignums()
    assert isinstance(result.plot(), Figure)
    own = Figure()
    ax = own.subplots(1, axes)
    assert result.plot(ax=ax) is own  # a pair of axes for two-panel figures
    assert matplotlib.get_backend() == backend and plt.get_fignums() == open_figures
    # the wrong number of axes (or not axes) is an InvalidInput naming what to pass, not a TypeError/AttributeError
    wanted = "one Axes" if axes == 1 else f"a list of {axes} Axes"
    for wrong in (own.subplots(1, axes + 1), own.subplots(1, 1) if axes > 1 else "ax"):
        with pytest.raises(InvalidInput, match=rf"{type(result).__name__}\.plot draws {axes} panel\(s\): pass ax=None "
                                               rf"or {wanted}, got "):
            result.plot(ax=wrong)


def _deprecated(result, old: str, new: str):
    with pytest.warns(DeprecationWarning, match=rf"{type(result).__name__}\.{old} is deprecated.*use {type(result).__name__}\.{new}"):
        return getattr(result, old)


def test_pronoun_bias_result():
    res = pronoun_bias(tiny_model("gpt2"), occupations=OCC, n_boot=50)
    _check_shape(res)
    assert res.table.occupation.tolist() == OCC and set(res.summary.metric) >= {"pearson_r"}
    assert _deprecated(res, "per_occupation", "table") is res.table
    assert isinstance(_deprecated(res, "figure", "plot")(), Figure)


def test_coref_result_table_is_one_row_per_group():
    pairs = pd.DataFrame({"pro": ["the nurse said that she was tired .", "the man said that he left ."],
                          "anti": ["the nurse said that he was tired .", "the man said that she left ."], "type": [1, 2]})
    res = coref_bias(tiny_model("gpt2"), pairs, n_boot=50)
    _check_shape(res)
    assert res.table.group.tolist() == ["all", "type=1", "type=2"]
    assert res.table.mean_gap.tolist() == pytest.approx([res.value("mean_gap", g) for g in res.table.group])
    assert res.table.set_index("group").loc["type=2", "mean_gap"] == pytest.approx(res.per_prompt.gap[1])
    assert _deprecated(res, "per_pair", "per_prompt") is res.per_prompt


def test_bias_experiment_result():
    model = tiny_model("gpt2")
    exp = bias_experiment(model, [AblateHead(1, 0)], occupations=OCC, neutral_text=["the cat sat on the mat ."],
                          neutral_prompts=["the cat sat on the", "a dog"], n_boot=50)
    _check_shape(exp, axes=2)
    assert exp.summary is exp.table
    assert (exp.per_prompt.log_ratio_after != exp.per_prompt.log_ratio_before).any()
    assert exp.per_prompt.log_ratio_before.tolist() == pytest.approx(exp.before.per_prompt.log_ratio.tolist())
    assert isinstance(_deprecated(exp, "figure", "plot")(), Figure)


def test_mediation_result():
    model = tiny_model("gpt2")
    pairs = [MediationPair("The nurse said that", "The man said that", " she", " he", "nurse"),
             MediationPair("The mechanic said that", "The woman said that", " he", " she", "mechanic")]
    res = causal_mediation(model, pairs, effects=("nie",), n_boot=50)
    _check_shape(res)
    assert _deprecated(res, "per_unit", "table") is res.table
    assert _deprecated(res, "per_head", "table") is res.table
    assert _deprecated(res, "per_pair", "per_prompt") is res.per_prompt
    with pytest.warns(DeprecationWarning, match=r"heatmap is deprecated.*\.plot\(effect="):
        assert isinstance(res.heatmap("nie"), Figure)
