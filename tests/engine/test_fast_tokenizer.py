"""``fast_tokenizer`` (tokenizer.json read once by Rust) behaves exactly like ``AutoTokenizer``.

It replaces ``AutoTokenizer`` for the embedded Gemma because it is 2-3 s faster per load;
these tests compare the two on the same files: ids with and without special tokens, padded
batches on both sides, truncation, decoding, special tokens and class-level defaults.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attnlab.engine._pretrained import fast_tokenizer
from attnlab.testing import tiny_tokenizer

_DATA = Path(__file__).resolve().parents[2] / "src" / "attnlab" / "bias" / "data"
_ATTRIBUTES = (
    "padding_side", "truncation_side", "model_input_names", "model_max_length", "bos_token", "eos_token",
    "pad_token", "unk_token", "mask_token", "all_special_tokens", "all_special_ids", "special_tokens_map",
    "vocab_size", "add_bos_token", "add_eos_token", "pad_token_id", "clean_up_tokenization_spaces",
)


def _texts(special: list[str]) -> list[str]:
    """A few hundred strings: prose, templates, and the awkward cases (specials, whitespace, bytes)."""
    prose = _DATA.joinpath("neutral_text.txt").read_text(encoding="utf-8")
    sentences = [s.strip() for s in prose.replace("\n", " ").split(". ") if s.strip()]
    templates = json.loads(_DATA.joinpath("templates.json").read_text(encoding="utf-8"))["templates"]
    occupations = json.loads(_DATA.joinpath("occupations.json").read_text(encoding="utf-8"))["occupations"]
    jobs = [o["occupation"] for o in occupations]
    filled = [f"{t['prefix']} she {t['suffix']}".replace("{occupation}", job) for t in templates for job in jobs]
    awkward = [
        "", " ", "  two  spaces  ", "\t\ttabs\tand\nnew\n\nlines", "émoji 🤖 テスト ünïcödé",
        "12345.678 + 9 = ?",
        "def f(x):\n    return x  # code", "a" * 300, "The nurse said that", "THE NURSE SAID THAT",
        *(f"{tok} after {tok}{tok}" for tok in special), "<unused5> <start_of_turn>user\nhi<end_of_turn>",
    ]
    return sentences + filled + awkward


def _assert_same_tokenizer(fast, auto, texts):
    for name in _ATTRIBUTES:
        assert getattr(fast, name, None) == getattr(auto, name, None), name
    assert len(fast) == len(auto) and fast.get_vocab() == auto.get_vocab()
    assert fast.backend_tokenizer.to_str() == auto.backend_tokenizer.to_str()
    for text in texts:
        for special in (True, False):
            assert fast(text, add_special_tokens=special) == auto(text, add_special_tokens=special), text
        ids = auto(text)["input_ids"]
        assert fast.convert_ids_to_tokens(ids) == auto.convert_ids_to_tokens(ids)
        for skip in (True, False):
            assert fast.decode(ids, skip_special_tokens=skip) == auto.decode(ids, skip_special_tokens=skip)
    for start in range(0, len(texts), 9):
        batch = texts[start : start + 9]
        assert fast(batch, padding=True) == auto(batch, padding=True)
        for side in ("left", "right"):
            a = fast(batch, padding=True, padding_side=side, return_tensors="pt")
            b = auto(batch, padding=True, padding_side=side, return_tensors="pt")
            assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
        kwargs = dict(truncation=True, max_length=6, padding="max_length")
        assert fast(batch, **kwargs) == auto(batch, **kwargs)


def test_fast_tokenizer_matches_auto_tokenizer_on_a_saved_tiny_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    tiny_tokenizer().save_pretrained(tmp_path)
    texts = _texts(["[BOS]", "[EOS]", "[PAD]", "[UNK]"])
    _assert_same_tokenizer(fast_tokenizer(tmp_path), AutoTokenizer.from_pretrained(str(tmp_path)), texts)


def test_class_defaults_come_from_the_named_tokenizer_class(tmp_path):
    tiny_tokenizer().save_pretrained(tmp_path)
    config_path = tmp_path / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "GemmaTokenizer"  # pads on the left, no token_type_ids
    config_path.write_text(json.dumps(config))
    tok = fast_tokenizer(tmp_path)
    assert tok.padding_side == "left" and tok.model_input_names == ["input_ids", "attention_mask"]
    assert "token_type_ids" not in tok("the nurse")


@pytest.mark.slow
def test_fast_tokenizer_matches_auto_tokenizer_on_gemma(tmp_path):
    """The embedded Gemma's cached tokenizer (compacted merges) against AutoTokenizer on the original file."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from attnlab.engine._gemma_cache import ensure_gemma_cache

    folder = ensure_gemma_cache()
    original = tmp_path / "original"  # tokenizers writes merges as pairs, as the GGUF conversion did
    original.mkdir()
    Tokenizer.from_file(str(folder / "tokenizer.json")).save(str(original / "tokenizer.json"))
    (original / "tokenizer_config.json").write_bytes((folder / "tokenizer_config.json").read_bytes())
    auto = AutoTokenizer.from_pretrained(str(original))
    fast = fast_tokenizer(folder)
    assert type(auto).__name__ == "GemmaTokenizer"
    special = ["<bos>", "<eos>", "<pad>", "<mask>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<unused99>"]
    texts = _texts(special)
    assert len(texts) >= 250
    _assert_same_tokenizer(fast, auto, texts)
