"""Profession pronoun bias and the batched scoring under it, checked against hand computations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from attnlab.bias.pronouns import pronoun_bias
from attnlab.errors import InvalidInput, UnsupportedModel
from attnlab.measure import LogProbs, score
from attnlab.testing import tiny_model

OCC = ["nurse", "mechanic", "teacher", "librarian", "carpenter"]


def _logp_next(model, text: str) -> torch.Tensor:
    with torch.no_grad():
        return model(text)[0, -1].float().log_softmax(-1)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3"])
def test_padded_batch_equals_single_runs(arch):
    model = tiny_model(arch)
    prompts = ["the nurse said that", "the doctor told the customer that", "she"]
    she, he = model.to_single_token(" she"), model.to_single_token(" he")
    batched = score(model, prompts, LogProbs([" she", " he"]), batch_size=3)  # what pronoun_bias scores with
    for i, p in enumerate(prompts):
        lp = _logp_next(model, p)
        assert np.allclose(batched[i], [lp[she], lp[he]], atol=1e-5)


def test_log_ratio_by_hand_and_summary():
    model = tiny_model("gpt2")
    res = pronoun_bias(model, occupations=OCC, templates=["The {occupation} said that", "The {occupation} was tired because"])
    assert len(res.per_prompt) == 10
    she, he = model.to_single_token(" she"), model.to_single_token(" he")
    lp = _logp_next(model, "The librarian was tired because")
    row = res.per_prompt[res.per_prompt.prompt == "The librarian was tired because"].iloc[0]
    assert row.log_ratio == pytest.approx(float(lp[she] - lp[he]), abs=1e-5)
    occ = res.per_occupation.set_index("occupation")
    mean = res.per_prompt.groupby("occupation").log_ratio.mean()
    assert np.allclose(occ.loc[mean.index, "log_ratio"], mean)
    r = stats.pearsonr(res.per_occupation.share_women, res.per_occupation.log_ratio).statistic
    assert res.value("pearson_r") == pytest.approx(r, abs=1e-9)
    assert res.value("mean_abs_log_ratio") == pytest.approx(res.per_occupation.log_ratio.abs().mean())
    s = res.summary.set_index("metric")
    assert (s.low <= s.value + 1e-12).all() and (s.value <= s.high + 1e-12).all()
    from matplotlib.figure import Figure

    assert isinstance(res.figure(), Figure)


def test_multi_token_continuation_is_sum_of_token_logprobs():
    model = tiny_model("llama")
    res = pronoun_bias(model, occupations=["nurse", "mechanic", "baker"], templates=["The {occupation} said that"],
                       pronouns=("she said", "he said"))
    ids = model.to_tokens("The nurse said that")[0].tolist()
    she, he, said = (model.to_single_token(w) for w in (" she", " he", " said"))

    def two_token(first):
        with torch.no_grad():
            lp = model(torch.tensor([ids + [first, said]]))[0].float().log_softmax(-1)
        n = len(ids)
        return float(lp[n - 1, first] + lp[n, said])

    got = res.per_prompt.set_index("occupation").loc["nurse"]
    assert got.logp_female == pytest.approx(two_token(she), abs=1e-5)
    assert got.logp_male == pytest.approx(two_token(he), abs=1e-5)


def test_masked_lm_scores_the_mask():
    model = tiny_model("bert-mlm")
    res = pronoun_bias(model, occupations=OCC, templates=[{"prefix": "The {occupation} said that", "suffix": "was late ."}])
    text = "The nurse said that [MASK] was late ."
    assert res.per_prompt.prompt[0] == text
    with torch.no_grad():
        enc = model.tokenize(text)
        pos = int((enc["input_ids"][0] == model.tokenizer.mask_token_id).nonzero()[0, 0])
        lp = model(enc["input_ids"])[0, pos].float().log_softmax(-1)
    she, he = model.to_single_token("she"), model.to_single_token("he")
    assert res.per_prompt.log_ratio[0] == pytest.approx(float(lp[she] - lp[he]), abs=1e-5)
    with pytest.raises(InvalidInput, match="a masked LM fills one"):
        pronoun_bias(model, occupations=OCC, pronouns=("she said", "he"))


def test_bad_input():
    with pytest.raises(UnsupportedModel, match="no language-model head"):
        pronoun_bias(tiny_model("bert"), occupations=OCC)
    model = tiny_model("gpt2")
    with pytest.raises(InvalidInput, match="non-empty"):
        pronoun_bias(model, occupations=[])
    with pytest.raises(InvalidInput, match="no templates"):
        pronoun_bias(model, occupations=OCC, templates=[])
    with pytest.raises(InvalidInput, match="0..1"):
        pronoun_bias(model, occupations=pd.DataFrame({"occupation": ["nurse"], "share_women": [87.0]}))
    with pytest.raises(InvalidInput, match=r"\(female, male\) pair"):
        pronoun_bias(model, occupations=OCC, pronouns=("she",))
    with pytest.raises(InvalidInput, match="handles at most 128"):
        pronoun_bias(model, occupations=OCC, templates=["The {occupation}" + " said that" * 80])
    with pytest.raises(InvalidInput, match="unknown metric"):
        pronoun_bias(model, occupations=OCC).value("r")


def test_custom_occupations_frame():
    model = tiny_model("gpt2")
    occ = pd.DataFrame({"occupation": ["king", "queen", "doctor"], "share_women": [0.0, 1.0, 0.4]})
    res = pronoun_bias(model, occupations=occ, templates=["The {occupation} said that"])
    assert res.per_occupation.occupation.tolist() == ["king", "queen", "doctor"]


def test_identical_pronouns_are_refused_before_any_pass(monkeypatch):
    """("she", "she") gave log ratios of exactly 0 everywhere: a result that read as 'no bias'."""
    from attnlab.bias import pronouns

    monkeypatch.setattr(pronouns, "score", lambda *a, **k: pytest.fail("scored before checking the pronouns"))
    for pair in (("she", "she"), ("she", " she ")):
        with pytest.raises(InvalidInput, match=r"pronouns must be two different words \(female, male\), got"):
            pronoun_bias(tiny_model("gpt2"), occupations=OCC, pronouns=pair)


def test_pronouns_of_one_token_are_refused(monkeypatch):
    """("she", "SHE") on a lower-casing tokenizer scored one token twice: log ratios 0 and r NaN, read as 'no bias'."""
    from attnlab.bias import pronouns

    model = tiny_model("gpt2")
    assert model.token_rows([" she", " SHE"], prepend_bos=False)[0] == model.token_rows([" SHE"], prepend_bos=False)[0]
    monkeypatch.setattr(pronouns, "score", lambda *a, **k: pytest.fail("scored before checking the pronouns"))
    with pytest.raises(InvalidInput, match=r"pronouns: ' she' and ' SHE' are the same token for .* every log ratio"):
        pronoun_bias(model, occupations=OCC, pronouns=("she", "SHE"))


@pytest.mark.parametrize("frame, message", [
    ({"occupation": ["king", "queen", "king"], "share_women": [0.0, 1.0, 0.1]},
     r"occupations DataFrame row 2: occupation 'king' is also in row 0; give each occupation once"),
    ({"occupation": ["king", "queen"], "share_women": [0.0, np.nan]},
     r"occupations DataFrame row 1 \('queen'\): share_women must be a number in 0..1 .*got nan"),
    ({"occupation": ["king", "queen"], "share_women": [0.0, "x"]}, r"row 1 \('queen'\): share_women must be a number"),
    ({"occupation": ["king", ""], "share_women": [0.0, 1.0]}, r"row 1: occupation must be a non-empty name, got ''"),
    ({"occupation": ["king", 7], "share_women": [0.0, 1.0]}, r"row 1: occupation must be a non-empty name, got 7"),
])
def test_occupations_frame_rows_are_checked_and_named(frame, message):
    from attnlab.bias.templates import occupation_frame

    with pytest.raises(InvalidInput, match=message):
        occupation_frame(pd.DataFrame(frame))
    with pytest.raises(InvalidInput, match="given twice"):
        occupation_frame(["nurse", "mechanic", "nurse"])
    ok = occupation_frame(pd.DataFrame({"occupation": ["king", "queen"], "share_women": [0, 1]}, index=[5, 9]))
    assert ok.share_women.tolist() == [0.0, 1.0] and ok.occupation.tolist() == ["king", "queen"]


def _summary(share, log_ratio, **kw):
    from attnlab.bias.pronouns import summarize_log_ratios

    frame = pd.DataFrame({"occupation": [f"o{i}" for i in range(len(share))], "share_women": share, "log_ratio": log_ratio})
    return summarize_log_ratios(frame, **kw).set_index("metric")


def _permutation_p(x, y, rank=False):
    """Two-sided p-value by brute force: the share of all orderings of y with |r| at least the observed."""
    import itertools

    x, y = (stats.rankdata(x), stats.rankdata(y)) if rank else (np.asarray(x), np.asarray(y))
    r = np.corrcoef(x, y)[0, 1]
    rs = [np.corrcoef(x, y[list(o)])[0, 1] for o in itertools.permutations(range(len(y)))]
    return np.mean(np.abs(rs) >= abs(r) - 1e-12)


def test_correlations_of_two_occupations_are_undefined():
    """Any 2 points have r = +-1: the summary said r = -1 with interval [-1, -1]."""
    s = _summary([0.2, 0.9], [0.5, -0.3], n_boot=200)
    assert s.loc[["pearson_r", "spearman_rho"], ["value", "low", "high", "p_value"]].isna().all().all()
    assert not np.isnan(s.loc["mean_log_ratio", "low"])


def test_small_n_p_values_are_exact():
    """3 occupations with rho = -1: scipy's t approximation said p = 0.0; 2 of the 6 orderings reach |rho| = 1."""
    s = _summary([0.1, 0.5, 0.9], [0.4, 0.2, -0.7], n_boot=0)
    assert s.loc["spearman_rho", "value"] == -1 and s.loc["spearman_rho", "p_value"] == pytest.approx(2 / 6)
    assert s.loc["pearson_r", "p_value"] == pytest.approx(_permutation_p([0.1, 0.5, 0.9], [0.4, 0.2, -0.7]))
    rng = np.random.default_rng(1)
    for n in (5, 8):
        share, lr = rng.uniform(size=n), rng.normal(size=n)
        s = _summary(share, lr, n_boot=0)
        assert s.loc["pearson_r", "p_value"] == pytest.approx(_permutation_p(share, lr))
        assert s.loc["spearman_rho", "p_value"] == pytest.approx(_permutation_p(share, lr, rank=True))
    share, lr = rng.uniform(size=9), rng.normal(size=9)  # above EXACT_P_MAX: scipy's tests
    s = _summary(share, lr, n_boot=0)
    assert s.loc["pearson_r", "p_value"] == pytest.approx(stats.pearsonr(share, lr).pvalue)
    assert s.loc["spearman_rho", "p_value"] == pytest.approx(stats.spearmanr(share, lr).pvalue)


def test_correlation_interval_skips_resamples_of_fewer_than_three_points():
    """Resamples drawing only 2 distinct occupations have r = +-1 and widened the interval to the ends."""
    from attnlab.measure.stats import _picks

    share, lr = np.array([0.1, 0.3, 0.6, 0.9]), np.array([0.2, -0.1, 0.4, -0.5])
    s = _summary(share, lr, n_boot=500, seed=2)
    rs = []
    for i in _picks(4, 500, 2):
        defined = len(set(i)) >= 3 and np.ptp(share[i]) > 0 and np.ptp(lr[i]) > 0
        rs.append(np.corrcoef(share[i], lr[i])[0, 1] if defined else np.nan)
    assert np.isnan(rs).sum() > 50  # the case is exercised
    assert s.loc["pearson_r", ["low", "high"]].tolist() == pytest.approx(list(np.nanquantile(rs, [0.025, 0.975])))
    assert _summary(share[:3], lr[:3], n_boot=500).loc["pearson_r", ["low", "high"]].isna().all()  # 3 points: NaN


def test_a_causal_template_ending_in_whitespace_is_refused():
    """'The {occupation} said that ' scored ' she' after a trailing space: two spaces, not the next word."""
    from attnlab.testing import tiny_model

    with pytest.raises(InvalidInput, match=r"^template prefix 'The \{occupation\} said that ' ends with whitespace; "
                                           r"a causal LM scores the pronoun as the next word with its own space "
                                           r"\(' she'\)"):
        pronoun_bias(tiny_model("gpt2"), occupations=["nurse"], templates=["The {occupation} said that "], n_boot=0)
    masked = pronoun_bias(tiny_model("bert-mlm"), occupations=["nurse"], templates=["The {occupation} said that "],
                          n_boot=0)  # a masked LM reads 'prefix [MASK] suffix': the space does no harm
    assert masked.per_prompt.prompt[0] == "The nurse said that  [MASK]" and np.isfinite(masked.per_prompt.log_ratio[0])
