"""Floor 4: see attention. Self-contained HTML views and matplotlib figures.

Views (each one offline HTML document; ``.html``, ``.save(path)``, ``.fragment()``, Jupyter display):

>>> from attnlab.testing import tiny_model
>>> from attnlab.viz import head_view
>>> view = head_view(tiny_model("gpt2"), "the nurse said that she")
>>> view.html.startswith("<!DOCTYPE html>")
True

Plots live in :mod:`attnlab.viz.plots` (matplotlib is imported only when a plot is drawn).
"""

from attnlab.viz._data import DEFAULT_MAX_TOKENS
from attnlab.viz._html import View
from attnlab.viz.diff_view import diff_view
from attnlab.viz.head_view import head_view
from attnlab.viz.model_view import model_view
from attnlab.viz.neuron_view import neuron_view
from attnlab.viz.plots import (
    bias_by_occupation,
    clustering_embedding,
    context_window_curves,
    head_heatmap,
    head_statistics,
)

__all__ = [
    "View",
    "head_view",
    "model_view",
    "neuron_view",
    "diff_view",
    "DEFAULT_MAX_TOKENS",
    "VIEWS",
    "head_heatmap",
    "head_statistics",
    "clustering_embedding",
    "context_window_curves",
    "bias_by_occupation",
]

#: The views by name, as the command line spells them.
VIEWS = {"head": head_view, "model": model_view, "neuron": neuron_view, "diff": diff_view}
