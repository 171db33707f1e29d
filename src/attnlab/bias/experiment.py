"""The bias intervention experiment: bias before/after a set of interventions, and what it costs.

``bias_experiment`` measures the profession pronoun bias with and without the
interventions (each with a 95% bootstrap interval over occupations) and two collateral
costs on text with no people in it:

* perplexity on neutral paragraphs: ``exp(mean token negative log-likelihood)``
  (interval: bootstrap over tokens);
* next-token KL on neutral prompts: ``KL(p_clean || p_intervened)`` at the last position,
  averaged over prompts (interval: bootstrap over prompts).

>>> from attnlab.testing import tiny_model
>>> from attnlab.interventions import AblateHead
>>> from attnlab.bias import bias_experiment
>>> exp = bias_experiment(tiny_model("gpt2"), [AblateHead(1, 0)], occupations=["nurse", "mechanic", "teacher"], n_boot=0)
>>> list(exp.table.metric)
['mean_abs_log_ratio', 'mean_log_ratio', 'pearson_r', 'spearman_rho', 'perplexity', 'next_token_kl']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float

from attnlab.bias import _scoring
from attnlab.bias._stats import mean_ci
from attnlab.bias.pronouns import BIAS_METRICS, PronounBias, pronoun_bias
from attnlab.bias.templates import Template, neutral_prompts as shipped_prompts, neutral_text as shipped_text
from attnlab.errors import InvalidInput

__all__ = ["BiasExperiment", "bias_experiment", "perplexity", "next_token_kl"]


def perplexity(model, texts: Sequence[str], *, n_boot: int = 1000, seed: int = 0, batch_size: int = 4) -> tuple[float, float, float]:
    """``exp(mean NLL)`` over all predicted tokens of ``texts``, with a bootstrap interval over tokens."""
    nll = -np.concatenate(_scoring.token_logprobs(model, texts, batch_size=batch_size))
    if len(nll) == 0:
        raise InvalidInput("the neutral text gives no tokens to predict; pass longer text")
    m, lo, hi = mean_ci(nll, n_boot=n_boot, seed=seed)
    return float(np.exp(m)), float(np.exp(lo)), float(np.exp(hi))


def next_token_kl(clean: Float[torch.Tensor, "prompt vocab"], edited: Float[torch.Tensor, "prompt vocab"]) -> np.ndarray:
    """Per prompt ``KL(p_clean || p_edited)`` from two ``[n, vocab]`` log-probability tensors."""
    return (clean.exp() * (clean - edited)).sum(-1).clamp(min=0).numpy()


@dataclass
class BiasExperiment:
    """One table (metric, before, after, change and intervals) plus the two bias measurements."""

    table: pd.DataFrame
    before: PronounBias
    after: PronounBias
    interventions: list

    def value(self, metric: str, when: str = "after") -> float:
        if when not in ("before", "after", "change"):
            raise InvalidInput(f"when must be 'before', 'after' or 'change', got {when!r}")
        rows = self.table.set_index("metric")
        if metric not in rows.index:
            raise InvalidInput(f"unknown metric {metric!r}; valid: {', '.join(rows.index)}")
        return float(rows.loc[metric, when])

    def figure(self):
        """Left: log-ratio vs share of women before and after. Right: bias metrics with intervals."""
        from attnlab.bias._plots import new_axes

        fig, (left, right) = new_axes(figsize=(11.0, 4.5), ncols=2)
        for res, label in ((self.before, "before"), (self.after, "after")):
            d = res.per_occupation
            left.scatter(d.share_women, d.log_ratio, s=16, label=f"{label} (r = {res.value('pearson_r'):.2f})")
        left.axhline(0, color="grey", lw=0.5)
        f, m = self.before.pronouns
        left.set_xlabel("share of women in the occupation")
        left.set_ylabel(f"log p({f}) / p({m})")
        left.legend(fontsize=8)
        left.set_title("pronoun bias before / after the intervention", fontsize=9)
        t = self.table.set_index("metric")
        names = ["mean_abs_log_ratio", "pearson_r"]
        x = np.arange(len(names))
        for k, (when, off) in enumerate((("before", -0.18), ("after", 0.18))):
            vals = t.loc[names, when].to_numpy(float)
            err = np.abs(np.vstack([vals - t.loc[names, f"{when}_low"], t.loc[names, f"{when}_high"] - vals]).astype(float))
            right.bar(x + off, vals, width=0.36, yerr=np.nan_to_num(err), capsize=3, label=when)
        right.set_xticks(x, names)
        ppl_b, ppl_a = t.loc["perplexity", "before"], t.loc["perplexity", "after"]
        kl = t.loc["next_token_kl", "after"]
        right.set_title(f"perplexity {ppl_b:.1f} -> {ppl_a:.1f}, next-token KL {kl:.3f} nats", fontsize=9)
        right.legend(fontsize=8)
        return fig


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
    _scoring.check_lm(model, causal=True)
    interventions = list(interventions)
    if not interventions:
        raise InvalidInput("no interventions given: pass a non-empty list of specs (e.g. [AblateHead(3, 1)])")
    for spec in interventions:  # fail before any forward pass
        if not (hasattr(spec, "validate") and hasattr(spec, "hooks")):
            raise InvalidInput(f"interventions must be intervention specs, got {type(spec).__name__}")
        spec.validate(model.cfg)
    text = shipped_text() if neutral_text is None else _scoring._texts(neutral_text, "neutral_text")
    prompts = shipped_prompts() if neutral_prompts is None else _scoring._texts(neutral_prompts, "neutral_prompts")
    kw = dict(occupations=occupations, templates=templates, pronouns=pronouns, batch_size=batch_size, n_boot=n_boot, seed=seed, progress=progress)
    if baseline is not None and not isinstance(baseline, PronounBias):
        raise InvalidInput(f"baseline must be a PronounBias from pronoun_bias(), got {type(baseline).__name__}")
    before = pronoun_bias(model, **kw) if baseline is None else baseline
    ppl_before = perplexity(model, text, n_boot=n_boot, seed=seed)
    clean = _scoring.next_token_logprobs(model, prompts, batch_size=batch_size)
    with model.intervene(*interventions):
        after = pronoun_bias(model, **kw)
        ppl_after = perplexity(model, text, n_boot=n_boot, seed=seed)
        edited = _scoring.next_token_logprobs(model, prompts, batch_size=batch_size)
    kl = mean_ci(next_token_kl(clean, edited), n_boot=n_boot, seed=seed)
    rows = []
    sb, sa = before.summary.set_index("metric"), after.summary.set_index("metric")
    for metric in BIAS_METRICS:
        b, a = sb.loc[metric], sa.loc[metric]
        rows.append((metric, b.value, b.low, b.high, a.value, a.low, a.high))
    rows.append(("perplexity", *ppl_before, *ppl_after))
    rows.append(("next_token_kl", 0.0, 0.0, 0.0, *kl))
    table = pd.DataFrame(rows, columns=["metric", "before", "before_low", "before_high", "after", "after_low", "after_high"])
    table["change"] = table.after - table.before
    return BiasExperiment(table, before, after, interventions)
