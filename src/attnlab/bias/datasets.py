"""Readers for the published WinoBias and Winogender formats, from paths the user gives.

attnlab ships no copy of either data set. Each reader checks every line and raises
:class:`~attnlab.errors.DataFormatError` naming ``file:line`` and what was expected
there; a file that is not UTF-8 text is refused the same way (a UTF-8 byte-order mark is
accepted).

WinoBias (Zhao et al. 2018): one sentence per line, ``<n> <sentence>``, with the
occupation mention and the pronoun(s) that refer to it in [brackets] (a few
sentences bracket a second pronoun of the same entity); files are named
``{pro,anti}_stereotyped_type{1,2}.txt.{dev,test}``.

Winogender (Rudinger et al. 2018): ``templates.tsv`` (occupation, other participant,
answer, sentence with ``$OCCUPATION $PARTICIPANT $NOM_PRONOUN $POSS_PRONOUN $ACC_PRONOUN``)
and ``occupations-stats.tsv`` (occupation, bergsma_pct_female, bls_pct_female, bls_year).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from attnlab._textfile import read_lines
from attnlab.errors import DataFormatError, InvalidInput, check_flag, is_integer

__all__ = [
    "load_winobias",
    "load_winobias_dir",
    "winobias_pairs",
    "load_winogender_templates",
    "load_winogender_stats",
    "fill_winogender",
    "PRONOUN_GENDER",
    "WINOGENDER_PRONOUNS",
]

#: gender of the pronouns that WinoBias brackets
PRONOUN_GENDER = {
    "he": "male", "his": "male", "him": "male", "himself": "male",
    "she": "female", "her": "female", "hers": "female", "herself": "female",
}

#: Winogender placeholder fills per gender: (nominative, possessive, accusative)
WINOGENDER_PRONOUNS = {
    "male": ("he", "his", "him"),
    "female": ("she", "her", "her"),
    "neutral": ("they", "their", "them"),
}

_WINOBIAS_NAME = re.compile(r"(pro|anti)_stereotyped_type([12])\.txt(?:\.(dev|test))?$")
_WINOBIAS_LINE = re.compile(r"^([0-9]+)\s+(\S.*)$")
_BRACKET = re.compile(r"\[([^\[\]]*)\]")
#: words that are a pronoun, never the entity a WinoBias line brackets first
_PRONOUNS = frozenset(PRONOUN_GENDER) | {"they", "them", "their", "theirs", "themselves", "themself"}
#: an entity, its pronoun and at most one more pronoun of it (87 of the 3,168 published lines)
_MOST_MENTIONS = 3


def _path(path, what: str = "file") -> Path:
    if not isinstance(path, (str, os.PathLike)):  # Path(None) raised a bare TypeError
        raise InvalidInput(f"expected the path of a data {what} (a str or Path), got {type(path).__name__}")
    p = Path(path)
    if not p.is_file():
        raise InvalidInput(f"no such file: {p}" + (" (it is a folder)" if p.is_dir() else ""))
    return p


def _lines(p: Path) -> list[str]:
    """The file's lines; not-UTF-8 bytes are a DataFormatError naming ``file:line``."""
    return read_lines(p, what="data file")


def load_winobias(path, *, stereotype: str | None = None, type: int | None = None) -> pd.DataFrame:
    """Read one WinoBias file into a DataFrame, one row per sentence.

    ``stereotype`` ("pro"/"anti") and ``type`` (1/2) are read from the file name when not
    given. Columns: ``id, sentence`` (brackets removed), ``entity, pronoun, pronoun_gender,
    entity_start, pronoun_start`` (character offsets in ``sentence``), ``n_mentions``, ``stereotype, type,
    split, line``.
    """
    p = _path(path)
    m = _WINOBIAS_NAME.search(p.name)
    if m:  # a label against the file's own name is most likely a slip (the pro and anti files swapped)
        for what, given, named in (("stereotype", stereotype, m.group(1)), ("type", type, int(m.group(2)))):
            if given is not None and given != named:
                warnings.warn(f"{p.name} is named {what} {named!r} but {what}={given!r} was given: its rows are "
                              f"labelled {given!r}", stacklevel=2)
    stereotype = stereotype or (m.group(1) if m else None)
    type = type if type is not None else (int(m.group(2)) if m else None)
    hint = "" if m else " (not in the file name)"
    if stereotype not in ("pro", "anti"):
        raise InvalidInput(f"{p.name}: pass stereotype='pro' or 'anti'{hint}, got {stereotype!r}")
    if not (is_integer(type) and type in (1, 2)):  # True and 1.0 were stored as the type and grouped apart from 1
        raise InvalidInput(f"{p.name}: pass type=1 or 2{hint}, got {type!r}")
    type = int(type)
    split = m.group(3) if m and m.group(3) else None
    rows = []
    first_line: dict[int, int] = {}  # id -> the line it was first seen on
    expected = "'<number> <sentence with two [bracketed] mentions>'"
    for lineno, raw in enumerate(_lines(p), start=1):
        line = raw.strip()
        if not line:
            continue
        lm = _WINOBIAS_LINE.match(line)
        if not lm:
            raise DataFormatError(f"{p}:{lineno}: expected {expected}, got {line[:60]!r}")
        text = lm.group(2)
        n_found = len(_BRACKET.findall(text))
        if text.count("[") != text.count("]") or text.count("[") != n_found or n_found < 2:
            raise DataFormatError(
                f"{p}:{lineno}: expected at least two balanced [bracketed] mentions (entity, then pronoun), "
                f"got {text[:80]!r}"
            )
        if n_found > _MOST_MENTIONS:  # e.g. lines merged by line ends this reader did not see as such
            raise DataFormatError(
                f"{p}:{lineno}: expected one entity and its pronoun(s), 2 or {_MOST_MENTIONS} [bracketed] mentions, "
                f"got {n_found} in {text[:80]!r}: several sentences on one line?"
            )
        empty = next((bm for bm in _BRACKET.finditer(text) if not bm.group(1).strip()), None)
        if empty is not None:
            raise DataFormatError(
                f"{p}:{lineno}: empty mention {empty.group(0)!r}; expected a word or phrase in each of the "
                f"[bracketed] mentions (entity, then pronoun), got {text[:80]!r}"
            )
        first = _BRACKET.search(text).group(1)
        if first.strip().lower() in _PRONOUNS:
            raise DataFormatError(
                f"{p}:{lineno}: the first [bracketed] mention is the pronoun {first!r}; expected the entity first, "
                f"then its pronoun (e.g. '1 [The doctor] said [he] left.'), got {text[:80]!r}"
            )
        sid = int(lm.group(1))
        if sid in first_line:
            raise DataFormatError(
                f"{p}:{lineno}: sentence id {sid} again (first on line {first_line[sid]}); each id must appear once "
                "in a file, as it pairs the sentence with its pro/anti twin"
            )
        first_line[sid] = lineno
        spans, clean, last = [], [], 0
        for bm in _BRACKET.finditer(text):
            clean.append(text[last : bm.start()])
            start = sum(len(c) for c in clean)
            clean.append(bm.group(1))
            spans.append((start, bm.group(1)))
            last = bm.end()
        clean.append(text[last:])
        (e_start, entity), (p_start, pronoun) = spans[:2]  # later brackets: more pronouns
        rows.append(
            {
                "id": sid,
                "sentence": "".join(clean),
                "entity": entity,
                "pronoun": pronoun,
                "pronoun_gender": PRONOUN_GENDER.get(pronoun.lower()),
                "entity_start": e_start,
                "pronoun_start": p_start,
                "n_mentions": len(spans),
                "stereotype": stereotype,
                "type": type,
                "split": split,
                "line": lineno,
            }
        )
    if not rows:
        raise DataFormatError(f"{p}: no sentences found; expected lines like {expected}")
    return pd.DataFrame(rows)


def load_winobias_dir(folder, *, split: str = "dev", types=(1, 2)) -> pd.DataFrame:
    """All pro/anti files of ``split`` ("dev" or "test") and ``types`` in a WinoBias folder."""
    if split not in ("dev", "test"):
        raise InvalidInput(f"split must be 'dev' or 'test', got {split!r}")
    if not isinstance(folder, (str, os.PathLike)):
        raise InvalidInput(f"expected the path of a WinoBias folder (a str or Path), got {type(folder).__name__}")
    folder = Path(folder)
    chosen = list(types) if isinstance(types, Iterable) and not isinstance(types, (str, bytes, Mapping)) else None
    if not chosen or not all(is_integer(t) and t in (1, 2) for t in chosen) or len(set(chosen)) != len(chosen):
        # 1 raised a TypeError, True read the file 'typeTrue', (1, 1) loaded each file twice
        raise InvalidInput(f"types must be a list of distinct types from 1, 2, got {types!r}")
    frames = []
    for t in map(int, chosen):
        for s in ("pro", "anti"):
            f = folder / f"{s}_stereotyped_type{t}.txt.{split}"
            if not f.is_file():
                raise InvalidInput(f"missing WinoBias file {f}")
            frames.append(load_winobias(f))
    return pd.concat(frames, ignore_index=True)


def winobias_pairs(df: pd.DataFrame) -> pd.DataFrame:
    """Match each pro-stereotyped sentence with its anti-stereotyped twin (same type, split, id).

    Columns: ``type, split, id, entity, pro, anti, pro_pronoun, anti_pronoun``.
    """
    need = {"id", "sentence", "stereotype", "type", "entity", "pronoun"}
    if not isinstance(df, pd.DataFrame) or need - set(df.columns):
        raise InvalidInput(f"winobias_pairs takes a DataFrame from load_winobias with columns {sorted(need)}")
    if "split" not in df:
        df = df.assign(split=None)
    df = df.assign(split=df["split"].fillna("-"))
    keys = ["type", "split", "id"]
    twice = df[df.duplicated(["stereotype", *keys], keep=False)]
    if len(twice):  # .loc on a repeated key paired each copy with the twin: wrong, silent pairs
        first = twice.iloc[0]
        same = twice[(twice[["stereotype", *keys]] == first[["stereotype", *keys]]).all(axis=1)]
        where = f" (lines {', '.join(map(str, same['line']))})" if "line" in same else ""
        raise InvalidInput(
            f"winobias_pairs: {len(same)} {first.stereotype} sentences share type {first.type}, split {first.split!r}, "
            f"id {first.id}{where}; each (stereotype, type, split, id) must be unique: load each file once"
        )
    pro = df[df.stereotype == "pro"].set_index(keys)
    anti = df[df.stereotype == "anti"].set_index(keys)
    both = pro.index.intersection(anti.index)
    if len(both) == 0:
        raise InvalidInput("no pro/anti sentence pairs share (type, split, id); load both pro and anti files")
    alone = [(name, side) for name, side in (("pro", pro), ("anti", anti)) if len(side.index.difference(both))]
    if alone:  # a truncated or edited file: its twins' sentences were dropped from the pairs without a word
        name, side = alone[0]
        key = side.index.difference(both)[0]
        line = side.loc[key, "line"] if "line" in side else None
        n_alone = sum(len(side.index.difference(both)) for _, side in alone)
        warnings.warn(
            f"winobias_pairs: {n_alone} of {len(df)} sentences have no twin and are left out of the pairs, e.g. the "
            f"{name} sentence of type {key[0]}, split {key[1]!r}, id {key[2]}"
            + (f" (line {line})" if line is not None else "") + "; is one of the files cut short?",
            UserWarning, stacklevel=2,
        )
    genders = [(key, a, b) for key, a, b in zip(both, pro.loc[both, "pronoun"], anti.loc[both, "pronoun"])
               if PRONOUN_GENDER.get(str(a).lower(), a) == PRONOUN_GENDER.get(str(b).lower(), b)]
    if genders:  # twins differ in the pronoun's gender: files whose ids are not aligned paired 'he' with 'him'
        (t, split, sid), a, b = genders[0]
        warnings.warn(
            f"winobias_pairs: {len(genders)} of {len(both)} pairs have pronouns of one gender in both twins, e.g. type "
            f"{t}, split {split!r}, id {sid} ({a!r} / {b!r}); pro and anti twins differ in the pronoun's gender: are "
            "the two files' ids aligned?", UserWarning, stacklevel=2)
    out = pd.DataFrame(
        {
            "entity": pro.loc[both, "entity"],
            "pro": pro.loc[both, "sentence"],
            "anti": anti.loc[both, "sentence"],
            "pro_pronoun": pro.loc[both, "pronoun"],
            "anti_pronoun": anti.loc[both, "pronoun"],
        }
    )
    return out.reset_index()


def _column_name(name: str) -> str:
    """A header cell as compared: case, spaces, '-'/'_' and the published ``(0)`` index suffix ignored."""
    return re.sub(r"\(\d+\)$", "", name.strip().lower()).strip().replace("-", "_")


def _tsv(p: Path, header: tuple[str, ...], what: str) -> list[tuple[int, list[str]]]:
    """The data rows of a TSV file whose first line is ``header`` (checked by name, not only by count).

    Each entry of ``header`` is a column name, or several accepted spellings joined by ``|``.
    """
    header_cols = len(header)
    lines = _lines(p)
    if not lines or not lines[0].strip():
        raise DataFormatError(f"{p}: empty file; expected a header line and {what}")
    names = lines[0].split("\t")
    if len(names) != header_cols:
        raise DataFormatError(
            f"{p}:1: expected a header of {header_cols} tab-separated columns ({what}), got {len(names)}: {lines[0][:60]!r}"
        )
    # a file without its header has as many columns on line 1: without this its first row was eaten as the header
    if any(_column_name(n) not in {_column_name(a) for a in h.split("|")} for n, h in zip(names, header)):
        raise DataFormatError(
            f"{p}:1: expected a header line with the tab-separated columns "
            f"{', '.join(h.split('|')[0] for h in header)}, got "
            f"{lines[0][:80]!r}; is the header line missing?"
        )
    rows = []
    for lineno, raw in enumerate(lines[1:], start=2):
        if not raw.strip():
            continue
        cols = raw.rstrip("\n").split("\t")
        if len(cols) != header_cols:
            raise DataFormatError(
                f"{p}:{lineno}: expected {header_cols} tab-separated columns ({what}), got {len(cols)}: {raw[:60]!r}"
            )
        rows.append((lineno, [c.strip() for c in cols]))
    return rows


def load_winogender_templates(path) -> pd.DataFrame:
    """Read Winogender ``templates.tsv``: ``occupation, participant, answer, template, line``.

    ``answer`` is 0 when the pronoun refers to the occupation, 1 when it refers to the
    other participant.
    """
    p = _path(path)
    what = "occupation, other-participant, answer (0/1), sentence"
    out = []
    header = ("occupation(0)", "other-participant(1)|participant", "answer", "sentence")
    for lineno, (occ, part, answer, sentence) in _tsv(p, header, what):
        if answer not in ("0", "1"):
            raise DataFormatError(f"{p}:{lineno}: expected answer 0 (occupation) or 1 (participant), got {answer!r}")
        if "$OCCUPATION" not in sentence or not re.search(r"\$(NOM|POSS|ACC)_PRONOUN", sentence):
            raise DataFormatError(
                f"{p}:{lineno}: expected a sentence with $OCCUPATION and a $NOM_PRONOUN/$POSS_PRONOUN/$ACC_PRONOUN "
                f"placeholder, got {sentence[:60]!r}"
            )
        unknown = set(re.findall(r"\$[A-Z_]+", sentence)) - {"$OCCUPATION", "$PARTICIPANT", "$NOM_PRONOUN", "$POSS_PRONOUN", "$ACC_PRONOUN"}
        if unknown:
            raise DataFormatError(
                f"{p}:{lineno}: unknown placeholder {sorted(unknown)[0]} (expected $OCCUPATION, $PARTICIPANT, "
                "$NOM_PRONOUN, $POSS_PRONOUN or $ACC_PRONOUN)"
            )
        if not occ or not part:
            raise DataFormatError(f"{p}:{lineno}: expected non-empty occupation and participant columns")
        out.append({"occupation": occ, "participant": part, "answer": int(answer), "template": sentence, "line": lineno})
    if not out:
        raise DataFormatError(f"{p}: no templates found after the header")
    return pd.DataFrame(out)


def load_winogender_stats(path) -> pd.DataFrame:
    """Read Winogender ``occupations-stats.tsv``: share of women per occupation (percent)."""
    p = _path(path)
    what = "occupation, bergsma_pct_female, bls_pct_female, bls_year"
    out = []
    first_line: dict[str, int] = {}  # occupation -> the line it was first seen on
    header = ("occupation", "bergsma_pct_female", "bls_pct_female", "bls_year")
    for lineno, (occ, bergsma, bls, year) in _tsv(p, header, what):
        if not occ:
            raise DataFormatError(f"{p}:{lineno}: expected an occupation in column 1 ({what}), got an empty cell")
        if occ in first_line:  # two shares for one occupation: a merge on it doubled the rows it joined
            raise DataFormatError(
                f"{p}:{lineno}: occupation {occ!r} again (first on line {first_line[occ]}); list each occupation once"
            )
        first_line[occ] = lineno
        try:
            row = {"occupation": occ, "bergsma_pct_female": float(bergsma), "bls_pct_female": float(bls), "bls_year": int(year)}
        except ValueError:
            raise DataFormatError(f"{p}:{lineno}: expected numbers in columns 2-4 ({what}), got {[bergsma, bls, year]}") from None
        if not (0 <= row["bls_pct_female"] <= 100 and 0 <= row["bergsma_pct_female"] <= 100):
            raise DataFormatError(
                f"{p}:{lineno}: percentages must lie in 0..100, got {bergsma!r} and {bls!r} ({what})"
            )
        out.append(row)
    if not out:
        raise DataFormatError(f"{p}: no occupations found after the header")
    return pd.DataFrame(out)


#: third-person singular verbs that follow ``$NOM_PRONOUN`` and their forms after singular "they"
#: (the published Winogender sentences read "they were", never "they was")
_THEY_AGREEMENT = {
    "was": "were", "is": "are", "has": "have", "does": "do",
    "wasn't": "weren't", "isn't": "aren't", "hasn't": "haven't", "doesn't": "don't",
}
_AGREE = re.compile(r"\$NOM_PRONOUN(\s+)(" + "|".join(re.escape(v) for v in _THEY_AGREEMENT) + r")(?![\w'])")


def _agree_with_they(template: str) -> str:
    """``$NOM_PRONOUN was`` -> ``$NOM_PRONOUN were`` (and is, has, does, their negations), for "they"."""
    return _AGREE.sub(lambda m: f"$NOM_PRONOUN{m.group(1)}{_THEY_AGREEMENT[m.group(2)]}", template)


_PLACEHOLDER = re.compile(r"\$(?:OCCUPATION|PARTICIPANT|NOM_PRONOUN|POSS_PRONOUN|ACC_PRONOUN)")
_ARTICLE_SOMEONE = re.compile(r"\b(the|an?) someone\b", re.IGNORECASE)


def _capitalise_starts(text: str) -> str:
    return re.sub(r"(^|[.!?]\s+)([a-z])", lambda m: m.group(1) + m.group(2).upper(), text)


def fill_winogender(templates: pd.DataFrame, *, genders=("male", "female", "neutral"), someone: bool = False) -> pd.DataFrame:
    """Fill every template with each gender's pronouns (and the participant or ``"someone"``).

    For the neutral gender a verb right after ``$NOM_PRONOUN`` agrees with "they" as in the
    published ``all_sentences.tsv``: was -> were, is -> are, has -> have, does -> do, and
    their ``n't`` forms.
    """
    if not isinstance(templates, pd.DataFrame) or templates.empty:
        raise InvalidInput("fill_winogender takes the non-empty DataFrame from load_winogender_templates")
    check_flag(someone, "someone")  # 'no' was truthy: every participant became "someone"
    need = ["occupation", "participant", "answer", "template"]
    missing = [c for c in need if c not in templates.columns]
    if missing:  # itertuples raised AttributeError on the first row
        raise InvalidInput(f"the Winogender templates DataFrame needs the columns {', '.join(need)}; missing {missing} "
                           "(load it with load_winogender_templates)")
    for label, row in zip(templates.index, templates[["occupation", "participant", "template"]].itertuples(index=False)):
        for column, value in zip(("occupation", "participant", "template"), row):
            if not isinstance(value, str) or not value.strip():  # NaN raised a TypeError from inside the filling
                raise InvalidInput(f"templates row {label!r}: {column} must be a non-empty string, got {value!r}")
    key = templates[need].astype(str).apply(tuple, axis=1).tolist()
    seen: dict[tuple, object] = {}
    for label, row in zip(templates.index, key):  # a file loaded twice: each template scored twice, twice the weight
        if row in seen:
            raise InvalidInput(f"templates row {label!r} repeats row {seen[row]!r} (occupation {row[0]!r}, participant "
                               f"{row[1]!r}, answer {row[2]}, the same sentence); give each template once")
        seen[row] = label
    genders = [genders] if isinstance(genders, str) else list(genders)
    if not genders:
        raise InvalidInput(f"genders must be a non-empty list from {', '.join(WINOGENDER_PRONOUNS)}")
    bad = [g for g in genders if g not in WINOGENDER_PRONOUNS]
    if bad:
        raise InvalidInput(f"unknown gender {bad[0]!r}; valid: {', '.join(WINOGENDER_PRONOUNS)}")
    twice = [g for i, g in enumerate(genders) if g in genders[:i]]
    if twice:  # every template was filled twice with it
        raise InvalidInput(f"gender {twice[0]!r} is given twice; give each of {', '.join(WINOGENDER_PRONOUNS)} at most once")
    rows = []
    for t in templates.itertuples():
        for g in genders:
            nom, poss, acc = WINOGENDER_PRONOUNS[g]
            template = _agree_with_they(t.template) if g == "neutral" else t.template
            fills = {"$OCCUPATION": t.occupation, "$PARTICIPANT": "someone" if someone else t.participant,
                     "$NOM_PRONOUN": nom, "$POSS_PRONOUN": poss, "$ACC_PRONOUN": acc}
            # one pass: chained replaces filled a placeholder inside an inserted name ("$PARTICIPANT" as occupation)
            s = _PLACEHOLDER.sub(lambda m: fills[m.group(0)], template)
            if someone:  # "the/a $PARTICIPANT" -> "someone", as in the published sentences
                s = _ARTICLE_SOMEONE.sub(lambda m: "Someone" if m.group(1)[0].isupper() else "someone", s)
            rows.append({"occupation": t.occupation, "participant": t.participant, "answer": t.answer, "gender": g, "sentence": _capitalise_starts(s)})
    return pd.DataFrame(rows)
