"""Floor 4: analyses of heads and neurons.

Clark et al. (2019) head statistics, word-level attention, head clustering and syntax
probes; Vig (2019) neuron view data; distance-decay neurons and the effective context
window under interventions.
"""

from attnlab.analysis._corpus import Sentence, prepare, split_words
from attnlab.analysis.clustering import BEHAVIOURS, HeadMap, behaviour, head_distances, js_divergence_matrix
from attnlab.analysis.heads import STAT_COLUMNS, HeadStats, entropy, head_stats, word_attention

__all__ = [
    "Sentence", "prepare", "split_words",
    "head_stats", "HeadStats", "STAT_COLUMNS", "entropy", "word_attention",
    "head_distances", "HeadMap", "behaviour", "BEHAVIOURS", "js_divergence_matrix",
]
