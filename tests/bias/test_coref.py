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
        m.setattr(coref, "_gaps", lambda *a, **k: pytest.fail("scored before checking stats_table"))
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


@pytest.mark.parametrize("pro, anti, score, message", [
    ("the nurse said she left", "the nurse said she left", "sentence", r"pair 1 .*: the two sentences are the same "
     r"tokens for tiny-gpt2, so their gap would be exactly 0"),
    ("the nurse said xx left", "the nurse said yy left", "sentence", r"pair 1 .*: the two sentences are the same tokens"),
    ("the nurse said she", "the nurse said she left", "pronoun", r"pair 1 .*: one sentence is the start of the other"),
    ("the nurse said xe left", "the nurse said he left", "pronoun", r"pair 1 .*: where the sentences differ, tiny-gpt2's "
     r"tokenizer reads an unknown word \('\[UNK\]'\)"),
])
def test_a_pair_with_nothing_to_compare_is_refused(pro, anti, score, message):
    """Identical twins (or words both mapped to [UNK]) scored gap 0.0 and counted as 'no preference'; with
    score='pronoun' a twin that starts the other scored 0 - log p(next token) as its gap."""
    model = tiny_model("gpt2")
    pairs = pd.DataFrame({"pro": ["the nurse said she left", pro], "anti": ["the nurse said he left", anti]})
    with pytest.raises(InvalidInput, match=message):
        coref_bias(model, pairs, score=score, n_boot=0)
    assert model.count_hooks() == 0


def test_a_pair_where_one_sentence_extends_the_other_keeps_the_exact_sentence_gap():
    """score='sentence' of 'a' vs 'a b' is log p(a) - log p(a b) = -log p(b | a): defined, so it is still scored."""
    model = tiny_model("gpt2")
    gap = pair_log_ratio(model, ["the nurse said she"], ["the nurse said she left"])
    with torch.no_grad():
        lp = torch.log_softmax(model(model.to_tokens("the nurse said she left")).float(), -1)[0]
    left = model.to_tokens("the nurse said she left")[0, -1]
    assert gap[0] == pytest.approx(-float(lp[-2, left]), abs=1e-4)


def test_pairs_that_differ_at_the_first_token_are_refused_without_a_bos():
    """On a tokenizer that adds no BOS, 'she left' vs 'he left' scored only 'left': the differing first token is
    predicted by nothing, so the gap (both scores) was log p(left | she) - log p(left | he), silently."""
    from tokenizers import processors

    from attnlab.engine.model import HookedModel
    from attnlab.testing import tiny_hf_model, tiny_tokenizer

    tok = tiny_tokenizer("decoder")
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(single="$A", special_tokens=[])
    model = HookedModel(tiny_hf_model("gpt2"), tok, name="tiny-gpt2-nobos")
    for score in ("sentence", "pronoun"):
        with pytest.raises(InvalidInput, match=r"pair 0 \('she left' / 'he left'\): the sentences differ at their "
                                               r"first token, which nothing predicts"):
            pair_log_ratio(model, ["she left"], ["he left"], score=score)
    assert pair_log_ratio(model, ["the nurse said she left"], ["the nurse said he left"]).shape == (1,)


def test_pair_log_ratio_refuses_a_pronoun_score_with_no_differing_token():
    """pair_log_ratio itself (not only coref_bias) scored 'a' vs 'a b' with score='pronoun' as 0 - log p(b | a)."""
    with pytest.raises(InvalidInput, match=r"pair 0 .*one sentence is the start of the other"):
        pair_log_ratio(tiny_model("gpt2"), ["the nurse said she"], ["the nurse said she left"], score="pronoun")


def test_winogender_occupations_without_a_share_are_named_not_dropped_silently():
    """An occupation missing from stats_table was left out of pearson_r without a word."""
    model = tiny_model("gpt2")
    t = load_winogender_templates(FIX / "templates.tsv")
    stats = load_winogender_stats(FIX / "occupations-stats.tsv")
    with pytest.warns(UserWarning, match=r"^winogender_bias: 1 occupation\(s\) of the templates have no share of women "
                                         r"in stats_table and are left out of pearson_r: 'nurse'$"):
        out = winogender_bias(model, t, stats[stats.occupation != "nurse"])
    assert out.bls_pct_female.isna().sum() == 2
