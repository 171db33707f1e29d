"""The authored bias data that ships with attnlab: templates, occupations, neutral text.

Occupations carry the share of women employed in the matching US occupation (BLS, 2023;
see ``occupations.json`` for the exact source). Templates and neutral text were written
for attnlab. Everything is read with ``importlib.resources`` from ``attnlab/bias/data``.

>>> from attnlab.bias.templates import occupations, templates
>>> occupations().loc[lambda d: d.occupation == "nurse", "share_women"].item()
0.87
>>> templates()[0].prefix
'The {occupation} said that'
"""

from __future__ import annotations

import json
import math
import string
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import pandas as pd

from attnlab.engine.tokens import check_unicode
from attnlab.errors import InvalidInput, did_you_mean

__all__ = [
    "Template",
    "as_templates",
    "check_next_word_prefixes",
    "templates",
    "occupations",
    "occupation_frame",
    "occupation_table",
    "neutral_prompts",
    "neutral_text",
    "OCCUPATION_SOURCE",
]


@dataclass(frozen=True)
class Template:
    """One sentence frame: a causal LM reads ``prefix``; a masked LM reads ``prefix [MASK] suffix``."""

    prefix: str  # must contain "{occupation}"
    suffix: str = ""

    def __post_init__(self):
        for part in ("prefix", "suffix"):
            if not isinstance(getattr(self, part), str):
                raise InvalidInput(f"template {part} must be a string, got {type(getattr(self, part)).__name__}")
            check_unicode(getattr(self, part), f"template {part} {getattr(self, part)!r}")
        # parsed as str.format parses it, so that every template that passes here also formats: a stray
        # brace or another field failed only later, and '{{occupation}}' (a literal) never took the occupation
        try:
            fields = [(name, conv, spec) for _, name, spec, conv in string.Formatter().parse(self.prefix)
                      if name is not None]
        except ValueError as err:
            raise InvalidInput(f"template prefix {self.prefix!r}: {err}; the only field is '{{occupation}}'; "
                               "write a literal brace as {{ or }}") from None
        for name, conv, spec in fields:
            if name != "occupation" or conv or spec:
                field = "{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
                raise InvalidInput(f"template prefix {self.prefix!r}: unknown field {field}; the only field is "
                                   "'{occupation}'; write a literal brace as {{ or }}")
        if not fields:
            raise InvalidInput(f"template prefix {self.prefix!r} has no '{{occupation}}' slot "
                               "(a doubled {{occupation}} is a literal, not a slot)")
        if "{occupation}" in self.suffix.replace("{{", "").replace("}}", ""):  # the suffix is text, never formatted
            raise InvalidInput(f"template suffix {self.suffix!r} has an '{{occupation}}' slot; only the prefix is "
                               "filled with the occupation (a masked LM reads 'prefix [MASK] suffix')")

    def causal(self, occupation: str) -> str:
        return self.prefix.format(occupation=occupation)

    def masked(self, occupation: str, mask_token: str) -> str:
        return f"{self.causal(occupation)} {mask_token} {self.suffix}".strip()


def _read(name: str) -> str:
    return resources.files("attnlab.bias").joinpath("data").joinpath(name).read_text(encoding="utf-8")


@lru_cache(maxsize=None)
def _json(name: str) -> dict:
    return json.loads(_read(name))


def as_templates(items) -> list[Template]:
    """Templates from Template objects, prefix strings or ``{"prefix": ..., "suffix": ...}`` dicts."""
    if isinstance(items, (str, Template)):  # one template, not a list of its characters
        items = [items]
    try:
        items = list(items)
    except TypeError:
        raise InvalidInput(f"templates must be a list of strings, Template objects or dicts, got "
                           f"{type(items).__name__}") from None
    out = []
    for i, t in enumerate(items):
        if isinstance(t, dict) and set(t) <= {"prefix", "suffix"} and "prefix" in t:
            out.append(Template(**t))
        elif isinstance(t, (Template, str)):
            out.append(t if isinstance(t, Template) else Template(t))
        else:  # Template(**t) raised a bare TypeError for an int or a dict with other keys
            raise InvalidInput(f"template {i}: expected a string with an '{{occupation}}' slot, a Template or a dict "
                               f"with keys 'prefix' (and optionally 'suffix'), got {t!r:.80}")
    if not out:
        raise InvalidInput("no templates given: pass a non-empty list of strings with an '{occupation}' slot")
    first: dict[Template, int] = {}
    for i, t in enumerate(out):  # a repeat was scored again for every occupation: twice the weight in its mean
        if t in first:
            raise InvalidInput(f"template {i} ({t.prefix!r}{', ' + repr(t.suffix) if t.suffix else ''}) is also "
                               f"template {first[t]}; give each template once")
        first.setdefault(t, i)
    return out


def check_next_word_prefixes(items: Sequence[Template], word: str) -> None:
    """Refuse prefixes a causal LM cannot score ``word`` (with its own space) after as asked.

    ``"...said that " + " she"``: the pronoun was scored after two spaces, not as the next word.
    Two templates with one prefix (other suffixes) are one prompt to a causal LM, which reads
    only the prefix: it was scored and counted twice per occupation.
    """
    first: dict[str, int] = {}
    for i, t in enumerate(items):
        if t.prefix in first:
            raise InvalidInput(f"templates {first[t.prefix]} and {i} have the same prefix {t.prefix!r}; a causal LM "
                               "reads only the prefix (the suffix is for masked LMs), so they are one prompt: give "
                               "each prefix once")
        first[t.prefix] = i
    spaced = next((t for t in items if t.prefix != t.prefix.rstrip()), None)
    if spaced is not None:
        raise InvalidInput(f"template prefix {spaced.prefix!r} ends with whitespace; a causal LM scores the pronoun "
                           f"as the next word with its own space ({word!r}), so end the prefix with its last word")


def templates() -> list[Template]:
    """The six authored templates."""
    return as_templates(_json("templates.json")["templates"])


def occupation_table() -> pd.DataFrame:
    """Occupations with their BLS category and share of women (0..1), as shipped."""
    data = _json("occupations.json")
    df = pd.DataFrame(data["occupations"])
    df["share_women"] = df.pop("pct_women") / 100.0
    df["year"] = data["year"]
    return df[["occupation", "share_women", "bls_category", "year"]]


def occupations(names: Sequence[str] | None = None) -> pd.DataFrame:
    """``occupation, share_women`` for all shipped occupations or the ``names`` chosen."""
    df = occupation_table()[["occupation", "share_women"]]
    if names is None:
        return df.reset_index(drop=True)
    names = list(names)
    if not names:
        raise InvalidInput("no occupations given: pass a non-empty list (or None for all)")
    twice = [n for i, n in enumerate(names) if n in names[:i]]
    if twice:
        raise InvalidInput(f"occupation {twice[0]!r} is given twice; give each occupation once")
    known = set(df.occupation)
    missing = [n for n in names if n not in known]
    if missing:
        raise InvalidInput(
            f"no share of women known for {missing[0]!r}{did_you_mean(missing[0], known)}; pass a DataFrame "
            "with columns occupation, share_women for occupations outside the shipped list"
        )
    return df.set_index("occupation").loc[names].reset_index()


def _check_occupation_rows(df: pd.DataFrame) -> None:
    """Each row a named occupation, once, with a share of women in 0..1; the first bad row is named.

    A NaN share, an empty name or a name given twice was accepted and skewed or emptied the
    per-occupation tables and the correlation with the share of women without a word.
    """
    seen: dict[str, object] = {}
    for label, name, share in zip(df.index, df["occupation"], df["share_women"]):
        where = f"occupations DataFrame row {label!r}"
        if not isinstance(name, str) or not name.strip():
            raise InvalidInput(f"{where}: occupation must be a non-empty name, got {name!r}")
        if name.strip() in seen:
            raise InvalidInput(f"{where}: occupation {name.strip()!r} is also in row {seen[name.strip()]!r}; "
                               "give each occupation once")
        seen[name.strip()] = label
        try:
            value = math.nan if isinstance(share, bool) else float(share)  # True was taken as 1.0 (100% women)
        except (TypeError, ValueError):
            value = math.nan
        if not 0 <= value <= 1:  # NaN fails this too
            raise InvalidInput(f"{where} ({name.strip()!r}): share_women must be a number in 0..1 (a fraction, not "
                               f"a percent), got {share!r}")


def occupation_frame(chosen) -> pd.DataFrame:
    """Normalise an ``occupations=`` option: None (all shipped), names from the shipped list, or a DataFrame.

    A DataFrame needs the columns ``occupation`` and ``share_women`` (a fraction in 0..1);
    names are stripped of surrounding whitespace.
    """
    if chosen is None or (isinstance(chosen, Sequence) and not isinstance(chosen, str)):
        return occupations(chosen)
    if isinstance(chosen, str):
        return occupations([chosen])
    if isinstance(chosen, pd.DataFrame):
        missing = {"occupation", "share_women"} - set(chosen.columns)
        if missing:
            raise InvalidInput(f"occupations DataFrame needs columns occupation, share_women; missing {sorted(missing)}")
        if chosen.empty:
            raise InvalidInput("occupations DataFrame is empty")
        _check_occupation_rows(chosen)
        out = chosen[["occupation", "share_women"]].reset_index(drop=True)
        # names as the duplicate check reads them: " nurse" made the prompt "The  nurse said that" (two spaces)
        return out.assign(occupation=out["occupation"].str.strip(), share_women=out["share_women"].astype(float))
    raise InvalidInput(f"occupations must be None, a list of names or a DataFrame, got {type(chosen).__name__}")


def neutral_prompts() -> list[str]:
    """Short prompts with no people in them, for the next-token KL cost of an intervention."""
    return list(_json("templates.json")["neutral_prompts"])


def neutral_text() -> list[str]:
    """A few paragraphs of ordinary prose with no gendered words, for the perplexity cost."""
    return [p.strip() for p in _read("neutral_text.txt").split("\n\n") if p.strip()]


#: where the share-of-women numbers come from (table, year)
OCCUPATION_SOURCE: str = _json("occupations.json")["source"]
