"""Causal mediation: TE by hand, NIE/NDE identities, batched per-row patches equal a one-head loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnlab.bias.mediation import (
    MediationPair,
    causal_mediation,
    greedy_heads,
    mediation_effects,
    mediation_pairs,
    total_effect,
)
from attnlab.errors import InvalidInput, InvalidLocation
from attnlab.interventions import Patch
from attnlab.testing import tiny_model

PAIRS = [
    MediationPair("The nurse said that", "The man said that", " she", " he", "nurse"),
    MediationPair("The mechanic told the customer that", "The woman told the customer that", " he", " she", "mechanic"),
    MediationPair("The teacher said that", "The man said that", " she", " he", "teacher"),
]


def _log_odds(model, text, anti, stereo):
    with torch.no_grad():
        lp = model(text)[0, -1].float().log_softmax(-1)
    return float(lp[model.to_single_token(anti)] - lp[model.to_single_token(stereo)])


def test_total_effect_by_hand():
    model = tiny_model("gpt2")
    te = total_effect(model, PAIRS)
    for p, row in zip(PAIRS, te.itertuples()):
        ob, oc = (np.exp(_log_odds(model, t, p.anti, p.stereotypical)) for t in (p.base, p.counterfactual))
        assert row.odds_base == pytest.approx(ob, rel=1e-4)
        assert row.te == pytest.approx(oc / ob - 1, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3"])
def test_batched_nie_equals_one_head_at_a_time(arch):
    model = tiny_model(arch)
    c = model.cfg
    units = [[(layer, head)] for layer in range(c.n_layers) for head in range(c.n_heads)]
    batched = mediation_effects(model, PAIRS, units, batch_size=5)  # chunks cut across pairs
    for i, p in [(1, PAIRS[1])]:  # a pair in the second length group, after a chunk boundary
        base = _log_odds(model, p.base, p.anti, p.stereotypical)
        for j, [(layer, head)] in enumerate(units):
            with model.intervene(Patch(layer, head, site="pattern", source=p.counterfactual)):
                lo = _log_odds(model, p.base, p.anti, p.stereotypical)
            assert batched[i, j] == pytest.approx(np.expm1(lo - base), abs=1e-5)
    assert model.count_hooks() == 0


def test_nde_loop_and_identities():
    model = tiny_model("llama")
    p = PAIRS[0]
    res = causal_mediation(model, [p], level="head", effects=("nde",), n_boot=0)
    base = _log_odds(model, p.base, p.anti, p.stereotypical)
    with model.intervene(Patch(1, 2, site="pattern", source=p.base)):
        lo = _log_odds(model, p.counterfactual, p.anti, p.stereotypical)
    row = res.per_unit[(res.per_unit.layer == 1) & (res.per_unit["head"] == 2)].iloc[0]
    assert row.nde == pytest.approx(np.expm1(lo - base), abs=1e-5)
    # freezing every pattern of x' at x and patching every pattern of x with x' are whole-model runs
    whole = causal_mediation(model, [p], level="model", effects=("nie",), n_boot=0).per_unit.iloc[0]
    specs = [Patch(layer, None, site="pattern", source=p.counterfactual) for layer in range(model.cfg.n_layers)]
    with model.intervene(*specs):
        lo_all = _log_odds(model, p.base, p.anti, p.stereotypical)
    assert whole.nie == pytest.approx(np.expm1(lo_all - base), abs=1e-5)
    # NDE of an empty head set is the total effect
    assert mediation_effects(model, [p], [[]], effect="nde")[0, 0] == pytest.approx(res.te[0], abs=1e-5)


def test_layer_level_equals_all_heads_of_the_layer():
    model = tiny_model("gemma3")
    layer_res = causal_mediation(model, PAIRS, level="layer", effects=("nie",), n_boot=0)
    c = model.cfg
    units = [[(1, h) for h in range(c.n_heads)]]
    by_heads = mediation_effects(model, PAIRS, units).mean(axis=0)[0]
    assert layer_res.per_unit.set_index("layer").loc[1, "nie"] == pytest.approx(by_heads, abs=1e-6)


def test_no_intervention_means_no_effect():
    model = tiny_model("gpt2")
    same = [MediationPair("The nurse said that", "The nurse said that", " she", " he")]
    with pytest.warns(UserWarning, match="are the same tokens"):  # measured, and said to be exactly 0
        res = causal_mediation(model, same, n_boot=0)
    assert np.abs(res.per_unit[["nie", "nde"]].to_numpy()).max() < 1e-6
    assert abs(res.te[0]) < 1e-6


def test_top_heads_greedy_and_heatmap():
    model = tiny_model("gpt2")
    res = causal_mediation(model, PAIRS, effects=("nie",), n_boot=50)
    top = res.top_heads(3)
    nie = res.per_unit.set_index(["layer", "head"]).nie
    assert nie[top[0]] == nie.max() and nie[top[0]] >= nie[top[1]] >= nie[top[2]]
    greedy = greedy_heads(model, PAIRS, k=2, n_boot=0)
    assert (greedy.layer[0], greedy["head"][0]) == top[0]
    assert greedy.nie[0] == pytest.approx(nie.max(), abs=1e-9)
    both = mediation_effects(model, PAIRS, [[top[0], (greedy.layer[1], greedy["head"][1])]]).mean()
    assert greedy.nie[1] == pytest.approx(both, rel=1e-3)  # batched vs single forward: float32 rounding
    from matplotlib.figure import Figure

    assert isinstance(res.heatmap(), Figure)
    with pytest.raises(InvalidInput, match="'nde' was not computed|effect 'nde'"):
        res.heatmap("nde")


def test_save_and_plot_follow_what_was_computed(tmp_path):
    """save() raised after writing the CSVs for a result without the head level, and plot() assumed NIE
    (raising for a result of NDE only)."""
    model = tiny_model("gpt2")
    layers = causal_mediation(model, PAIRS, levels=("layer", "model"), n_boot=0)
    assert not layers.can_plot
    assert sorted(p.name for p in layers.save(tmp_path / "layers")) == [
        "mediationresult_per_prompt.csv", "mediationresult_summary.csv", "mediationresult_table.csv"]
    with pytest.raises(InvalidInput, match="this needs the head level; this result has levels layer, model"):
        layers.plot()
    nde = causal_mediation(model, PAIRS, effects=("nde",), n_boot=0)
    drawn = np.asarray(nde.plot().axes[0].images[0].get_array())
    np.testing.assert_allclose(drawn, nde.table.pivot(index="layer", columns="head", values="nde").to_numpy())
    assert nde.top_heads(1) == [tuple(int(v) for v in nde.table.loc[nde.table.nde.idxmax(), ["layer", "head"]])]
    assert (tmp_path / "nde" / "mediationresult.png") in nde.save(tmp_path / "nde")


def test_mediation_pairs_keep_equal_lengths():
    model = tiny_model("gpt2")
    pairs, skipped = mediation_pairs(model, occupations=["nurse", "mechanic"], templates=["The {occupation} said that"])
    assert [(p.base, p.counterfactual, p.stereotypical) for p in pairs] == [
        ("The nurse said that", "The man said that", " she"),
        ("The mechanic said that", "The woman said that", " he"),
    ]
    assert skipped.empty


def test_mediation_pairs_refuse_a_prefix_ending_in_whitespace():
    """x = 'The nurse said that ' was scored for ' she' after two spaces, as pronoun_bias did before."""
    with pytest.raises(InvalidInput, match=r"^template prefix 'The \{occupation\} said that ' ends with whitespace; "
                                           r"a causal LM scores the pronoun as the next word with its own space "
                                           r"\(' she'\)"):
        mediation_pairs(tiny_model("gpt2"), occupations=["nurse"], templates=["The {occupation} said that "])


@pytest.mark.parametrize("anti", [" she", "she", " SHE"])
def test_pronouns_of_one_token_are_refused(anti):
    """A pair scoring one token against itself gave TE, NIE and NDE of exactly 0: 'no bias, no mediator'."""
    model = tiny_model("gpt2")
    pair = MediationPair("The nurse said that", "The man said that", " she", anti)
    with pytest.raises(InvalidInput, match=rf"pair 0 \(stereotypical, anti\): ' she' and '{anti}' are the same token"):
        total_effect(model, [pair])
    with pytest.raises(InvalidInput, match=r"pair 1 \(stereotypical, anti\)"):
        causal_mediation(model, [PAIRS[0], pair], n_boot=0)


def test_bad_input():
    model = tiny_model("gpt2")
    with pytest.raises(InvalidInput, match="same number of tokens"):
        total_effect(model, [MediationPair("The nurse said that", "The old man said that", " she", " he")])
    with pytest.raises(InvalidInput, match="single-token"):
        total_effect(model, [MediationPair("The nurse said that", "The man said that", " she said", " he")])
    with pytest.raises(InvalidInput, match="no prompt pairs"):
        causal_mediation(model, [])
    with pytest.raises(InvalidInput, match="unknown level"):
        causal_mediation(model, PAIRS, level="neuron")
    with pytest.raises(InvalidLocation, match="layer 7 out of range"):
        mediation_effects(model, PAIRS, [[(7, 0)]])
    with pytest.raises(InvalidInput, match="positive integer"):
        greedy_heads(model, PAIRS, k=0)
    with pytest.raises(InvalidInput, match=r"candidates must be distinct heads; given more than once: \(0, 1\)$"):
        greedy_heads(model, PAIRS, k=2, candidates=[(0, 1), (1, 0), (0, 1)])  # was numpy's argmax of an empty array
    with pytest.raises(InvalidLocation, match="only 8 candidate"):
        greedy_heads(model, PAIRS, k=9)


def test_all_levels_from_one_call_measure_te_once(monkeypatch):
    """Heads, layers and the whole model in one call equal the level-by-level calls; TE is scored once."""
    from attnlab.bias import mediation

    model = tiny_model("llama")
    calls = []
    real_score = mediation.score
    monkeypatch.setattr(mediation, "score", lambda *a, **k: calls.append(a[1]) or real_score(*a, **k))
    every = causal_mediation(model, PAIRS, levels=("head", "layer", "model"), n_boot=0)
    assert calls == [[p.base for p in PAIRS], [p.counterfactual for p in PAIRS]]  # log odds of x and x', once each
    assert every.table.groupby("level", sort=False).size().to_dict() == {"head": 8, "layer": 2, "model": 1}
    for level in ("head", "layer", "model"):
        alone = causal_mediation(model, PAIRS, levels=level, n_boot=0).table
        part = every.table[every.table["level"] == level].reset_index(drop=True)
        for column in ("layer", "head", "nie", "nie_log", "nie_median", "nde", "nde_log", "nde_median"):
            assert np.allclose(part[column], alone[column], atol=1e-6), (level, column)
    te = total_effect(model, PAIRS)
    assert every.te[0] == pytest.approx(te.te.mean(), abs=1e-9)
    assert every.summary.query("effect == 'te'")["value"].tolist()[:2] == pytest.approx(
        [te.te.mean(), te.log_odds_ratio.mean()], abs=1e-9)
    with pytest.warns(DeprecationWarning, match=r"level=\.\.\.\) is deprecated.*levels="):
        old = causal_mediation(model, PAIRS, level="layer", effects=("nie",), n_boot=0)
    assert old.level == "layer" and np.allclose(old.table.nie, every.table[every.table["level"] == "layer"].nie, atol=1e-6)


def test_readouts_mean_log_odds_ratio_and_median():
    model = tiny_model("gemma3")
    res = causal_mediation(model, PAIRS, levels=("head",), effects=("nie",), n_boot=300, seed=4)
    per_pair = res.per_prompt.pivot(index=["layer", "head"], columns="pair", values="nie")  # [head, pair]
    row = res.table.set_index(["layer", "head"]).loc[(1, 3)]
    values = per_pair.loc[(1, 3)].to_numpy()
    assert row.nie == pytest.approx(values.mean())
    assert row.nie_log == pytest.approx(np.log1p(values).mean())
    assert row.nie_median == pytest.approx(np.median(values))
    assert np.allclose(res.per_prompt.nie_log, np.log1p(res.per_prompt.nie), atol=1e-9)
    picks = np.random.default_rng(4).integers(0, 3, size=(300, 3))
    medians = np.median(values[picks], axis=1)
    assert (row.nie_median_low, row.nie_median_high) == pytest.approx((np.quantile(medians, 0.025), np.quantile(medians, 0.975)))
    logs = np.log1p(values)[picks].mean(axis=1)
    assert (row.nie_log_low, row.nie_log_high) == pytest.approx((np.quantile(logs, 0.025), np.quantile(logs, 0.975)))
    te = total_effect(model, PAIRS)
    summary = res.summary.set_index(["effect", "readout"])
    assert summary.loc[("te", "median of odds ratio - 1"), "value"] == pytest.approx(np.median(te.te))
    assert summary.loc[("te", "mean log odds ratio"), "value"] == pytest.approx(np.log1p(te.te).mean())
    best = summary.loc[("nie", "mean of odds ratio - 1")]
    assert (best.layer, best["head"]) == res.top_heads(1)[0]
    greedy = greedy_heads(model, PAIRS, k=1, n_boot=300, seed=4)
    top = res.table.set_index(["layer", "head"]).loc[res.top_heads(1)[0]]
    assert greedy.loc[0, ["nie", "nie_log", "nie_median", "nie_median_low"]].tolist() == pytest.approx(
        [top.nie, top.nie_log, top.nie_median, top.nie_median_low])
