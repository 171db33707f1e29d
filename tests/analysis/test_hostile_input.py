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


def test_decay_units_max_spearman_must_be_a_number(tiny_llama):
    """max_spearman="x" raised a bare TypeError and True passed as 1 (every unit)."""
    for bad in ("x", True, float("nan")):
        with pytest.raises(InvalidInput, match=rf"^max_spearman must be a number in \[-1, 1\], got {bad!r}$"):
            decay_units(tiny_llama, TEXT, max_spearman=bad)
