"""matplotlib figures for attnlab's tables: head sweeps, head statistics, clusterings, context windows, bias.

Every function takes a plain pandas DataFrame (the columns are named in its docstring and
can be renamed with keyword options), so results from ``attnlab.measure``,
``attnlab.analysis`` and ``attnlab.bias`` or from your own code plot the same way. Each
returns a :class:`matplotlib.figure.Figure` drawn on the Agg canvas: no pyplot, no global
backend change, no figure left open, safe in scripts and servers; ``fig.savefig("x.png")``
saves it and Jupyter displays it. ``ax=`` draws on the caller's Axes instead (a list of
Axes for the multi-panel plots) and returns their figure. matplotlib is imported only when
a figure is drawn.

>>> import pandas as pd
>>> from attnlab.viz.plots import head_heatmap
>>> df = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "effect": [0.1, -0.2, 0.0, 0.4]})
>>> head_heatmap(df).axes[0].images[0].get_array().shape
(2, 2)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from attnlab.errors import InvalidInput, is_integer
from attnlab.measure.plots import is_axes

if TYPE_CHECKING:  # matplotlib is imported only when a figure is drawn
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "head_heatmap", "head_statistics", "clustering_embedding", "context_window_curves", "bias_by_occupation",
    "grouped_bars", "panels",
]


def _figure(width: float, height: float):
    """A Figure on an Agg canvas (no pyplot state, nothing shown)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        raise InvalidInput('plots need matplotlib: pip install "matplotlib>=3.8"') from None
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def panels(ax, n: int, width: float, height: float, what: str) -> tuple[Figure, list[Axes]]:
    """The figure and ``n`` axes to draw on: new ones in a row, or the caller's ``ax``.

    ``ax`` is ``None`` (a new Agg figure), one Axes (when ``n == 1``) or a sequence of
    ``n`` Axes, so a plot can be placed in a figure the caller laid out.
    """
    if ax is None:
        fig = _figure(width, height)
        return fig, list(fig.subplots(1, n, squeeze=False)[0])
    if is_axes(ax):
        axes = [ax]
    elif isinstance(ax, (Sequence, np.ndarray)) and not isinstance(ax, str):
        axes = list(np.ravel(np.asarray(ax, dtype=object)))
    else:
        axes = None
    if axes is None or len(axes) != n or not all(is_axes(a) for a in axes):
        shown = type(ax).__name__ if axes is None else f"{len(axes)} item(s)"
        wanted = "one Axes" if n == 1 else f"a list of {n} Axes"
        raise InvalidInput(f"{what} draws {n} panel(s): pass ax=None or {wanted}, got {shown}")
    return axes[0].figure, axes


def _check_frame(df, columns: Sequence[str], what: str, *, numeric: Sequence[str] = ()) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise InvalidInput(f"{what} takes a pandas DataFrame with columns {list(columns)}, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InvalidInput(f"{what}: missing column(s) {missing}; the DataFrame has {list(df.columns)}")
    if df.empty:
        raise InvalidInput(f"{what}: the DataFrame is empty")
    for c in numeric:
        if not pd.api.types.is_numeric_dtype(df[c]):
            raise InvalidInput(f"{what}: column {c!r} must be numeric, got dtype {df[c].dtype}")
    return df


def _check_whole(df: pd.DataFrame, columns: Sequence[str], what: str, why: str) -> None:
    """Layer and head columns hold whole numbers (NaN, inf and 0.5 are refused, naming the first)."""
    for column in columns:
        values = df[column].to_numpy(dtype=float, na_value=np.nan)
        bad = ~np.isfinite(values) | (values != np.round(values))
        if bad.any():
            raise InvalidInput(f"{what}: column {column!r} must hold whole numbers ({why}), "
                               f"got {float(values[int(np.argmax(bad))])!r}")


def _symmetric_limit(values: np.ndarray) -> float:
    finite = np.abs(values[np.isfinite(values)])
    vmax = float(finite.max()) if finite.size else 0.0
    return vmax if vmax > 0 else 1.0


_MAX_CELLS = 4_000_000  # 4096 keys x 1024 dims; far past what an image can show cell by cell


def head_heatmap(
    df: pd.DataFrame,
    *,
    value: str = "effect",
    layer: str = "layer",
    head: str = "head",
    title: str | None = None,
    cmap: str = "RdBu_r",
    annotate: bool | None = None,
    n_layers: int | None = None,
    n_heads: int | None = None,
    ax=None,
):
    """A layers x heads image of a per-head number (a sweep's effect), diverging colours centred at 0.

    ``df`` has one row per head with columns ``layer``, ``head`` and ``value`` (names
    configurable; any two integer columns make the grid, e.g. ``layer="key", head="dim"``).
    Heads missing from ``df`` stay blank. Red is positive, blue negative, with the same
    scale both ways so zero is white. ``annotate`` writes the numbers in the cells
    (default: when there are at most 200 cells).
    """
    _check_frame(df, [layer, head, value], "head_heatmap", numeric=[layer, head, value])
    if df.duplicated([layer, head]).any():
        dup = df[df.duplicated([layer, head], keep=False)][[layer, head]].iloc[0].tolist()
        raise InvalidInput(f"head_heatmap: ({layer}, {head}) {tuple(dup)} appears more than once; aggregate first")
    # the cells are indexed by them: 0.5 was cut to 0 (and overwrote that cell), NaN crashed
    _check_whole(df, [layer, head], "head_heatmap", "it indexes the grid")
    for name, size in (("n_layers", n_layers), ("n_heads", n_heads)):
        if size is not None and (not is_integer(size) or size < 1):
            raise InvalidInput(f"head_heatmap: {name} must be a positive integer (or None: from the data), "
                               f"got {size!r}")
    L = int(n_layers if n_layers is not None else df[layer].max() + 1)
    H = int(n_heads if n_heads is not None else df[head].max() + 1)
    if df[layer].min() < 0 or df[head].min() < 0 or df[layer].max() >= L or df[head].max() >= H:
        raise InvalidInput(f"head_heatmap: {layer}s must lie in 0..{L - 1} and {head}s in 0..{H - 1}")
    if L * H > _MAX_CELLS:  # a stray layer of 10**7 built a 10M-row grid before any error
        raise InvalidInput(f"head_heatmap: a {L} x {H} grid ({layer}s 0..{L - 1}, {head}s 0..{H - 1}) is too large to draw "
                           f"(at most {_MAX_CELLS:,} cells); check the largest {layer} and {head} in the data")
    grid = np.full((L, H), np.nan)
    grid[df[layer].to_numpy(int), df[head].to_numpy(int)] = df[value].to_numpy(float)
    vmax = _symmetric_limit(grid)
    fig, (axis,) = panels(ax, 1, min(2.0 + 0.55 * H, 14), min(1.4 + 0.38 * L, 12), "head_heatmap")
    image = axis.imshow(grid, cmap=cmap, vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")
    axis.set_xlabel(head)
    axis.set_ylabel(layer)
    if H <= 64:
        axis.set_xticks(range(H))
    if L <= 64:
        axis.set_yticks(range(L))
    axis.set_title(title or f"{value} per {head}")
    fig.colorbar(image, ax=axis, label=value, shrink=0.9)
    if annotate if annotate is not None else L * H <= 200:
        for (i, j), v in np.ndenumerate(grid):
            if np.isfinite(v):
                axis.text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=7,
                          color="white" if abs(v) > 0.6 * vmax else "black")
    return fig


def head_statistics(
    df: pd.DataFrame,
    columns: Sequence[str] | None = None,
    *,
    layer: str = "layer",
    head: str = "head",
    title: str | None = None,
    ax=None,
):
    """Per-layer scatter of head statistics, as in Clark et al. 2019 (one dot per head, one panel per statistic).

    ``df`` has one row per head with ``layer``, ``head`` and numeric statistic columns
    (e.g. ``entropy``, ``cls``, ``sep``, ``punct``); ``columns`` picks which to draw
    (default: every other numeric column). A black line marks each layer's mean. ``ax``:
    one Axes per column.
    """
    _check_frame(df, [layer, head], "head_statistics", numeric=[layer, head])
    if columns is None:
        columns = [c for c in df.columns if c not in (layer, head) and pd.api.types.is_numeric_dtype(df[c])]
    columns = [columns] if isinstance(columns, str) else list(columns)
    if not columns:
        raise InvalidInput("head_statistics: no numeric statistic columns besides layer and head")
    _check_frame(df, columns, "head_statistics", numeric=columns)
    # a NaN head put its dot at x = NaN (not drawn), and with every head NaN: "cannot convert float NaN to integer"
    _check_whole(df, [layer, head], "head_statistics", "they place the dots")
    n_heads = int(df[head].max()) + 1
    fig, axes = panels(ax, len(columns), min(3.2 * len(columns), 16), 3.0, "head_statistics")
    x_layer = df[layer].to_numpy(float)
    jitter = (df[head].to_numpy(float) + 0.5) / max(n_heads, 1) * 0.5 - 0.25  # heads spread within a layer
    for axis, column in zip(axes, columns):
        y = df[column].to_numpy(float)
        axis.scatter(x_layer + jitter, y, s=14, c=df[layer].to_numpy(float), cmap="viridis", alpha=0.85, linewidths=0)
        means = df.groupby(layer)[column].mean()
        axis.plot(means.index.to_numpy(float), means.to_numpy(float), color="black", linewidth=1, label="layer mean")
        axis.set_xlabel("layer")
        axis.set_title(column)
        axis.grid(alpha=0.3)
    axes[0].legend(loc="best", fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def clustering_embedding(
    df: pd.DataFrame,
    *,
    x: str = "x",
    y: str = "y",
    color: str = "layer",
    label: str | None = None,
    title: str | None = None,
    ax=None,
):
    """2-D embedding of heads (e.g. MDS of Jensen-Shannon distances, Clark et al. 2019), coloured by a column.

    ``df`` has one row per head (or point) with coordinates ``x``, ``y`` and a ``color``
    column: numeric (e.g. ``layer``) gives a colour scale, text (e.g. ``behaviour``) gives
    one colour per category with a legend. ``label`` names a column written next to each
    point (e.g. ``"name"`` holding ``"3.5"``).
    """
    _check_frame(df, [x, y, color] + ([label] if label else []), "clustering_embedding", numeric=[x, y])
    fig, (axis,) = panels(ax, 1, 5.6, 4.6, "clustering_embedding")
    if pd.api.types.is_numeric_dtype(df[color]):
        points = axis.scatter(df[x], df[y], c=df[color].to_numpy(float), cmap="viridis", s=28, linewidths=0)
        fig.colorbar(points, ax=axis, label=color)
    else:
        from matplotlib import colormaps

        cats = list(dict.fromkeys(df[color].astype(str)))
        palette = colormaps["tab10" if len(cats) <= 10 else "tab20"]
        for k, cat in enumerate(cats):
            rows = df[color].astype(str) == cat
            axis.scatter(df.loc[rows, x], df.loc[rows, y], color=palette(k % palette.N), s=28, label=cat, linewidths=0)
        axis.legend(title=color, fontsize=8, loc="best")
    if label:
        for _, row in df.iterrows():
            axis.annotate(str(row[label]), (row[x], row[y]), fontsize=6, xytext=(2, 2), textcoords="offset points")
    axis.set_xticks([])
    axis.set_yticks([])
    axis.set_title(title or f"heads coloured by {color}")
    return fig


def context_window_curves(
    df: pd.DataFrame,
    *,
    x: str = "distance",
    y: str = "mass",
    group: str = "label",
    logx: bool = False,
    title: str | None = None,
    reference: float | None = None,
    markers: bool = True,
    ax=None,
):
    """Attention mass against query-key distance, one curve per ``group`` (e.g. before/after a neuron edit).

    ``df`` is long format: columns ``distance``, ``mass`` and ``label`` (names
    configurable); rows of each label are sorted by distance and joined by a line.
    ``reference`` draws a dashed horizontal line at that value (e.g. the 0.9 level of a
    window); ``markers=False`` draws plain lines (long curves).
    """
    _check_frame(df, [x, y, group], "context_window_curves", numeric=[x, y])
    fig, (axis,) = panels(ax, 1, 6.0, 3.8, "context_window_curves")
    for name, rows in df.groupby(group, sort=False, dropna=False):  # rows without a label are a curve too, not dropped
        rows = rows.sort_values(x)
        axis.plot(rows[x], rows[y], marker="o" if markers else None, markersize=3, linewidth=1.5, label=str(name))
    if reference is not None:
        axis.axhline(reference, color="grey", linewidth=0.8, linestyle="--")
    if logx:
        axis.set_xscale("symlog", linthresh=1)
    axis.set_xlabel(f"{x} (query position - key position)" if x == "distance" else x)
    axis.set_ylabel(y)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, title=group)
    axis.set_title(title or "attention by distance")
    return fig


def bias_by_occupation(
    df: pd.DataFrame,
    *,
    x: str = "share_women",
    y: str = "log_ratio",
    label: str | None = "occupation",
    group: str | None = None,
    title: str | None = None,
    ax=None,
):
    """Scatter of each occupation's pronoun bias against its share of women, with a least-squares line.

    ``df`` has one row per occupation (and per ``group``, e.g. clean / intervened):
    ``share_women`` (0..1 or percent), ``log_ratio`` = log p(she)/p(he), and
    ``occupation`` names written by the points (``label=None`` to leave them out). The
    legend gives each group's fit slope and Pearson r.
    """
    needed = [x, y] + ([label] if label else []) + ([group] if group else [])
    _check_frame(df, needed, "bias_by_occupation", numeric=[x, y])
    fig, (axis,) = panels(ax, 1, 6.4, 4.6, "bias_by_occupation")
    groups = [(None, df)] if group is None else list(df.groupby(group, sort=False, dropna=False))  # NaN: a group too
    for name, rows in groups:
        xs, ys = rows[x].to_numpy(float), rows[y].to_numpy(float)
        points = axis.scatter(xs, ys, s=24, alpha=0.85, linewidths=0, label=None if name is None else str(name))
        # the fit is over the rows with both numbers: one NaN made np.ptp NaN and the line vanished silently
        keep = np.isfinite(xs) & np.isfinite(ys)
        fx, fy = xs[keep], ys[keep]
        if len(fx) >= 2 and np.ptp(fx) > 0:
            slope, intercept = np.polyfit(fx, fy, 1)
            r = float(np.corrcoef(fx, fy)[0, 1]) if np.ptp(fy) > 0 else float("nan")
            grid = np.linspace(fx.min(), fx.max(), 50)
            prefix = "" if name is None else f"{name}: "
            axis.plot(grid, slope * grid + intercept, color=points.get_facecolor()[0], linewidth=1.5,
                      label=f"{prefix}fit slope {slope:.2f}, r = {r:.2f}")
        if label and len(rows) <= 80:
            for xi, yi, text in zip(xs, ys, rows[label].astype(str)):
                axis.annotate(text, (xi, yi), fontsize=6, xytext=(3, 2), textcoords="offset points", alpha=0.8)
    axis.axhline(0, color="grey", linewidth=0.8, linestyle="--")
    axis.set_xlabel(x.replace("_", " "))
    axis.set_ylabel("log p(she) / p(he)" if y == "log_ratio" else y)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="best")
    axis.set_title(title or "pronoun bias by occupation")
    return fig


def grouped_bars(
    df: pd.DataFrame,
    y: str | Sequence[str],
    *,
    x: str,
    ylabel: str | None = None,
    ylim: tuple[float, float] | None = None,
    reference: float | None = None,
    legend: bool = True,
    title: str | None = None,
    ax=None,
):
    """One group of bars per row of ``df`` (labelled by column ``x``), one bar per column in ``y``.

    For a few numbers side by side: a relation's best head against the fixed-offset
    baseline, a probe's UAS against simple parsers, each head's entropy within its layer.
    ``reference`` draws a dashed horizontal line (e.g. the entropy of uniform attention).
    """
    ys = [y] if isinstance(y, str) else list(y)
    if not ys:
        raise InvalidInput("grouped_bars: give at least one column in y")
    if ylim is not None and not (isinstance(ylim, (tuple, list)) and len(ylim) == 2
                                 and all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in ylim)):
        raise InvalidInput(f"grouped_bars: ylim must be (low, high), two numbers, got {ylim!r}")
    _check_frame(df, [x, *ys], "grouped_bars", numeric=ys)
    fig, (axis,) = panels(ax, 1, max(4.0, 0.25 * len(df) * len(ys) + 2), 3.2, "grouped_bars")
    width = 0.8 / len(ys)
    positions = np.arange(len(df))
    for k, column in enumerate(ys):
        axis.bar(positions + (k - (len(ys) - 1) / 2) * width, df[column].to_numpy(float), width=width,
                 label=column, color=f"C{k % 10}")
    if reference is not None:
        axis.axhline(reference, color="grey", linewidth=0.8, linestyle="--")
    axis.set_xticks(positions)
    axis.set_xticklabels([str(v) for v in df[x]], fontsize=8)
    axis.set_xlabel(x)
    axis.set_ylabel(ylabel or (ys[0] if len(ys) == 1 else "value"))
    if ylim is not None:
        axis.set_ylim(*ylim)
    if legend and len(ys) > 1:
        axis.legend(fontsize=8, frameon=False)
    if title:
        axis.set_title(title)
    return fig
