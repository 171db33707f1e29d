"""Word alignment (attnlab.analysis._corpus): tokens that span several words, words no token covers."""

import pytest
import torch

from attnlab.analysis import prepare, word_attention
from attnlab.analysis.conllu import read_conllu
from attnlab.analysis.syntax import word_maps
from attnlab.engine.model import HookedModel
from attnlab.errors import InvalidInput
from attnlab.testing import tiny_hf_model, tiny_tokenizer

# The tiny tokenizers pre-tokenise like r"\w+|[^\w\s]+": a run of marks ('."', '...', '?!', ').')
# is one token, as in gemma-3's vocabulary, while the words split every mark on its own.
PUNCTUATED = ["Wait... what?", 'He said "no."', "Really?!", "a -- b", "(see above).",
              'The nurse said "no." Then she left ...']


def _dropping_bert():
    """tiny-bert whose normaliser drops soft hyphens and zero-width spaces, as BERT's clean_text does."""
    from tokenizers import normalizers

    tok = tiny_tokenizer("encoder")
    tok.backend_tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Replace("\u00ad", ""), normalizers.Replace("\u200b", ""), normalizers.Lowercase()])
    return HookedModel(tiny_hf_model("bert"), tok, name="tiny-bert-drop")


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_a_token_spanning_several_words_serves_each_of_them(arch):
    from attnlab.testing import tiny_model

    model = tiny_model(arch)
    sentences = prepare(model, PUNCTUATED)  # each one was refused: "words [...] produced no tokens"
    for s in sentences:
        assert sorted(w for w in s.word_index if w is not None) == list(range(len(s.words)))
        assert torch.allclose(s.alignment().sum(1), torch.ones(s.n_tokens))
    s = sentences[1]  # He said " no ."  -> the last token '."' is both '.' and '"'
    assert s.words == ["He", "said", '"', "no", ".", '"']
    last = s.n_tokens - (2 if arch == "bert" else 1)
    assert [s.word_index[u] for u in s.units_of[last]] == [4, 5]
    row = s.alignment()[last]
    assert row[s.units_of[last]].tolist() == [0.5, 0.5] and row.sum() == 1.0
    wait = sentences[0]  # Wait ... what ?  -> '...' serves the three '.' words
    dots = [t for t, units in enumerate(wait.units_of) if len(units) == 3]
    assert len(dots) == 1 and [wait.word_index[u] for u in wait.units_of[dots[0]]] == [1, 2, 3]


def test_word_attention_splits_a_shared_token_evenly():
    from attnlab.testing import tiny_model

    s = prepare(tiny_model("gpt2"), ['He said "no."'])[0]  # [BOS] he said " no [."]
    assert s.n_tokens == 6 and s.n_units == 7
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(3, 6, 6), -1)
    w = word_attention(p, s, drop_special=True)  # words: He said " no . "
    assert w.shape == (3, 6, 6)
    assert torch.allclose(w[:, 0, 4], p[:, 1, 5] / 2) and torch.allclose(w[:, 0, 5], p[:, 1, 5] / 2)
    assert torch.equal(w[:, 4], w[:, 5])  # '.' and '"' attend from the same token
    assert torch.allclose(w[:, 4, 0], p[:, 5, 1])
    full = word_attention(p, s)
    assert torch.allclose(full.sum(-1), torch.ones(3, 7))  # rows are still distributions


def test_a_word_no_token_covers_shares_the_token_before_it(tmp_path):
    model = _dropping_bert()
    s = prepare(model, [["co", "\u00ad", "operate", "now"], ["\u200b", "she", "left"]])
    a, b = s
    assert a.special == [True, False, False, False, True]  # [CLS] co operate now [SEP]: no token for the hyphen
    assert [a.word_index[u] for u in a.units_of[1]] == [0, 1]  # 'co' also serves the soft hyphen
    assert [b.word_index[u] for u in b.units_of[1]] == [0, 1]  # a first word takes the token after it
    f = tmp_path / "soft.conllu"
    rows = [("co", 3, "compound"), ("\u00ad", 1, "punct"), ("operate", 0, "root")]
    f.write_text("".join(f"{i}\t{w}\t_\t_\t_\t_\t{h}\t{r}\t_\t_\n" for i, (w, h, r) in enumerate(rows, start=1)),
                 encoding="utf-8")
    (m,) = word_maps(model, read_conllu(f), progress=False)
    assert m.shape == (2, 4, 4, 4)
    assert torch.equal(m[..., 1, :], m[..., 2, :])  # the hyphen attends as 'co' does


def test_a_sentence_the_tokenizer_drops_entirely_names_its_file_and_line(tmp_path):
    f = tmp_path / "zw.conllu"
    f.write_text("1\ta\t_\t_\t_\t_\t0\troot\t_\t_\n\n# sent_id = z\n1\t\u200b\t_\t_\t_\t_\t0\troot\t_\t_\n",
                 encoding="utf-8")
    with pytest.raises(InvalidInput, match=r"sentence 1 \(.*zw.conllu:4\): words \['\\u200b'\] produced no tokens"):
        word_maps(_dropping_bert(), read_conllu(f), progress=False)
    with pytest.raises(InvalidInput, match=r"^sentence 0: words \['\\u200b'\] produced no tokens"):
        prepare(_dropping_bert(), [["\u200b"]])


@pytest.mark.parametrize("piece, punct", [("#", True), ("##", True), ("###", True), ("▁##", True), ("▁####", True),
                                          ("##.", True), ("##ing", False), ("Ġ,", True), ("▁the", False), ("##", True)])
def test_hash_tokens_are_punctuation_and_wordpiece_markers_are_not(piece, punct):
    """Gemma's '##' / '▁####' tokens (Markdown headings) were emptied by stripping WordPiece's marker."""
    from attnlab.analysis._corpus import is_punctuation

    assert is_punctuation(piece) is punct


@pytest.mark.parametrize("item", ["the \ud800 nurse", ["the", "nurse\udcff"]])
def test_a_lone_surrogate_is_refused_naming_the_sentence(item):
    """A string decoded with errors='surrogateescape' reached the tokenizer, which raised a bare TypeError."""
    from attnlab.testing import tiny_model

    with pytest.raises(InvalidInput, match=r"^sentence 1 holds '\\ud[8c][0f][0f]' at character \d+, which is not a "
                                           r"Unicode character"):
        prepare(tiny_model("gpt2"), ["the nurse left", item])


@pytest.mark.parametrize("text, words", [
    ("हिन्दी भाषा", ["हिन्दी", "भाषा"]),
    ("عَرَبِيّ كلمة", ["عَرَبِيّ", "كلمة"]),
    ("the cafe\u0301-bar is open.", ["the", "cafe\u0301-bar", "is", "open", "."]),
    ("Wait... what?", ["Wait", ".", ".", ".", "what", "?"]),
])
def test_a_combining_mark_belongs_to_its_word(text, words):
    """re's \\w does not match combining marks: Hindi 'हिन्दी भाषा' was 10 words (vowel signs and the virama as
    punctuation), Arabic with harakat one word per letter, an NFD 'café' two words."""
    from attnlab.analysis import split_words
    from attnlab.testing import tiny_model

    assert split_words(text) == words
    (s,) = prepare(tiny_model("gpt2"), [text])
    assert s.words == words and len([u for u in s.word_index if u is not None]) == len(words)
