"""Floor 3: the one place that scores, batches and bootstraps.

``score()`` gives a metric's value per prompt, ``effect()`` what a set of interventions
changes (per prompt, with a bootstrap interval), ``perplexity()`` a corpus' pooled
perplexity; ``sweep_heads()`` / ``sweep_neurons()`` / ``sweep_interventions()`` measure
every head, q/k/v dimension or labelled spec set, fast (prefix reuse and several variants
per batch); ``attribute()`` estimates them all from one backward pass (attribution
patching, AtP*). Every function takes ``(model, prompts, metric, what to intervene on)``;
every result is a :class:`Result` (``table``, ``per_prompt``, ``summary``, ``plot()``).
Metrics live in :mod:`attnlab.measure.metrics`, the bootstrap in
:mod:`attnlab.measure.stats`; definitions in ``docs/measure.md``.
"""

from attnlab.measure._rows import Rows
from attnlab.measure.attribution import AttributionResult, attribute
from attnlab.measure.distributed import process_group
from attnlab.measure.launch import run_parallel
from attnlab.measure.effect import EffectResult, effect, perplexity, score
from attnlab.measure.metrics import (
    KL,
    GenerationDiff,
    HiddenShift,
    LogitDiff,
    LogProbs,
    Loss,
    Metric,
    PairLogRatio,
    TokenProb,
    TopKChange,
    continuation_logprob,
    metric_from_name,
)
from attnlab.measure.result import Result
from attnlab.measure.stats import bootstrap, bootstrap_mean
from attnlab.measure.sweep import HEAD_METHODS, SweepResult, sweep_heads, sweep_interventions, sweep_neurons

__all__ = [
    "score",
    "effect",
    "perplexity",
    "sweep_heads",
    "sweep_neurons",
    "sweep_interventions",
    "attribute",
    "AttributionResult",
    "Result",
    "EffectResult",
    "SweepResult",
    "HEAD_METHODS",
    "Metric",
    "Rows",
    "LogitDiff",
    "TokenProb",
    "LogProbs",
    "PairLogRatio",
    "KL",
    "Loss",
    "TopKChange",
    "HiddenShift",
    "GenerationDiff",
    "continuation_logprob",
    "metric_from_name",
    "bootstrap",
    "bootstrap_mean",
    "run_parallel",
    "process_group",
]
