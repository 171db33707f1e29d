"""Floor 4: gender-bias metrics, WinoBias/Winogender readers, causal mediation, bias experiments.

>>> from attnlab.testing import tiny_model
>>> from attnlab.bias import pronoun_bias
>>> pronoun_bias(tiny_model("gpt2"), occupations=["nurse", "mechanic", "teacher"]).summary.shape
(4, 5)
"""

from attnlab._deprecation import moved_names
from attnlab.bias.coref import coref_bias, winogender_bias
from attnlab.bias.datasets import load_winobias, load_winogender_stats, load_winogender_templates, winobias_pairs
from attnlab.bias.experiment import bias_experiment
from attnlab.bias.mediation import MediationPair, causal_mediation, greedy_heads, mediation_pairs
from attnlab.bias.pronouns import pronoun_bias
from attnlab.bias.templates import Template, neutral_prompts, neutral_text, occupations, templates

__all__ = [
    "pronoun_bias",
    "coref_bias",
    "winogender_bias",
    "bias_experiment",
    "causal_mediation",
    "greedy_heads",
    "mediation_pairs",
    "MediationPair",
    "Template",
    "templates",
    "occupations",
    "neutral_prompts",
    "neutral_text",
    "load_winobias",
    "winobias_pairs",
    "load_winogender_templates",
    "load_winogender_stats",
]

#: Names that left the package surface: still importable for one release, with a warning naming their home.
__getattr__ = moved_names("attnlab.bias", {
    "PronounBias": "attnlab.bias.pronouns", "BIAS_METRICS": "attnlab.bias.pronouns",
    "occupation_table": "attnlab.bias.templates", "load_winobias_dir": "attnlab.bias.datasets",
    "fill_winogender": "attnlab.bias.datasets", "CorefBias": "attnlab.bias.coref",
    "pair_log_ratio": "attnlab.bias.coref", "MediationResult": "attnlab.bias.mediation",
    "total_effect": "attnlab.bias.mediation", "mediation_effects": "attnlab.bias.mediation",
    "BiasExperiment": "attnlab.bias.experiment", "perplexity": "attnlab.measure:perplexity",
    "run_bias_demo": "attnlab.bias.demo", "BiasDemo": "attnlab.bias.demo",
})
