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
        ("bad_columns.conllu", r"bad_columns.conllu:3: expected 10 tab-separated columns, found 9"),
        ("head_not_number.conllu", r"head_not_number.conllu:2: HEAD '_' of word 2 is not a number"),
        ("no_root.conllu", r"no root"),
        ("out_of_order.conllu", r"out_of_order.conllu:2: word ID 3 out of order, expected 2"),
    ],
)
def test_broken_files_name_the_problem(name, pattern):
    with pytest.raises(DataFormatError, match=pattern):
        read_conllu(FIX / name)


def test_missing_file():
    with pytest.raises(InvalidInput, match="no CoNLL-U file"):
        read_conllu(FIX / "nope.conllu")


def test_tree_errors_name_the_line_of_the_word():
    with pytest.raises(DataFormatError, match=r"cycle.conllu:3 \(sent_id c1\): heads form a cycle 2 -> 3 -> 2"):
        read_conllu(FIX / "cycle.conllu")
    with pytest.raises(DataFormatError, match=r"missing_head.conllu:3 \(sent_id m1\): word 2"):
        read_conllu(FIX / "missing_head.conllu")


def _word(i, form, head, rel="dep"):
    return f"{i}\t{form}\t{form}\tX\t_\t_\t{head}\t{rel}\t_\t_"


GOOD = "\n".join(["# sent_id = a", _word(1, "nurse", 2, "nsubj"), _word(2, "left", 0, "root"), ""]) + "\n"


def test_utf8_byte_order_mark_is_accepted(tmp_path):
    f = tmp_path / "bom.conllu"
    f.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    (sent,) = read_conllu(f)
    assert sent.sent_id == "a" and sent.words == ["nurse", "left"] and sent.heads == [2, 0]
    assert parse_conllu("\ufeff" + GOOD)[0].words == ["nurse", "left"]


@pytest.mark.parametrize(
    "data, pattern",
    [
        (GOOD.replace("nurse", "café").encode("latin-1"), r"latin.conllu:2: not UTF-8 text .*latin-1"),
        (GOOD.encode("utf-16"), r"latin.conllu:1: this is UTF-16 text; save it as UTF-8"),
        (GOOD.encode("utf-16-le"), r"latin.conllu:1: contains NUL bytes"),
        (bytes(range(256)) * 4, r"latin.conllu:1: contains NUL bytes"),
        (b"# ok\n" + b"\x89PNG\r\n\x1a\n", r"latin.conllu:2: not UTF-8 text"),
    ],
    ids=["latin-1", "utf-16 with BOM", "utf-16 without BOM", "binary", "png"],
)
def test_non_utf8_files_are_a_data_format_error_naming_the_line(tmp_path, data, pattern):
    f = tmp_path / "latin.conllu"
    f.write_bytes(data)
    with pytest.raises(DataFormatError, match=pattern):
        read_conllu(f)


@pytest.mark.parametrize(
    "line, pattern",
    [
        (_word("\u00b2", "x", 0), r"x.conllu:3: ID '\u00b2' is not a word index"),  # '²'.isdigit() is True
        (_word(2, "x", "\u00b2"), r"x.conllu:3: HEAD '\u00b2' of word 2 is not a number"),
        (_word(2, "x", "\u0663"), r"x.conllu:3: HEAD '\u0663' of word 2 is not a number"),  # Arabic-Indic 3
        (_word(2, "x", "-1"), r"x.conllu:3: HEAD '-1' of word 2 is not a number"),
    ],
)
def test_ids_and_heads_are_ascii_numbers(tmp_path, line, pattern):
    f = tmp_path / "x.conllu"
    f.write_text("# sent_id = a\n" + _word(1, "a", 0, "root") + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=pattern):
        read_conllu(f)


def test_a_folder_and_a_bad_limit_are_invalid_input(tmp_path):
    with pytest.raises(InvalidInput, match="no CoNLL-U file at .* \\(it is a folder\\)"):
        read_conllu(tmp_path)
    with pytest.raises(InvalidInput, match="limit must be a positive number"):
        read_conllu(FIX / "good.conllu", limit=0)


def test_long_chain_sentence_is_checked_and_cycles_found_anywhere():
    """A 3,000-word chain (each word headed by the next) is a valid tree; closing it is a cycle."""
    n = 3000
    lines = [_word(i, f"w{i}", i + 1 if i < n else 0) for i in range(1, n + 1)]
    (sent,) = parse_conllu("\n".join(lines))
    assert len(sent) == n and sent.heads[-1] == 0
    lines[-1] = _word(n, f"w{n}", 1)  # now 1 -> 2 -> ... -> n -> 1 and no root
    lines.append(_word(n + 1, "r", 0))
    with pytest.raises(DataFormatError, match=r"<string>:1: heads form a cycle 1 -> 2 -> 3 .* -> 3000 -> 1$"):
        parse_conllu("\n".join(lines))


@pytest.mark.parametrize("end", [b"\r\n", b"\r"], ids=["CRLF", "CR only"])
def test_conllu_line_ends_do_not_change_sentences_or_line_numbers(tmp_path, end):
    """\\r\\n, \\n and a lone \\r each end a line, in every reader (CR only was one long line)."""
    for name in ("good.conllu", "cycle.conllu"):
        (tmp_path / name).write_bytes(end.join((FIX / name).read_bytes().splitlines()) + end)
    expected = read_conllu(FIX / "good.conllu")
    assert len(expected) > 1 and read_conllu(tmp_path / "good.conllu") == expected  # words, heads, line numbers
    with pytest.raises(DataFormatError, match=r"cycle.conllu:3 \(sent_id c1\): heads form a cycle 2 -> 3 -> 2"):
        read_conllu(tmp_path / "cycle.conllu")


def test_every_whitespace_character_in_a_form_becomes_an_underscore():
    """A no-break space (or a tab-like space) in FORM: the analyses refuse words with any whitespace."""
    from attnlab.analysis._corpus import _words_of

    forms = ["10\u00a0000", "a b", "x\u2009y\u3000z", "\u00a0"]
    text = "\n".join(_word(i + 1, form, 0 if i == 0 else 1, "root" if i == 0 else "dep") for i, form in enumerate(forms))
    (sentence,) = parse_conllu(text + "\n")
    assert sentence.words == ["10_000", "a_b", "x_y_z", "_"]
    assert _words_of(sentence, 0)[0] == "10_000 a_b x_y_z _"  # accepted as the analyses' input


def test_two_roots_are_refused_at_the_second(tmp_path):
    """Universal Dependencies allows exactly one word with HEAD 0; two were accepted as a forest."""
    f = tmp_path / "roots.conllu"
    f.write_text(GOOD + "# sent_id = b\n" + "\n".join([_word(1, "she", 2, "nsubj"), _word(2, "left", 0, "root"),
                                                       _word(3, "ran", 0, "root")]) + "\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"roots.conllu:8 \(sent_id b\): words 2 \('left'\) and 3 \('ran'\) both "
                                              r"have HEAD 0, but a sentence has exactly one root"):
        read_conllu(f)


@pytest.mark.parametrize("rel", ["", " ", ":tmod", "_"])
def test_an_empty_deprel_is_refused(tmp_path, rel):
    f = tmp_path / "rel.conllu"
    f.write_text(GOOD + "\n".join([_word(1, "she", 2, rel), _word(2, "left", 0, "root")]) + "\n", encoding="utf-8")
    for subtypes in (False, True):
        with pytest.raises(DataFormatError, match=rf"rel.conllu:5: DEPREL '{rel}' of word 1 is empty or unspecified; expected a relation"):
            read_conllu(f, subtypes=subtypes)


@pytest.mark.parametrize("end", ["\r\n", "\r"], ids=["CRLF", "CR only"])
def test_parse_conllu_ends_lines_as_read_conllu_does(end):
    """A CR-only string was one long line ('expected 10 tab-separated columns'), though read_conllu takes such a file."""
    text = (FIX / "good.conllu").read_text()
    assert parse_conllu(end.join(text.splitlines()) + end) == read_conllu(FIX / "good.conllu")  # words, heads, lines
    cycle = (FIX / "cycle.conllu").read_text()
    with pytest.raises(DataFormatError, match=r"^<string>:3 \(sent_id c1\): heads form a cycle 2 -> 3 -> 2"):
        parse_conllu(end.join(cycle.splitlines()))


_RANGE_LINE = "{}\t{}\t_\t_\t_\t_\t_\t_\t_\t_"


@pytest.mark.parametrize("lines, line, message", [
    ([_RANGE_LINE.format("2-1", "x"), _word(1, "do", 0, "root"), _word(2, "n't", 1, "advmod")], 1,
     r"multiword token 2-1 out of place: expected a range 1-k \(k > 1\) right before its first word 1"),
    ([_RANGE_LINE.format("5-6", "x"), _word(1, "do", 0, "root"), _word(2, "n't", 1, "advmod")], 1,
     r"multiword token 5-6 out of place"),
    ([_word(1, "do", 0, "root"), _word(2, "n't", 1, "advmod"), _RANGE_LINE.format("1-2", "don't")], 3,
     r"multiword token 1-2 out of place: expected a range 3-k"),
    ([_RANGE_LINE.format("1-3", "x"), _word(1, "do", 0, "root"), _RANGE_LINE.format("2-3", "y"),
      _word(2, "n't", 1, "advmod"), _word(3, "go", 1, "xcomp")], 3, r"multiword token 2-3 out of place: .*, but range "
                                                                     r"1-3 still covers word 2"),
    ([_RANGE_LINE.format("1-3", "x"), _word(1, "do", 0, "root"), _word(2, "n't", 1, "advmod")], 1,
     r"multiword token 1-3 covers words up to 3, but the sentence ends at word 2"),
    ([_word(1, "do", 0, "root"), "3.1\tx\t_\t_\t_\t_\t_\t_\t1:dep\t_", _word(2, "n't", 1, "advmod")], 2,
     r"empty node 3.1 out of place: expected 1.k"),
])
def test_a_misplaced_multiword_range_or_empty_node_is_refused(tmp_path, lines, line, message):
    """Range and empty-node lines were skipped unchecked, so '2-1', a range past the sentence's end or one after
    its words passed: lines out of place, read as a good sentence."""
    f = tmp_path / "mwt.conllu"
    f.write_text(GOOD + "# sent_id = m\n" + "\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=rf"mwt.conllu:{line + 5}: {message}"):
        read_conllu(f)


def test_a_range_with_no_words_is_not_dropped_silently():
    with pytest.raises(DataFormatError, match=r"^<string>:1: multiword token 1-2 covers words up to 2, but the "
                                              r"sentence ends at word 0"):
        parse_conllu(_RANGE_LINE.format("1-2", "don't") + "\n\n" + GOOD)


@pytest.mark.parametrize("path", [3, None, b"x.conllu"])
def test_read_conllu_refuses_what_is_not_a_path(path):
    with pytest.raises(InvalidInput, match=rf"^read_conllu takes the path of a CoNLL-U file \(a str or Path\), got "
                                           rf"{type(path).__name__}"):
        read_conllu(path)
