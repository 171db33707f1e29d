"""Floor 3: what interventions do to a model's outputs, for one spec or a sweep over every head.

``effect()`` scores one set of interventions per prompt with a bootstrap interval;
``sweep_heads()`` / ``sweep_neurons()`` do the same for every head or q/k/v dimension, fast
(prefix reuse and one intervention per batch row). Metrics live in :mod:`.metrics`.
"""

from attnlab.measure._stats import bootstrap_mean
from attnlab.measure.effect import EffectResult, effect
from attnlab.measure.metrics import (
    KL,
    GenerationDiff,
    HiddenShift,
    LogitDiff,
    Loss,
    Metric,
    TokenProb,
    TopKChange,
    continuation_logprob,
    metric_from_name,
)

__all__ = [
    "effect",
    "EffectResult",
    "Metric",
    "LogitDiff",
    "TokenProb",
    "KL",
    "Loss",
    "TopKChange",
    "HiddenShift",
    "GenerationDiff",
    "continuation_logprob",
    "metric_from_name",
    "bootstrap_mean",
]

from attnlab.measure.sweep import HEAD_METHODS, SweepResult, sweep_heads, sweep_interventions, sweep_neurons  # noqa: E402

__all__ += ["sweep_heads", "sweep_neurons", "sweep_interventions", "SweepResult", "HEAD_METHODS"]
