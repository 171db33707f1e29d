"""Read dependency trees from CoNLL-U files (Universal Dependencies format).

Handles the real format: ``#`` comment lines (``# text = ...`` and ``# sent_id = ...`` are
kept), multiword token ranges such as ``3-4`` (skipped: the syntactic words that follow
carry the tree) and empty nodes such as ``5.1`` (skipped: they belong to enhanced
dependencies), each checked to stand where it belongs (a range ``n-k``, k > n, right before
word n and within the sentence; an empty node ``n.k`` after word n). Every malformed line raises :class:`DataFormatError` naming ``file:line``;
a sentence whose heads do not form one tree rooted at 0 (a missing head, a cycle, no root
or, as Universal Dependencies requires exactly one, several words with HEAD 0) is rejected
the same way, and so are an empty DEPREL and a file that is not UTF-8 text (a UTF-8
byte-order mark is accepted). Lines end at ``\\n``, ``\\r\\n`` or, in a file or string with no
``\\n``, at ``\\r``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from attnlab._textfile import iter_lines, split_lines
from attnlab.errors import DataFormatError, InvalidInput, check_flag, is_integer

__all__ = ["DependencySentence", "read_conllu", "parse_conllu"]

_N_COLUMNS = 10
# ASCII digits only: str.isdigit() and \d also accept "²" or "٣", which are no CoNLL-U index
_NUMBER = re.compile(r"^[0-9]+$")
_RANGE = re.compile(r"^[0-9]+-[0-9]+$")
_EMPTY = re.compile(r"^[0-9]+\.[0-9]+$")
_META = re.compile(r"#\s*(sent_id|text)\s*=\s*(.*)$")
# walk states of the tree check
_UNSEEN, _ON_PATH, _REACHES_ROOT = 0, 1, 2


@dataclass
class DependencySentence:
    """One sentence: words, 1-based ``heads`` (0 = root) and relations, aligned by index."""

    words: list[str]
    heads: list[int]
    relations: list[str]
    sent_id: str | None = None
    text: str | None = None
    line: int = 0  # line number of the sentence's first word, for messages
    upos: list[str] = field(default_factory=list)
    source: str | None = field(default=None, compare=False)  # the file (or parse_conllu's ``source``) read, for messages

    def __len__(self) -> int:
        return len(self.words)


def tree_problem(sent: DependencySentence) -> tuple[int, str] | None:
    """``(word index to name, what is wrong)`` unless the heads form one tree rooted at 0; linear time.

    Each word is walked up towards the root at most once: a walk stops at a word already
    known to reach the root, so a 4,000-word sentence is as cheap per word as a 10-word one.
    """
    n = len(sent.words)
    if not any(h == 0 for h in sent.heads):
        return 0, "sentence has no root (no word with HEAD 0)"
    roots = [i for i, h in enumerate(sent.heads) if h == 0]
    if len(roots) > 1:
        first, second = roots[:2]
        return second, (f"words {first + 1} ({sent.words[first]!r}) and {second + 1} ({sent.words[second]!r}) both "
                        "have HEAD 0, but a sentence has exactly one root (the word with HEAD 0)")
    for i, h in enumerate(sent.heads):
        if not 0 <= h <= n:
            return i, (f"word {i + 1} ({sent.words[i]!r}) has head {h}, but the sentence has words 1..{n} "
                       "(missing head word)")
        if h == i + 1:
            return i, f"word {i + 1} ({sent.words[i]!r}) is its own head"
    state = [_UNSEEN] * (n + 1)  # index 0 is the root
    state[0] = _REACHES_ROOT
    for start in range(1, n + 1):
        path, node = [], start
        while state[node] == _UNSEEN:
            state[node] = _ON_PATH
            path.append(node)
            node = sent.heads[node - 1]
        if state[node] == _ON_PATH:  # the walk came back to a word of this very walk
            cycle = path[path.index(node) :] + [node]
            return node - 1, f"heads form a cycle {' -> '.join(map(str, cycle))}"
        for word in path:
            state[word] = _REACHES_ROOT
    return None


def _check_tree(sent: DependencySentence, lines: list[int], where: str) -> None:
    """Raise :class:`DataFormatError` naming ``where:line`` unless the heads form one tree rooted at 0."""
    problem = tree_problem(sent)
    if problem is not None:
        label = f" (sent_id {sent.sent_id})" if sent.sent_id else ""
        raise DataFormatError(f"{where}:{lines[problem[0]]}{label}: {problem[1]}")


def parse_conllu(text: str, *, source: str = "<string>", subtypes: bool = False) -> list[DependencySentence]:
    """Parse CoNLL-U text. ``subtypes=False`` keeps only the universal relation (``nmod:poss`` -> ``nmod``)."""
    if not isinstance(text, str):
        raise InvalidInput(f"parse_conllu takes the text of a CoNLL-U file, got {type(text).__name__}; use read_conllu for a path")
    text = text.removeprefix("\ufeff")
    check_flag(subtypes, "subtypes")  # "no" is truthy: it kept nmod:poss
    return list(_iter_sentences(enumerate(split_lines(text), start=1), source, subtypes))


def read_conllu(path: str | Path, *, subtypes: bool = False, limit: int | None = None) -> list[DependencySentence]:
    """Read every sentence of a UTF-8 CoNLL-U file (or the first ``limit``)."""
    if limit is not None and (not is_integer(limit) or limit < 1):
        raise InvalidInput(f"limit must be a positive number of sentences or None (all), got {limit!r}")
    limit = None if limit is None else int(limit)
    check_flag(subtypes, "subtypes")  # "no" is truthy: it kept nmod:poss
    if not isinstance(path, (str, os.PathLike)):  # Path(3) raised a bare TypeError
        raise InvalidInput(f"read_conllu takes the path of a CoNLL-U file (a str or Path), got {type(path).__name__}"
                           + ("; use parse_conllu for text already in memory" if isinstance(path, bytes) else ""))
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"no CoNLL-U file at {str(path)!r}" + (" (it is a folder)" if path.is_dir() else ""))
    out = []
    for sent in _iter_sentences(iter_lines(path, what="CoNLL-U file"), str(path), subtypes):
        out.append(sent)
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise DataFormatError(f"{path}: no sentences found (expected word lines of {_N_COLUMNS} tab-separated columns)")
    return out


def _iter_sentences(lines: Iterable[tuple[int, str]], source: str, subtypes: bool) -> Iterator[DependencySentence]:
    """Sentences from ``(line number, line)`` pairs; every error names ``source:line``."""
    words: list[str] = []
    heads: list[int] = []
    rels: list[str] = []
    upos: list[str] = []
    word_lines: list[int] = []
    meta: dict[str, str] = {}
    span: tuple[int, int, int] | None = None  # the last multiword token: (first word, last word, its line)

    def check_span() -> None:
        if span is not None and span[1] > len(words):
            raise DataFormatError(f"{source}:{span[2]}: multiword token {span[0]}-{span[1]} covers words up to "
                                  f"{span[1]}, but the sentence ends at word {len(words)}")

    def finish() -> DependencySentence:
        check_span()
        sent = DependencySentence(words, heads, rels, meta.get("sent_id"), meta.get("text"), word_lines[0], upos, source)
        _check_tree(sent, word_lines, source)
        return sent

    for lineno, raw in lines:
        line = raw.rstrip("\r")
        if not line.strip():
            check_span()
            if words:
                yield finish()
            words, heads, rels, upos, word_lines, meta, span = [], [], [], [], [], {}, None
            continue
        if line.startswith("#"):
            m = _META.match(line)
            if m:
                meta[m.group(1)] = m.group(2).strip()
            continue
        cols = line.split("\t")
        if len(cols) != _N_COLUMNS:
            raise DataFormatError(
                f"{source}:{lineno}: expected {_N_COLUMNS} tab-separated columns, found {len(cols)}: {line[:60]!r}"
            )
        idx, head = cols[0], cols[6]
        if _RANGE.match(idx):  # checked, though skipped: a misplaced range means lines out of place
            first, last = map(int, idx.split("-"))
            if first != len(words) + 1 or last <= first or (span is not None and span[1] >= first):
                raise DataFormatError(
                    f"{source}:{lineno}: multiword token {idx} out of place: expected a range {len(words) + 1}-k "
                    f"(k > {len(words) + 1}) right before its first word {len(words) + 1}"
                    + (f", but range {span[0]}-{span[1]} still covers word {first}"
                       if span is not None and span[1] >= first else "")
                )
            span = (first, last, lineno)
            continue
        if _EMPTY.match(idx):
            if int(idx.split(".")[0]) != len(words):
                raise DataFormatError(f"{source}:{lineno}: empty node {idx} out of place: expected {len(words)}.k "
                                      f"(an empty node follows the word it is numbered after)")
            continue
        if not _NUMBER.match(idx):
            raise DataFormatError(
                f"{source}:{lineno}: ID {idx!r} is not a word index (1, 2, ...), a range (3-4) or an empty node (5.1)"
            )
        if int(idx) != len(words) + 1:
            raise DataFormatError(f"{source}:{lineno}: word ID {idx} out of order, expected {len(words) + 1}")
        if not _NUMBER.match(head):
            raise DataFormatError(
                f"{source}:{lineno}: HEAD {head!r} of word {idx} is not a number (missing head; expected 0 for the "
                f"root or a word ID)"
            )
        if cols[7].split(":")[0].strip() in ("", "_"):  # "_": CoNLL-U's unspecified value, as a missing HEAD is
            raise DataFormatError(
                f"{source}:{lineno}: DEPREL {cols[7]!r} of word {idx} is empty or unspecified; expected a relation "
                f"(nsubj, obl:tmod, root, ...)"
            )
        # every whitespace character (a no-break space too), not only " ": the analyses split nothing,
        # but refuse a word holding any (str.isspace), so one kind missed here failed far from the file
        words.append("".join("_" if ch.isspace() else ch for ch in cols[1]) or "_")
        heads.append(int(head))
        rels.append(cols[7] if subtypes else cols[7].split(":")[0])
        upos.append(cols[3])
        word_lines.append(lineno)
    check_span()
    if words:
        yield finish()
