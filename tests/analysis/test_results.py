"""Every analysis result has the one result shape; its per-sentence table adds up to its table; old spellings warn."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from attnlab.analysis import (
    AttentionProbe,
    attention_by_distance,
    decay_neurons,
    head_distances,
    head_stats,
    loss_by_position,
    neuron_data,
    read_conllu,
    relation_accuracy,
    window_experiment,
)
from attnlab.errors import InvalidInput
from attnlab.interventions import EditScores
from attnlab.measure.result import Result

FIX = Path(__file__).parent / "fixtures"
TEXTS = ["the nurse said that she left the house .", "a dog ran .", "the doctor asked the teacher about the old book ."]


@pytest.fixture
def results(tiny_bert, tiny_llama):
    sents = read_conllu(FIX / "good.conllu")
    probe = AttentionProbe(epochs=3, seed=0).fit(tiny_bert, sents, progress=False)
    return {
        "HeadStats": head_stats(tiny_bert, TEXTS, progress=False),
        "HeadMap": head_distances(tiny_bert, TEXTS, progress=False),
        "RelationAccuracy": relation_accuracy(tiny_bert, sents, progress=False),
        "ProbeScore": probe.evaluate(tiny_bert, sents, progress=False),
        "NeuronData": neuron_data(tiny_llama, TEXTS[0], layer=1, head=2, query=5),
        "DecayProfile": decay_neurons(tiny_llama, TEXTS, progress=False),
        "DistanceProfile": attention_by_distance(tiny_llama, TEXTS, progress=False),
        "WindowExperiment": window_experiment(tiny_llama, TEXTS, {"narrow": [EditScores(0, None, distance_penalty=2.0)]},
                                              progress=False),
    }


def test_every_result_has_the_one_shape(results, tmp_path):
    from matplotlib.figure import Figure

    for name, result in results.items():
        assert isinstance(result, Result), name
        for part in ("table", "per_prompt", "summary"):
            assert isinstance(getattr(result, part), pd.DataFrame), (name, part)
        assert len(result.table) > 0 and len(result.summary) > 0, name
        assert isinstance(result.plot(), Figure), name
        written = result.save(tmp_path / name)
        assert {p.suffix for p in written} == {".csv", ".png"}, name
        column = result.table.columns[0]
        assert result[column].equals(result.table[column]), name  # the safe column accessor
    assert results["HeadStats"]["head"].tolist() == list(range(4)) * 2  # not DataFrame.head


def test_head_stats_per_sentence_rows_average_to_the_table(results):
    stats = results["HeadStats"]
    per = stats.per_prompt
    assert len(per) == len(TEXTS) * len(stats.table) and sorted(per["sentence"].unique()) == [0, 1, 2]
    for column, weight in [("special", per["n_tokens"]), ("entropy", per["n_tokens"]), ("prev", per["n_tokens"] - 1),
                           ("entropy_last", pd.Series(1.0, index=per.index))]:
        weighted = (per[column] * weight).groupby([per["layer"], per["head"]]).sum() / weight.groupby(
            [per["layer"], per["head"]]).sum()
        np.testing.assert_allclose(weighted.to_numpy(), stats.table[column].to_numpy(), atol=1e-12)


def test_single_sentence_per_prompt_equals_the_table(tiny_gpt2):
    stats = head_stats(tiny_gpt2, [TEXTS[1]], progress=False)
    np.testing.assert_allclose(stats.per_prompt[list(stats.table.columns)].to_numpy(float),
                               stats.table.to_numpy(float), atol=1e-12)
    prof = attention_by_distance(tiny_gpt2, [TEXTS[1]], progress=False)
    pd.testing.assert_frame_equal(prof.per_prompt[list(prof.table.columns)], prof.table, check_dtype=False)


def test_distance_per_sentence_sinks_average_to_the_table(results):
    prof = results["DistanceProfile"]
    per = prof.per_prompt
    weighted = (per["sink"] * per["n_tokens"]).groupby([per["layer"], per["head"]]).sum() / per.groupby(
        ["layer", "head"])["n_tokens"].sum()
    np.testing.assert_allclose(weighted.to_numpy(), prof.table["sink"].to_numpy(), atol=1e-12)
    assert prof.summary["model_window"].iloc[0] == prof.model_window(0.9)


def test_probe_per_sentence_counts_add_up(results):
    score = results["ProbeScore"]
    per = score.per_prompt
    assert per["n_words"].sum() == score.n_words and len(per) == score.n_sentences
    assert per["correct"].sum() / per["n_words"].sum() == pytest.approx(score.uas)


def test_neuron_data_terms_add_up_to_the_scores(results):
    data = results["NeuronData"]
    terms = data.per_prompt.groupby("key")["contribution"].sum().to_numpy()
    visible = data.table["visible"].to_numpy()
    np.testing.assert_allclose(terms[visible], data.table["score"].to_numpy()[visible], atol=1e-5)
    assert data.summary["top_key"].iloc[0] == int(data.table["pattern"].idxmax())


def test_relation_summary_is_the_all_row_and_decay_summary_the_top(results):
    acc = results["RelationAccuracy"]
    assert acc.summary["relation"].tolist() == ["all"]
    assert acc.summary.iloc[0].equals(acc.table.set_index("relation").loc[["all"]].reset_index().iloc[0])
    decay = results["DecayProfile"]
    pd.testing.assert_frame_equal(decay.summary, decay.table.head(10))
    narrow = decay.ranked(max_distance=4, by="spearman").table
    assert narrow["spearman"].is_monotonic_increasing
    assert decay.table["decay"].is_monotonic_decreasing  # the profile itself is unchanged


def test_loss_by_position_is_the_same_in_any_batch_size(tiny_llama):
    one = loss_by_position(tiny_llama, TEXTS, progress=False, batch_size=1)
    three = loss_by_position(tiny_llama, TEXTS, progress=False, batch_size=3)
    pd.testing.assert_frame_equal(one, three, rtol=1e-5)
    with pytest.raises(InvalidInput, match="batch_size must be a positive integer"):
        loss_by_position(tiny_llama, TEXTS, progress=False, batch_size=0)


def test_old_spellings_warn_and_give_the_same_numbers(results):
    stats, hmap, acc = results["HeadStats"], results["HeadMap"], results["RelationAccuracy"]
    with pytest.warns(DeprecationWarning, match=r"HeadStats\.df is deprecated .* use HeadStats\.table"):
        assert stats.df.equals(stats.table)
    with pytest.warns(DeprecationWarning, match=r"HeadMap\.df is deprecated .* use HeadMap\.table"):
        assert hmap.df.equals(hmap.table)
    with pytest.warns(DeprecationWarning, match=r"RelationAccuracy\.table\(min_count=, relations=\) is deprecated"):
        old = acc.table(min_count=2, relations=["det", "nsubj", "punct"])
    t = acc.table
    assert old.equals(t[(t["count"] >= 2) & t["relation"].isin(["det", "nsubj", "punct"])].reset_index(drop=True))
    with pytest.warns(DeprecationWarning, match=r"use ProbeScore\.table"):
        assert results["ProbeScore"].to_frame().equals(results["ProbeScore"].table)
    decay = results["DecayProfile"]
    with pytest.warns(DeprecationWarning, match=r"DecayProfile\.ranking\(\.\.\.\) is deprecated"):
        assert decay.ranking(max_distance=5).equals(decay.ranked(max_distance=5).table)
    with pytest.warns(DeprecationWarning, match=r"use WindowExperiment\.table"):
        assert results["WindowExperiment"].windows.equals(results["WindowExperiment"].table)
    with pytest.warns(DeprecationWarning, match=r'HeadStats\.plot\(kind="entropy"\)'):
        assert len(stats.plot_entropy().axes[0].patches) == 8
    with pytest.warns(DeprecationWarning, match=r'HeadStats\.plot\(kind="targets"\)'):
        stats.plot_targets()
    with pytest.warns(DeprecationWarning, match=r"DecayProfile\.plot\(units=\.\.\.\)"):
        decay.plot([(0, 1, 1)])


def test_old_neuron_names_warn(tiny_llama):
    import attnlab.analysis as analysis
    from attnlab.analysis import neurons

    with pytest.warns(DeprecationWarning, match=r"use attnlab\.analysis\.neuron_data"):
        old = analysis.neuron_view(tiny_llama, TEXTS[0], layer=1, head=2, query=5)
    new = neuron_data(tiny_llama, TEXTS[0], layer=1, head=2, query=5)
    assert torch.equal(old.pattern, new.pattern) and torch.equal(old.qk, new.qk)
    with pytest.warns(DeprecationWarning, match=r"use from attnlab\.analysis\.neurons import NeuronData"):
        assert analysis.NeuronView is neurons.NeuronData
    with pytest.warns(DeprecationWarning, match=r"use model\.cfg\.rotary"):
        assert analysis.is_rotary(tiny_llama) is True
    with pytest.warns(DeprecationWarning, match=r"use model\.cfg\.scaling"):
        assert analysis.head_scale(tiny_llama, 1) == tiny_llama.cfg.scaling == tiny_llama.cfg.d_head ** -0.5


def test_plot_kinds_and_axes(results):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure()
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    assert results["HeadMap"].plot(ax=[left, right]) is fig
    assert results["ProbeScore"].plot(ax=left) is fig
    assert len(left.patches) == 3  # one bar per parser
    with pytest.raises(InvalidInput, match=r"HeadMap\.plot draws 2 panel\(s\): pass ax=None or a list of 2 Axes"):
        results["HeadMap"].plot(ax=left)
    with pytest.raises(InvalidInput, match="unknown plot kind 'bars'; valid: targets, entropy"):
        results["HeadStats"].plot(kind="bars")
