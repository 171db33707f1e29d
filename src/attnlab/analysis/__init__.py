"""Floor 4: analyses of heads and neurons.

Clark et al. (2019) head statistics, word-level attention, head clustering and syntax
probes; the data behind Vig's (2019) neuron view; distance-decay neurons and the effective
context window under interventions. Every function takes a model from :func:`attnlab.load`
and a corpus (texts or word lists); every result is a :class:`attnlab.measure.result.Result`
(``table``, ``per_prompt``, ``summary``, ``plot(ax=None)``). Attention is read through the
engine's one forward primitive (:func:`attnlab.engine.forward.run`), with no LM head.

Arguments naming one location are ``layer=``/``head=``; several are ``layers=``/``heads=``.
"""

from attnlab.analysis._corpus import Sentence, prepare, split_words
from attnlab.analysis._result import deprecated as _deprecated
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
    NeuronData,
    decay_neurons,
    neuron_data,
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
    "neuron_data", "NeuronData", "unit_scores", "unit_dims",
    "decay_neurons", "DecayProfile",
    "attention_by_distance", "DistanceProfile", "loss_by_position", "window_experiment", "WindowExperiment",
    "set_context_window", "decay_units", "DialResult", "WindowNotReached",
]

#: Old names that keep working for one release: the functions warn when called, naming the new spelling.
_DEPRECATED_FUNCTIONS = ("neuron_view", "is_rotary", "head_scale")


def __getattr__(name: str):
    from attnlab.analysis import neurons

    if name in _DEPRECATED_FUNCTIONS:
        return getattr(neurons, name)
    if name == "NeuronView":
        _deprecated("attnlab.analysis.NeuronView", "attnlab.analysis.NeuronData")
        return neurons.NeuronData
    raise AttributeError(f"module 'attnlab.analysis' has no attribute {name!r}")
