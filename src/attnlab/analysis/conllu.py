"""Read dependency trees from CoNLL-U files (Universal Dependencies format).

Handles the real format: ``#`` comment lines (``# text = ...`` and ``# sent_id = ...`` are
kept), multiword token ranges such as ``3-4`` (skipped: the syntactic words that follow
carry the tree) and empty nodes such as ``5.1`` (skipped: they belong to enhanced
dependencies). Every malformed line raises :class:`DataFormatError` naming the file and
line number; a sentence whose heads do not form one tree rooted at 0 (a missing head, a
cycle, no root) is rejected the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from attnlab.errors import DataFormatError, InvalidInput

__all__ = ["DependencySentence", "read_conllu", "parse_conllu"]

_N_COLUMNS = 10
_RANGE = re.compile(r"^\d+-\d+$")
_EMPTY = re.compile(r"^\d+\.\d+$")


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

    def __len__(self) -> int:
        return len(self.words)


def _check_tree(sent: DependencySentence, where: str) -> None:
    n = len(sent.words)
    roots = [i + 1 for i, h in enumerate(sent.heads) if h == 0]
    if not roots:
        raise DataFormatError(f"{where}: sentence has no root (no word with HEAD 0)")
    for i, h in enumerate(sent.heads):
        if not 0 <= h <= n:
            raise DataFormatError(
                f"{where}: word {i + 1} ({sent.words[i]!r}) has head {h}, but the sentence has words 1..{n} "
                "(missing head word)"
            )
        if h == i + 1:
            raise DataFormatError(f"{where}: word {i + 1} ({sent.words[i]!r}) is its own head")
    for start in range(1, n + 1):  # follow heads; more than n steps means a cycle
        node, seen = start, []
        while node != 0:
            if node in seen:
                cycle = seen[seen.index(node):] + [node]
                raise DataFormatError(f"{where}: heads form a cycle {' -> '.join(map(str, cycle))}")
            seen.append(node)
            node = sent.heads[node - 1]


def parse_conllu(text: str, *, source: str = "<string>", subtypes: bool = False) -> list[DependencySentence]:
    """Parse CoNLL-U text. ``subtypes=False`` keeps only the universal relation (``nmod:poss`` -> ``nmod``)."""
    return list(_iter_sentences(text.splitlines(), source, subtypes))


def read_conllu(path: str | Path, *, subtypes: bool = False, limit: int | None = None) -> list[DependencySentence]:
    """Read every sentence of a CoNLL-U file (or the first ``limit``)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"no CoNLL-U file at {str(path)!r}")
    out = []
    with path.open(encoding="utf-8") as f:
        for sent in _iter_sentences(f, str(path), subtypes):
            out.append(sent)
            if limit is not None and len(out) >= limit:
                break
    if not out:
        raise DataFormatError(f"{path}: no sentences found")
    return out


def _iter_sentences(lines, source: str, subtypes: bool) -> Iterator[DependencySentence]:
    words: list[str] = []
    heads: list[int] = []
    rels: list[str] = []
    upos: list[str] = []
    meta: dict[str, str] = {}
    first_line = 0

    def finish(lineno: int):
        sent = DependencySentence(words[:], heads[:], rels[:], meta.get("sent_id"), meta.get("text"), first_line, upos[:])
        _check_tree(sent, f"{source}, sentence ending before line {lineno}" + (f" (sent_id {sent.sent_id})" if sent.sent_id else ""))
        return sent

    lineno = 0
    for lineno, raw in enumerate(lines, start=1):
        line = raw.rstrip("\n").rstrip("\r")
        if not line.strip():
            if words:
                yield finish(lineno)
            words, heads, rels, upos, meta = [], [], [], [], {}
            continue
        if line.startswith("#"):
            m = re.match(r"#\s*(sent_id|text)\s*=\s*(.*)$", line)
            if m:
                meta[m.group(1)] = m.group(2).strip()
            continue
        cols = line.split("\t")
        if len(cols) != _N_COLUMNS:
            raise DataFormatError(
                f"{source}, line {lineno}: expected {_N_COLUMNS} tab-separated columns, found {len(cols)}: {line[:60]!r}"
            )
        idx = cols[0]
        if _RANGE.match(idx) or _EMPTY.match(idx):
            continue
        if not idx.isdigit():
            raise DataFormatError(f"{source}, line {lineno}: ID {idx!r} is not a word index, a range (3-4) or an empty node (5.1)")
        if int(idx) != len(words) + 1:
            raise DataFormatError(f"{source}, line {lineno}: word ID {idx} out of order, expected {len(words) + 1}")
        if not cols[6].isdigit():
            raise DataFormatError(f"{source}, line {lineno}: HEAD {cols[6]!r} of word {idx} is not a number (missing head)")
        if not words:
            first_line = lineno
        form = cols[1].replace(" ", "_") or "_"
        words.append(form)
        heads.append(int(cols[6]))
        rel = cols[7]
        rels.append(rel if subtypes else rel.split(":")[0])
        upos.append(cols[3])
    if words:
        yield finish(lineno + 1)
