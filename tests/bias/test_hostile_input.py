"""Hostile input to the bias measurements: what was accepted and gave a silently wrong number, or a raw error."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from attnlab.bias import (
    bias_experiment,
    coref_bias,
    greedy_heads,
    mediation_pairs,
    pronoun_bias,
    winobias_pairs,
    winogender_bias,
)
from attnlab.bias.datasets import fill_winogender, load_winobias_dir
from attnlab.bias.demo import run_bias_demo
from attnlab.bias.mediation import MediationPair, causal_mediation, mediation_effects
from attnlab.bias.templates import Template, as_templates
from attnlab.errors import InvalidInput
from attnlab.interventions import AblateHead
from attnlab.testing import tiny_model

OCC = ["nurse", "mechanic", "teacher"]
PAIR = MediationPair("The nurse said that", "The man said that", " she", " he", "nurse")
WINOGENDER = pd.DataFrame({"occupation": ["nurse", "mechanic"], "participant": ["patient", "customer"],
                           "answer": [0, 0], "template": ["The $OCCUPATION said that $NOM_PRONOUN was tired.",
                                                          "The $OCCUPATION said that $NOM_PRONOUN was late."]})


@pytest.mark.parametrize("pronouns", [{"she": 0, "he": 1}, {"she", "he"}, None, 5])
def test_pronouns_that_are_not_a_pair_of_words_are_refused(pronouns):
    """A dict raised KeyError 0, a set or None a TypeError, from inside check_pronouns."""
    with pytest.raises(InvalidInput, match=r"pronouns must be a \(female, male\) pair of words"):
        pronoun_bias(tiny_model("gpt2"), occupations=OCC, pronouns=pronouns, n_boot=0)


def test_replacements_are_named_in_their_own_error():
    """mediation_pairs(replacements=('man', 'man')) said 'pronouns must be two different words'."""
    with pytest.raises(InvalidInput, match=r"^replacements must be two different words \(female, male\)"):
        mediation_pairs(tiny_model("gpt2"), occupations=OCC, replacements=("man", "man"))


@pytest.mark.parametrize("items", [["The {occupation} said that"] * 2,
                                   [Template("The {occupation} said that", "a"), Template("The {occupation} said that", "a")]])
def test_a_template_given_twice_is_refused(items):
    """A repeated template was scored twice per occupation: n_templates 2 and a doubled weight in the mean."""
    with pytest.raises(InvalidInput, match=r"template 1 \('The \{occupation\} said that'(, 'a')?\) is also template 0"):
        as_templates(items)
    with pytest.raises(InvalidInput, match="is also template 0"):
        pronoun_bias(tiny_model("gpt2"), occupations=OCC, templates=items, n_boot=0)
    with pytest.raises(InvalidInput, match="is also template 0"):
        mediation_pairs(tiny_model("gpt2"), occupations=OCC, templates=items)


def test_templates_a_causal_lm_reads_as_one_prompt_are_refused():
    """Same prefix, other suffix: a causal LM reads only the prefix, so one prompt was scored and counted twice."""
    items = [Template("The {occupation} said that", "was late."), Template("The {occupation} said that", "was ill.")]
    assert len(as_templates(items)) == 2  # a masked LM reads both suffixes: two prompts
    with pytest.raises(InvalidInput, match=r"templates 0 and 1 have the same prefix 'The \{occupation\} said that'"):
        pronoun_bias(tiny_model("gpt2"), occupations=OCC, templates=items, n_boot=0)
    with pytest.raises(InvalidInput, match="have the same prefix"):
        mediation_pairs(tiny_model("gpt2"), occupations=OCC, templates=items)


def test_occupation_names_are_stripped_in_the_prompts():
    """' nurse' in an occupations DataFrame gave the prompt 'The  nurse said that' (two spaces)."""
    frame = pd.DataFrame({"occupation": [" nurse", "mechanic ", "teacher"], "share_women": [0.9, 0.1, 0.5]})
    model = tiny_model("gpt2")
    result = pronoun_bias(model, occupations=frame, templates=["The {occupation} said that"], n_boot=0)
    clean = pronoun_bias(model, occupations=OCC, templates=["The {occupation} said that"], n_boot=0)
    assert result.per_prompt.prompt.tolist() == ["The nurse said that", "The mechanic said that", "The teacher said that"]
    assert result.table.occupation.tolist() == OCC
    assert np.allclose(result.table.log_ratio, clean.table.log_ratio)


@pytest.mark.parametrize("threshold", [float("nan"), 50, -0.1, "0.5", True, None])
def test_mediation_threshold_must_be_a_share_in_0_1(threshold):
    """NaN (every comparison False) and 50 (a percent) made every occupation male-stereotyped; '0.5' a TypeError."""
    with pytest.raises(InvalidInput, match=r"threshold must be a share of women in 0\.\.1 \(a fraction, not a percent\), "
                                           rf"got {threshold!r:.4}"):
        mediation_pairs(tiny_model("gpt2"), occupations=OCC, threshold=threshold)


def test_a_numpy_threshold_is_a_threshold():
    """A threshold read from a table (numpy float) keeps working and splits the occupations."""
    pairs, _ = mediation_pairs(tiny_model("gpt2"), occupations=OCC, templates=["The {occupation} said that"],
                               threshold=np.float64(0.5))
    assert [p.stereotypical for p in pairs] == [" she", " he", " she"]  # nurse 0.87, mechanic, teacher 0.7


@pytest.mark.parametrize("candidates, shown", [([0, 1], "0"), ([(0, 1, 2)], r"\(0, 1, 2\)"), (["01"], "'01'")])
def test_candidate_heads_that_are_not_layer_head_pairs_are_refused(candidates, shown):
    """[0, 1] raised "'int' object is not iterable", (0, 1, 2) "too many values to unpack"."""
    with pytest.raises(InvalidInput, match=rf"candidates\[0\] must be a \(layer, head\) pair, got {shown}"):
        greedy_heads(tiny_model("gpt2"), [PAIR], k=1, candidates=candidates, n_boot=0)


def test_head_sets_that_are_not_lists_of_pairs_are_refused():
    """mediation_effects(units=[0]) raised "'int' object is not iterable"."""
    with pytest.raises(InvalidInput, match=r"units\[0\] must be a list of \(layer, head\) pairs, got 0"):
        mediation_effects(tiny_model("gpt2"), [PAIR], [0])
    with pytest.raises(InvalidInput, match=r"units\[1\]\[0\] must be a \(layer, head\) pair, got 3"):
        mediation_effects(tiny_model("gpt2"), [PAIR], [[(0, 1)], [3]])


@pytest.mark.parametrize("levels", [5, None, [("head",)], {"head": 1}])
def test_levels_that_are_not_names_are_refused(levels):
    """levels=5 raised "'int' object is not iterable"; a list holding a tuple a TypeError of hashing."""
    with pytest.raises(InvalidInput, match="levels must be a non-empty list of distinct levels from head, layer, model"):
        causal_mediation(tiny_model("gpt2"), [PAIR], levels=levels, n_boot=0)


def test_levels_from_a_numpy_array_are_levels():
    """An array of level names (read from a table) keeps working, in its order."""
    result = causal_mediation(tiny_model("gpt2"), [PAIR], levels=np.array(["layer", "model"]), effects="nie", n_boot=0)
    assert result.table.level.tolist() == ["layer", "layer", "model"]
    result = causal_mediation(tiny_model("gpt2"), [PAIR], levels={"model", "layer"}, effects="nie", n_boot=0)
    assert result.table.level.tolist() == ["layer", "layer", "model"]  # a set: in the order of LEVELS, every run


@pytest.mark.parametrize("effects", [("nie", "nie"), ["nde", 5], 5, ()])
def test_effects_named_twice_or_not_named_are_refused(effects):
    """("nie", "nie") made two "nie" columns (each pair's effect counted twice in a wide table); 5 a TypeError."""
    with pytest.raises(InvalidInput, match=r"^effects must be a non-empty subset of \('nie', 'nde'\), each named once"):
        causal_mediation(tiny_model("gpt2"), [PAIR], levels=["model"], effects=effects, n_boot=0)


def test_a_set_of_effects_gives_the_columns_in_the_order_of_effects():
    """A set's iteration order varies between runs (string hashing): so did the table's columns."""
    model = tiny_model("gpt2")

    def columns(effects):
        table = causal_mediation(model, [PAIR], levels=["model"], effects=effects, n_boot=0).table
        return [c for c in table.columns if c in ("nie", "nde")]

    assert columns(["nde", "nie"]) == ["nde", "nie"]  # a list keeps its order
    assert columns({"nde", "nie"}) == ["nie", "nde"]


def test_one_intervention_spec_is_a_list_of_one():
    """bias_experiment(model, AblateHead(1, 0)) raised "'AblateHead' object is not iterable" (score() takes one spec)."""
    model = tiny_model("gpt2")
    one = bias_experiment(model, AblateHead(1, 0), occupations=OCC, n_boot=0)
    listed = bias_experiment(model, [AblateHead(1, 0)], occupations=OCC, n_boot=0)
    pd.testing.assert_frame_equal(one.table, listed.table)
    with pytest.raises(InvalidInput, match="interventions must be an intervention spec or a list of them"):
        bias_experiment(model, "AblateHead(1, 0)", occupations=OCC, n_boot=0)


def test_a_baseline_measured_with_interventions_is_refused():
    """A pronoun_bias run with interventions was taken as the clean 'before': the change read 0 for every bias metric."""
    model = tiny_model("gpt2")
    edited = pronoun_bias(model, occupations=OCC, n_boot=0, interventions=[AblateHead(1, 0)])
    with pytest.raises(InvalidInput, match=r"baseline does not match .* interventions \[AblateHead"):
        bias_experiment(model, [AblateHead(1, 0)], occupations=OCC, n_boot=0, baseline=edited)
    clean = pronoun_bias(model, occupations=OCC, n_boot=0)
    assert clean.interventions == () and edited.interventions == (AblateHead(1, 0),)
    bias_experiment(model, [AblateHead(1, 0)], occupations=OCC, n_boot=0, baseline=clean)  # still accepted
    assert model.count_hooks() == 0


@pytest.mark.parametrize("option", ["n_mediation_occupations", "n_mediation_templates"])
@pytest.mark.parametrize("value", [-1, 0, 1.5, True])
def test_demo_mediation_sizes_must_be_positive_integers(option, value):
    """-1 silently used 5 of the 6 templates (a slice [:-1]) or dropped the extremes; 1.5 raised a pandas TypeError."""
    with pytest.raises(InvalidInput, match=rf"^{option} must be a positive integer, got {value!r}$"):
        run_bias_demo(tiny_model("gpt2"), None, occupations=OCC, k=1, n_boot=0, progress=False, **{option: value})


def test_winogender_templates_without_their_columns_are_refused():
    """A templates DataFrame without a 'template' column raised AttributeError from inside itertuples."""
    with pytest.raises(InvalidInput, match=r"needs the columns occupation, participant, answer, template; missing "
                                           r"\['template'\]"):
        winogender_bias(tiny_model("gpt2"), WINOGENDER.rename(columns={"template": "sentence"}))


def test_a_winogender_template_given_twice_is_refused():
    """A templates file loaded twice (concatenated) scored each template twice: double weight per occupation."""
    twice = pd.concat([WINOGENDER, WINOGENDER.iloc[[0]]], ignore_index=True)
    with pytest.raises(InvalidInput, match=r"templates row 2 repeats row 0 \(occupation 'nurse', participant 'patient'"):
        winogender_bias(tiny_model("gpt2"), twice)


@pytest.mark.parametrize("genders, message", [((), "genders must be a non-empty list"),
                                              (("male", "male"), "gender 'male' is given twice")])
def test_fill_winogender_genders_are_distinct_and_some(genders, message):
    """genders=() gave an empty DataFrame without columns; a gender twice filled every template twice."""
    with pytest.raises(InvalidInput, match=message):
        fill_winogender(WINOGENDER, genders=genders)


@pytest.mark.parametrize("types, shown", [(1, "1"), ([True], r"\[True\]"), ((1, 1), r"\(1, 1\)"), ([1.0], r"\[1\.0\]"),
                                          ("12", "'12'")])
def test_winobias_folder_types_must_be_distinct_1_or_2(types, shown, tmp_path):
    """types=1 raised "'int' object is not iterable"; True looked for a file 'typeTrue'; (1, 1) loaded each file twice."""
    with pytest.raises(InvalidInput, match=rf"^types must be a list of distinct types from 1, 2, got {shown}$"):
        load_winobias_dir(tmp_path, types=types)


def test_winobias_folder_types_may_be_any_collection_of_1_and_2():
    """A NumPy array of types (from a table) still reads the files of those types."""
    from pathlib import Path

    fixtures = Path(__file__).parent / "fixtures"
    assert sorted(load_winobias_dir(fixtures, types=np.array([2])).type.unique()) == [2]


def test_a_mediation_pair_whose_prompts_are_the_same_tokens_warns():
    """x == x' intervened on nothing: its TE and every NIE/NDE, exactly 0, were averaged in without a word."""
    same = MediationPair("The nurse said that", "The nurse said that", " she", " he", "nurse")
    with pytest.warns(UserWarning, match=r"pair 1: 'The nurse said that' and 'The nurse said that' are the same "
                                         r"tokens for tiny-gpt2, so its TE, NIE and NDE are exactly 0"):
        result = causal_mediation(tiny_model("gpt2"), [PAIR, same], n_boot=0)
    assert result.total["te"].iloc[1] == 0  # still measured: the identity check of test_no_intervention_means_no_effect


def test_coref_groups_of_a_column_whose_name_holds_an_equals_sign_plot():
    """A by column named 'a=b' raised KeyError 'a' in plot(): the group label was split at its first '='."""
    pairs = pd.DataFrame({"pro": ["the nurse said that she was tired .", "the cook said that he was tired ."],
                          "anti": ["the nurse said that he was tired .", "the cook said that she was tired ."],
                          "a=b": ["x=1", "y"]})
    result = coref_bias(tiny_model("gpt2"), pairs, by="a=b", n_boot=0)
    assert result.table.group.tolist() == ["all", "a=b=x=1", "a=b=y"]
    fig = result.plot()
    offsets = [len(c.get_offsets()) for c in fig.axes[0].collections[:3]]
    assert offsets == [2, 1, 1]  # the grey dots of each group: all pairs, then one per group


def test_a_baseline_measured_inside_an_intervene_block_is_refused():
    """A pronoun_bias run inside `with model.intervene(...)` was taken as the clean 'before' of a later experiment."""
    model = tiny_model("gpt2")
    with model.intervene(AblateHead(1, 0)):
        edited = pronoun_bias(model, occupations=OCC, n_boot=0)
        inside = bias_experiment(model, [AblateHead(0, 1)], occupations=OCC, n_boot=0, baseline=edited)  # same block: fine
    assert inside.before is edited
    with pytest.raises(InvalidInput, match=r"it was measured with 1 hook\(s\) already acting, e\.g\. in a "
                                           r"`with model\.intervene\(\.\.\.\)` block \(this experiment: 0\)"):
        bias_experiment(model, [AblateHead(1, 0)], occupations=OCC, n_boot=0, baseline=edited)
    assert model.count_hooks() == 0


@pytest.mark.parametrize("share", ["87", True])
def test_winogender_shares_must_be_numbers(share):
    """A share read as text raised pandas' "dtype 'str' does not support operation 'mean'"; True was taken as 1%."""
    stats = pd.DataFrame({"occupation": ["nurse", "mechanic"], "bls_pct_female": [share, 10.0]})
    with pytest.raises(InvalidInput, match=rf"stats_table row 0 \('nurse'\): bls_pct_female must be a percent in "
                                           rf"0\.\.100 \(or NaN: unknown\), got {share!r}"):
        winogender_bias(tiny_model("gpt2"), WINOGENDER, stats)


def test_a_missing_winogender_share_is_unknown_not_an_error():
    """None in an object column is missing, like NaN: the occupation is named in a warning and left out of pearson_r."""
    stats = pd.DataFrame({"occupation": ["nurse", "mechanic"], "bls_pct_female": [None, "x"]}).iloc[[0]]
    with pytest.warns(UserWarning, match=r"2 occupation\(s\) of the templates have no share of women in stats_table and are left out of "
                                         r"pearson_r: 'nurse', 'mechanic'"):
        out = winogender_bias(tiny_model("gpt2"), WINOGENDER, stats)
    assert out.bls_pct_female.isna().all()


@pytest.mark.parametrize("column", ["occupation", "participant", "template"])
def test_winogender_templates_need_text_in_their_cells(column):
    """A missing occupation, participant or sentence (NaN) raised a TypeError from inside the filling."""
    with pytest.raises(InvalidInput, match=rf"templates row 1: {column} must be a non-empty string, got nan"):
        fill_winogender(WINOGENDER.assign(**{column: ["x $NOM_PRONOUN $OCCUPATION", np.nan]}))


def test_winobias_twins_whose_pronouns_have_one_gender_warn(tmp_path):
    """Files whose ids are not aligned paired 'he' with 'him': a gap between two male sentences, read as bias."""
    (tmp_path / "pro_stereotyped_type1.txt.dev").write_text(
        "1 [The developer] argued with the designer because [she] did not like the design.\n"
        "2 [The mechanic] gave the clerk a present because [he] won the lottery.\n")
    (tmp_path / "anti_stereotyped_type1.txt.dev").write_text(
        "1 [The developer] argued with the designer because [he] did not like the design.\n"
        "2 [The mechanic] gave the clerk a present because [him] won the lottery.\n")
    df = load_winobias_dir(tmp_path, types=[1])
    with pytest.warns(UserWarning, match=r"^winobias_pairs: 1 of 2 pairs have pronouns of one gender in both twins, "
                                         r"e\.g\. type 1, split 'dev', id 2 \('he' / 'him'\)"):
        pairs = winobias_pairs(df)
    assert len(pairs) == 2  # kept: the warning names them


def test_an_occupation_slot_in_a_template_suffix_is_refused():
    """Only the prefix is formatted: a masked LM read 'The nurse said that [MASK] {occupation} was late.' literally."""
    with pytest.raises(InvalidInput, match=r"template suffix '\{occupation\} was late\.' has an '\{occupation\}' slot; "
                                           r"only the prefix is filled"):
        Template("The {occupation} said that", "{occupation} was late.")
    assert Template("The {occupation} said", "{{literal}} braces").masked("nurse", "[MASK]") == \
        "The nurse said [MASK] {{literal}} braces"  # a suffix is text, braces and all


def test_mediation_pronouns_with_and_without_a_leading_space_are_refused():
    """(' she', 'he') compared a next word with a word glued to the prompt: the odds measured the space, not gender."""
    glued = MediationPair("The nurse said that", "The man said that", " she", "he", "nurse")
    with pytest.raises(InvalidInput, match=r"pair 0: stereotypical ' she' starts with a space but anti 'he' does not"):
        causal_mediation(tiny_model("gpt2"), [glued], n_boot=0)


def test_demo_out_dir_is_checked_before_any_work(tmp_path, monkeypatch):
    """out_dir=5 raised TypeError, and a file as out_dir FileExistsError, only after the whole demo had run."""
    import attnlab.bias.demo as demo

    monkeypatch.setattr(demo, "pronoun_bias", lambda *a, **k: pytest.fail("measured before checking out_dir"))
    with pytest.raises(InvalidInput, match=r"^out_dir must be a folder path \(a str or Path\) or None, got 5$"):
        run_bias_demo(tiny_model("gpt2"), 5, occupations=OCC, k=1, n_boot=0, progress=False)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(InvalidInput, match=r"out_dir '.*file\.txt' is a file, not a folder"):
        run_bias_demo(tiny_model("gpt2"), tmp_path / "file.txt", occupations=OCC, k=1, n_boot=0, progress=False)


def test_coref_pairs_without_a_group_value_warn():
    """Pairs whose by column is empty (NaN) were left out of every group's row without a word (only in 'all')."""
    pairs = pd.DataFrame({"pro": ["the nurse said that she was tired .", "the cook said that he was tired ."],
                          "anti": ["the nurse said that he was tired .", "the cook said that she was tired ."],
                          "g": ["a", None]})
    with pytest.warns(UserWarning, match=r"^coref_bias: 1 of 2 pairs have no value in column 'g' \(rows 1\); they are "
                                         r"in group 'all' only"):
        result = coref_bias(tiny_model("gpt2"), pairs, by="g", n_boot=0)
    assert result.table[["group", "n"]].values.tolist() == [["all", 2], ["g=a", 1]]


@pytest.mark.parametrize("field", ["base", "counterfactual", "stereotypical", "anti"])
def test_a_mediation_pair_field_that_is_not_text_is_named(field):
    """A number as a pair's word said only 'text 0 is int, not a string' (or 'to_str_tokens takes a text'): which pair?"""
    words = {"base": "The nurse said that", "counterfactual": "The man said that", "stereotypical": " she", "anti": " he"}
    bad = MediationPair(**{**words, field: 5})
    with pytest.raises(InvalidInput, match=rf"^pair 1: {field} must be a string, got 5 \(int\)$"):
        causal_mediation(tiny_model("gpt2"), [PAIR, bad], n_boot=0)


@pytest.mark.parametrize("someone", ["no", 0.0, None])
def test_fill_winogender_someone_must_be_a_bool(someone):
    """someone='no' was truthy: every participant became 'someone' without a word."""
    with pytest.raises(InvalidInput, match=rf"^someone must be True or False, got {someone!r}$"):
        fill_winogender(WINOGENDER, someone=someone)


def test_summarize_log_ratios_checks_its_table():
    """A table without log_ratio raised KeyError; a NaN log ratio was skipped by the means (3 occupations read as 4)."""
    from attnlab.bias.pronouns import summarize_log_ratios

    frame = pd.DataFrame({"occupation": ["a", "b", "c", "d"], "share_women": [0.1, 0.2, 0.3, 0.4],
                          "log_ratio": [np.nan, 1.0, 2.0, 3.0]})
    with pytest.raises(InvalidInput, match=r"^per_occupation needs the columns share_women, log_ratio; missing "
                                           r"\['log_ratio'\]$"):
        summarize_log_ratios(frame.drop(columns="log_ratio"))
    with pytest.raises(InvalidInput, match=r"^per_occupation is empty"):
        summarize_log_ratios(frame.iloc[:0])
    with pytest.raises(InvalidInput, match=r"^per_occupation row 0 \('a'\): log_ratio must be a finite number, got nan"):
        summarize_log_ratios(frame, n_boot=0)


def test_coref_pairs_given_twice_warn():
    """A pair repeated (pairs concatenated twice) was counted again in mean_gap and pro_preferred without a word."""
    pairs = pd.DataFrame({"pro": ["the nurse said that she was tired .", "the cook said that he was tired ."] * 2,
                          "anti": ["the nurse said that he was tired .", "the cook said that she was tired ."] * 2})
    with pytest.warns(UserWarning, match=r"^coref_bias: 2 of 4 pairs repeat an earlier pair, e\.g\. row 2 repeats row 0 "
                                         r"\('the nurse said that she was tired \.'"):
        result = coref_bias(tiny_model("gpt2"), pairs, n_boot=0)
    assert result.value("mean_gap") == pytest.approx(result.per_prompt.gap.iloc[:2].mean())  # still measured as given


def test_mediation_pairs_given_twice_warn():
    """A MediationPair repeated was counted again in every mean effect without a word."""
    other = MediationPair("The mechanic said that", "The woman said that", " he", " she", "mechanic")
    with pytest.warns(UserWarning, match=r"^pair 2 repeats pair 0 \('The nurse said that' / 'The man said that'\); it is "
                                         r"counted again in every mean"):
        result = causal_mediation(tiny_model("gpt2"), [PAIR, other, PAIR], effects="nie", n_boot=0)
    assert result.total.te.iloc[2] == result.total.te.iloc[0]  # still measured as given
