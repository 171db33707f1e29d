"""Turn a corpus into per-sentence attention maps, with tokens aligned to words.

Every analysis in this package starts here: texts (or pre-split word lists, e.g. from
CoNLL-U) are tokenised once, padded by the engine (``model.pad``) and run through the
engine's one forward primitive (:func:`attnlab.engine.forward.run`, no LM head) in
batches with only ``hook_pattern`` read, then cut back to each sentence's own length.

A text is fed to the model as it is, and its words are runs of word characters (with their
combining marks: Hindi vowel signs, Arabic harakat, decomposed accents) and single
punctuation marks; a word list (e.g. from CoNLL-U) is fed as the words joined by single
spaces. Word alignment uses the fast tokenizer's character offsets: a token belongs to
every word its characters overlap, so one token may serve several words (gemma's ``."``,
``...``, ``?!`` or ``).`` span two or three one-mark words). A token of spaces only goes
to the next word. A word that no token covers (a character the tokenizer's normaliser
drops, such as a soft hyphen for BERT) shares the token before it (the one after it for
the first word). Special tokens ([CLS], [SEP], BOS) have empty offsets and become units of
their own, flagged in ``Sentence.special``.
"""

from __future__ import annotations

import bisect
import numbers
import re
import string
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float

from attnlab.engine.dropout import check_deterministic
from attnlab.engine.forward import run
from attnlab.engine.locations import hook_name
from attnlab.engine.tokens import check_unicode
from attnlab.errors import InvalidInput, is_integer
from attnlab.measure.batch_size import check_batch_size
from attnlab.measure.effect import check_interventions, row_tie  # the specs tied to batch rows, as measure batches them
from attnlab.measure.distributed import fingerprint, map_units, model_fingerprint

__all__ = ["Sentence", "prepare", "attention_batches", "split_words", "is_punctuation", "check_corpus",
           "check_max_distance", "check_fraction", "check_corpus_interventions"]

_WORD_RE = re.compile(r"\w+(?:[-']\w+)*|[^\w\s]")
_PUNCT = set(string.punctuation) | set("“”‘’«»…–—")


def _word_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of each word of a plain text (see :func:`split_words`).

    A combining mark (Unicode category M: Hindi vowel signs and virama, Arabic harakat, a
    decomposed accent) is part of the word it sits in; ``re``'s ``\\w`` does not match it, so
    "हिन्दी" was six words and "cafe\\u0301" two. Marks are matched as word characters in a copy
    of the text (one character for one, so the offsets are the text's own).
    """
    if not text.isascii():
        text = "".join("a" if unicodedata.category(ch).startswith("M") else ch for ch in text)
    return [m.span() for m in _WORD_RE.finditer(text)]


def split_words(text: str) -> list[str]:
    """Words of a plain text: runs of word characters (with their combining marks), and each punctuation mark on its own."""
    if not isinstance(text, str):
        raise InvalidInput(f"split_words takes a string, got {type(text).__name__}")
    return [text[a:b] for a, b in _word_spans(text)]


def is_punctuation(piece: str) -> bool:
    """True for a token/word made only of punctuation (subword markers ``##``/``▁``/``Ġ`` ignored).

    WordPiece's ``##`` is a prefix with something after it (``##.``); a token that *is* ``##``
    or ``####`` (Gemma's Markdown headings) is punctuation itself, not an empty marker.
    """
    core = piece.replace("▁", "").replace("Ġ", "").strip()
    if core.startswith("##") and len(core) > 2:
        core = core[2:]
    return bool(core) and all(ch in _PUNCT for ch in core)


@dataclass
class Sentence:
    """One tokenised sentence: its tokens, words and which words each token belongs to.

    Units are the sentence's words in order plus one unit per special token, in token
    order; ``word_index[u]`` maps a unit back to the word (``None`` for special tokens).
    ``units_of[t]`` lists every unit token ``t`` serves: one, except for a token that spans
    several words (``."`` is both ``.`` and ``"``) or one that also stands in for a word no
    token covers. ``word_of[t]`` is the first of them.
    """

    text: str
    words: list[str]
    tokens: list[str]
    token_ids: list[int]
    special: list[bool]  # per token
    word_of: list[int]  # per token -> its first unit
    word_index: list[int | None]  # per unit -> word index or None for a special token
    pattern: torch.Tensor | None = field(default=None, repr=False)  # [layer, head, query, key]
    units_of: list[list[int]] | None = None  # per token -> every unit it serves (default: [word_of[t]])

    def __post_init__(self) -> None:
        if self.units_of is None:
            self.units_of = [[u] for u in self.word_of]

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def n_units(self) -> int:
        return len(self.word_index)

    def alignment(self) -> Float[torch.Tensor, "token unit"]:
        """``[token, unit]`` share of each token held by each unit; every row sums to 1.

        One-hot unless a token serves k units, which then get 1/k of it each (so the
        attention *to* a shared token is split evenly among its words).
        """
        a = torch.zeros(self.n_tokens, self.n_units)
        for t, units in enumerate(self.units_of):
            a[t, units] = 1.0 / len(units)
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


def check_max_distance(max_distance) -> int | None:
    """``max_distance`` as an int: None (keep every distance) or an integer >= 0, as the distance analyses take it."""
    if max_distance is not None and not (is_integer(max_distance) and max_distance >= 0):
        raise InvalidInput(f"max_distance must be an integer >= 0 or None (every distance), got {max_distance!r}")
    return None if max_distance is None else int(max_distance)


def check_fraction(value, name: str) -> float:
    """A real number in [0, 1] (numpy's too; not a bool, not NaN), as a float: 50 meant as a percent is refused."""
    if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 <= value <= 1):
        raise InvalidInput(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def check_corpus_interventions(model, interventions) -> list:
    """The specs as a list, read once, for analyses that run a corpus batch by batch.

    A generator was used up by the first batch (the later ones ran clean), and a spec tied to
    batch rows (``rows=``, one source or pattern per row) hit whichever sentence the
    length-sorted batch held there.
    """
    specs = check_interventions(model, interventions)
    for spec in specs:
        tie = row_tie(spec)
        if tie == "rows=":
            raise InvalidInput(f"interventions addressed to batch rows (rows=) cannot be used on a corpus: sentences are "
                               f"batched by length, so a row is no fixed sentence and the result would change with "
                               f"batch_size; drop rows= from {spec!r:.120}")
        if tie is not None:
            raise InvalidInput(f"interventions with one value per batch row ({type(spec).__name__} {tie}) cannot be "
                               "used on a corpus: sentences are batched by length, so a row is no fixed sentence; "
                               "give one value for every sentence")
    return specs


def _label(item, index: int) -> str:
    """How messages name a sentence: its index, and ``file:line`` for one read from a file."""
    source, line = getattr(item, "source", None), getattr(item, "line", 0)
    return f"sentence {index} ({source}:{line})" if not isinstance(item, str) and source and line else f"sentence {index}"


def _words_of(item, index: int) -> tuple[str, list[str], list[int]]:
    """(text fed to the model, its words, each word's start character)."""
    label = _label(item, index)
    if isinstance(item, str):
        spans = _word_spans(item)
        text, words, starts = item, [item[a:b] for a, b in spans], [a for a, _ in spans]
    else:
        if hasattr(item, "words") and not isinstance(item, Sequence):
            item = list(item.words)
        if not (isinstance(item, Sequence) and all(isinstance(w, str) for w in item)):
            raise InvalidInput(f"{label}: expected a string or a list of words, got {type(item).__name__}")
        words = list(item)
        if any(not w or any(ch.isspace() for ch in w) for w in words):
            raise InvalidInput(f"{label}: words must be non-empty and contain no spaces, got {words!r}")
        text, starts, pos = " ".join(words), [], 0
        for w in words:
            starts.append(pos)
            pos += len(w) + 1
    if not words:
        raise InvalidInput(f"{label} is empty: every sentence needs at least one word")
    check_unicode(text, label)  # a lone surrogate failed inside the tokenizer with a bare TypeError
    return text, words, starts


def _token_words(offsets, starts: list[int], ends: list[int]) -> list[list[int]]:
    """Per token, the words (indices) it serves; ``[]`` for a special token (empty offsets).

    A token serves every word its characters ``[s, e)`` overlap; a token overlapping none
    (spaces only) serves the next word, or the last. A word no token overlaps is then
    served by the token before it (after it, for a word before every token).
    """
    n = len(starts)
    served: list[list[int]] = []
    for s, e in offsets:
        if e <= s:
            served.append([])
            continue
        first = bisect.bisect_right(ends, s)  # first word ending after the token starts
        words = list(range(first, bisect.bisect_left(starts, e, lo=first)))  # ... and starting before it ends
        served.append(words or [min(first, n - 1)])
    covered = {w for words in served for w in words}
    real = [t for t, words in enumerate(served) if words]
    for w in range(n):
        if w in covered or not real:
            continue
        before = [t for t in real if offsets[t][0] < starts[w]]
        t = before[-1] if before else real[0]
        served[t] = sorted(served[t] + [w])
    return served


def _align(model, text: str, words: list[str], starts: list[int], label: str) -> Sentence:
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
            f"{label} has {len(ids)} tokens but {model.cfg.name} handles at most {n_ctx}; "
            "shorten or drop it"
        )
    served = _token_words(offsets, starts, [st + len(w) for st, w in zip(starts, words)])
    if not any(served):  # the tokenizer dropped every character: nothing to align the words to
        raise InvalidInput(f"{label}: words {words!r} produced no tokens (the tokenizer dropped every character); "
                           "drop the sentence or replace those characters")
    word_of, units_of, word_index, special, unit_of_word = [], [], [], [], {}
    for ws in served:
        special.append(not ws)
        if not ws:  # a special token ([CLS], [SEP], BOS) is its own unit
            units_of.append([len(word_index)])
            word_index.append(None)
        else:
            for w in ws:
                if w not in unit_of_word:
                    unit_of_word[w] = len(word_index)
                    word_index.append(w)
            units_of.append([unit_of_word[w] for w in ws])
        word_of.append(units_of[-1][0])
    return Sentence(
        text=text,
        words=words,
        tokens=tok.convert_ids_to_tokens(ids),
        token_ids=list(ids),
        special=special,
        word_of=word_of,
        word_index=word_index,
        units_of=units_of,
    )


def prepare(model, corpus: Iterable) -> list[Sentence]:
    """Tokenise and word-align every sentence (no forward pass yet); checks lengths.

    Every word gets at least one token and a token may serve several words (see the
    module docstring); only a sentence whose characters the tokenizer drops entirely is
    refused, named by index (and ``file:line`` for a CoNLL-U sentence).
    """
    items = check_corpus(corpus)
    out = []
    for i, item in enumerate(items):
        out.append(_align(model, *_words_of(item, i), _label(item, i)))
    return out


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
    interventions = check_corpus_interventions(model, interventions)
    names = [hook_name(layer, "pattern") for layer in range(model.cfg.n_layers)]
    check_deterministic(model)

    def patterns(batch: list[Sentence]) -> list[torch.Tensor]:
        tokens = model.pad([s.token_ids for s in batch], padding_side="right")
        cache = run(model, tokens, logits=None, read=names, interventions=interventions).cache
        stacked = torch.stack([cache[name] for name in names], 1)  # [batch, layer, head, query, key]
        return [stacked[row, :, :, : s.n_tokens, : s.n_tokens].float().cpu().clone() for row, s in enumerate(batch)]

    batches = list(_batches(sentences, batch_size))  # in a process group, batches are dealt to the processes
    same = lambda: {"specs": fingerprint(interventions), "model": model_fingerprint(model)}  # noqa: E731
    for batch, maps in zip(batches, map_units(patterns, batches, progress=progress, desc=desc, size=len, leave=True,
                                              same=same)):
        for s, pattern in zip(batch, maps):
            s.pattern = pattern
            yield s
