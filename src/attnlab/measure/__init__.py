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

from attnlab._deprecation import moved_names
from attnlab.measure._rows import Rows
from attnlab.measure.attribution import attribute
from attnlab.measure.distributed import process_group
from attnlab.measure.effect import effect, perplexity, score
from attnlab.measure.launch import run_parallel
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
)
from attnlab.measure.result import Result
from attnlab.measure.stats import bootstrap, check_resampling
from attnlab.measure.sweep import sweep_heads, sweep_interventions, sweep_neurons

__all__ = [
    "score",
    "effect",
    "perplexity",
    "sweep_heads",
    "sweep_neurons",
    "sweep_interventions",
    "attribute",
    "Result",
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
    "bootstrap",
    "check_resampling",
    "run_parallel",
    "process_group",
]

#: Names that left the package surface: still importable for one release, with a warning naming their home.
__getattr__ = moved_names("attnlab.measure", {
    "AttributionResult": "attnlab.measure.attribution", "EffectResult": "attnlab.measure.effect",
    "SweepResult": "attnlab.measure.sweep", "HEAD_METHODS": "attnlab.measure.sweep",
    "continuation_logprob": "attnlab.measure.metrics", "metric_from_name": "attnlab.measure.metrics",
    "bootstrap_mean": "attnlab.measure.stats",
})
