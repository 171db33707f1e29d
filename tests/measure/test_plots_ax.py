"""A result's plot draws on the caller's Axes, and anything else given as ax is a typed error."""

from __future__ import annotations

import matplotlib
import pytest

from attnlab.errors import InvalidInput
from attnlab.interventions import AblateHead
from attnlab.measure import LogitDiff, effect, sweep_heads

matplotlib.use("Agg")
PROMPTS = ["the nurse said that", "the doctor said that he"]


@pytest.mark.parametrize("bad", [[None, None], "axes", 3])
def test_measure_results_refuse_an_ax_that_is_not_one_axes(tiny_llama, bad):
    from matplotlib.figure import Figure

    results = [effect(tiny_llama, PROMPTS, LogitDiff(" she", " he"), [AblateHead(1, 0)], progress=False, n_boot=10),
               sweep_heads(tiny_llama, PROMPTS, LogitDiff(" she", " he"), "zero", layers=[1], progress=False, n_boot=10)]
    for result in results:
        with pytest.raises(InvalidInput, match="ax must be None or one matplotlib Axes, got"):
            result.plot(ax=bad)
        ax = Figure().subplots()
        assert result.plot(ax=ax) is ax.figure
