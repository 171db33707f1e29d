"""The bias intervention experiment: bias before/after a set of interventions, and what it costs.

``bias_experiment`` measures the profession pronoun bias with and without the
interventions (each with a 95% bootstrap interval over occupations) and two collateral
costs on text with no people in it, both measured by :mod:`attnlab.measure`:

* perplexity on neutral paragraphs: ``exp(mean token negative log-likelihood)``
  (:func:`attnlab.measure.perplexity`; interval: bootstrap over tokens);
* next-token KL on neutral prompts: ``KL(p_clean || p_intervened)`` at the last position,
  averaged over prompts (:func:`attnlab.measure.effect` with the ``KL`` metric; interval:
  bootstrap over prompts).

>>> from attnlab.testing import tiny_model
>>> from attnlab.interventions import AblateHead
>>> from attnlab.bias import bias_experiment
>>> exp = bias_experiment(tiny_model("gpt2"), [AblateHead(1, 0)], occupations=["nurse", "mechanic", "teacher"], n_boot=0)
>>> list(exp.table.metric)
['mean_abs_log_ratio', 'mean_log_ratio', 'pearson_r', 'spearman_rho', 'perplexity', 'next_token_kl']
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float

from attnlab.bias._checks import check_lm, check_pronouns
from attnlab.bias.pronouns import BIAS_METRICS, PronounBias, design, pronoun_bias
from attnlab.bias.templates import Template, neutral_prompts as shipped_prompts, neutral_text as shipped_text
from attnlab.engine.tokens import check_texts
from attnlab.errors import InvalidInput
from attnlab.measure import KL, Result, check_resampling, effect, perplexity
from attnlab.measure.effect import check_interventions
from attnlab.measure.result import renamed

__all__ = ["BiasExperiment", "bias_experiment", "perplexity", "next_token_kl"]


def next_token_kl(clean: Float[torch.Tensor, "prompt vocab"], edited: Float[torch.Tensor, "prompt vocab"]) -> np.ndarray:
    """Deprecated: per prompt ``KL(p_clean || p_edited)`` of two ``[n, vocab]`` log-probability tensors.

    Use ``attnlab.measure.effect(model, prompts, KL(), interventions)``, which measures it.
    """
    warnings.warn("bias.experiment.next_token_kl is deprecated and will be removed in the next release; use "
                  "attnlab.measure.effect(model, prompts, KL(), interventions)", DeprecationWarning, stacklevel=2)
    return KL().compare(edited, clean, None).clamp(min=0).numpy()


class BiasExperiment(Result):
    """What :func:`bias_experiment` measured.

    ``table`` (= ``summary``): one row per metric with ``before, before_low, before_high,
    after, after_low, after_high, change``; ``per_prompt``: every occupation prompt's log
    ratio before and after; ``before`` / ``after``: the two :class:`PronounBias` results;
    ``plot()``: log ratios before/after and the bias metrics with their intervals.
    """

    def __init__(self, table: pd.DataFrame, before: PronounBias, after: PronounBias, interventions: list):
        self.table, self.before, self.after, self.interventions = table, before, after, interventions
        self.per_prompt = before.per_prompt[["occupation", "share_women", "template", "prompt"]].assign(
            log_ratio_before=before.per_prompt.log_ratio.to_numpy(), log_ratio_after=after.per_prompt.log_ratio.to_numpy()
        )

    figure = renamed("plot")

    def value(self, metric: str, when: str = "after") -> float:
        if when not in ("before", "after", "change"):
            raise InvalidInput(f"when must be 'before', 'after' or 'change', got {when!r}")
        rows = self.table.set_index("metric")
        if metric not in rows.index:
            raise InvalidInput(f"unknown metric {metric!r}; valid: {', '.join(rows.index)}")
        return float(rows.loc[metric, when])

    def plot(self, ax=None):
        """Left: log ratio vs share of women before and after; right: bias metrics with intervals.

        ``ax``: None (a new Figure) or a pair of axes to draw the two panels on.
        """
        from attnlab.bias._plots import experiment_figure

        return experiment_figure(self, ax)


def _head(values: list) -> str:
    return repr(values[:5])[:-1] + (", ...]" if len(values) > 5 else "]")


def _check_baseline(baseline, model, occupations, templates, pronouns, n_boot: int, seed: int) -> None:
    """Refuse a baseline measured on anything else: its numbers would be paired with the wrong prompts."""
    if not isinstance(baseline, PronounBias):
        raise InvalidInput(f"baseline must be a PronounBias from pronoun_bias(), got {type(baseline).__name__}")
    differs = []
    if getattr(baseline, "interventions", ()):  # its "before" was an edited model: every change read 0
        differs.append(f"interventions {list(baseline.interventions)!r} (this experiment's 'before' is the model "
                       "without them)")
    hooks = getattr(baseline, "active_hooks", 0)
    if hooks != model.count_hooks():  # measured inside another `with model.intervene(...)` block than this call
        differs.append(f"{hooks} hook(s) already acting, e.g. in a `with model.intervene(...)` block (this experiment: "
                       f"{model.count_hooks()})")
    if baseline.model_name != model.cfg.name:
        differs.append(f"model {baseline.model_name!r} (this experiment: {model.cfg.name!r})")
    if tuple(baseline.pronouns) != check_pronouns(pronouns):
        differs.append(f"pronouns {tuple(baseline.pronouns)!r} (this experiment: {check_pronouns(pronouns)!r})")
    got = list(baseline.per_prompt[["occupation", "share_women", "template"]].itertuples(index=False, name=None))
    want = [(o, s, t.prefix) for o, s, t in design(occupations, templates)]
    if got != want:
        columns = []
        for i, name in ((0, "occupations"), (1, "shares of women"), (2, "templates")):
            had, has = list(dict.fromkeys(r[i] for r in got)), list(dict.fromkeys(r[i] for r in want))
            if had != has:
                columns.append(f"{name} {_head(had)} (this experiment: {_head(has)})")
        differs += columns or ["the same occupations and templates in a different pairing"]
    if (baseline.n_boot, baseline.seed) != (n_boot, seed):
        differs.append(f"n_boot={baseline.n_boot}, seed={baseline.seed} (this experiment: n_boot={n_boot}, seed={seed})")
    if differs:
        raise InvalidInput("baseline does not match this experiment; it was measured with " + "; ".join(differs)
                           + ". Pass the same occupations, templates, pronouns, n_boot and seed, or no baseline")


def bias_experiment(
    model,
    interventions: Sequence,
    *,
    occupations=None,
    templates: Sequence[Template | str] | None = None,
    pronouns: tuple[str, str] = ("she", "he"),
    neutral_text: Sequence[str] | None = None,
    neutral_prompts: Sequence[str] | None = None,
    batch_size: int = 32,
    n_boot: int = 1000,
    seed: int = 0,
    baseline: PronounBias | None = None,
    progress: bool = False,
) -> BiasExperiment:
    """Apply ``interventions`` and report the bias metrics and the collateral cost before/after.

    Args:
        model: a causal LM (perplexity and KL need next-token predictions).
        interventions: specs for ``model.intervene`` (e.g. ``AblateHead(6, 2)``).
        neutral_text: paragraphs for the perplexity cost (default: shipped prose).
        neutral_prompts: prompts for the next-token KL (default: shipped prompts).
        baseline: a :func:`pronoun_bias` result of the clean model with the same
            occupations, templates, pronouns, ``n_boot`` and ``seed``, to skip measuring it again.
    Returns:
        :class:`BiasExperiment`; ``.table`` has one row per metric with columns
        ``before, before_low, before_high, after, after_low, after_high, change``.
    """
    n_boot, seed = check_resampling(n_boot, seed)
    check_lm(model, causal=True)
    interventions = check_interventions(model, interventions)  # one spec is a list of one; fails before any pass
    if not interventions:
        raise InvalidInput("no interventions given: pass a non-empty list of specs (e.g. [AblateHead(3, 1)])")
    text = shipped_text() if neutral_text is None else check_texts(neutral_text, "neutral_text")
    prompts = shipped_prompts() if neutral_prompts is None else check_texts(neutral_prompts, "neutral_prompts")
    if baseline is not None:
        _check_baseline(baseline, model, occupations, templates, pronouns, n_boot, seed)
    model.token_rows(list(text) + list(prompts))  # one too long for the model is refused now, not after two bias runs
    kw = dict(occupations=occupations, templates=templates, pronouns=pronouns, batch_size=batch_size, n_boot=n_boot,
              seed=seed, progress=progress)
    before = pronoun_bias(model, **kw) if baseline is None else baseline
    after = pronoun_bias(model, interventions=interventions, **kw)
    ppl_before = perplexity(model, text, n_boot=n_boot, seed=seed)
    ppl_after = perplexity(model, text, interventions, n_boot=n_boot, seed=seed)
    kl = effect(model, prompts, KL(), interventions, batch_size=batch_size, n_boot=n_boot, seed=seed, progress=False)
    rows = []
    sb, sa = before.summary.set_index("metric"), after.summary.set_index("metric")
    for metric in BIAS_METRICS:
        b, a = sb.loc[metric], sa.loc[metric]
        rows.append((metric, b.value, b.low, b.high, a.value, a.low, a.high))
    rows.append(("perplexity", *ppl_before, *ppl_after))
    rows.append(("next_token_kl", 0.0, 0.0, 0.0, kl.mean, *kl.interval))
    table = pd.DataFrame(rows, columns=["metric", "before", "before_low", "before_high", "after", "after_low", "after_high"])
    table["change"] = table.after - table.before
    return BiasExperiment(table, before, after, interventions)
