"""Floor 4: see attention. Self-contained HTML views and matplotlib figures.

Views (each one offline HTML document; ``.html``, ``.save(path)``, ``.fragment()``, Jupyter display):

>>> from attnlab.testing import tiny_model
>>> from attnlab.viz import head_view
>>> view = head_view(tiny_model("gpt2"), "the nurse said that she")
>>> view.html.startswith("<!DOCTYPE html>")
True

Plots live in :mod:`attnlab.viz.plots` (matplotlib is imported only when a plot is drawn).
"""

from attnlab._deprecation import moved_names
from attnlab.viz._html import View
from attnlab.viz.diff_view import diff_view
from attnlab.viz.head_view import head_view
from attnlab.viz.model_view import model_view
from attnlab.viz.neuron_view import neuron_view

__all__ = ["View", "head_view", "model_view", "neuron_view", "diff_view"]

#: The views by name, as the command line spells them.
VIEWS = {"head": head_view, "model": model_view, "neuron": neuron_view, "diff": diff_view}

#: Names that left the package surface: still importable for one release, with a warning naming their home.
__getattr__ = moved_names("attnlab.viz", {
    "DEFAULT_MAX_TOKENS": "attnlab.viz._data", "head_heatmap": "attnlab.viz.plots", "head_statistics": "attnlab.viz.plots",
    "clustering_embedding": "attnlab.viz.plots", "context_window_curves": "attnlab.viz.plots",
    "bias_by_occupation": "attnlab.viz.plots",
})
