"""The figures results draw: made on a ``matplotlib.figure.Figure``, never through pyplot.

A Figure built directly belongs to nobody's pyplot state: it does not switch the user's
backend, does not open a window and is not kept alive by pyplot, and ``fig.savefig(...)``
works with any backend. Every ``plot(ax=None)`` draws on the axes it is given, or on a
new Figure of its own, and returns the Figure.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from attnlab.errors import InvalidInput

__all__ = ["is_axes", "new_figure", "heatmap", "every_tick", "MAX_FIGSIZE", "MAX_TICKS"]

MAX_FIGSIZE = (16.0, 12.0)  # inches: a heatmap of 72 x 256 q dimensions still fits a screen
MAX_TICKS = 32  # labels per axis; more would overlap


def is_axes(obj) -> bool:
    """A matplotlib Axes, or anything drawn on like one (checked without importing matplotlib)."""
    return hasattr(obj, "figure") and hasattr(obj, "plot") and hasattr(obj, "set_xlabel")


def new_figure(ax=None, *, figsize: tuple[float, float] = (6.0, 4.5), ncols: int = 1):
    """``(figure, axes)``: ``ax``'s own figure and ``ax``, or a new Figure with ``ncols`` axes side by side."""
    if ax is not None:
        if ncols != 1 or not is_axes(ax):
            wanted = "one matplotlib Axes" if ncols == 1 else f"None ({ncols} panels are drawn on a new figure)"
            raise InvalidInput(f"ax must be None or {wanted}, got {type(ax).__name__}")
        return ax.figure, ax
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(1, ncols)


def heatmap(matrix: pd.DataFrame, *, title: str, label: str, ax=None, cmap: str = "RdBu_r"):
    """``matrix`` (rows x columns, e.g. layer x head) as a heatmap centred on 0, row 0 at the top."""
    values = matrix.to_numpy(dtype=float)
    rows, cols = values.shape
    # a cell per head reads well up to a few dozen; beyond that (q/k dimensions, neurons) the page stays a page
    size = (min(MAX_FIGSIZE[0], 1.2 + 0.45 * max(4, cols)), min(MAX_FIGSIZE[1], 1.0 + 0.32 * max(4, rows)))
    fig, ax = new_figure(ax, figsize=size)
    finite = np.isfinite(values)
    lim = float(np.abs(values[finite]).max()) if finite.any() else 1.0
    im = ax.imshow(values, cmap=cmap, vmin=-(lim or 1.0), vmax=lim or 1.0, aspect="auto")
    xs, ys = every_tick(cols), every_tick(rows)
    ax.set_xticks(xs, [str(matrix.columns[i]) for i in xs])
    ax.set_yticks(ys, [str(matrix.index[i]) for i in ys])
    ax.set_xlabel(str(matrix.columns.name or ""))
    ax.set_ylabel(str(matrix.index.name or ""))
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label=label)
    return fig


def every_tick(n: int) -> list[int]:
    """Tick positions: every cell up to ``MAX_TICKS``, else every k-th (the first one kept)."""
    step = max(1, -(-n // MAX_TICKS))
    return list(range(0, n, step))
