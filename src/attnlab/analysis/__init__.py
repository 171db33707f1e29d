"""Floor 4: analyses of heads and neurons.

Clark et al. (2019) head statistics, word-level attention, head clustering and syntax
probes; the data behind Vig's (2019) neuron view; distance-decay neurons and the effective
context window under interventions. Every function takes a model from :func:`attnlab.load`
and a corpus (texts or word lists); every result is a :class:`attnlab.measure.result.Result`
(``table``, ``per_prompt``, ``summary``, ``plot(ax=None)``). Attention is read through the
engine's one forward primitive (:func:`attnlab.engine.forward.run`), with no LM head.

Arguments naming one location are ``layer=``/``head=``; several are ``layers=``/``heads=``.
"""

from attnlab._deprecation import moved_names
from attnlab.analysis._corpus import Sentence, prepare, split_words
from attnlab.analysis.clustering import head_distances
from attnlab.analysis.conllu import read_conllu
from attnlab.analysis.context import attention_by_distance, loss_by_position, window_experiment
from attnlab.analysis.dial import WindowNotReached, set_context_window
from attnlab.analysis.heads import head_stats, word_attention
from attnlab.analysis.neurons import decay_neurons, neuron_data, unit_scores
from attnlab.analysis.probe import AttentionProbe
from attnlab.analysis.syntax import relation_accuracy

__all__ = [
    "head_stats", "word_attention", "head_distances",
    "read_conllu", "relation_accuracy", "AttentionProbe",
    "neuron_data", "unit_scores", "decay_neurons",
    "attention_by_distance", "loss_by_position", "window_experiment",
    "set_context_window", "WindowNotReached",
    "prepare", "Sentence", "split_words",
]

_MOVED = {
    "HeadStats": "attnlab.analysis.heads", "STAT_COLUMNS": "attnlab.analysis.heads", "entropy": "attnlab.analysis.heads",
    "HeadMap": "attnlab.analysis.clustering", "behaviour": "attnlab.analysis.clustering",
    "BEHAVIOURS": "attnlab.analysis.clustering", "js_divergence_matrix": "attnlab.analysis.clustering",
    "parse_conllu": "attnlab.analysis.conllu", "DependencySentence": "attnlab.analysis.conllu",
    "word_maps": "attnlab.analysis.syntax", "RelationAccuracy": "attnlab.analysis.syntax", "DIRECTIONS": "attnlab.analysis.syntax",
    "ProbeScore": "attnlab.analysis.probe", "NeuronData": "attnlab.analysis.neurons", "unit_dims": "attnlab.analysis.neurons",
    "DecayProfile": "attnlab.analysis.neurons", "DistanceProfile": "attnlab.analysis.context",
    "WindowExperiment": "attnlab.analysis.context", "decay_units": "attnlab.analysis.dial", "DialResult": "attnlab.analysis.dial",
    "NeuronView": "attnlab.analysis.neurons:NeuronData",
}
_moved = moved_names("attnlab.analysis", _MOVED)

#: Old functions that keep working for one release: they warn when called, naming the new spelling.
_DEPRECATED_FUNCTIONS = ("neuron_view", "is_rotary", "head_scale")


def __getattr__(name: str):
    if name in _DEPRECATED_FUNCTIONS:
        from attnlab.analysis import neurons

        return getattr(neurons, name)
    return _moved(name)
