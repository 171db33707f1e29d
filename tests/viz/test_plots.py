"""Each plot returns a Figure whose artists match the data it was given."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from attnlab.errors import InvalidInput
from attnlab.viz.plots import (
    bias_by_occupation, clustering_embedding, context_window_curves, head_heatmap, head_statistics,
)


@pytest.fixture
def sweep() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [(layer, head, rng.normal()) for layer in range(3) for head in range(4)]
    return pd.DataFrame(rows, columns=["layer", "head", "effect"])


def test_head_heatmap_is_layers_by_heads_centred_at_zero(sweep, tmp_path):
    fig = head_heatmap(sweep)
    assert isinstance(fig, Figure)
    image = fig.axes[0].images[0]
    grid = image.get_array()
    assert grid.shape == (3, 4)
    assert grid[2, 1] == pytest.approx(sweep.query("layer == 2 and head == 1").effect.item())
    vmin, vmax = image.get_clim()
    assert vmin == pytest.approx(-vmax) and vmax == pytest.approx(sweep.effect.abs().max())
    assert len(fig.axes[0].texts) == 12  # annotated cells
    path = tmp_path / "heat.png"
    fig.savefig(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_head_heatmap_leaves_missing_heads_blank_and_checks_input(sweep):
    part = sweep[sweep["head"] != 3].rename(columns={"effect": "logit_diff"})
    grid = head_heatmap(part, value="logit_diff", n_heads=4).axes[0].images[0].get_array()
    filled = np.ma.filled(np.ma.asarray(grid, dtype=float), np.nan)
    assert filled.shape == (3, 4) and np.isnan(filled[:, 3]).all() and np.isfinite(filled[:, :3]).all()
    with pytest.raises(InvalidInput, match=r"missing column\(s\) \['effect'\]; the DataFrame has \['layer', 'head', 'logit_diff'\]"):
        head_heatmap(part)
    with pytest.raises(InvalidInput, match=r"\(layer, head\) \(0, 0\) appears more than once"):
        head_heatmap(pd.concat([sweep, sweep.iloc[:1]]))
    with pytest.raises(InvalidInput, match="takes a pandas DataFrame"):
        head_heatmap(sweep.to_numpy())
    with pytest.raises(InvalidInput, match="must be numeric"):
        head_heatmap(sweep.assign(effect="x"))


def test_head_statistics_one_panel_and_one_dot_per_head(sweep):
    stats = sweep.assign(entropy=sweep.effect.abs(), to_sep=np.linspace(0, 1, len(sweep)))
    fig = head_statistics(stats, ["entropy", "to_sep"])
    assert len(fig.axes) == 2
    for ax, column in zip(fig.axes, ["entropy", "to_sep"]):
        offsets = ax.collections[0].get_offsets()
        assert len(offsets) == len(stats)
        np.testing.assert_allclose(np.sort(offsets[:, 1]), np.sort(stats[column]))
        assert np.all(np.abs(offsets[:, 0] - stats.layer.to_numpy()) <= 0.25)  # dots stay at their layer
        mean_line = ax.lines[0].get_ydata()
        np.testing.assert_allclose(mean_line, stats.groupby("layer")[column].mean())
    assert len(head_statistics(stats).axes) == 3  # effect, entropy, to_sep
    with pytest.raises(InvalidInput, match="no numeric statistic columns"):
        head_statistics(sweep[["layer", "head"]])


def test_clustering_embedding_numeric_and_categorical_colours():
    df = pd.DataFrame({"x": [0.0, 1, 2, 3, 4], "y": [1.0, 0, 1, 0, 1], "layer": [0, 0, 1, 1, 2],
                       "behaviour": ["prev", "prev", "sep", "broad", "sep"], "name": ["0.0", "0.1", "1.0", "1.1", "2.0"]})
    fig = clustering_embedding(df, label="name")
    assert len(fig.axes[0].collections[0].get_offsets()) == 5
    assert len(fig.axes) == 2  # the colour bar
    assert [t.get_text() for t in fig.axes[0].texts] == df.name.tolist()
    fig = clustering_embedding(df, color="behaviour")
    sizes = [len(c.get_offsets()) for c in fig.axes[0].collections]
    assert sizes == [2, 2, 1]
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["prev", "sep", "broad"]


def test_context_window_curves_one_line_per_label():
    d = np.arange(1, 11)
    df = pd.concat([
        pd.DataFrame({"distance": d, "mass": np.exp(-d / s), "label": name})
        for name, s in [("clean", 2.0), ("edited", 6.0), ("random", 4.0)]
    ]).sample(frac=1, random_state=0)  # order must not matter
    fig = context_window_curves(df, logx=True)
    lines = fig.axes[0].lines
    assert len(lines) == 3
    assert [line.get_label() for line in lines] == list(dict.fromkeys(df.label))
    for line in lines:
        assert list(line.get_xdata()) == list(d)  # sorted by distance
    assert fig.axes[0].get_xscale() == "symlog"


def test_bias_by_occupation_fit_and_labels():
    share = np.array([0.1, 0.3, 0.5, 0.7, 0.9])
    df = pd.DataFrame({"occupation": ["mechanic", "lawyer", "baker", "teacher", "nurse"],
                       "share_women": share, "log_ratio": 2 * share - 1})
    fig = bias_by_occupation(df)
    ax = fig.axes[0]
    assert len(ax.collections[0].get_offsets()) == 5
    assert [t.get_text() for t in ax.texts] == df.occupation.tolist()
    fit = [line for line in ax.lines if "fit" in line.get_label()][0]
    np.testing.assert_allclose(fit.get_ydata(), 2 * fit.get_xdata() - 1, atol=1e-9)
    assert "slope 2.00, r = 1.00" in fit.get_label()
    both = pd.concat([df.assign(run="clean"), df.assign(run="intervened", log_ratio=0.1 * df.log_ratio)])
    ax = bias_by_occupation(both, group="run", label=None).axes[0]
    assert len(ax.collections) == 2 and not ax.texts
    assert sorted(line.get_label().split(":")[0] for line in ax.lines if "fit" in line.get_label()) == ["clean", "intervened"]
    with pytest.raises(InvalidInput, match="the DataFrame is empty"):
        bias_by_occupation(df.iloc[:0])
