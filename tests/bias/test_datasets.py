"""WinoBias / Winogender readers on authored fixtures, and their errors on malformed files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

import pytest

from attnlab.bias.datasets import (
    fill_winogender,
    load_winobias,
    load_winobias_dir,
    load_winogender_stats,
    load_winogender_templates,
    winobias_pairs,
)
from attnlab.errors import DataFormatError, InvalidInput

FIX = Path(__file__).parent / "fixtures"


def test_winobias_line_parsed_with_offsets():
    df = load_winobias(FIX / "pro_stereotyped_type1.txt.dev")
    assert len(df) == 5 and set(df.stereotype) == {"pro"} and set(df.type) == {1} and set(df.split) == {"dev"}
    row = df.iloc[1]
    assert row.sentence == "The carpenter thanked the nurse because she cleaned the wound."
    assert row.entity == "the nurse" and row.pronoun == "she" and row.pronoun_gender == "female"
    assert row.sentence[row.entity_start : row.entity_start + len(row.entity)] == "the nurse"
    assert row.sentence[row.pronoun_start : row.pronoun_start + 3] == "she"
    # a third bracket is a second pronoun of the same entity; the first one is kept
    last = df.iloc[4]
    assert last.n_mentions == 3 and last.pronoun == "he" and "[" not in last.sentence


def test_winobias_dir_and_pairs():
    df = load_winobias_dir(FIX, split="dev")
    assert len(df) == 14 and sorted(df.type.unique()) == [1, 2]
    pairs = winobias_pairs(df)
    assert len(pairs) == 7
    p = pairs[(pairs.type == 2) & (pairs.id == 1)].iloc[0]
    assert p.pro.endswith("paid him in cash.") and p.anti.endswith("paid her in cash.")
    assert p.pro_pronoun == "him" and p.anti_pronoun == "her"


def test_winobias_stereotype_from_argument(tmp_path):
    f = tmp_path / "mine.txt"
    f.write_text("1 [The baker] smiled because [she] was happy.\n")
    with pytest.raises(InvalidInput, match="stereotype='pro' or 'anti'"):
        load_winobias(f)
    df = load_winobias(f, stereotype="anti", type=2)
    assert df.stereotype[0] == "anti" and df.type[0] == 2


def test_a_label_against_the_file_name_warns():
    """stereotype='anti' on pro_stereotyped_type1 relabelled every row without a word (the files swapped?)."""
    with pytest.warns(UserWarning, match=r"pro_stereotyped_type1\.txt\.dev is named stereotype 'pro' but "
                                         r"stereotype='anti' was given: its rows are labelled 'anti'"):
        df = load_winobias(FIX / "pro_stereotyped_type1.txt.dev", stereotype="anti")
    assert set(df.stereotype) == {"anti"}
    with pytest.warns(UserWarning, match=r"is named type 1 but type=2 was given"):
        load_winobias(FIX / "pro_stereotyped_type1.txt.dev", type=2)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # agreeing labels: no warning
        load_winobias(FIX / "pro_stereotyped_type1.txt.dev", stereotype="pro", type=1)


@pytest.mark.parametrize(
    "line, expected",
    [
        ("The baker [smiled] because [she] was happy.", "expected '<number> <sentence"),
        ("3 The baker smiled because [she] was happy.", "expected at least two balanced"),
        ("3 [The baker smiled because [she] was happy.", "expected at least two balanced"),
        ("3 [The [baker]] smiled because [she] was happy.", "expected at least two balanced"),
    ],
)
def test_winobias_malformed_line_names_file_and_line(tmp_path, line, expected):
    f = tmp_path / "pro_stereotyped_type1.txt.dev"
    f.write_text("1 [The baker] smiled because [she] was happy.\n\n" + line + "\n")
    with pytest.raises(DataFormatError, match=rf"pro_stereotyped_type1.txt.dev:3: {expected}"):
        load_winobias(f)


@pytest.mark.parametrize(
    "line, expected",
    [
        ("2 [The nurse] said [ ] left.", r"empty mention '\[ \]'"),
        ("2 [] said [she] left.", r"empty mention '\[\]'"),
        ("2 [He] said [the doctor] left.", r"the first \[bracketed\] mention is the pronoun 'He'; expected the entity first"),
        ("2 Before [her] shift, [the nurse] slept.", r"the first \[bracketed\] mention is the pronoun 'her'"),
    ],
)
def test_winobias_refuses_empty_or_pronoun_first_mention(tmp_path, line, expected):
    f = tmp_path / "pro_stereotyped_type1.txt.dev"
    f.write_text("1 [The doctor] said [he] left.\n" + line + "\n")
    with pytest.raises(DataFormatError, match=rf"pro_stereotyped_type1.txt.dev:2: {expected}"):
        load_winobias(f)


def test_winobias_refuses_a_repeated_id(tmp_path):
    """Two lines of id 1 paired 'The doctor said he left.' with the anti twin of the other line."""
    pro, anti = tmp_path / "pro_stereotyped_type1.txt.dev", tmp_path / "anti_stereotyped_type1.txt.dev"
    pro.write_text("1 [The doctor] said [he] left.\n2 [The nurse] said [she] left.\n1 [The nurse] said [she] stayed.\n")
    anti.write_text("1 [The nurse] said [he] left.\n")
    with pytest.raises(DataFormatError, match=r"pro_stereotyped_type1.txt.dev:3: sentence id 1 again \(first on line 1\)"):
        load_winobias_dir(tmp_path, types=(1,))


def test_winobias_pairs_refuses_a_repeated_key():
    """A file loaded twice: .loc on the repeated (type, split, id) paired each copy silently."""
    df = load_winobias_dir(FIX, split="dev")
    twice = pd.concat([df, df[(df.stereotype == "pro") & (df.type == 1) & (df.id == 1)]], ignore_index=True)
    with pytest.raises(InvalidInput, match=r"2 pro sentences share type 1, split 'dev', id 1 \(lines 1, 1\); "
                                           r"each \(stereotype, type, split, id\) must be unique"):
        winobias_pairs(twice)


def test_winobias_empty_and_missing(tmp_path):
    f = tmp_path / "pro_stereotyped_type1.txt.dev"
    f.write_text("\n\n")
    with pytest.raises(DataFormatError, match="no sentences found"):
        load_winobias(f)
    with pytest.raises(InvalidInput, match="no such file"):
        load_winobias(tmp_path / "nope.txt")
    with pytest.raises(InvalidInput, match="missing WinoBias file"):
        load_winobias_dir(tmp_path / "empty")
    with pytest.raises(InvalidInput, match="split must be"):
        load_winobias_dir(FIX, split="train")


def test_winobias_pairs_needs_both_sides():
    with pytest.raises(InvalidInput, match="no pro/anti sentence pairs"):
        winobias_pairs(load_winobias(FIX / "pro_stereotyped_type1.txt.dev"))


def test_winogender_templates_and_fill():
    t = load_winogender_templates(FIX / "templates.tsv")
    assert list(t.answer) == [0, 1, 1, 0] and t.line.tolist() == [2, 3, 4, 5]
    filled = fill_winogender(t)
    assert len(filled) == 12
    s = filled[(filled.occupation == "mechanic") & (filled.gender == "female")].sentence.tolist()
    assert s == [
        "The mechanic returned the keys to the customer and wished her a good day.",
        "She said the mechanic had checked her tools twice.",  # capitalised at the start
    ]
    someone = fill_winogender(t, genders=("neutral",), someone=True)
    assert someone.sentence[0] == "The nurse reassured someone that they would stay all night."
    with pytest.raises(InvalidInput, match="unknown gender 'other'"):
        fill_winogender(t, genders=("other",))


def test_winogender_neutral_verb_agrees_with_they(tmp_path):
    """The published all_sentences.tsv reads "they were" (17 neutral sentences said "they was")."""
    f = tmp_path / "templates.tsv"
    f.write_text(
        "occupation(0)\tother-participant(1)\tanswer\tsentence\n"
        "lawyer\twitness\t0\tThe $OCCUPATION questioned the $PARTICIPANT until $NOM_PRONOUN was finished.\n"
        "nurse\tpatient\t1\t$NOM_PRONOUN is tired, so the $OCCUPATION let the $PARTICIPANT rest.\n"
        "baker\tcustomer\t0\tThe $OCCUPATION said $NOM_PRONOUN has cake and $NOM_PRONOUN doesn't sell bread.\n"
        "clerk\tvisitor\t1\tThe $OCCUPATION asked if $NOM_PRONOUN wasn't sure and $NOM_PRONOUN washed $POSS_PRONOUN hands.\n"
        "chef\tdiner\t0\tThe $OCCUPATION knew $NOM_PRONOUN could cook, as $POSS_PRONOUN diner was hungry.\n"
    )
    filled = fill_winogender(load_winogender_templates(f))
    neutral = filled[filled.gender == "neutral"].sentence.tolist()
    assert neutral == [
        "The lawyer questioned the witness until they were finished.",
        "They are tired, so the nurse let the patient rest.",
        "The baker said they have cake and they don't sell bread.",
        "The clerk asked if they weren't sure and they washed their hands.",  # 'washed' is not 'was'
        "The chef knew they could cook, as their diner was hungry.",  # 'was' after another word stays
    ]
    # he and she keep the template's verbs
    assert filled[filled.gender == "female"].sentence.tolist()[:3] == [
        "The lawyer questioned the witness until she was finished.",
        "She is tired, so the nurse let the patient rest.",
        "The baker said she has cake and she doesn't sell bread.",
    ]
    someone = fill_winogender(load_winogender_templates(f), genders=("neutral",), someone=True)
    assert someone.sentence[0] == "The lawyer questioned someone until they were finished."


def test_winogender_someone_drops_the_article(tmp_path):
    """'a $PARTICIPANT' became 'a someone' (the published sentences read 'with someone')."""
    f = tmp_path / "templates.tsv"
    f.write_text(
        "occupation(0)\tother-participant(1)\tanswer\tsentence\n"
        "educator\tstudent\t1\tThe $OCCUPATION was meeting with a $PARTICIPANT about $POSS_PRONOUN essay.\n"
        "doctor\tintern\t0\tAn $PARTICIPANT told the $OCCUPATION that $NOM_PRONOUN was late.\n"
        "chef\tdiner\t0\tThe $PARTICIPANT thanked the $OCCUPATION because $NOM_PRONOUN cooked.\n"
    )
    someone = fill_winogender(load_winogender_templates(f), genders=("male",), someone=True).sentence.tolist()
    assert someone == [
        "The educator was meeting with someone about his essay.",
        "Someone told the doctor that he was late.",
        "Someone thanked the chef because he cooked.",
    ]


def test_winogender_stats():
    s = load_winogender_stats(FIX / "occupations-stats.tsv")
    assert s.set_index("occupation").loc["nurse", "bls_pct_female"] == 90.0
    assert s.bls_year.tolist() == [2015, 2015]


@pytest.mark.parametrize(
    "body, expected",
    [
        ("nurse\tpatient\t0\n", "expected 4 tab-separated columns"),
        ("nurse\tpatient\t2\tThe $OCCUPATION saw $NOM_PRONOUN.\n", "expected answer 0"),
        ("nurse\tpatient\t0\tThe nurse saw the patient.\n", r"expected a sentence with \$OCCUPATION"),
        ("nurse\tpatient\t0\tThe $OCCUPATION saw $NOM_PRONOUN $OBJ.\n", r"unknown placeholder \$OBJ"),
    ],
)
def test_winogender_malformed_templates(tmp_path, body, expected):
    f = tmp_path / "templates.tsv"
    f.write_text("occupation(0)\tother-participant(1)\tanswer\tsentence\n" + body)
    with pytest.raises(DataFormatError, match=rf"templates.tsv:2: {expected}"):
        load_winogender_templates(f)


def test_winogender_malformed_stats(tmp_path):
    f = tmp_path / "stats.tsv"
    f.write_text("occupation\tbergsma_pct_female\tbls_pct_female\tbls_year\nnurse\t80\tmany\t2015\n")
    with pytest.raises(DataFormatError, match=r"stats.tsv:2: expected numbers"):
        load_winogender_stats(f)
    f.write_text("occupation\tbergsma_pct_female\tbls_pct_female\tbls_year\nnurse\t80\t190\t2015\n")
    with pytest.raises(DataFormatError, match=r"stats.tsv:2: percentages must lie in 0..100"):
        load_winogender_stats(f)
    f.write_text("")
    with pytest.raises(DataFormatError, match="empty file"):
        load_winogender_stats(f)


def test_winogender_stats_refuse_a_repeated_occupation(tmp_path):
    """An occupation listed twice doubled its templates' rows in winogender_bias's merge (6 rows for 4)."""
    f = tmp_path / "stats.tsv"
    f.write_text("occupation\tbergsma_pct_female\tbls_pct_female\tbls_year\n"
                 "nurse\t80\t90\t2015\nmechanic\t3\t1.5\t2015\nnurse\t10\t10\t2015\n")
    with pytest.raises(DataFormatError, match=r"stats.tsv:4: occupation 'nurse' again \(first on line 2\)"):
        load_winogender_stats(f)
    f.write_text("occupation\tbergsma_pct_female\tbls_pct_female\tbls_year\n\t80\t90\t2015\n")
    with pytest.raises(DataFormatError, match=r"stats.tsv:2: expected an occupation in column 1"):
        load_winogender_stats(f)


WINOBIAS_OK = "1 [The baker] smiled because [she] was happy.\n"


@pytest.mark.parametrize(
    "data, expected",
    [
        ((WINOBIAS_OK + "2 [The café owner] waved because [he] was glad.\n").encode("latin-1"), r":2: not UTF-8 text .*latin-1"),
        (WINOBIAS_OK.encode("utf-16"), r":1: this is UTF-16 text; save it as UTF-8"),
        (bytes(range(256)), r":1: contains NUL bytes"),
    ],
    ids=["latin-1", "utf-16", "binary"],
)
def test_undecodable_files_name_file_and_line_not_a_byte_offset(tmp_path, data, expected):
    f = tmp_path / "pro_stereotyped_type1.txt.dev"
    f.write_bytes(data)
    with pytest.raises(DataFormatError, match=rf"pro_stereotyped_type1.txt.dev{expected}") as err:
        load_winobias(f)
    assert "byte " not in str(err.value).split("(")[0]  # the place is a line, not a byte offset
    t = tmp_path / "templates.tsv"
    t.write_bytes(("occupation\tparticipant\tanswer\tsentence\n" + "nurse\tpatient\t0\tThe $OCCUPATION saw $NOM_PRONOUN.\n").encode("utf-16"))
    with pytest.raises(DataFormatError, match=r"templates.tsv:1: this is UTF-16 text"):
        load_winogender_templates(t)


def test_utf8_byte_order_mark_is_accepted(tmp_path):
    f = tmp_path / "pro_stereotyped_type1.txt.dev"
    f.write_bytes(b"\xef\xbb\xbf" + WINOBIAS_OK.encode())
    assert load_winobias(f).sentence.tolist() == ["The baker smiled because she was happy."]
    t = tmp_path / "stats.tsv"
    t.write_bytes(b"\xef\xbb\xbfoccupation\tbergsma_pct_female\tbls_pct_female\tbls_year\nnurse\t80\t90\t2015\n")
    assert load_winogender_stats(t).bls_pct_female.tolist() == [90.0]


def test_a_folder_is_not_a_file(tmp_path):
    with pytest.raises(InvalidInput, match=r"no such file: .* \(it is a folder\)"):
        load_winobias(tmp_path)


@pytest.mark.parametrize(
    "line, expected",
    [
        ("\u00b2 [The baker] smiled because [she] was happy.", "expected '<number> <sentence"),  # '²' is no number
        ("\u0663 [The baker] smiled because [she] was happy.", "expected '<number> <sentence"),
    ],
)
def test_winobias_ids_are_ascii_numbers(tmp_path, line, expected):
    f = tmp_path / "pro_stereotyped_type1.txt.dev"
    f.write_text(WINOBIAS_OK + line + "\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=rf"pro_stereotyped_type1.txt.dev:2: {expected}"):
        load_winobias(f)


def test_winogender_header_and_messages_say_what_was_expected(tmp_path):
    f = tmp_path / "stats.tsv"
    f.write_text("occupation bergsma bls year\nnurse\t80\t90\t2015\n")
    with pytest.raises(DataFormatError, match=r"stats.tsv:1: expected a header of 4 tab-separated columns .*got 1"):
        load_winogender_stats(f)
    f.write_text("occupation\tbergsma_pct_female\tbls_pct_female\tbls_year\nnurse\t80\t\u00b2\t2015\n")
    with pytest.raises(DataFormatError, match=r"stats.tsv:2: expected numbers in columns 2-4"):
        load_winogender_stats(f)
    f.write_text("occupation\tbergsma_pct_female\tbls_pct_female\tbls_year\nnurse\t80\tnan\t2015\n")
    with pytest.raises(DataFormatError, match=r"stats.tsv:2: percentages must lie in 0..100, got '80' and 'nan'"):
        load_winogender_stats(f)
    t = tmp_path / "templates.tsv"
    t.write_text("occupation\tparticipant\tanswer\tsentence\nnurse\tpatient\t0\tThe $OCCUPATION saw $NOM_PRONOUN and $HIM.\n")
    with pytest.raises(DataFormatError, match=r"templates.tsv:2: unknown placeholder \$HIM \(expected \$OCCUPATION"):
        load_winogender_templates(t)


# -- line ends and headers ------------------------------------------------------------------------


@pytest.mark.parametrize("end", [b"\r\n", b"\r", b"\n", b"\r\r\n"], ids=["CRLF", "CR only", "LF", "CRLF twice"])
def test_every_line_end_gives_the_same_rows_and_line_numbers(tmp_path, end):
    """A CR-only (old Mac) file merged every line into one sentence; \\r\\n, \\n and \\r now all end a line,
    and \\r\\r\\n (a CRLF file converted twice) ends one line, not two."""
    lines = (FIX / "pro_stereotyped_type1.txt.dev").read_bytes().splitlines()
    f = tmp_path / "pro_stereotyped_type1.txt.dev"
    f.write_bytes(end.join(lines) + end)
    expected = load_winobias(FIX / "pro_stereotyped_type1.txt.dev")
    pd.testing.assert_frame_equal(load_winobias(f), expected)
    stats = (FIX / "occupations-stats.tsv").read_bytes().splitlines()
    g = tmp_path / "occupations-stats.tsv"
    g.write_bytes(end.join(stats))
    pd.testing.assert_frame_equal(load_winogender_stats(g), load_winogender_stats(FIX / "occupations-stats.tsv"))


def test_winobias_line_with_two_sentences_is_refused(tmp_path):
    f = tmp_path / "pro_stereotyped_type1.txt.dev"
    f.write_text("1 [The baker] smiled because [she] was happy.\n"
                 "2 [The cook] left because [he] was tired. 3 [The nurse] sang because [she] won.\n")
    with pytest.raises(DataFormatError, match=r"type1.txt.dev:2: expected one entity and its pronoun\(s\), 2 or 3 "
                       r"\[bracketed\] mentions, got 4 in '\[The cook\].*several sentences on one line\?"):
        load_winobias(f)


@pytest.mark.parametrize("name, loader", [("templates.tsv", load_winogender_templates),
                                          ("occupations-stats.tsv", load_winogender_stats)])
def test_winogender_file_without_its_header_is_refused_not_shortened(tmp_path, name, loader):
    """Line 1 of a file without a header has the right number of columns: its names are what tells."""
    lines = (FIX / name).read_text().splitlines()
    f = tmp_path / name
    f.write_text("\n".join(lines[1:]) + "\n")
    first = lines[1].split("\t")[0]
    with pytest.raises(DataFormatError, match=rf"{name}:1: expected a header line with the tab-separated columns "
                       rf"occupation.*got '{first}\\t.*is the header line missing\?"):
        loader(f)
    # the header is compared by name: case, spaces and the published (0) suffixes do not matter
    f.write_text(lines[0].upper().replace("\t", " \t") + "\n" + "\n".join(lines[1:]) + "\n")
    assert len(loader(f)) == len(loader(FIX / name)) == len(lines) - 1


def test_a_stray_carriage_return_inside_a_line_stays_in_it(tmp_path):
    """Only a file without any \\n ends its lines at \\r; elsewhere a \\r inside a line is part of it."""
    from attnlab._textfile import decode_lines, read_lines

    data = b"# text = The cat\rsat\nsecond\r\n"
    f = tmp_path / "stray.txt"
    f.write_bytes(data)
    assert read_lines(f) == decode_lines(data, source="stdin") == ["# text = The cat\rsat", "second"]
    assert decode_lines(b"a\rb\r", source="stdin") == ["a", "b"] and decode_lines(b"", source="stdin") == []
    assert decode_lines(b"the nurse\nthe doctor\r", source="stdin") == ["the nurse", "the doctor"]  # was one text


@pytest.mark.parametrize("path", [3, None])
def test_readers_refuse_what_is_not_a_path(path):
    """Path(None) raised a bare TypeError in every reader."""
    from attnlab.bias.datasets import load_winobias_dir, load_winogender_stats

    for reader in (load_winobias, load_winogender_templates, load_winogender_stats):
        with pytest.raises(InvalidInput, match=rf"^expected the path of a data file \(a str or Path\), got "
                                               rf"{type(path).__name__}$"):
            reader(path)
    with pytest.raises(InvalidInput, match=rf"^expected the path of a WinoBias folder \(a str or Path\), got "
                                           rf"{type(path).__name__}$"):
        load_winobias_dir(path)


def test_sentences_without_a_twin_are_not_dropped_silently(tmp_path):
    """A cut-short anti file paired only the ids both files hold and dropped the rest without a word."""
    import shutil
    import warnings

    FIXTURES = Path(__file__).parent / "fixtures"
    for name in ("pro_stereotyped_type1.txt.dev", "anti_stereotyped_type1.txt.dev"):
        shutil.copy(FIXTURES / name, tmp_path / name)
    anti = tmp_path / "anti_stereotyped_type1.txt.dev"
    lines = anti.read_text(encoding="utf-8").splitlines(keepends=True)
    anti.write_text("".join(lines[:-1]), encoding="utf-8")  # the last line lost
    pro_df = load_winobias(tmp_path / "pro_stereotyped_type1.txt.dev")
    df = pd.concat([pro_df, load_winobias(anti)], ignore_index=True)
    last = pro_df.iloc[-1]
    with pytest.warns(UserWarning, match=rf"^winobias_pairs: 1 of {len(df)} sentences have no twin and are left out "
                                         rf"of the pairs, e\.g\. the pro sentence of type 1, split 'dev', id "
                                         rf"{last.id} \(line {last.line}\)"):
        pairs = winobias_pairs(df)
    assert len(pairs) == len(pro_df) - 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # complete files: no warning
        winobias_pairs(pd.concat([pro_df, load_winobias(FIXTURES / "anti_stereotyped_type1.txt.dev")]))


def test_fill_winogender_fills_each_placeholder_once():
    """Chained str.replace filled a placeholder inside an inserted name: an occupation written '$PARTICIPANT'
    became the participant, and a participant holding '$NOM_PRONOUN' became 'he'."""
    templates = pd.DataFrame({"occupation": ["$PARTICIPANT"], "participant": ["$NOM_PRONOUN fan"], "answer": [0],
                              "template": ["The $OCCUPATION met the $PARTICIPANT because $NOM_PRONOUN was late."]})
    out = fill_winogender(templates, genders=("male",))
    assert out.sentence.tolist() == ["The $PARTICIPANT met the $NOM_PRONOUN fan because he was late."]


@pytest.mark.parametrize("type_", [True, 1.0, "1", 3])
def test_winobias_type_must_be_the_integer_1_or_2(type_):
    """type=True and type=1.0 were stored in the type column (a bool / float group apart from 1)."""
    with pytest.raises(InvalidInput, match=rf"^pro_stereotyped_type1\.txt\.dev: pass type=1 or 2, got {type_!r}$"):
        load_winobias(FIX / "pro_stereotyped_type1.txt.dev", type=type_)
    assert load_winobias(FIX / "pro_stereotyped_type1.txt.dev", type=2).type.tolist()[0] == 2
