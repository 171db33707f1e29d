import math

import numpy as np
import pytest
import torch

from attnlab.analysis import entropy, head_stats, prepare, word_attention
from attnlab.analysis._corpus import Sentence
from attnlab.errors import InvalidInput
from attnlab.interventions import EditScores, SetPattern

TEXT = "the nurse said that she left the house ."


def test_entropy_of_uniform_is_log_n():
    for n in (1, 3, 17):
        assert entropy(torch.full((n,), 1 / n)).item() == pytest.approx(math.log(n), abs=1e-6)
    assert entropy(torch.tensor([0.0, 1.0, 0.0])).item() == 0.0


def _hand_sentence():
    # tokens: [CLS] un ##believ ##able day [SEP]  -> units: [CLS], word0 (3 pieces), word1, [SEP]
    return Sentence(
        text="unbelievable day", words=["unbelievable", "day"],
        tokens=["[CLS]", "un", "##believ", "##able", "day", "[SEP]"], token_ids=[0] * 6,
        special=[True, False, False, False, False, True], word_of=[0, 1, 1, 1, 2, 3], word_index=[None, 0, 1, None],
    )


def test_word_attention_sums_to_and_averages_from_pieces():
    s = _hand_sentence()
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(2, 6, 6), -1)
    w = word_attention(p, s)
    assert w.shape == (2, 4, 4)
    # attention TO the 3-piece word = sum over its pieces; FROM it = mean over its pieces
    expected_to = p[:, 0, 1:4].sum(-1)
    assert torch.allclose(w[:, 0, 1], expected_to)
    expected_from = p[:, 1:4, 4].mean(-1)
    assert torch.allclose(w[:, 1, 2], expected_from)
    assert torch.allclose(w[:, 1, 1], p[:, 1:4, 1:4].sum(-1).mean(-1))
    assert torch.allclose(w.sum(-1), torch.ones(2, 4))  # rows still distributions
    dropped = word_attention(p, s, drop_special=True)
    assert dropped.shape == (2, 2, 2) and torch.allclose(dropped, w[:, 1:3, 1:3])


def test_word_attention_shape_mismatch():
    with pytest.raises(InvalidInput, match="sentence has 6 tokens"):
        word_attention(torch.ones(5, 5) / 5, _hand_sentence())


def test_alignment_of_text_and_word_lists(tiny_bert):
    s_text, s_words = prepare(tiny_bert, ["The nurse, she left.", ["The", "nurse", ",", "she", "left", "."]])
    assert s_text.words == s_words.words == ["The", "nurse", ",", "she", "left", "."]
    assert s_text.word_index == [None, 0, 1, 2, 3, 4, 5, None]  # [CLS] ... [SEP]
    assert s_text.special == [True] + [False] * 6 + [True]


def _previous_token_pattern(n):
    p = torch.zeros(n, n)
    p[0, 0] = 1
    p[torch.arange(1, n), torch.arange(n - 1)] = 1
    return p


def test_planted_previous_head_and_uniform_entropy(tiny_gpt2):
    n = len(tiny_gpt2.to_tokens(TEXT)[0])
    specs = [SetPattern(1, 2, pattern=_previous_token_pattern(n)), EditScores(0, None, replace=0.0)]
    stats = head_stats(tiny_gpt2, [TEXT], interventions=specs, progress=False)
    row = stats.table.set_index(["layer", "head"]).loc[(1, 2)]
    assert row["prev"] == pytest.approx(1.0)
    assert row["next"] == 0.0 and row["entropy"] == pytest.approx(0.0, abs=1e-6)
    assert row["first"] == pytest.approx(2 / n)  # queries 0 and 1 attend to token 0
    # uniform causal attention: entropy of query i is log(i + 1)
    uniform = stats.table[stats.table["layer"] == 0]
    expected = np.mean([math.log(i + 1) for i in range(n)])
    assert np.allclose(uniform["entropy"], expected, atol=1e-5)
    assert np.allclose(uniform["uniform_entropy"], expected, atol=1e-5)
    assert stats.top("prev", 1)[["layer", "head"]].values.tolist() == [[1, 2]]
    assert stats.matrix("prev").shape == (2, 4)


def test_special_token_columns_on_an_encoder(tiny_bert):
    n = len(tiny_bert.to_tokens(TEXT)[0])
    to_sep = torch.zeros(n, n)
    to_sep[:, n - 1] = 1  # every token attends to [SEP]
    stats = head_stats(tiny_bert, [TEXT, TEXT], interventions=[SetPattern(0, 1, pattern=to_sep)], progress=False)
    row = stats.table.set_index(["layer", "head"]).loc[(0, 1)]
    assert row["sep"] == pytest.approx(1.0) and row["special"] == pytest.approx(1.0)
    assert row["cls"] == 0.0 and row["punct"] == 0.0
    assert stats.n_sentences == 2 and stats.n_tokens == 2 * n
    # an ordinary head: special + punct + the rest = 1, punctuation is the final "."
    assert (stats.table["special"] + stats.table["punct"] <= 1 + 1e-6).all()
    fig = stats.plot(kind="targets")
    assert len(fig.axes) == 4
    assert len(stats.plot(kind="entropy").axes[0].patches) == 8


def test_decoder_has_no_cls_column(tiny_llama):
    stats = head_stats(tiny_llama, [TEXT], progress=False)
    assert stats.table["cls"].isna().all()
    assert (stats.table["entropy_first"] == 0).all()  # a decoder's first row sees only itself


def test_bad_corpus(tiny_gpt2):
    with pytest.raises(InvalidInput, match="empty corpus"):
        head_stats(tiny_gpt2, [], progress=False)
    with pytest.raises(InvalidInput, match="sentence 1 is empty"):
        head_stats(tiny_gpt2, ["the dog", "   "], progress=False)
    with pytest.raises(InvalidInput, match=r"sentence 0 has 201 tokens but tiny-gpt2 handles at most 128"):
        head_stats(tiny_gpt2, [" ".join(["the"] * 200)], progress=False)
    with pytest.raises(InvalidInput, match="expected a string or a list of words"):
        head_stats(tiny_gpt2, [3], progress=False)
    with pytest.raises(InvalidInput, match="batch_size must be a positive integer"):
        head_stats(tiny_gpt2, [TEXT], batch_size=0, progress=False)
    with pytest.raises(InvalidInput, match="unknown statistic 'prv'"):
        head_stats(tiny_gpt2, [TEXT], progress=False).matrix("prv")
    assert tiny_gpt2.count_hooks() == 0
