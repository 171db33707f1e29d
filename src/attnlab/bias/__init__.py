"""Floor 4: gender-bias metrics, WinoBias/Winogender readers, causal mediation, bias experiments.

>>> from attnlab.testing import tiny_model
>>> from attnlab.bias import pronoun_bias
>>> pronoun_bias(tiny_model("gpt2"), occupations=["nurse", "mechanic", "teacher"]).summary.shape
(4, 5)
"""

from attnlab.bias.coref import CorefBias, coref_bias, pair_log_ratio, winogender_bias
from attnlab.bias.datasets import (
    fill_winogender,
    load_winobias,
    load_winobias_dir,
    load_winogender_stats,
    load_winogender_templates,
    winobias_pairs,
)
from attnlab.bias.demo import BiasDemo, run_bias_demo
from attnlab.bias.experiment import BiasExperiment, bias_experiment, perplexity
from attnlab.bias.mediation import (
    MediationPair,
    MediationResult,
    causal_mediation,
    greedy_heads,
    mediation_effects,
    mediation_pairs,
    total_effect,
)
from attnlab.bias.pronouns import BIAS_METRICS, PronounBias, pronoun_bias
from attnlab.bias.templates import Template, neutral_prompts, neutral_text, occupation_table, occupations, templates

__all__ = [
    "pronoun_bias",
    "PronounBias",
    "BIAS_METRICS",
    "Template",
    "templates",
    "occupations",
    "occupation_table",
    "neutral_prompts",
    "neutral_text",
    "load_winobias",
    "load_winobias_dir",
    "winobias_pairs",
    "load_winogender_templates",
    "load_winogender_stats",
    "fill_winogender",
    "coref_bias",
    "CorefBias",
    "pair_log_ratio",
    "winogender_bias",
    "MediationPair",
    "MediationResult",
    "mediation_pairs",
    "total_effect",
    "mediation_effects",
    "causal_mediation",
    "greedy_heads",
    "bias_experiment",
    "BiasExperiment",
    "perplexity",
    "run_bias_demo",
    "BiasDemo",
]
