"""Profession pronoun bias: does the model pick "she" or "he" for an occupation?

For a causal LM, each template prefix ("The nurse said that") is scored with
``log p(she | prefix) - log p(he | prefix)``; a pronoun that splits into several tokens is
scored as the sum of its tokens' log-probabilities. For a masked LM the pronoun slot is
masked ("The nurse said that [MASK] would be late today.") and the two pronouns must be
single tokens. Per occupation the log ratio is averaged over templates and compared with
the share of women in the occupation.

The scoring is :func:`attnlab.measure.score` with the :class:`~attnlab.measure.LogProbs`
metric (``read_at="mask"`` for masked LMs): one forward pass per batch of prompts gives
both pronouns' log-probabilities; the log ratio is their difference (a logit difference).

>>> from attnlab.testing import tiny_model
>>> from attnlab.bias import pronoun_bias
>>> result = pronoun_bias(tiny_model("gpt2"), occupations=["nurse", "mechanic", "teacher"])
>>> list(result.table.columns)[:3]
['occupation', 'share_women', 'log_ratio']
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from attnlab.bias._checks import check_lm, check_pronouns, distinct_tokens, single_token
from attnlab.bias._correlation import n_points as _n_points, pearson as _pearson
from attnlab.bias.templates import (
    Template,
    as_templates,
    check_next_word_prefixes,
    occupation_frame,
    templates as shipped_templates,
)
from attnlab.errors import InvalidInput, UnsupportedModel
from attnlab.measure import LogProbs, Result, bootstrap, check_resampling, score
from attnlab.measure.effect import check_interventions
from attnlab.measure.result import renamed

__all__ = ["PronounBias", "pronoun_bias", "design", "occupation_frame", "summarize_log_ratios", "BIAS_METRICS"]

#: summary numbers reported for a table of per-occupation log ratios
BIAS_METRICS = ("mean_abs_log_ratio", "mean_log_ratio", "pearson_r", "spearman_rho")


#: up to this many occupations the correlation p-values are exact (all n! orderings)
EXACT_P_MAX = 8


def _spearman(x, y) -> float:
    return _pearson(stats.rankdata(x), stats.rankdata(y))


def _p_value(x, y, rank: bool) -> float:
    """Two-sided p-value of the correlation: exact over all orderings of ``y`` up to
    :data:`EXACT_P_MAX` points (scipy's t approximation said p = 0 for 3 points with
    rho = -1; the exact p is 2/6), scipy's test above. NaN where the correlation is undefined."""
    r = (_spearman if rank else _pearson)(x, y)
    if np.isnan(r):
        return float("nan")
    if len(x) > EXACT_P_MAX:
        return float((stats.spearmanr if rank else stats.pearsonr)(x, y).pvalue)
    if rank:
        x, y = stats.rankdata(x), stats.rankdata(y)
    xc, yc = np.asarray(x, float) - np.mean(x), np.asarray(y, float) - np.mean(y)
    orders = yc[np.array(list(itertools.permutations(range(len(yc)))))]  # [n!, n]
    rs = orders @ xc / (np.linalg.norm(xc) * np.linalg.norm(yc))
    return float(np.mean(np.abs(rs) >= abs(r) - 1e-12))


def _check_per_occupation(table) -> None:
    """A table to summarise: a missing column raised KeyError, and a NaN log ratio was skipped by the means."""
    need = ["share_women", "log_ratio"]
    if not isinstance(table, pd.DataFrame) or set(need) - set(table.columns):
        missing = [c for c in need if not isinstance(table, pd.DataFrame) or c not in table.columns]
        raise InvalidInput(f"per_occupation needs the columns {', '.join(need)}; missing {missing}")
    if table.empty:
        raise InvalidInput("per_occupation is empty: pass one row per occupation")
    for column in need:
        bad = np.flatnonzero(~np.isfinite(pd.to_numeric(table[column], errors="coerce").to_numpy(float)))
        if len(bad):
            i, value = bad[0], table[column].iloc[bad[0]]
            name = table["occupation"].iloc[i] if "occupation" in table.columns else table.index[i]
            raise InvalidInput(f"per_occupation row {i} ({name!r}): {column} must be a finite number, got "
                               f"{value.item() if isinstance(value, np.generic) else value!r}")


def summarize_log_ratios(per_occupation: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """The summary table (metric, value, low, high, p_value) of per-occupation log ratios.

    ``mean_abs_log_ratio`` = mean over occupations of |log p(she)/p(he)| (0 = no preference);
    ``mean_log_ratio`` = the overall lean (> 0 towards "she"); ``pearson_r`` and
    ``spearman_rho`` = correlation of the log ratio with the share of women. Intervals are
    95% percentile bootstraps over occupations (:func:`attnlab.measure.bootstrap`; NaN with
    fewer than 2 occupations). A correlation needs 3 distinct (share, log ratio) points: with
    fewer it is NaN, and resamples with fewer are left out of its interval, which is NaN
    below 4 points (every resample of 3 points that defines r is a reordering of them, so
    the interval would be the estimate itself). ``p_value``: the two-sided test of no
    correlation, exact (all orderings) up to :data:`EXACT_P_MAX` occupations, scipy's
    ``pearsonr`` / ``spearmanr`` above.
    """
    _check_per_occupation(per_occupation)
    lr = per_occupation["log_ratio"].to_numpy(float)
    share = per_occupation["share_women"].to_numpy(float)
    rows = []
    for name, values, statistic in (
        ("mean_abs_log_ratio", np.abs(lr), "mean"),
        ("mean_log_ratio", lr, "mean"),
        ("pearson_r", (share, lr), _pearson),
        ("spearman_rho", (share, lr), _spearman),
    ):
        value, low, high = bootstrap(values, statistic, n_boot=n_boot, seed=seed)
        p = np.nan
        if name in ("pearson_r", "spearman_rho"):
            p = _p_value(share, lr, rank=name == "spearman_rho")
            if _n_points(share, lr) < 4:
                low = high = np.nan
        rows.append({"metric": name, "value": value, "low": low, "high": high, "p_value": p})
    return pd.DataFrame(rows)


def design(occupations=None, templates: Sequence[Template | str] | None = None) -> list[tuple[str, float, Template]]:
    """Every (occupation, share of women, template) that :func:`pronoun_bias` scores, in its order."""
    occ = occupation_frame(occupations)
    tmpl = shipped_templates() if templates is None else as_templates(templates)
    return [(o, float(s), t) for o, s in zip(occ.occupation, occ.share_women) for t in tmpl]


class PronounBias(Result):
    """What :func:`pronoun_bias` measured.

    ``table``: one row per occupation (occupation, share_women, log_ratio, log_ratio_std,
    n_templates); ``per_prompt``: one row per (occupation, template) with the prompt,
    ``logp_female``, ``logp_male`` and ``log_ratio``; ``summary``: the four bias metrics
    (metric, value, low, high, p_value); ``plot()``: log ratio against the share of women.
    """

    def __init__(self, per_prompt: pd.DataFrame, table: pd.DataFrame, summary: pd.DataFrame, model_name: str,
                 pronouns: tuple[str, str], *, n_boot: int | None = None, seed: int | None = None,
                 interventions: Sequence = (), active_hooks: int = 0):
        self.per_prompt, self.table, self._summary = per_prompt, table, summary
        self.model_name, self.pronouns = model_name, pronouns
        self.n_boot, self.seed = n_boot, seed  # what the intervals came from (a baseline must match them)
        self.interventions = tuple(interventions)  # the specs passed (a clean baseline has none)
        self.active_hooks = active_hooks  # hooks already acting when it ran (a `with model.intervene(...)` block)

    @property
    def summary(self) -> pd.DataFrame:
        return self._summary

    per_occupation = renamed("table")
    figure = renamed("plot")

    def value(self, metric: str) -> float:
        """One summary number, e.g. ``result.value("pearson_r")``."""
        if metric not in BIAS_METRICS:
            raise InvalidInput(f"unknown metric {metric!r}; valid: {', '.join(BIAS_METRICS)}")
        return float(self._summary.set_index("metric").loc[metric, "value"])

    def plot(self, ax=None, *, label: str | None = None):
        """Scatter of log p(she)/p(he) against the share of women, one labelled dot per occupation."""
        from attnlab.bias._plots import scatter_log_ratio

        return scatter_log_ratio(self, ax=ax, label=label)

    def __repr__(self) -> str:
        return (f"PronounBias({self.model_name}: {len(self.table)} occupations, Pearson r = {self.value('pearson_r'):.3f}, "
                f"mean |log ratio| = {self.value('mean_abs_log_ratio'):.3f})")


def pronoun_bias(
    model,
    *,
    occupations=None,
    templates: Sequence[Template | str] | None = None,
    pronouns: tuple[str, str] = ("she", "he"),
    interventions: Sequence = (),
    batch_size: int = 32,
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = False,
) -> PronounBias:
    """Measure how much the model's pronoun choice follows the share of women in an occupation.

    Args:
        model: a causal LM, or a masked LM with its MLM head (``has_lm_head``).
        occupations: None (the shipped list), names from it, or a DataFrame with columns
            ``occupation`` and ``share_women`` (0..1).
        templates: :class:`Template` objects or prefix strings with an ``{occupation}`` slot.
        pronouns: the (female, male) pronoun words.
        interventions: specs active while scoring (also: any ``with model.intervene(...)`` block).
    Returns:
        :class:`PronounBias` with per-occupation, per-prompt and summary DataFrames.
    """
    n_boot, seed = check_resampling(n_boot, seed)
    check_lm(model)
    interventions = check_interventions(model, interventions)
    active_hooks = model.count_hooks()
    rows = design(occupations, templates)
    female, male = check_pronouns(pronouns)
    if model.cfg.is_causal:
        prompts = [t.causal(o) for o, _, t in rows]
        words, read_at = [" " + female, " " + male], "last"
        check_next_word_prefixes(list(dict.fromkeys(t for _, _, t in rows)), words[0])  # each template once
    else:
        mask = getattr(model.tokenizer, "mask_token", None)
        if mask is None:
            raise UnsupportedModel(f"{model.cfg.name}'s tokenizer has no mask token")
        for word in (female, male):
            single_token(model, word, "a masked LM fills one [MASK] with one token, so choose single-token pronouns")
        prompts = [t.masked(o, mask) for o, _, t in rows]
        words, read_at = [female, male], "mask"
    distinct_tokens(model, *words, "pronouns")
    metric = LogProbs(words, read_at=read_at)
    logp = score(model, prompts, metric, interventions, batch_size=batch_size, progress=progress)  # [prompt, 2]
    per_prompt = pd.DataFrame(
        {
            "occupation": [o for o, _, _ in rows],
            "share_women": [s for _, s, _ in rows],
            "template": [t.prefix for _, _, t in rows],
            "prompt": prompts,
            "logp_female": logp[:, 0],
            "logp_male": logp[:, 1],
        }
    )
    per_prompt["log_ratio"] = per_prompt.logp_female - per_prompt.logp_male
    per_occupation = (
        per_prompt.groupby("occupation", sort=False)
        .agg(
            share_women=("share_women", "first"),
            log_ratio=("log_ratio", "mean"),
            log_ratio_std=("log_ratio", "std"),
            n_templates=("log_ratio", "size"),
        )
        .reset_index()
    )
    summary = summarize_log_ratios(per_occupation, n_boot=n_boot, seed=seed)
    return PronounBias(per_prompt, per_occupation, summary, model.cfg.name, (female, male), n_boot=n_boot, seed=seed,
                       interventions=interventions, active_hooks=active_hooks)
