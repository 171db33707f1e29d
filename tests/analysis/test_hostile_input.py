"""Bad arguments to the analyses: refused with a typed attnlab error naming the valid values, never read silently."""

import numpy as np
import pandas as pd
import pytest
import torch

from attnlab.analysis import head_distances, head_stats, prepare, relation_accuracy, split_words, word_attention
from attnlab.analysis.clustering import behaviour
from attnlab.analysis.conllu import parse_conllu, read_conllu
from attnlab.analysis.context import attention_by_distance, loss_by_position, window_experiment
from attnlab.analysis.dial import decay_units
from attnlab.analysis.neurons import decay_neurons, neuron_data, unit_dims, unit_scores
from attnlab.errors import InvalidInput, InvalidLocation
from attnlab.interventions import AblateHead, EditScores

TEXT = "the nurse said that she left the house because the doctor was not happy ."
TREE = "1\tshe\t_\t_\t_\t_\t2\tnsubj:pass\t_\t_\n2\tleft\t_\t_\t_\t_\t0\troot\t_\t_\n"


# -- neurons ----------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["pairs", "ignore_first"])
def test_decay_neurons_switches_must_be_bools(tiny_llama, flag):
    """pairs="no" summed rotary pairs and ignore_first="no" dropped key 0 (a non-empty string is truthy)."""
    with pytest.raises(InvalidInput, match=rf"^{flag} must be True or False, got 'no'$"):
        decay_neurons(tiny_llama, [TEXT], progress=False, **{flag: "no"})
    assert tiny_llama.count_hooks() == 0


def test_unit_dims_and_unit_scores_pairs_must_be_a_bool(tiny_llama):
    """unit_dims(pairs="no") gave the pair [1, 5] and unit_scores(pairs="no") summed pairs."""
    with pytest.raises(InvalidInput, match=r"^pairs must be True or False, got 'no'$"):
        unit_dims(tiny_llama, 1, pairs="no")
    with pytest.raises(InvalidInput, match=r"^pairs must be True or False, got 0$"):
        unit_scores(tiny_llama, TEXT, layer=0, head=0, pairs=0)
    assert unit_dims(tiny_llama, 1, pairs=False) == [1]
    assert unit_scores(tiny_llama, TEXT, layer=0, head=0, pairs=False).shape[0] == tiny_llama.cfg.d_head


def test_decay_neurons_layers_is_an_int_or_a_non_empty_list(tiny_llama):
    """layers=1 raised a bare TypeError and layers=[] said "give longer texts"; duplicates are one layer."""
    with pytest.raises(InvalidInput, match=r"^layers must be None \(all\) or a non-empty list$"):
        decay_neurons(tiny_llama, [TEXT], layers=[], progress=False)
    with pytest.raises(InvalidLocation, match=r"layer 5 out of range: tiny-llama has layers 0\.\.1"):
        decay_neurons(tiny_llama, [TEXT], layers=5, progress=False)
    one = decay_neurons(tiny_llama, [TEXT], layers=1, progress=False)
    twice = decay_neurons(tiny_llama, [TEXT], layers=[1, 1], progress=False)
    assert np.isnan(one.mean[0]).all() and not np.isnan(one.mean[1]).all()
    np.testing.assert_array_equal(one.counts, twice.counts)
    np.testing.assert_allclose(one.mean[1], twice.mean[1])


def test_decay_ranking_options_are_whole_numbers_and_min_count_positive(tiny_llama):
    """min_count=0 ranked every unit of a head with an empty distance as NaN; 1.5 or "1" passed or failed in numpy."""
    prof = decay_neurons(tiny_llama, [TEXT], progress=False)
    with pytest.raises(InvalidInput, match=r"^min_count must be a positive integer, got 0$"):
        prof.ranked(min_count=0)
    with pytest.raises(InvalidInput, match=r"^min_distance must be an integer >= 0, got 1\.5$"):
        prof.ranked(min_distance=1.5)
    with pytest.raises(InvalidInput, match=r"^min_distance must be an integer >= 0, got '1'$"):
        prof.ranked(min_distance="1")
    with pytest.raises(InvalidInput, match=r"^max_distance must be an integer >= 0 or None \(every distance\), got 3\.5$"):
        prof.ranked(max_distance=3.5)
    assert not prof.ranked(min_count=1).table["decay"].isna().any()


def test_decay_curve_checks_its_location(tiny_llama):
    """curve(-1, 0, 0) read the last layer and curve(99, 0, 0) raised numpy's bare IndexError."""
    prof = decay_neurons(tiny_llama, [TEXT], progress=False)
    with pytest.raises(InvalidLocation, match=r"^layer -1 out of range: the profile has layers 0\.\.1$"):
        prof.curve(-1, 0, 0)
    with pytest.raises(InvalidLocation, match=r"^head 99 out of range: the profile has heads 0\.\.3$"):
        prof.curve(0, 99, 0)
    with pytest.raises(InvalidLocation, match=r"^unit must be a whole number \(an int\), got 1\.0 \(float\); the profile "
                                              r"has units 0\.\.3$"):
        prof.curve(0, 0, 1.0)
    np.testing.assert_array_equal(prof.curve(1, 2, 3)["contribution"].to_numpy(), prof.mean[1, 2, 3])


def test_neuron_top_dims_checks_key_and_n(tiny_llama):
    """top_dims(True) indexed a new axis, top_dims(1.5) raised torch's IndexError, n=-1 dropped the last dim."""
    v = neuron_data(tiny_llama, TEXT, layer=0, head=0, query=5)
    with pytest.raises(InvalidLocation, match=r"^key must be a whole number \(an int\), got True \(bool\); keys 0\.\.15$"):
        v.top_dims(True)
    with pytest.raises(InvalidLocation, match=r"^key must be a whole number \(an int\), got 1\.5 \(float\); keys 0\.\.15$"):
        v.top_dims(1.5)
    with pytest.raises(InvalidInput, match=r"^n must be a positive integer \(how many dimensions to keep\), got -1$"):
        v.top_dims(1, n=-1)
    assert len(v.top_dims(np.int64(1), n=3)) == 3


# -- heads, clustering ------------------------------------------------------------------------


def test_head_stats_top_n_must_be_a_positive_integer(tiny_llama):
    """top(column, n=-1) gave an empty table and n=2.5 raised a bare TypeError from pandas."""
    stats = head_stats(tiny_llama, [TEXT], progress=False)
    for n in (-1, 0, 2.5, True):
        with pytest.raises(InvalidInput, match=rf"^n must be a positive integer \(how many heads to keep\), got {n!r}$"):
            stats.top("entropy", n=n)
    assert len(stats.top("entropy", n=np.int64(3))) == 3


def test_word_attention_checks_pattern_and_drop_special(tiny_bert):
    """A list raised a bare AttributeError, a long tensor torch's RuntimeError, drop_special="no" dropped them."""
    s = prepare(tiny_bert, ["hi there ."])[0]
    n = s.n_tokens
    with pytest.raises(InvalidInput, match=r"^pattern must be a float tensor \[\.\.\., query, key\], got list$"):
        word_attention([[1.0] * n] * n, s)
    with pytest.raises(InvalidInput, match=r"^pattern must be a float tensor \[\.\.\., query, key\], got torch\.int64"):
        word_attention(torch.ones(n, n, dtype=torch.long), s)
    with pytest.raises(InvalidInput, match=r"^drop_special must be True or False, got 'no'$"):
        word_attention(torch.ones(n, n) / n, s, drop_special="no")
    assert word_attention(torch.ones(n, n) / n, s, drop_special=False).shape == (s.n_units, s.n_units)


def test_behaviour_thresholds_are_fractions(tiny_llama):
    """threshold=50 (a percent) or NaN labelled every head without a word."""
    stats = head_stats(tiny_llama, [TEXT], progress=False).table
    for bad in (50, float("nan"), -0.1, "0.5", True):
        with pytest.raises(InvalidInput, match=rf"^threshold must be a number in \[0, 1\], got {bad!r}$"):
            behaviour(stats, threshold=bad)
    with pytest.raises(InvalidInput, match=r"^broad must be a number in \[0, 1\], got 70$"):
        behaviour(stats, broad=70)
    assert (behaviour(stats, threshold=np.float32(1.0), broad=1.0) == "other").all()


def test_head_distances_checks_seed_and_stats(tiny_gpt2):
    """seed=-1 or 1.5 failed in scikit-learn's MDS after the forward passes; stats="x" raised AttributeError."""
    for seed in (-1, 1.5, 2**32):
        with pytest.raises(InvalidInput, match=rf"^seed must be an integer in 0\.\.2\*\*32-1 \(scikit-learn's MDS "
                                               rf"takes no more\), got {seed!r}$"):
            head_distances(tiny_gpt2, [TEXT], seed=seed, progress=False)
    with pytest.raises(InvalidInput, match=r"^stats must be a HeadStats from head_stats\(\) or None, got str$"):
        head_distances(tiny_gpt2, [TEXT], stats="x", progress=False)
    assert tiny_gpt2.count_hooks() == 0


# -- syntax, conllu ---------------------------------------------------------------------------


def test_relation_named_all_is_not_counted_twice(tiny_bert):
    """An arc whose relation is "all" was counted twice in the pseudo-relation "all" (count 2 for one arc)."""
    sents = parse_conllu(TREE.replace("nsubj:pass", "all"))
    with pytest.raises(InvalidInput, match=r"^sentence 0 has a relation named 'all', the name of the pseudo-relation "
                                           r"include_all adds; pass include_all=False"):
        relation_accuracy(tiny_bert, sents, progress=False)
    res = relation_accuracy(tiny_bert, sents, include_all=False, progress=False)
    assert res.baselines.set_index("relation").loc["all", "count"] == 1


def test_relation_accuracy_include_all_must_be_a_bool(tiny_bert):
    """include_all="no" added the pseudo-relation "all" (a non-empty string is truthy)."""
    with pytest.raises(InvalidInput, match=r"^include_all must be True or False, got 'no'$"):
        relation_accuracy(tiny_bert, parse_conllu(TREE), include_all="no", progress=False)


def test_conllu_subtypes_must_be_a_bool(tmp_path):
    """subtypes="no" kept "nsubj:pass" (a non-empty string is truthy)."""
    with pytest.raises(InvalidInput, match=r"^subtypes must be True or False, got 'no'$"):
        parse_conllu(TREE, subtypes="no")
    path = tmp_path / "t.conllu"
    path.write_text(TREE, encoding="utf-8")
    with pytest.raises(InvalidInput, match=r"^subtypes must be True or False, got 1$"):
        read_conllu(path, subtypes=1)
    assert parse_conllu(TREE)[0].relations == ["nsubj", "root"]


# -- dial, context ----------------------------------------------------------------------------


def test_decay_units_max_spearman_must_be_a_number(tiny_llama):
    """max_spearman="x" raised a bare TypeError and True passed as 1 (every unit)."""
    for bad in ("x", True, float("nan")):
        with pytest.raises(InvalidInput, match=rf"^max_spearman must be a number in \[-1, 1\], got {bad!r}$"):
            decay_units(tiny_llama, TEXT, max_spearman=bad)


def test_window_experiment_plot_checks_heads_and_smooth(tiny_llama):
    """heads=[(-1, 0)] plotted the last layer, (9, 0) raised numpy's IndexError, [] and smooth=0 a bare ValueError."""
    exp = window_experiment(tiny_llama, [TEXT], {"ablated": [AblateHead(0, 0)]}, progress=False)
    with pytest.raises(InvalidLocation, match=r"^heads\[0\] = \(-1, 0\) out of range: the profiles have layers 0\.\.1 "
                                              r"and heads 0\.\.3$"):
        exp.plot(heads=[(-1, 0)])
    with pytest.raises(InvalidLocation, match=r"^heads\[1\] = \(9, 0\) out of range"):
        exp.plot(heads=[(0, 0), (9, 0)])
    with pytest.raises(InvalidLocation, match=r"^heads\[0\] must be a \(layer, head\) pair of integers, got 3$"):
        exp.plot(heads=[3])
    with pytest.raises(InvalidLocation, match=r"^heads must be a list of \(layer, head\) pairs or None \(all\), got 3$"):
        exp.plot(heads=3)
    with pytest.raises(InvalidLocation, match=r"^heads is empty: give at least one \(layer, head\) pair, or None for all$"):
        exp.plot(heads=[])
    with pytest.raises(InvalidInput, match=r"^smooth must be a positive integer, got 0$"):
        exp.plot(smooth=0)
    fig = exp.plot(heads=[(1, 3)], smooth=2)
    assert len(fig.axes) == 2


def test_decay_plot_units_are_triples(tiny_llama):
    """plot(units=[(0, 0)]) raised Python's bare 'not enough values to unpack', units=[] pandas' 'No objects'."""
    prof = decay_neurons(tiny_llama, [TEXT], progress=False)
    with pytest.raises(InvalidLocation, match=r"^units\[1\] must be a \(layer, head, unit\) triple, got \(0, 0\)$"):
        prof.plot(units=[(0, 0, 0), (0, 0)])
    with pytest.raises(InvalidLocation, match=r"^units must be a list of \(layer, head, unit\) triples or None, got 3$"):
        prof.plot(units=3)
    with pytest.raises(InvalidLocation, match=r"^units is empty: give at least one \(layer, head, unit\) triple, or None "
                                              r"for the table's top 3$"):
        prof.plot(units=[])
    assert len(prof.plot(units=[(1, 2, 3)]).axes) == 1


def test_relation_accuracy_refuses_interventions_with_given_maps(tiny_bert):
    """interventions= with maps= was dropped without a word: the maps, read without them, were scored."""
    from attnlab.analysis.syntax import word_maps

    sents = parse_conllu(TREE)
    maps = word_maps(tiny_bert, sents, progress=False)
    with pytest.raises(InvalidInput, match=r"^interventions act while word maps are computed, but maps= were given"):
        relation_accuracy(tiny_bert, sents, maps=maps, interventions=[AblateHead(0, 0)], progress=False)
    assert tiny_bert.count_hooks() == 0
    assert relation_accuracy(tiny_bert, sents, maps=maps, progress=False).baselines["count"].tolist() == [1, 1]


# -- interventions of the corpus analyses ---------------------------------------------------------

TEXTS = [TEXT, "hi there .", "a much longer sentence that goes on and on and on ."]


def _uniform():
    return EditScores(0, None, replace=0.0)


def test_a_generator_of_interventions_acts_on_every_batch(tiny_llama):
    """A generator was used up by the first batch: later batches ran clean (mass off by 0.03, loss by 0.16)."""
    def gen():
        yield _uniform()

    listed = attention_by_distance(tiny_llama, TEXTS, interventions=[_uniform()], batch_size=1, progress=False)
    once = attention_by_distance(tiny_llama, TEXTS, interventions=gen(), batch_size=1, progress=False)
    np.testing.assert_allclose(once.mass, listed.mass, atol=1e-12)
    listed = loss_by_position(tiny_llama, TEXTS, interventions=[_uniform()], batch_size=1, progress=False)
    once = loss_by_position(tiny_llama, TEXTS, interventions=gen(), batch_size=1, progress=False)
    np.testing.assert_allclose(once.to_numpy(), listed.to_numpy(), atol=1e-12)
    listed = head_stats(tiny_llama, TEXTS, interventions=[_uniform()], batch_size=1, progress=False).table
    once = head_stats(tiny_llama, TEXTS, interventions=gen(), batch_size=1, progress=False).table
    np.testing.assert_allclose(once.to_numpy(), listed.to_numpy(), atol=1e-12)


def test_row_addressed_interventions_are_refused_by_corpus_analyses(tiny_llama):
    """rows=[0] hit whichever sentence the length-sorted batch put first: results changed with batch_size."""
    spec = EditScores(0, 0, replace=0.0, rows=[0])
    message = r"^interventions addressed to batch rows \(rows=\) cannot be used on a corpus: sentences are batched by length"
    for run_it in (lambda: attention_by_distance(tiny_llama, TEXTS, interventions=[spec], progress=False),
                   lambda: head_stats(tiny_llama, TEXTS, interventions=spec, progress=False),
                   lambda: loss_by_position(tiny_llama, TEXTS, interventions=[spec], progress=False),
                   lambda: window_experiment(tiny_llama, TEXTS, {"row 0": [spec]}, progress=False)):
        with pytest.raises(InvalidInput, match=message):
            run_it()
    assert tiny_llama.count_hooks() == 0


def test_relation_accuracy_takes_maps_from_a_generator(tiny_bert):
    """maps=(m for m in maps) raised Python's bare "object of type 'generator' has no len()"."""
    from attnlab.analysis.syntax import word_maps

    sents = parse_conllu(TREE + "\n" + TREE)
    maps = word_maps(tiny_bert, sents, progress=False)
    listed = relation_accuracy(tiny_bert, sents, maps=maps, progress=False).per_head
    streamed = relation_accuracy(tiny_bert, sents, maps=(m for m in maps), progress=False).per_head
    assert listed.equals(streamed) and listed["count"].max() == 2
    with pytest.raises(InvalidInput, match=r"^maps must be a list of word maps \(from word_maps\), got Tensor$"):
        relation_accuracy(tiny_bert, sents[:1], maps=maps[0], progress=False)


def test_relation_accuracy_plot_top_is_a_positive_integer(tiny_bert):
    """plot(top=-1) drew every relation but the last (pandas' head(-1)); top=2.5 raised a bare TypeError."""
    res = relation_accuracy(tiny_bert, parse_conllu(TREE), progress=False)
    for bad in (-1, 0, 2.5):
        with pytest.raises(InvalidInput, match=rf"^top must be a positive integer, got {bad!r}$"):
            res.plot(top=bad)
    assert len(res.plot(top=1).axes[0].patches) == 2  # one relation: best head and best offset



def test_js_divergence_matrix_needs_heads_queries_keys():
    """A 2-D [query, key] map was read as 5 one-row heads (a 5 x 5 answer); 4-D raised torch's RuntimeError."""
    from attnlab.analysis.clustering import js_divergence_matrix

    p = torch.softmax(torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(0)), -1)
    for bad, got in ((p, r"torch\.float32 of shape \(2, 4, 5, 5\)"), (p[0, 0], r"torch\.float32 of shape \(5, 5\)"),
                     (p[0].long(), r"torch\.int64 of shape \(4, 5, 5\)"), (p[0].tolist(), "list")):
        with pytest.raises(InvalidInput, match=rf"^pattern must be a float tensor \[head, query, key\], got {got}$"):
            js_divergence_matrix(bad)
    d = js_divergence_matrix(p[0])
    assert d.shape == (4, 4) and torch.allclose(d.diagonal(), torch.zeros(4, dtype=torch.float64))


def test_pooled_window_checks_level_and_mass():
    """level=90 (a percent) gave NaN without a word; a [head, distance] mass raised einops' own error."""
    from attnlab.analysis.context import pooled_window

    mass = np.zeros((1, 2, 4))
    mass[0, :, 1] = 1.0  # every head attends one token back
    with pytest.raises(InvalidInput, match=r"^level must be a number in \(0, 1\], got 90$"):
        pooled_window(mass, 90)
    with pytest.raises(InvalidInput, match=r"^mass must be an array \[\.\.\., layer, head, distance\], got shape \(2, 4\)$"):
        pooled_window(mass[0], 0.9)
    assert pooled_window(mass, 0.9) == 1.0


def test_split_words_and_word_attention_name_a_wrong_type(tiny_bert):
    """split_words(None) and word_attention(p, "text") raised Python's bare AttributeError."""
    with pytest.raises(InvalidInput, match=r"^split_words takes a string, got NoneType$"):
        split_words(None)
    with pytest.raises(InvalidInput, match=r"^sentence must be a Sentence from prepare\(model, corpus\), got str$"):
        word_attention(torch.ones(3, 3) / 3, "hi there .")
    assert split_words("don't stop.") == ["don't", "stop", "."]


def test_sentences_that_are_not_a_list_are_named(tiny_bert):
    """relation_accuracy(model, None) raised Python's bare "'NoneType' object is not iterable"."""
    with pytest.raises(InvalidInput, match=r"^sentences must be a list of DependencySentence \(see read_conllu\), "
                                           r"got NoneType$"):
        relation_accuracy(tiny_bert, None, progress=False)


def test_fixed_offset_baseline_does_not_depend_on_sentence_order(tiny_bert):
    """Offsets +1 and -1 tied: the baseline named whichever the first sentence had, so shuffling changed it."""
    left = parse_conllu("1\tshe\t_\t_\t_\t_\t2\tdep\t_\t_\n2\tleft\t_\t_\t_\t_\t0\troot\t_\t_\n")  # head one to the right
    right = parse_conllu("1\tgo\t_\t_\t_\t_\t0\troot\t_\t_\n2\tnow\t_\t_\t_\t_\t1\tdep\t_\t_\n")  # head one to the left
    offsets = [relation_accuracy(tiny_bert, order, include_all=False, progress=False).baselines.set_index("relation")
               .loc["dep", ["offset", "accuracy"]].tolist() for order in (left + right, right + left)]
    assert offsets == [[-1, 0.5], [-1, 0.5]]


def test_dial_refuses_a_wrong_start_from_before_finding_units(tiny_llama, monkeypatch):
    """start_from="x" was refused only after decay_units had run a pass over the text to find the units."""
    import attnlab.analysis.dial as dial

    def no_pass(*args, **kwargs):
        raise AssertionError("decay_units ran before start_from was checked")

    monkeypatch.setattr(dial, "decay_units", no_pass)
    text = " ".join([TEXT] * 3)
    with pytest.raises(InvalidInput, match=r"start_from must be a DialResult from an earlier set_context_window call, "
                                           r"got str$"):
        dial.set_context_window(tiny_llama, 5, text, start_from="x", progress=False)
    assert tiny_llama.count_hooks() == 0


def test_result_lookups_name_a_column_or_relation_that_is_no_string(tiny_llama, tiny_bert):
    """HeadStats.matrix([]) raised "unhashable type: 'list'", head_matrix([]) pandas' "Lengths must match"."""
    stats = head_stats(tiny_llama, [TEXT], progress=False)
    with pytest.raises(InvalidInput, match=r"^unknown statistic \[\]; valid: special, cls, sep, first"):
        stats.matrix([])
    res = relation_accuracy(tiny_bert, parse_conllu(TREE), progress=False)
    with pytest.raises(InvalidInput, match=r"^no arcs with relation \[\]; relations here: all, nsubj$"):
        res.head_matrix([])
    assert res.head_matrix("nsubj").shape == (2, 4)


def test_probe_maps_must_be_a_list_of_maps(tiny_bert):
    """fit(maps=1.5) raised Python's bare TypeError; one tensor was split along its layers into "2 maps"."""
    from attnlab.analysis import AttentionProbe
    from attnlab.analysis.syntax import word_maps

    sents = parse_conllu(TREE)
    maps = word_maps(tiny_bert, sents, progress=False)
    probe = AttentionProbe(epochs=2)
    for bad, got in ((1.5, "float"), (maps[0], "Tensor")):
        with pytest.raises(InvalidInput, match=rf"^maps must be a list of word maps \(from word_maps\), got {got}$"):
            probe.fit(tiny_bert, sents, maps=bad, progress=False)
    probe.fit(tiny_bert, sents, maps=(m for m in maps), progress=False)
    assert probe.evaluate(tiny_bert, sents, maps=maps, progress=False).n_words == 2


def test_behaviour_names_a_wrong_table(tiny_llama):
    """behaviour(HeadStats) raised a bare AttributeError and a table without "prev" a bare KeyError."""
    stats = head_stats(tiny_llama, [TEXT], progress=False)
    with pytest.raises(InvalidInput, match=r"^stats must be a DataFrame of head statistics \(HeadStats\.table\), "
                                           r"got HeadStats$"):
        behaviour(stats)
    with pytest.raises(InvalidInput, match=r"^stats lacks column\(s\) prev; behaviour needs special, prev, next, self, "
                                           r"entropy, uniform_entropy \(HeadStats\.table has them\)$"):
        behaviour(stats.table.drop(columns="prev"))
    assert len(behaviour(stats.table)) == 8


def test_interventions_with_a_value_per_batch_row_are_refused_by_corpus_analyses(tiny_llama):
    """Patch(source=[two prompts]) paired its rows with the length-sorted batch: sentence 0 got the other's source."""
    from attnlab.interventions import Patch, SetPattern

    long, short = TEXT, "hi there , said the dog ."
    patch = Patch(0, None, site="pattern", source=["we all went home after the long show at the old town hall .",
                                                   "the cat sat on a mat ."])
    n = len(tiny_llama.to_tokens(long)[0])
    planted = SetPattern(0, 0, pattern=torch.eye(n).expand(2, n, n).clone())
    message = r"^interventions with one value per batch row \((Patch source|SetPattern pattern) of 2 rows\) cannot be used"
    for spec in (patch, planted):
        with pytest.raises(InvalidInput, match=message):
            head_stats(tiny_llama, [long, short], interventions=[spec], progress=False)
    assert tiny_llama.count_hooks() == 0
    one = head_stats(tiny_llama, [long], interventions=[SetPattern(0, 0, pattern=torch.eye(n))], progress=False).table
    assert one.set_index(["layer", "head"]).loc[(0, 0), "self"] == pytest.approx(1.0)


def test_a_mean_ablation_with_several_reference_prompts_still_runs_on_a_corpus(tiny_llama):
    """The per-row check must not take a mean ablation's pooled reference prompts for one value per row."""
    spec = AblateHead(0, 0, method="mean", reference=["the cat sat .", "a dog ran off ."])
    stats = head_stats(tiny_llama, [TEXT, "hi there ."], interventions=[spec], progress=False)
    assert stats.n_sentences == 2 and tiny_llama.count_hooks() == 0
