"""The shipped bias data: occupations with shares of women, templates, neutral text."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from attnlab.bias.templates import Template, neutral_prompts, neutral_text, occupation_table, occupations, templates
from attnlab.errors import InvalidInput


def test_occupations_table():
    df = occupation_table()
    assert 30 <= len(df) <= 40 and df.occupation.is_unique
    assert df.share_women.between(0, 1).all() and set(df.year) == {2023}
    assert df.share_women.max() > 0.85 and df.share_women.min() < 0.05  # spans the range
    assert occupations(["nurse", "mechanic"]).share_women.tolist() == [0.87, 0.02]


def test_unknown_occupation_suggests():
    with pytest.raises(InvalidInput, match="did you mean 'nurse'"):
        occupations(["nurce"])
    with pytest.raises(InvalidInput, match="non-empty"):
        occupations([])


def test_templates():
    ts = templates()
    assert 4 <= len(ts) <= 8
    assert ts[0].causal("nurse") == "The nurse said that"
    assert ts[0].masked("nurse", "[MASK]") == "The nurse said that [MASK] would be late today."
    with pytest.raises(InvalidInput, match="no '{occupation}' slot"):
        Template("The person said that")


@pytest.mark.parametrize("prefix, message", [
    ("The {occupation} said {x}", r"unknown field \{x\}; the only field is '\{occupation\}'"),
    ("The {occupation} said {}", r"unknown field \{\}; the only field is"),
    ("The {occupation} said {0}", r"unknown field \{0\}"),
    ("The {occupation!r} said", r"unknown field \{occupation!r\}"),
    ("The {occupation:>9} said", r"unknown field \{occupation:>9\}"),
    ("The {occupation} said {", r"Single '\{' encountered in format string; the only field is '\{occupation\}'"),
    ("The {occupation} said }", r"Single '\}' encountered"),
    ("The {{occupation}} said that", r"has no '\{occupation\}' slot \(a doubled \{\{occupation\}\} is a literal"),
])
def test_a_template_that_would_not_format_is_refused_when_made(prefix, message):
    with pytest.raises(InvalidInput, match=rf"template prefix {re.escape(repr(prefix))}.*{message}"):
        Template(prefix)


def test_literal_braces_and_repeated_slots_format():
    assert Template("{{a}} {occupation} and {occupation}").causal("nurse") == "{a} nurse and nurse"


def test_neutral_text_has_no_gendered_words():
    words = set(re.findall(r"[a-z]+", " ".join(neutral_text() + neutral_prompts()).lower()))
    assert len(neutral_text()) >= 3 and len(neutral_prompts()) >= 8
    assert not words & {"he", "she", "him", "her", "his", "hers", "man", "woman", "men", "women"}
    assert isinstance(occupations(), pd.DataFrame)


@pytest.mark.parametrize("items, message", [
    ([5], r"^template 0: expected a string with an '\{occupation\}' slot, a Template or a dict with keys 'prefix' "
          r"\(and optionally 'suffix'\), got 5$"),
    (["The {occupation} said", {"bad": 1}], r"^template 1: expected .*got \{'bad': 1\}$"),
    ([{"suffix": "x"}], r"^template 0: expected .*got \{'suffix': 'x'\}$"),
    (5, r"^templates must be a list of strings, Template objects or dicts, got int$"),
])
def test_as_templates_refuses_what_is_not_a_template(items, message):
    """An int or a dict with other keys than prefix/suffix failed in Template(**t) with a bare TypeError."""
    from attnlab.bias.templates import as_templates

    with pytest.raises(InvalidInput, match=message):
        as_templates(items)


def test_one_template_string_is_one_template():
    """A single string was read as a list of one-character templates ('T' has no slot)."""
    from attnlab.bias.templates import as_templates

    assert as_templates("The {occupation} said") == [Template("The {occupation} said")]
    assert as_templates([{"prefix": "The {occupation} said", "suffix": "x"}]) == [Template("The {occupation} said", "x")]


def test_a_bool_share_of_women_is_refused():
    """share_women=True was taken as 1.0 (100% women) without a word."""
    from attnlab.bias.templates import occupation_frame

    with pytest.raises(InvalidInput, match=r"row 1 \('doctor'\): share_women must be a number in 0\.\.1 .*got True"):
        occupation_frame(pd.DataFrame({"occupation": ["nurse", "doctor"], "share_women": [0.9, True]}))
