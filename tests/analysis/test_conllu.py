from pathlib import Path

import pytest

from attnlab.analysis.conllu import parse_conllu, read_conllu
from attnlab.errors import DataFormatError, InvalidInput

FIX = Path(__file__).parent / "fixtures"


def test_reads_comments_ranges_and_empty_nodes():
    sents = read_conllu(FIX / "good.conllu")
    assert [len(s) for s in sents] == [7, 7, 3]
    s1, s2, s3 = sents
    assert s1.sent_id == "s1" and s1.text == "The nurse said that she left."
    assert s1.heads == [2, 3, 0, 6, 6, 3, 3]
    assert s1.relations == ["det", "nsubj", "root", "mark", "nsubj", "ccomp", "punct"]
    # the range 2-3 and the empty node 6.1 are skipped; the syntactic words stay
    assert s2.words == ["She", "does", "n't", "like", "the", "car", "."]
    assert s2.heads == [4, 4, 4, 0, 6, 4, 4]
    assert s3.sent_id == "s3" and s3.text is None


def test_subtypes_are_dropped_unless_asked():
    assert read_conllu(FIX / "good.conllu")[2].relations[0] == "nmod"
    assert read_conllu(FIX / "good.conllu", subtypes=True)[2].relations[0] == "nmod:poss"


def test_limit_and_string_parser_agree():
    text = (FIX / "good.conllu").read_text()
    assert [s.words for s in parse_conllu(text)[:2]] == [s.words for s in read_conllu(FIX / "good.conllu", limit=2)]


@pytest.mark.parametrize(
    "name, pattern",
    [
        ("cycle.conllu", r"cycle 2 -> 3 -> 2"),
        ("missing_head.conllu", r"word 2 \('b'\) has head 9, but the sentence has words 1\.\.2"),
        ("bad_columns.conllu", r"line 3: expected 10 tab-separated columns, found 9"),
        ("head_not_number.conllu", r"line 2: HEAD '_' of word 2 is not a number"),
        ("no_root.conllu", r"no root"),
        ("out_of_order.conllu", r"line 2: word ID 3 out of order, expected 2"),
    ],
)
def test_broken_files_name_the_problem(name, pattern):
    with pytest.raises(DataFormatError, match=pattern):
        read_conllu(FIX / name)


def test_missing_file():
    with pytest.raises(InvalidInput, match="no CoNLL-U file"):
        read_conllu(FIX / "nope.conllu")
