import re

import numpy as np
import pytest
import torch

from attnlab.analysis.context import attention_by_distance, loss_by_position, window_experiment
from attnlab.errors import InvalidInput, InvalidSpec, UnsupportedModel
from attnlab.interventions import EditNeuron, EditScores, SetPattern

TEXT = "the nurse said that she left the house because the doctor was not happy with the new car ."


def test_mass_is_a_distribution_and_uniform_window_is_exact(tiny_gpt2):
    n = len(tiny_gpt2.to_tokens(TEXT)[0])
    uniform = [EditScores(layer, None, replace=0.0) for layer in range(2)]
    prof = attention_by_distance(tiny_gpt2, [TEXT], interventions=uniform, ignore_first=False, progress=False)
    assert np.allclose(prof.mass.sum(-1), 1.0)
    # uniform causal attention: query i gives 1/(i+1) to each distance 0..i
    expected = np.array([sum(1 / (i + 1) for i in range(d, n)) / n for d in range(n)])
    assert np.allclose(prof.mass[0, 0], expected)
    cum = np.cumsum(expected)
    assert prof.windows(0.9)["window"].iloc[0] == int(np.argmax(cum >= 0.9))
    assert prof.model_window(1.0) == n - 1
    with_sink = attention_by_distance(tiny_gpt2, [TEXT], interventions=uniform, progress=False)
    assert np.allclose(with_sink.mass.sum(-1) + with_sink.sink, 1.0)
    assert with_sink.sink[0, 0] == pytest.approx(np.mean([1 / (i + 1) for i in range(n)]))


def test_previous_token_head_has_window_one(tiny_bert):
    n = len(tiny_bert.to_tokens(TEXT)[0])
    prev = torch.zeros(n, n)
    prev[0, 0] = 1
    prev[torch.arange(1, n), torch.arange(n - 1)] = 1
    prof = attention_by_distance(tiny_bert, [TEXT], interventions=[SetPattern(0, 2, pattern=prev)],
                                 ignore_first=False, progress=False)
    w = prof.windows(0.9).set_index(["layer", "head"])
    assert w.loc[(0, 2), "window"] == 1.0
    assert w.loc[(0, 2), "mean_distance"] == pytest.approx((n - 1) / n)


def test_window_shrinks_under_a_distance_penalty(tiny_llama):
    penalty = {"penalty": [EditScores(layer, None, distance_penalty=3.0) for layer in range(2)]}
    exp = window_experiment(tiny_llama, [TEXT], penalty, progress=False)
    s = exp.summary.set_index("condition")
    assert s.loc["penalty", "model_window"] < s.loc["clean", "model_window"]
    w = exp.table.pivot_table(index=["layer", "head"], columns="condition", values="window")
    assert (w["penalty"] <= w["clean"]).all() and (w["penalty"] < w["clean"]).any()
    assert set(exp.loss["condition"]) == {"clean", "penalty"}
    assert "late_loss" in s.columns and np.isfinite(s["mean_loss"]).all()
    assert len(exp.plot().axes) == 2
    assert "(2 heads)" in exp.plot(heads=[(0, 1), (1, 2)]).axes[0].get_ylabel()


def test_scaling_a_neuron_changes_only_its_head(tiny_llama):
    edits = {"x0": [EditNeuron(1, 2, site="q", dim=[0, 4], scale=0.0)]}
    exp = window_experiment(tiny_llama, [TEXT], edits, progress=False)
    d = exp.table.pivot_table(index=["layer", "head"], columns="condition", values="mean_distance")
    assert np.allclose(d.loc[0, "x0"], d.loc[0, "clean"])  # layer 0 comes before the edit
    assert d.loc[(1, 2), "x0"] != pytest.approx(d.loc[(1, 2), "clean"])
    assert np.allclose(d.loc[[(1, 0), (1, 1), (1, 3)], "x0"], d.loc[[(1, 0), (1, 1), (1, 3)], "clean"])


def test_loss_by_position_matches_a_direct_computation(tiny_gpt2):
    texts = [TEXT, "a dog ran ."]
    df = loss_by_position(tiny_gpt2, texts, progress=False)
    ids = tiny_gpt2.to_tokens(TEXT)[0]
    logits = tiny_gpt2(ids[None])[0].detach()
    nll = torch.nn.functional.cross_entropy(logits[:-1], ids[1:], reduction="none")
    short = tiny_gpt2.to_tokens("a dog ran .")[0]
    nll_short = torch.nn.functional.cross_entropy(tiny_gpt2(short[None])[0].detach()[:-1], short[1:], reduction="none")
    row = df.set_index("position")
    assert row.loc[2, "loss"] == pytest.approx(float((nll[1] + nll_short[1]) / 2), rel=1e-5)
    assert row.loc[len(ids) - 1, "loss"] == pytest.approx(float(nll[-1]), rel=1e-5)
    assert row.loc[len(ids) - 1, "n"] == 1 and df["position"].min() == 1


def test_bad_input(tiny_bert, tiny_gpt2):
    with pytest.raises(UnsupportedModel, match="not a causal language model"):
        loss_by_position(tiny_bert, [TEXT], progress=False)
    with pytest.raises(InvalidInput, match="empty corpus"):
        attention_by_distance(tiny_gpt2, [], progress=False)
    prof = attention_by_distance(tiny_gpt2, [TEXT], progress=False)
    with pytest.raises(InvalidInput, match=r"level must be a number in \(0, 1\]"):
        prof.windows(1.5)
    with pytest.raises(InvalidInput, match="conditions must be a dict"):
        window_experiment(tiny_gpt2, [TEXT], [EditScores(0, 0, replace=0.0)], progress=False)
    from attnlab.errors import InvalidLocation

    with pytest.raises(InvalidLocation, match="dim 9 out of range"):
        window_experiment(tiny_gpt2, [TEXT], {"bad": [EditNeuron(0, 0, site="q", dim=9, scale=0.0)]}, progress=False)
    assert tiny_gpt2.count_hooks() == 0


@pytest.mark.parametrize("conditions, error, message", [
    ({"clean": [EditScores(0, 0, replace=0.0)]}, InvalidInput, r"condition name 'clean' is reserved for the run "
     r"without interventions"),
    ({1: [EditScores(0, 0, replace=0.0)], "1": []}, InvalidInput, r"conditions 1 and '1' are both named '1' in the "
     r"tables; give each condition a distinct name"),
    ({"a": EditScores(0, 0, replace=0.0)}, InvalidInput, r"condition 'a': expected a list of interventions, got "
     r"EditScores .*\(a single spec goes in a list: \[EditScores"),
    ({"a": "EditScores(0, 0)"}, InvalidInput, r"condition 'a': expected a list of interventions, got str"),
    ({"a": ["EditScores(0, 0)"]}, InvalidSpec, r"condition 'a', item 0: expected an intervention spec .*got str"),
])
def test_window_experiment_refuses_conditions_it_would_mix_up(tiny_gpt2, monkeypatch, conditions, error, message):
    """A user's 'clean' replaced the clean baseline and 1/'1' became one row, silently; checked before any pass."""
    from attnlab.analysis import context

    def no_pass(*args, **kwargs):
        raise AssertionError("a forward pass ran before the conditions were checked")

    monkeypatch.setattr(context, "attention_by_distance", no_pass)
    with pytest.raises(error, match=message):
        window_experiment(tiny_gpt2, [TEXT], conditions, progress=False)


def test_window_experiment_condition_names_are_kept_apart_from_the_baseline(tiny_gpt2):
    edit = [EditScores(0, None, distance_penalty=2.0)]
    res = window_experiment(tiny_gpt2, [TEXT], {"edit": edit, 2: []}, progress=False)
    assert res.summary["condition"].tolist() == ["clean", "edit", "2"]
    clean, edited, empty = res.summary["model_window"].tolist()
    assert empty == clean and edited != clean  # the unedited condition equals the baseline; the edit moves it
    lazy = window_experiment(tiny_gpt2, [TEXT], {"edit": (spec for spec in edit), 2: {}.values()}, progress=False)
    __import__("pandas").testing.assert_frame_equal(lazy.summary, res.summary)  # any iterable of specs, as bias_experiment takes


def test_late_from_must_be_a_position_of_the_texts(tiny_gpt2, monkeypatch):
    """late_from=1000 gave late_loss NaN, -5 averaged every position and 2.5 was taken: none said a word."""
    from attnlab.analysis import context

    n = len(tiny_gpt2.to_tokens(TEXT)[0])
    edit = {"edit": [EditScores(0, 0, replace=0.0)]}
    with monkeypatch.context() as m:
        m.setattr(context, "attention_by_distance", lambda *a, **k: pytest.fail("ran before checking late_from"))
        for bad in (1000, n, 0, -5, 2.5, True, "3"):
            with pytest.raises(InvalidInput, match=rf"late_from must be an integer position in 1\.\.{n - 1} "
                                                   rf"\(the longest text has {n} tokens.*got {bad!r}"):
                window_experiment(tiny_gpt2, [TEXT], edit, late_from=bad, progress=False)
    res = window_experiment(tiny_gpt2, [TEXT], edit, late_from=np.int64(n - 3), progress=False)
    clean = res.loss[res.loss.condition == "clean"]
    assert res.summary.late_loss[0] == pytest.approx(clean.loss[clean.position >= n - 3].mean())
    assert len(clean[clean.position >= n - 3]) == 3


def test_window_experiment_reads_a_generator_of_texts_once(tiny_gpt2):
    """The texts were read once to find the longest and again per condition: a generator was an empty corpus."""
    texts = [TEXT, "a dog ran to the house ."]
    edit = {"edit": [EditScores(0, None, distance_penalty=2.0)]}
    listed = window_experiment(tiny_gpt2, texts, edit, progress=False)
    lazy = window_experiment(tiny_gpt2, (t for t in texts), edit, progress=False)
    __import__("pandas").testing.assert_frame_equal(lazy.summary, listed.summary)
    assert lazy.profiles["edit"].n_queries == sum(len(tiny_gpt2.to_tokens(t)[0]) for t in texts)


@pytest.mark.parametrize("bad", [-3, -1, 2.5, "3", True])
def test_max_distance_is_checked_as_decay_neurons_checks_it(tiny_gpt2, bad):
    """-3 put every query-key pair in bin 0 without a word, while decay_neurons refused it."""
    from attnlab.analysis.neurons import decay_neurons

    for analysis in (attention_by_distance, decay_neurons):
        with pytest.raises(InvalidInput, match=rf"max_distance must be an integer >= 0 or None \(every distance\), "
                                               rf"got {bad!r}"):
            analysis(tiny_gpt2, [TEXT], max_distance=bad, progress=False)


def test_max_distance_folds_far_keys_into_the_last_bin(tiny_gpt2):
    full = attention_by_distance(tiny_gpt2, [TEXT], progress=False)
    for k in (0, 3, np.int64(5)):
        folded = attention_by_distance(tiny_gpt2, [TEXT], max_distance=k, progress=False)
        assert folded.mass.shape[-1] == k + 1
        np.testing.assert_allclose(folded.mass[..., :k], full.mass[..., :k], rtol=0, atol=1e-12)
        np.testing.assert_allclose(folded.mass[..., k], full.mass[..., k:].sum(-1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("level", ["0.9", None, True])
def test_level_must_be_a_number_and_is_checked_before_any_pass(tiny_gpt2, level, monkeypatch):
    """level='0.9' or None raised a bare TypeError, after window_experiment had run the first condition; True was 1.0."""
    import attnlab.analysis.context as context

    prof = attention_by_distance(tiny_gpt2, [TEXT], progress=False)
    for call in (lambda: prof.windows(level), lambda: prof.model_window(level)):
        with pytest.raises(InvalidInput, match=rf"^level must be a number in \(0, 1\], got {re.escape(repr(level))}$"):
            call()

    def no_pass(*args, **kwargs):
        raise AssertionError("a forward pass ran before the options were checked")

    monkeypatch.setattr(context, "attention_by_distance", no_pass)
    with pytest.raises(InvalidInput, match=r"^level must be a number in \(0, 1\]"):
        window_experiment(tiny_gpt2, [TEXT], {}, level=level, progress=False)


def test_ignore_first_must_be_a_bool(tiny_gpt2):
    """ignore_first='no' is truthy: it set the sink apart, the opposite of what it says."""
    with pytest.raises(InvalidInput, match=r"^ignore_first must be True or False, got 'no'$"):
        attention_by_distance(tiny_gpt2, [TEXT], ignore_first="no", progress=False)
    with pytest.raises(InvalidInput, match=r"^ignore_first must be True or False, got 'no'$"):
        window_experiment(tiny_gpt2, [TEXT], {}, ignore_first="no", progress=False)


def test_window_experiment_per_prompt_windows_are_at_its_level(tiny_llama):
    """per_prompt's windows were always at 90%: with level=0.5 and one text they were 27 where the table said 9."""
    text = " ".join(["the nurse said that she left the house because the doctor was not happy ."] * 3)
    exp = window_experiment(tiny_llama, [text], {"ablated": [EditScores(0, 0, replace=0.0)]}, level=0.5, progress=False)
    key = ["condition", "layer", "head"]
    table = exp.table.set_index(key)["window"]
    per_prompt = exp.per_prompt.set_index(key)["window"]
    assert (table == 9.0).any() and table.equals(per_prompt.loc[table.index])
    assert exp.profiles["clean"].per_prompt["window"].equals(exp.profiles["clean"].windows(0.5)["window"])
