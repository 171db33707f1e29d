"""Floor 3: what interventions do to a model's outputs, for one spec or a sweep over every head.

``effect()`` scores one set of interventions per prompt with a bootstrap interval;
``sweep_heads()`` / ``sweep_neurons()`` / ``sweep_interventions()`` do the same for every
head, q/k/v dimension or labelled spec set, fast (prefix reuse and several variants per
batch). Metrics live in :mod:`attnlab.measure.metrics`; definitions in ``docs/measure.md``.
``run_parallel()`` / ``process_group()`` split that work over processes (``docs/parallel.md``).
"""

from attnlab.measure._stats import bootstrap_mean
from attnlab.measure.distributed import process_group
from attnlab.measure.launch import run_parallel
from attnlab.measure.effect import EffectResult, effect, score
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
from attnlab.measure.sweep import HEAD_METHODS, SweepResult, sweep_heads, sweep_interventions, sweep_neurons

__all__ = [
    "effect",
    "score",
    "EffectResult",
    "sweep_heads",
    "sweep_neurons",
    "sweep_interventions",
    "SweepResult",
    "HEAD_METHODS",
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
    "run_parallel",
    "process_group",
]
