"""The figures results draw: made on a ``matplotlib.figure.Figure``, never through pyplot.

A Figure built directly belongs to nobody's pyplot state: it does not switch the user's
backend, does not open a window and is not kept alive by pyplot, and ``fig.savefig(...)``
works with any backend. Every ``plot(ax=None)`` draws on the axes it is given, or on a
new Figure of its own, and returns the Figure.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["new_figure", "heatmap"]


def new_figure(ax=None, *, figsize: tuple[float, float] = (6.0, 4.5), ncols: int = 1):
    """``(figure, axes)``: ``ax``'s own figure and ``ax``, or a new Figure with ``ncols`` axes side by side."""
    if ax is not None:
        return ax.figure, ax
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(1, ncols)


def heatmap(matrix: pd.DataFrame, *, title: str, label: str, ax=None, cmap: str = "RdBu_r"):
    """``matrix`` (rows x columns, e.g. layer x head) as a heatmap centred on 0, row 0 at the top."""
    values = matrix.to_numpy(dtype=float)
    fig, ax = new_figure(ax, figsize=(1.2 + 0.45 * max(4, values.shape[1]), 1.0 + 0.32 * max(4, values.shape[0])))
    finite = np.isfinite(values)
    lim = float(np.abs(values[finite]).max()) if finite.any() else 1.0
    im = ax.imshow(values, cmap=cmap, vmin=-(lim or 1.0), vmax=lim or 1.0, aspect="auto")
    ax.set_xticks(range(values.shape[1]), [str(c) for c in matrix.columns])
    ax.set_yticks(range(values.shape[0]), [str(i) for i in matrix.index])
    ax.set_xlabel(str(matrix.columns.name or ""))
    ax.set_ylabel(str(matrix.index.name or ""))
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label=label)
    return fig
