"""Profession pronoun bias: does the model pick "she" or "he" for an occupation?

For a causal LM, each template prefix ("The nurse said that") is scored with
``log p(she | prefix) - log p(he | prefix)``; a pronoun that splits into several tokens is
scored as the sum of its tokens' log-probabilities. For a masked LM the pronoun slot is
masked ("The nurse said that [MASK] would be late today.") and the two pronouns must be
single tokens. Per occupation the log ratio is averaged over templates and compared with
the share of women in the occupation.

>>> from attnlab.testing import tiny_model
>>> from attnlab.bias import pronoun_bias
>>> result = pronoun_bias(tiny_model("gpt2"), occupations=["nurse", "mechanic", "teacher"])
>>> list(result.per_occupation.columns)[:3]
['occupation', 'share_women', 'log_ratio']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from attnlab.bias import _scoring
from attnlab.bias._stats import bootstrap_ci
from attnlab.bias.templates import Template, _as_templates, occupations as shipped_occupations, templates as shipped_templates
from attnlab.errors import InvalidInput, UnsupportedModel

__all__ = ["PronounBias", "pronoun_bias", "occupation_frame", "summarize_log_ratios", "BIAS_METRICS"]

#: summary numbers reported for a table of per-occupation log ratios
BIAS_METRICS = ("mean_abs_log_ratio", "mean_log_ratio", "pearson_r", "spearman_rho")


def occupation_frame(occupations) -> pd.DataFrame:
    """Normalise the ``occupations`` option: None, names, or a DataFrame (occupation, share_women)."""
    if occupations is None or (isinstance(occupations, Sequence) and not isinstance(occupations, str)):
        return shipped_occupations(occupations)
    if isinstance(occupations, str):
        return shipped_occupations([occupations])
    if isinstance(occupations, pd.DataFrame):
        missing = {"occupation", "share_women"} - set(occupations.columns)
        if missing:
            raise InvalidInput(f"occupations DataFrame needs columns occupation, share_women; missing {sorted(missing)}")
        if occupations.empty:
            raise InvalidInput("occupations DataFrame is empty")
        share = occupations["share_women"].astype(float)
        if ((share < 0) | (share > 1)).any():
            raise InvalidInput("share_women must lie in 0..1 (a fraction, not a percent)")
        return occupations[["occupation", "share_women"]].reset_index(drop=True)
    raise InvalidInput(f"occupations must be None, a list of names or a DataFrame, got {type(occupations).__name__}")


def _check_pronouns(pronouns) -> tuple[str, str]:
    if isinstance(pronouns, str) or len(pronouns) != 2 or not all(isinstance(p, str) and p.strip() for p in pronouns):
        raise InvalidInput(f"pronouns must be a (female, male) pair of words, got {pronouns!r}")
    return pronouns[0].strip(), pronouns[1].strip()


def summarize_log_ratios(per_occupation: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """The summary table (metric, value, low, high, p_value) of per-occupation log ratios.

    ``mean_abs_log_ratio`` = mean over occupations of |log p(she)/p(he)| (0 = no preference);
    ``mean_log_ratio`` = the overall lean (> 0 towards "she"); ``pearson_r`` and
    ``spearman_rho`` = correlation of the log ratio with the share of women. Intervals are
    95% percentile bootstraps over occupations.
    """
    lr = per_occupation["log_ratio"].to_numpy(float)
    share = per_occupation["share_women"].to_numpy(float)
    rows = []
    for name, fn, args in (
        ("mean_abs_log_ratio", lambda x: np.abs(x).mean(), (lr,)),
        ("mean_log_ratio", lambda x: x.mean(), (lr,)),
        ("pearson_r", _pearson, (share, lr)),
        ("spearman_rho", _spearman, (share, lr)),
    ):
        value, low, high = bootstrap_ci(fn, *args, n_boot=n_boot, seed=seed)
        p = np.nan
        if name == "pearson_r" and len(lr) > 2 and np.std(lr) > 0 and np.std(share) > 0:
            p = float(stats.pearsonr(share, lr).pvalue)
        if name == "spearman_rho" and len(lr) > 2 and np.std(lr) > 0 and np.std(share) > 0:
            p = float(stats.spearmanr(share, lr).pvalue)
        rows.append({"metric": name, "value": value, "low": low, "high": high, "p_value": p})
    return pd.DataFrame(rows)


def _pearson(x, y) -> float:
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def _spearman(x, y) -> float:
    return _pearson(stats.rankdata(x), stats.rankdata(y))


@dataclass
class PronounBias:
    """Result of :func:`pronoun_bias`: three tables and a scatter plot."""

    per_prompt: pd.DataFrame  # occupation, share_women, template, prompt, logp_female, logp_male, log_ratio
    per_occupation: pd.DataFrame  # occupation, share_women, log_ratio, log_ratio_std, n_templates
    summary: pd.DataFrame  # metric, value, low, high, p_value
    model_name: str
    pronouns: tuple[str, str]

    def value(self, metric: str) -> float:
        """One summary number, e.g. ``result.value("pearson_r")``."""
        if metric not in BIAS_METRICS:
            raise InvalidInput(f"unknown metric {metric!r}; valid: {', '.join(BIAS_METRICS)}")
        return float(self.summary.set_index("metric").loc[metric, "value"])

    def figure(self, ax=None, *, label: str | None = None):
        """Scatter of log p(she)/p(he) against the share of women, one labelled dot per occupation."""
        from attnlab.bias._plots import scatter_log_ratio

        return scatter_log_ratio(self, ax=ax, label=label)


def pronoun_bias(
    model,
    *,
    occupations=None,
    templates: Sequence[Template | str] | None = None,
    pronouns: tuple[str, str] = ("she", "he"),
    batch_size: int = 32,
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = False,
) -> PronounBias:
    """Measure how much the model's pronoun choice follows the share of women in an occupation.

    Runs under whatever interventions are active (``with model.intervene(...)``).

    Args:
        model: a causal LM, or a masked LM with its MLM head (``has_lm_head``).
        occupations: None (the shipped list), names from it, or a DataFrame with columns
            ``occupation`` and ``share_women`` (0..1).
        templates: :class:`Template` objects or prefix strings with an ``{occupation}`` slot.
        pronouns: the (female, male) pronoun words.
    Returns:
        :class:`PronounBias` with per-prompt, per-occupation and summary DataFrames.
    """
    _scoring.check_lm(model)
    occ = occupation_frame(occupations)
    tmpl = shipped_templates() if templates is None else _as_templates(templates)
    female, male = _check_pronouns(pronouns)
    rows = [(o, s, t) for o, s in zip(occ.occupation, occ.share_women) for t in tmpl]
    if model.cfg.is_causal:
        prompts = [t.causal(o) for o, _, t in rows]
        scores = _scoring.continuation_logprobs(
            model, prompts, [" " + female, " " + male], batch_size=batch_size, progress=progress
        )
    else:
        mask = getattr(model.tokenizer, "mask_token", None)
        if mask is None:
            raise UnsupportedModel(f"{model.cfg.name}'s tokenizer has no mask token")
        targets = []
        for word in (female, male):
            ids = _scoring.token_ids(model, word, special=False)
            if len(ids) != 1:
                raise InvalidInput(
                    f"pronoun {word!r} is {len(ids)} tokens for {model.cfg.name}; a masked LM fills one "
                    "[MASK] with one token, so choose single-token pronouns"
                )
            targets.append(ids[0])
        prompts = [t.masked(o, mask) for o, _, t in rows]
        scores = _scoring.masked_scores(model, prompts, targets, batch_size=batch_size, progress=progress)
    per_prompt = pd.DataFrame(
        {
            "occupation": [o for o, _, _ in rows],
            "share_women": [float(s) for _, s, _ in rows],
            "template": [t.prefix for _, _, t in rows],
            "prompt": prompts,
            "logp_female": scores[:, 0],
            "logp_male": scores[:, 1],
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
    return PronounBias(per_prompt, per_occupation, summary, model.cfg.name, (female, male))
