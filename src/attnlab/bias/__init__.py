"""Floor 4: gender-bias metrics, WinoBias/Winogender readers, causal mediation, bias experiments."""

from attnlab.bias.pronouns import BIAS_METRICS, PronounBias, pronoun_bias
from attnlab.bias.templates import Template, neutral_prompts, neutral_text, occupations, templates

__all__ = [
    "pronoun_bias",
    "PronounBias",
    "BIAS_METRICS",
    "Template",
    "templates",
    "occupations",
    "neutral_prompts",
    "neutral_text",
]
