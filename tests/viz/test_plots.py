"""Each plot returns a Figure whose artists match the data it was given."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from attnlab.errors import InvalidInput
from attnlab.viz.plots import (
    bias_by_occupation, clustering_embedding, context_window_curves, grouped_bars, head_heatmap, head_statistics,
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


def test_grouped_bars_one_bar_per_row_and_column():
    df = pd.DataFrame({"relation": ["det", "nsubj"], "best head": [0.9, 0.6], "offset": [0.7, 0.4]})
    ax = grouped_bars(df, ["best head", "offset"], x="relation", ylim=(0, 1), reference=0.5).axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert heights == [0.9, 0.6, 0.7, 0.4]  # column by column
    assert [t.get_text() for t in ax.get_xticklabels()] == ["det", "nsubj"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["best head", "offset"]
    assert ax.lines[0].get_ydata()[0] == 0.5 and ax.get_ylim() == (0, 1)
    with pytest.raises(InvalidInput, match=r"missing column\(s\) \['uas'\]"):
        grouped_bars(df, "uas", x="relation")


def test_every_plot_draws_on_the_callers_axes(sweep):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = Figure()
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3)
    stats = sweep.assign(entropy=sweep.effect.abs())
    assert head_heatmap(sweep, ax=axes[0, 0]) is fig and axes[0, 0].images
    assert head_statistics(stats, ["effect", "entropy"], ax=axes[1, :2]) is fig
    assert len(axes[1, 1].collections[0].get_offsets()) == len(stats)
    points = pd.DataFrame({"x": [0.0, 1.0], "y": [1.0, 0.0], "layer": [0, 1]})
    assert clustering_embedding(points, ax=axes[0, 1]) is fig and len(axes[0, 1].collections) == 1
    curves = pd.DataFrame({"distance": [1, 2], "mass": [0.5, 0.2], "label": "clean"})
    assert context_window_curves(curves, ax=axes[0, 2], reference=0.9) is fig and len(axes[0, 2].lines) == 2
    occupations = pd.DataFrame({"occupation": ["a", "b"], "share_women": [0.1, 0.9], "log_ratio": [-1.0, 1.0]})
    assert bias_by_occupation(occupations, ax=axes[1, 2]) is fig
    with pytest.raises(InvalidInput, match=r"head_statistics draws 2 panel\(s\): pass ax=None or a list of 2 Axes, got 1 item"):
        head_statistics(stats, ["effect", "entropy"], ax=[axes[0, 0]])
    with pytest.raises(InvalidInput, match=r"head_heatmap draws 1 panel\(s\): pass ax=None or one Axes, got str"):
        head_heatmap(sweep, ax="left")


@pytest.fixture
def pdf_backend():
    """Switch to the 'pdf' backend (one no plot should move away from) and restore the user's afterwards."""
    import sys

    import matplotlib

    previous = dict.__getitem__(matplotlib.rcParams, "backend")  # raw: reading it normally may pick a backend
    pyplot_before = sys.modules.get("matplotlib.pyplot")
    open_before = pyplot_before.get_fignums() if pyplot_before else []
    matplotlib.use("pdf")
    yield pyplot_before, open_before
    if isinstance(previous, str):
        matplotlib.use(previous)
    else:
        dict.__setitem__(matplotlib.rcParams, "backend", previous)


def test_plots_never_touch_pyplot_or_the_backend(pdf_backend, sweep, tiny_bert, tiny_llama):
    """Every viz plot and every analysis result's plot: no pyplot import, no open figure, the backend unchanged."""
    import sys
    from pathlib import Path

    import matplotlib

    from attnlab.analysis import (
        AttentionProbe, attention_by_distance, decay_neurons, head_distances, head_stats, neuron_data, read_conllu,
        relation_accuracy, window_experiment,
    )

    texts = ["the nurse said that she left the house .", "a dog ran ."]
    sents = read_conllu(Path(__file__).parents[1] / "analysis" / "fixtures" / "good.conllu")
    stats = head_stats(tiny_bert, texts, progress=False)
    results = [
        stats, head_distances(tiny_bert, texts, stats=stats, progress=False),
        relation_accuracy(tiny_bert, sents, progress=False),
        AttentionProbe(epochs=2).fit(tiny_bert, sents, progress=False).evaluate(tiny_bert, sents, progress=False),
        neuron_data(tiny_llama, texts[0], layer=1, head=0, query=4), decay_neurons(tiny_llama, texts, progress=False),
        attention_by_distance(tiny_llama, texts, progress=False), window_experiment(tiny_llama, texts, {}, progress=False),
    ]
    figures = [result.plot() for result in results] + [stats.plot(kind="entropy")]
    figures += [
        head_heatmap(sweep), head_statistics(sweep), grouped_bars(sweep, "effect", x="head"),
        clustering_embedding(pd.DataFrame({"x": [0.0, 1], "y": [1.0, 0], "layer": [0, 1]})),
        context_window_curves(pd.DataFrame({"distance": [1, 2], "mass": [0.5, 0.2], "label": "a"})),
        bias_by_occupation(pd.DataFrame({"occupation": ["a", "b"], "share_women": [0.1, 0.9], "log_ratio": [-1.0, 1.0]})),
    ]
    assert all(isinstance(fig, Figure) and type(fig.canvas).__name__ == "FigureCanvasAgg" for fig in figures)
    assert matplotlib.get_backend() == "pdf"
    pyplot_before, open_before = pdf_backend
    if pyplot_before is None:
        assert "matplotlib.pyplot" not in sys.modules
    else:
        assert pyplot_before.get_fignums() == open_before
