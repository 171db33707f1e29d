"""Floor 4: analyses of heads and neurons.

Clark et al. (2019) head statistics, word-level attention, head clustering and syntax
probes; Vig (2019) neuron-view data; distance-decay neurons and the effective context
window under interventions. Every function takes a model from :func:`attnlab.load` and a
corpus (texts or word lists) and returns DataFrames / small result objects with plots.
"""

from attnlab.analysis._corpus import Sentence, prepare, split_words
from attnlab.analysis.clustering import BEHAVIOURS, HeadMap, behaviour, head_distances, js_divergence_matrix
from attnlab.analysis.conllu import DependencySentence, parse_conllu, read_conllu
from attnlab.analysis.context import (
    DistanceProfile,
    WindowExperiment,
    attention_by_distance,
    loss_by_position,
    window_experiment,
)
from attnlab.analysis.dial import DialResult, WindowNotReached, decay_units, set_context_window
from attnlab.analysis.heads import STAT_COLUMNS, HeadStats, entropy, head_stats, word_attention
from attnlab.analysis.neurons import (
    DecayProfile,
    NeuronView,
    decay_neurons,
    head_scale,
    is_rotary,
    neuron_view,
    unit_dims,
    unit_scores,
)
from attnlab.analysis.probe import AttentionProbe, ProbeScore
from attnlab.analysis.syntax import DIRECTIONS, RelationAccuracy, relation_accuracy, word_maps

__all__ = [
    "Sentence", "prepare", "split_words",
    "head_stats", "HeadStats", "STAT_COLUMNS", "entropy", "word_attention",
    "head_distances", "HeadMap", "behaviour", "BEHAVIOURS", "js_divergence_matrix",
    "read_conllu", "parse_conllu", "DependencySentence",
    "word_maps", "relation_accuracy", "RelationAccuracy", "DIRECTIONS",
    "AttentionProbe", "ProbeScore",
    "neuron_view", "NeuronView", "unit_scores", "unit_dims", "is_rotary", "head_scale",
    "decay_neurons", "DecayProfile",
    "attention_by_distance", "DistanceProfile", "loss_by_position", "window_experiment", "WindowExperiment",
    "set_context_window", "decay_units", "DialResult", "WindowNotReached",
]
