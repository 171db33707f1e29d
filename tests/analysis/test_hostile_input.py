"""Bad arguments to the analyses: refused with a typed attnlab error naming the valid values, never read silently."""

import numpy as np
import pandas as pd
import pytest
import torch

from attnlab.analysis import head_distances, head_stats, prepare, relation_accuracy, word_attention
from attnlab.analysis.clustering import behaviour
from attnlab.analysis.conllu import parse_conllu, read_conllu
from attnlab.analysis.context import window_experiment
from attnlab.analysis.dial import decay_units
from attnlab.analysis.neurons import decay_neurons, neuron_data, unit_dims, unit_scores
from attnlab.errors import InvalidInput, InvalidLocation
from attnlab.interventions import AblateHead

TEXT = "the nurse said that she left the house because the doctor was not happy ."
TREE = "1\tshe\t_\t_\t_\t_\t2\tnsubj:pass\t_\t_\n2\tleft\t_\t_\t_\t_\t0\troot\t_\t_\n"


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


def test_decay_units_max_spearman_must_be_a_number(tiny_llama):
    """max_spearman="x" raised a bare TypeError and True passed as 1 (every unit)."""
    for bad in ("x", True, float("nan")):
        with pytest.raises(InvalidInput, match=rf"^max_spearman must be a number in \[-1, 1\], got {bad!r}$"):
            decay_units(tiny_llama, TEXT, max_spearman=bad)
