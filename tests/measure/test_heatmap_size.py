"""Heatmaps stay a page: a cell per unit up to a few dozen, then a capped figure with thinned labels."""

import numpy as np
import pandas as pd

from attnlab.measure.plots import MAX_FIGSIZE, MAX_TICKS, heatmap


def frame(rows: int, cols: int) -> pd.DataFrame:
    values = np.arange(rows * cols, dtype=float).reshape(rows, cols) - rows * cols / 2
    return pd.DataFrame(values, index=pd.Index(range(rows), name="layer"), columns=pd.Index(range(cols), name="dim"))


def test_small_matrices_get_a_label_per_cell():
    fig = heatmap(frame(18, 4), title="t", label="effect")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2", "3"]
    assert len(ax.get_yticklabels()) == 18
    width, height = fig.get_size_inches()
    assert width < MAX_FIGSIZE[0] and height < MAX_FIGSIZE[1]


def test_large_matrices_are_capped_and_their_labels_thinned():
    fig = heatmap(frame(72, 256), title="q dims", label="effect")  # Gemma: 72 heads x 256 dims
    width, height = fig.get_size_inches()
    assert (width, height) == MAX_FIGSIZE  # 1.2 + 0.45 * 256 = 116 inches before the cap
    ax = fig.axes[0]
    xs = [int(t.get_text()) for t in ax.get_xticklabels()]
    ys = [int(t.get_text()) for t in ax.get_yticklabels()]
    assert 0 < len(xs) <= MAX_TICKS and 0 < len(ys) <= MAX_TICKS
    assert xs[0] == 0 and xs == list(range(0, 256, 8))  # every 8th dimension, labelled with its own index
    assert ys == list(range(0, 72, 3))
    # the image still holds every cell
    assert ax.images[0].get_array().shape == (72, 256)


def test_an_effect_plot_of_many_prompts_stays_a_page():
    """3000 prompts drew a 901-inch figure with 3000 overlapping labels (31 s to save)."""
    from attnlab.measure.effect import EffectResult

    n = 3000
    per_prompt = pd.DataFrame({"prompt": [f"prompt {i}" for i in range(n)], "clean": 0.0, "intervened": 1.0,
                               "effect": np.linspace(-1, 1, n)})
    summary = pd.DataFrame([{"metric": "kl", "n_prompts": n, "clean": 0.0, "intervened": 1.0, "effect": 0.0,
                             "ci_low": -0.1, "ci_high": 0.1}])
    fig = EffectResult(per_prompt, summary).plot()
    assert fig.get_size_inches()[1] == MAX_FIGSIZE[1]
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert 0 < len(labels) <= MAX_TICKS and labels[0] == "prompt 0" and labels[1] == f"prompt {-(-n // MAX_TICKS)}"
    assert len(fig.axes[0].patches) == n + 1  # every prompt keeps its bar; the interval band is one more patch
    few = EffectResult(per_prompt.iloc[:3], summary).plot()
    assert [t.get_text() for t in few.axes[0].get_yticklabels()] == ["prompt 0", "prompt 1", "prompt 2"]
    assert few.get_size_inches()[1] == 1.2 + 0.3 * 3
