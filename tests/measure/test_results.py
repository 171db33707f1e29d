"""Every measure result has the one shape: table, per_prompt, summary, plot(ax=None) without pyplot."""

from __future__ import annotations

import matplotlib
import pandas as pd
import pytest
from matplotlib.figure import Figure

from attnlab.errors import InvalidInput
from attnlab.interventions import AblateHead
from attnlab.measure import KL, LogitDiff, Result, effect, sweep_heads, sweep_neurons

PROMPTS = ["the nurse said that", "the doctor said that he was", "a man"]


def check_result_shape(result) -> None:
    """The contract every attnlab result keeps (used by the bias tests too)."""
    import matplotlib.pyplot as plt

    assert isinstance(result, Result)
    for part in ("table", "per_prompt", "summary"):
        assert isinstance(getattr(result, part), pd.DataFrame) and len(getattr(result, part)) > 0
    backend, open_figures = matplotlib.get_backend(), plt.get_fignums()
    fig = result.plot()
    assert isinstance(fig, Figure) and fig.axes
    own = Figure()
    ax = own.add_subplot()
    assert result.plot(ax=ax) is own
    assert matplotlib.get_backend() == backend and plt.get_fignums() == open_figures  # pyplot untouched


def test_effect_result(tiny_gpt2):
    res = effect(tiny_gpt2, PROMPTS, LogitDiff(" she", " he"), [AblateHead(1, 0)], progress=False)
    check_result_shape(res)
    assert res.summary is res.table and res.table.effect[0] == res.mean
    assert list(res["effect"]) == list(res.table.effect)


def test_sweep_result_and_deprecated_heatmap(tiny_llama):
    res = sweep_heads(tiny_llama, PROMPTS, KL(), "zero", progress=False)
    check_result_shape(res)
    assert list(res.summary["effect"]) == list(res.top(5)["effect"])
    assert (res["head"] == res.table["head"]).all()  # the safe spelling of table["head"]
    with pytest.raises(InvalidInput, match="no column 'haed'; did you mean 'head'"):
        res["haed"]
    with pytest.warns(DeprecationWarning, match=r"SweepResult.heatmap is deprecated.*use SweepResult.plot"):
        fig = res.heatmap(title="heads")
    assert fig.axes[0].get_title() == "heads"


def test_save_writes_tables_and_plot(tiny_gemma, tmp_path):
    res = sweep_neurons(tiny_gemma, PROMPTS, KL(), 1, 0, dims=[0, 1], progress=False)
    written = res.save(tmp_path, stem="dims")
    assert sorted(p.name for p in written) == ["dims.png", "dims_per_prompt.csv", "dims_summary.csv", "dims_table.csv"]
    assert pd.read_csv(tmp_path / "dims_table.csv").dim.tolist() == [0, 1]
