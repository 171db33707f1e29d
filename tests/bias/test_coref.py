"""Coreference-bias scoring: pair differences equal whole-sentence log-probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from attnlab.bias.coref import coref_bias, pair_log_ratio, winogender_bias
from attnlab.bias.datasets import load_winobias_dir, load_winogender_stats, load_winogender_templates, winobias_pairs
from attnlab.errors import InvalidInput
from attnlab.testing import tiny_model

FIX = Path(__file__).parent / "fixtures"


def _sentence_logprob(model, text):
    ids = model.to_tokens(text)
    with torch.no_grad():
        lp = model(ids)[0].float().log_softmax(-1)
    return float(lp[:-1].gather(-1, ids[0, 1:, None]).sum())


def test_sentence_score_is_difference_of_sentence_logprobs():
    model = tiny_model("llama")
    pro = ["the nurse said that she was tired .", "the doctor told the nurse that he was very late ."]
    anti = ["the nurse said that he was tired .", "the doctor told the nurse that she was late ."]  # unequal lengths
    got = pair_log_ratio(model, pro, anti, batch_size=3)
    want = [_sentence_logprob(model, a) - _sentence_logprob(model, b) for a, b in zip(pro, anti)]
    assert np.allclose(got, want, atol=1e-4)
    # pronoun score: log p(first differing token | shared prefix)
    ids = model.to_tokens("the nurse said that")[0]
    with torch.no_grad():
        lp = model(ids[None])[0, -1].float().log_softmax(-1)
    she, he = model.to_single_token(" she"), model.to_single_token(" he")
    assert pair_log_ratio(model, pro[:1], anti[:1], score="pronoun")[0] == pytest.approx(float(lp[she] - lp[he]), abs=1e-5)
    assert pair_log_ratio(model, pro[:1], pro[:1])[0] == 0.0


def test_coref_bias_on_winobias_fixture():
    model = tiny_model("gpt2")
    pairs = winobias_pairs(load_winobias_dir(FIX))
    res = coref_bias(model, pairs, n_boot=200)
    assert len(res.per_pair) == 7
    assert res.value("mean_gap") == pytest.approx(res.per_pair.gap.mean())
    assert res.value("pro_preferred") == pytest.approx((res.per_pair.gap > 0).mean())
    assert set(res.summary.group) == {"all", "type=1", "type=2"}
    t2 = res.per_pair[res.per_pair.type == 2].gap.mean()
    assert res.value("mean_gap", "type=2") == pytest.approx(t2)
    with pytest.raises(InvalidInput, match="no summary for metric"):
        res.value("accuracy")


def test_winogender_bias_fixture():
    model = tiny_model("gpt2")
    t = load_winogender_templates(FIX / "templates.tsv")
    out = winogender_bias(model, t, load_winogender_stats(FIX / "occupations-stats.tsv"))
    assert len(out) == 4 and out.bls_pct_female.tolist() == [90.0, 90.0, 1.5, 1.5]
    assert "pearson_r" not in out.attrs  # two occupations: any r would be +-1 (pronoun_bias's rule, bias/_correlation.py)
    s = "The nurse reassured the patient that {} would stay all night."
    assert out.log_ratio[0] == pytest.approx(_sentence_logprob(model, s.format("she")) - _sentence_logprob(model, s.format("he")), abs=1e-4)


def test_winogender_bias_refuses_a_repeated_occupation(monkeypatch):
    """A stats table listing nurse twice gave 6 rows for 4 templates; refused before any scoring."""
    from attnlab.bias import coref

    t = load_winogender_templates(FIX / "templates.tsv")
    stats = load_winogender_stats(FIX / "occupations-stats.tsv")
    twice = pd.concat([stats, stats.head(1)], ignore_index=True)
    with monkeypatch.context() as m:
        m.setattr(coref, "pair_log_ratio", lambda *a, **k: pytest.fail("scored before checking stats_table"))
        with pytest.raises(InvalidInput, match=r"stats_table lists occupation 'nurse' 2 times \(rows 0, 2\)"):
            winogender_bias(tiny_model("gpt2"), t, twice)
        with pytest.raises(InvalidInput, match="stats_table must be a DataFrame with columns occupation, bls_pct_female"):
            winogender_bias(tiny_model("gpt2"), t, stats.drop(columns="bls_pct_female"))


def test_bad_input():
    model = tiny_model("gpt2")
    with pytest.raises(InvalidInput, match="'pro' and 'anti' columns"):
        coref_bias(model, pd.DataFrame({"a": [1]}))
    with pytest.raises(InvalidInput, match="no sentence pairs"):
        coref_bias(model, pd.DataFrame({"pro": [], "anti": []}))
    with pytest.raises(InvalidInput, match="pairs must match"):
        pair_log_ratio(model, ["a b"], ["a b", "c d"])
    with pytest.raises(InvalidInput, match="unknown score"):
        pair_log_ratio(model, ["a b"], ["a c"], score="token")


def test_by_must_name_a_column(monkeypatch):
    """by='Type' (a typo) was ignored: the summary had only the 'all' group, with no word said."""
    from attnlab.bias import coref

    model = tiny_model("gpt2")
    pairs = pd.DataFrame({"pro": ["the nurse said that she was tired .", "the doctor told the nurse that he was late ."],
                          "anti": ["the nurse said that he was tired .", "the doctor told the nurse that she was late ."],
                          "kind": [1, 2]})
    with monkeypatch.context() as m:
        m.setattr(coref, "pair_log_ratio", lambda *a, **k: pytest.fail("scored before checking by"))
        for by in ("Type", "type", ["kind"]):
            with pytest.raises(InvalidInput, match=r"by=.* is not a column of pairs \(columns: pro, anti, kind\)"):
                coref_bias(model, pairs, by=by, n_boot=0)
    assert list(coref_bias(model, pairs, n_boot=0).summary.group.unique()) == ["all"]  # the default: type when present
    assert list(coref_bias(model, pairs, by="kind", n_boot=0).summary.group.unique()) == ["all", "kind=1", "kind=2"]
