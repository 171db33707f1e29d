"""Turn a corpus into per-sentence attention maps, with tokens aligned to words.

Every analysis in this package starts here: texts (or pre-split word lists, e.g. from
CoNLL-U) are tokenised once, padded by the engine (``model.pad``) and run through the
engine's one forward primitive (:func:`attnlab.engine.forward.run`, no LM head) in
batches with only ``hook_pattern`` read, then cut back to each sentence's own length.

A text is fed to the model as it is, and its words are runs of word characters and single
punctuation marks; a word list (e.g. from CoNLL-U) is fed as the words joined by single
spaces. Word alignment uses the fast tokenizer's character offsets: a token belongs to the
first word its characters overlap. Special
tokens ([CLS], [SEP], BOS) have empty offsets and become words of their own, flagged in
``Sentence.special``.
"""

from __future__ import annotations

import bisect
import re
import string
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float

from attnlab.engine.dropout import check_deterministic
from attnlab.engine.forward import run
from attnlab.engine.locations import hook_name
from attnlab.errors import InvalidInput
from attnlab.measure.batch_size import check_batch_size
from attnlab.measure.distributed import map_units

__all__ = ["Sentence", "prepare", "attention_batches", "split_words", "is_punctuation", "check_corpus"]

_WORD_RE = re.compile(r"\w+(?:[-']\w+)*|[^\w\s]")
_PUNCT = set(string.punctuation) | set("“”‘’«»…–—")


def split_words(text: str) -> list[str]:
    """Words of a plain text: runs of word characters, and each punctuation mark on its own."""
    return _WORD_RE.findall(text)


def is_punctuation(piece: str) -> bool:
    """True for a token/word made only of punctuation (subword markers ``##``/``▁``/``Ġ`` ignored)."""
    core = piece.replace("##", "").replace("▁", "").replace("Ġ", "").strip()
    return bool(core) and all(ch in _PUNCT for ch in core)


@dataclass
class Sentence:
    """One tokenised sentence: its tokens, words and which word each token belongs to.

    ``word_of[t]`` is the index (into ``units``) of the unit holding token ``t``; units are
    the sentence's words in order plus one unit per special token, in token order.
    ``word_index[u]`` maps a unit back to the word (``None`` for special tokens).
    """

    text: str
    words: list[str]
    tokens: list[str]
    token_ids: list[int]
    special: list[bool]  # per token
    word_of: list[int]  # per token -> unit index
    word_index: list[int | None]  # per unit -> word index or None for a special token
    pattern: torch.Tensor | None = field(default=None, repr=False)  # [layer, head, query, key]

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def n_units(self) -> int:
        return len(self.word_index)

    def alignment(self) -> Float[torch.Tensor, "token unit"]:
        """One-hot ``[token, unit]`` matrix: 1 where the token is a piece of the unit."""
        a = torch.zeros(self.n_tokens, self.n_units)
        a[torch.arange(self.n_tokens), torch.tensor(self.word_of)] = 1.0
        return a


def check_corpus(corpus) -> list:
    if isinstance(corpus, str):
        corpus = [corpus]
    try:
        items = list(corpus)
    except TypeError:
        raise InvalidInput(f"corpus must be a list of texts or word lists, got {type(corpus).__name__}") from None
    if not items:
        raise InvalidInput("empty corpus: pass at least one text (a string) or word list")
    return items


def _words_of(item, index: int) -> tuple[str, list[str], list[int]]:
    """(text fed to the model, its words, each word's start character)."""
    if isinstance(item, str):
        found = list(_WORD_RE.finditer(item))
        text, words, starts = item, [m.group() for m in found], [m.start() for m in found]
    else:
        if hasattr(item, "words") and not isinstance(item, Sequence):
            item = list(item.words)
        if not (isinstance(item, Sequence) and all(isinstance(w, str) for w in item)):
            raise InvalidInput(f"sentence {index}: expected a string or a list of words, got {type(item).__name__}")
        words = list(item)
        if any(not w or any(ch.isspace() for ch in w) for w in words):
            raise InvalidInput(f"sentence {index}: words must be non-empty and contain no spaces, got {words!r}")
        text, starts, pos = " ".join(words), [], 0
        for w in words:
            starts.append(pos)
            pos += len(w) + 1
    if not words:
        raise InvalidInput(f"sentence {index} is empty: every sentence needs at least one word")
    return text, words, starts


def _align(model, text: str, words: list[str], starts: list[int], index: int) -> Sentence:
    # Offsets come from the tokenizer itself (the engine has no notion of words); the ids
    # are the ones ``model.token_rows`` gives, special tokens included.
    tok = model.tokenizer
    if not getattr(tok, "is_fast", False):
        raise InvalidInput(f"{model.cfg.name}: word alignment needs a fast tokenizer (character offsets); "
                           "load the model with its fast tokenizer")
    enc = tok(text, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    n_ctx = model.cfg.n_ctx
    if n_ctx is not None and len(ids) > n_ctx:
        raise InvalidInput(
            f"sentence {index} has {len(ids)} tokens but {model.cfg.name} handles at most {n_ctx}; "
            "shorten or drop it"
        )
    ends = [st + len(w) for st, w in zip(starts, words)]
    word_of, word_index, special, unit_of_word = [], [], [], {}
    for s, e in offsets:
        if e <= s:  # no characters: a special token ([CLS], [SEP], BOS) is its own unit
            special.append(True)
            word_of.append(len(word_index))
            word_index.append(None)
            continue
        special.append(False)
        # first word overlapping [s, e); a token of spaces only goes to the next word
        w = bisect.bisect_right(ends, s)
        w = min(w, len(words) - 1)
        if w not in unit_of_word:
            unit_of_word[w] = len(word_index)
            word_index.append(w)
        word_of.append(unit_of_word[w])
    missing = sorted(set(range(len(words))) - set(unit_of_word))
    if missing:
        raise InvalidInput(f"sentence {index}: words {[words[i] for i in missing]} produced no tokens")
    return Sentence(
        text=text,
        words=words,
        tokens=tok.convert_ids_to_tokens(ids),
        token_ids=list(ids),
        special=special,
        word_of=word_of,
        word_index=word_index,
    )


def prepare(model, corpus: Iterable) -> list[Sentence]:
    """Tokenise and word-align every sentence (no forward pass yet); checks lengths."""
    items = check_corpus(corpus)
    return [_align(model, *_words_of(item, i), i) for i, item in enumerate(items)]


def _batches(sentences: list[Sentence], batch_size: int) -> Iterator[list[Sentence]]:
    # Group similar lengths so padding stays small; results keep the caller's order.
    order = sorted(range(len(sentences)), key=lambda i: sentences[i].n_tokens)
    for start in range(0, len(order), batch_size):
        yield [sentences[i] for i in order[start : start + batch_size]]


def attention_batches(
    model,
    sentences: list[Sentence],
    *,
    batch_size: int = 16,
    progress: bool = True,
    interventions: Sequence = (),
    desc: str = "attention",
) -> Iterator[Sentence]:
    """Yield each sentence with ``.pattern`` filled: ``[layer, head, query, key]`` float32.

    Sentences are batched by length and right-padded by the engine; only ``hook_pattern``
    is read and no LM head runs. ``interventions`` are applied during the run (e.g. to
    measure attention under an edit).
    """
    batch_size = check_batch_size(batch_size, auto=False)
    names = [hook_name(layer, "pattern") for layer in range(model.cfg.n_layers)]

    def patterns(batch: list[Sentence]) -> list[torch.Tensor]:
        tokens = model.pad([s.token_ids for s in batch], padding_side="right")
        check_deterministic(model)
        cache = run(model, tokens, logits=None, read=names, interventions=interventions).cache
        stacked = torch.stack([cache[name] for name in names], 1)  # [batch, layer, head, query, key]
        return [stacked[row, :, :, : s.n_tokens, : s.n_tokens].float().cpu().clone() for row, s in enumerate(batch)]

    batches = list(_batches(sentences, batch_size))  # in a process group, batches are dealt to the processes
    for batch, maps in zip(batches, map_units(patterns, batches, progress=progress, desc=desc, size=len, leave=True)):
        for s, pattern in zip(batch, maps):
            s.pattern = pattern
            yield s
