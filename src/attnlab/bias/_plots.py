"""Matplotlib figures of the bias floor (imported lazily, Agg backend)."""

from __future__ import annotations

import numpy as np

__all__ = ["new_axes", "scatter_log_ratio", "heatmap"]


def new_axes(ax=None, *, figsize=(6.0, 4.5), ncols: int = 1):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(1, ncols)
    return fig, axes


def scatter_log_ratio(result, ax=None, *, label=None):
    fig, ax = new_axes(ax)
    df = result.per_occupation
    x, y = df.share_women.to_numpy(float), df.log_ratio.to_numpy(float)
    ax.scatter(x, y, s=18, label=label or result.model_name)
    for occ, xi, yi in zip(df.occupation, x, y):
        ax.annotate(occ, (xi, yi), fontsize=6, alpha=0.7, xytext=(2, 2), textcoords="offset points")
    if len(x) > 1 and np.std(x) > 0:
        slope, icpt = np.polyfit(x, y, 1)
        grid = np.linspace(x.min(), x.max(), 10)
        ax.plot(grid, slope * grid + icpt, lw=1)
    ax.axhline(0, color="grey", lw=0.5)
    female, male = result.pronouns
    ax.set_xlabel("share of women in the occupation")
    ax.set_ylabel(f"log p({female}) / p({male})")
    r = result.value("pearson_r")
    ax.set_title(f"{result.model_name}: pronoun bias (Pearson r = {r:.2f})")
    return fig


def heatmap(values: np.ndarray, *, title: str, label: str, ax=None):
    """Layer x head heatmap, layer 0 at the top."""
    fig, ax = new_axes(ax, figsize=(1.2 + 0.6 * values.shape[1], 1.0 + 0.3 * values.shape[0]))
    lim = float(np.nanmax(np.abs(values))) or 1.0
    im = ax.imshow(values, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(values.shape[1]))
    ax.set_yticks(range(values.shape[0]))
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label=label)
    return fig
