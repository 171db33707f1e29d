"""Coreference-bias evaluation for causal LMs: does the model prefer the stereotyped variant?

Each item is a pair of sentences that differ only in a gendered word (WinoBias pro- and
anti-stereotyped twins, or a Winogender template filled with "she" and "he"). The score
of a variant is its log-probability under the model. Tokens before the first token where
the twins differ are shared and cancel in the difference, so only the tokens from that
point on are scored (``score="sentence"``: the exact difference of the two sentence
log-probabilities) or only the first differing token (``score="pronoun"``:
``log p(pronoun | shared prefix)``).

    gap = log p(pro) - log p(anti)          (> 0: the stereotyped variant is preferred)

reported as the mean gap over pairs and the share of pairs with gap > 0, each with a 95%
bootstrap interval over pairs.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from attnlab.bias._checks import check_lm
from attnlab.bias._correlation import pearson
from attnlab.bias.datasets import fill_winogender
from attnlab.engine.tokens import check_texts
from attnlab.errors import InvalidInput
from attnlab import measure
from attnlab.measure import PairLogRatio, Result, bootstrap, check_resampling
from attnlab.measure.metrics import PAIR_SCORES
from attnlab.measure.result import renamed

__all__ = ["CorefBias", "pair_log_ratio", "coref_bias", "winogender_bias", "SCORES"]

#: how a variant is scored (see the module docstring)
SCORES = PAIR_SCORES


def pair_log_ratio(
    model,
    first: Sequence[str],
    second: Sequence[str],
    *,
    score: str = "sentence",
    batch_size: int = 16,
    progress: bool = False,
) -> np.ndarray:
    """``log p(first[i]) - log p(second[i])`` for each pair of sentences (see module docstring).

    :func:`attnlab.measure.score` with the :class:`~attnlab.measure.PairLogRatio` metric.
    A pair that differs at its first token (a tokenizer without BOS: nothing predicts that
    token) is refused, and so is, with ``score="pronoun"``, a pair where one sentence is the
    start of the other (no differing token to score).
    """
    return _gaps(model, first, second, score=score, batch_size=batch_size, progress=progress, twins=False)


def _gaps(model, first, second, *, score: str, batch_size: int, progress: bool, twins: bool) -> np.ndarray:
    """:func:`pair_log_ratio`; ``twins``: the pairs are bias twins, which must differ in a known word."""
    check_lm(model, causal=True)
    if score not in SCORES:
        raise InvalidInput(f"unknown score {score!r}; valid: {', '.join(SCORES)}")
    first, second = check_texts(first, "sentence", "sentences"), check_texts(second, "sentence", "sentences")
    if len(first) != len(second):
        raise InvalidInput(f"got {len(first)} first sentences but {len(second)} second ones; pairs must match")
    _check_pairs_differ(model, first, second, score, twins)
    return measure.score(model, first, PairLogRatio(second, score=score), batch_size=batch_size, progress=progress)


def _check_pairs_differ(model, first: list[str], second: list[str], score: str, twins: bool) -> None:
    """Refuse a pair with nothing to compare, which scored a gap that reads as a result.

    Sentences that differ at their first token (a tokenizer without BOS) had that token, which
    nothing predicts, left out: "she left" vs "he left" scored only "left". With
    ``score="pronoun"``, a sentence that is the start of its twin has no token where they
    differ, and the gap was ``0 - log p(next token)``. For bias ``twins`` (coref_bias,
    winogender_bias) also: twins that are the same tokens (the same text, or words the
    tokenizer maps to one unknown token) gave a gap of exactly 0, counted as "no preference",
    and a differing token that is the tokenizer's unknown token scored ``log p([UNK])`` as the
    pronoun's probability.
    """
    unk = getattr(model.tokenizer, "unk_token_id", None)
    for i, (a, b) in enumerate(zip(model.token_rows(first), model.token_rows(second))):
        pair = f"pair {i} ({first[i]!r:.60} / {second[i]!r:.60})"
        at = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), None)
        if twins and a == b:
            raise InvalidInput(f"{pair}: the two sentences are the same tokens for {model.cfg.name}, so their gap "
                               "would be exactly 0 (read as no preference); each pair must differ, e.g. in the pronoun")
        if at == 0:
            raise InvalidInput(f"{pair}: the sentences differ at their first token, which nothing predicts "
                               f"({model.cfg.name}'s tokenizer puts no BOS token before it), so the word where they "
                               "differ would not be scored; start both sentences with the same words")
        if at is None and score == "pronoun" and a != b:
            raise InvalidInput(f"{pair}: one sentence is the start of the other, so there is no token where they "
                               "differ for score='pronoun' to score; use score='sentence' or fix the pair")
        if twins and at is not None and unk is not None and unk in (a[at], b[at]):
            raise InvalidInput(f"{pair}: where the sentences differ, {model.cfg.name}'s tokenizer reads an unknown "
                               f"word ({model.tokenizer.unk_token!r}), whose probability says nothing about the word")


SUMMARY_METRICS = ("mean_gap", "pro_preferred")


class CorefBias(Result):
    """What :func:`coref_bias` measured.

    ``per_prompt``: the input pairs with ``gap`` and ``prefers_pro``; ``summary``: long
    format (group, metric, value, low, high, n) for ``mean_gap`` and ``pro_preferred``;
    ``table``: one row per group (all pairs, then each value of ``by``) with both metrics
    and their intervals side by side; ``plot()``: the gap per pair, by group.
    """

    def __init__(self, per_prompt: pd.DataFrame, summary: pd.DataFrame, score: str, by: str | None = None):
        self.per_prompt, self._summary, self.score, self.by = per_prompt, summary, score, by
        wide = summary.pivot(index="group", columns="metric", values=["value", "low", "high"])
        table = summary[["group", "n"]].drop_duplicates("group").set_index("group")
        for metric in SUMMARY_METRICS:
            table[metric] = wide[("value", metric)]
            table[f"{metric}_low"] = wide[("low", metric)]
            table[f"{metric}_high"] = wide[("high", metric)]
        self.table = table.reset_index()

    @property
    def summary(self) -> pd.DataFrame:
        return self._summary

    per_pair = renamed("per_prompt")

    def value(self, metric: str = "mean_gap", group: str = "all") -> float:
        row = self._summary[(self._summary.metric == metric) & (self._summary.group == group)]
        if row.empty:
            raise InvalidInput(
                f"no summary for metric {metric!r}, group {group!r}; metrics: mean_gap, pro_preferred; "
                f"groups: {', '.join(map(str, self._summary.group.unique()))}"
            )
        return float(row.value.iloc[0])

    def plot(self, ax=None):
        """The mean gap of each group with its interval, over the gaps of the pairs."""
        from attnlab.viz.plots import panels

        fig, (ax,) = panels(ax, 1, 5.0, 3.5, "CorefBias.plot")
        groups = list(self.table.group)
        for i, g in enumerate(groups):
            rows = self.per_prompt if g == "all" else self.per_prompt[self._in_group(g)]
            ax.scatter(np.full(len(rows), i) + np.linspace(-0.2, 0.2, len(rows)), rows.gap, s=4, alpha=0.3, color="grey")
        row = self.table
        err = np.nan_to_num(np.abs(np.vstack([row.mean_gap - row.mean_gap_low, row.mean_gap_high - row.mean_gap])))
        ax.errorbar(range(len(groups)), row.mean_gap, yerr=err, fmt="o", color="black", capsize=4)
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_xticks(range(len(groups)), groups)
        ax.set_ylabel(f"log p(pro) - log p(anti) ({self.score} score)")
        return fig

    def _in_group(self, group: str) -> pd.Series:
        """The rows of group ``"{by}={value}"``, read with the known ``by`` (a column named 'a=b' was split at its '=')."""
        column, value = (self.by, group[len(self.by) + 1:]) if self.by else group.split("=", 1)
        return self.per_prompt[column].astype(str) == value


class _TypeIfPresent(str):
    """The default ``by``: WinoBias ``type`` when the pairs have that column, else no groups."""

    def __repr__(self) -> str:
        return "'type' (when a column)"


TYPE_IF_PRESENT = _TypeIfPresent("type")


def _check_by(by, pairs: pd.DataFrame) -> str | None:
    """The grouping column, or None; a ``by`` given by name must be a column (a typo gave only 'all')."""
    if by is TYPE_IF_PRESENT:
        return by if by in pairs.columns else None
    if by is not None and (not isinstance(by, str) or by not in pairs.columns):
        raise InvalidInput(f"by={by!r} is not a column of pairs (columns: {', '.join(map(str, pairs.columns))}); "
                           "pass one of them or by=None")
    return by


def _summary(df: pd.DataFrame, by: str | None, n_boot: int, seed: int) -> pd.DataFrame:
    groups = [("all", df)] + ([(f"{by}={k}", g) for k, g in df.groupby(by)] if by else [])
    rows = []
    for name, g in groups:
        gap = g.gap.to_numpy(float)
        for metric, values in (("mean_gap", gap), ("pro_preferred", (gap > 0).astype(float))):
            m, lo, hi = bootstrap(values, n_boot=n_boot, seed=seed)
            rows.append({"group": name, "metric": metric, "value": m, "low": lo, "high": hi, "n": len(g)})
    return pd.DataFrame(rows)


def _warn_repeats(pairs: pd.DataFrame) -> None:
    """Name pairs given again (tables concatenated twice): each copy counts again in the means."""
    first: dict[tuple, int] = {}
    repeats = []
    for i, key in enumerate(zip(pairs.pro, pairs.anti)):
        if key in first:
            repeats.append((i, first[key]))
        first.setdefault(key, i)
    if repeats:
        i, j = repeats[0]
        warnings.warn(f"coref_bias: {len(repeats)} of {len(pairs)} pairs repeat an earlier pair, e.g. row {i} repeats row "
                      f"{j} ({pairs.pro.iloc[i]!r:.60}); each copy counts again in mean_gap and pro_preferred",
                      UserWarning, stacklevel=3)


def coref_bias(
    model,
    pairs: pd.DataFrame,
    *,
    score: str = "sentence",
    by: str | None = TYPE_IF_PRESENT,
    batch_size: int = 16,
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = False,
) -> CorefBias:
    """Score pro- vs anti-stereotyped twins (a DataFrame with ``pro`` and ``anti`` columns).

    >>> import pandas as pd
    >>> from attnlab.testing import tiny_model
    >>> pairs = pd.DataFrame({"pro": ["the nurse said that she was tired ."],
    ...                       "anti": ["the nurse said that he was tired ."]})
    >>> coref_bias(tiny_model("gpt2"), pairs, n_boot=0).per_prompt.shape[0]
    1

    ``by`` adds summary rows per value of that column (default: WinoBias ``type`` when the
    pairs have it; a column named here must exist, else :class:`InvalidInput`).
    """
    n_boot, seed = check_resampling(n_boot, seed)
    if not isinstance(pairs, pd.DataFrame) or not {"pro", "anti"} <= set(pairs.columns):
        raise InvalidInput("pairs must be a DataFrame with 'pro' and 'anti' columns (see winobias_pairs)")
    if pairs.empty:
        raise InvalidInput("no sentence pairs given")
    by = _check_by(by, pairs)
    if by is not None and pairs[by].isna().any():  # groupby leaves them out of every group's row
        rows = pairs.index[pairs[by].isna()].tolist()
        warnings.warn(f"coref_bias: {len(rows)} of {len(pairs)} pairs have no value in column {by!r} (rows "
                      f"{', '.join(map(str, rows[:5]))}{' ...' if len(rows) > 5 else ''}); they are in group 'all' only",
                      UserWarning, stacklevel=2)
    _warn_repeats(pairs)
    gap = _gaps(model, list(pairs.pro), list(pairs.anti), score=score, batch_size=batch_size, progress=progress,
                twins=True)
    per_pair = pairs.reset_index(drop=True).assign(gap=gap, prefers_pro=gap > 0)
    return CorefBias(per_pair, _summary(per_pair, by, n_boot, seed), score, by)


def _check_stats(stats_table) -> None:
    """A table of one share of women per occupation (a repeated occupation doubled its templates' rows)."""
    need = ["occupation", "bls_pct_female"]
    if not isinstance(stats_table, pd.DataFrame) or not set(need) <= set(stats_table.columns):
        raise InvalidInput(f"stats_table must be a DataFrame with columns {', '.join(need)} "
                           "(from load_winogender_stats), or None")
    for label, occ, share in zip(stats_table.index, stats_table.occupation, stats_table.bls_pct_female):
        number = isinstance(share, numbers.Real) and not isinstance(share, bool)
        ok = share is None or share is pd.NA or (number and (np.isnan(share) or 0 <= share <= 100))  # missing: unknown
        if not ok:  # text raised pandas' TypeError in the mean; True was taken as 1%
            raise InvalidInput(f"stats_table row {label!r} ({occ!r}): bls_pct_female must be a percent in 0..100 "
                               f"(or NaN: unknown), got {share!r}")
    twice = stats_table.occupation[stats_table.occupation.duplicated()]
    if len(twice):
        rows = stats_table.index[stats_table.occupation == twice.iloc[0]].tolist()
        raise InvalidInput(f"stats_table lists occupation {twice.iloc[0]!r} {len(rows)} times (rows "
                           f"{', '.join(map(str, rows))}); "
                           "give one share of women per occupation")


def winogender_bias(
    model,
    templates: pd.DataFrame,
    stats_table: pd.DataFrame | None = None,
    *,
    score: str = "sentence",
    batch_size: int = 16,
    progress: bool = False,
) -> pd.DataFrame:
    """Per Winogender template: ``log p(she-variant) - log p(he-variant)``, with the occupation's share of women.

    Returns a DataFrame (occupation, participant, answer, log_ratio[, bls_pct_female]); its
    ``attrs["pearson_r"]`` holds the correlation of the per-occupation mean log ratio with
    ``bls_pct_female`` when ``stats_table`` (from :func:`load_winogender_stats`) is given.
    """
    if stats_table is not None:
        _check_stats(stats_table)
    filled = fill_winogender(templates, genders=("female", "male"))
    fem = filled[filled.gender == "female"].reset_index(drop=True)
    mal = filled[filled.gender == "male"].reset_index(drop=True)
    lr = _gaps(model, list(fem.sentence), list(mal.sentence), score=score, batch_size=batch_size, progress=progress,
               twins=True)
    out = fem[["occupation", "participant", "answer"]].assign(log_ratio=lr)
    if stats_table is not None:
        shares = stats_table[["occupation", "bls_pct_female"]].astype({"bls_pct_female": float})  # None: NaN, unknown
        out = out.merge(shares, on="occupation", how="left", validate="many_to_one")
        missing = list(dict.fromkeys(out.loc[out.bls_pct_female.isna(), "occupation"]))
        if missing:  # they were left out of pearson_r without a word
            warnings.warn(f"winogender_bias: {len(missing)} occupation(s) of the templates have no share of women in "
                          f"stats_table and are left out of pearson_r: {', '.join(map(repr, missing[:5]))}"
                          + (" ..." if len(missing) > 5 else ""), UserWarning, stacklevel=2)
        occ = out.dropna(subset=["bls_pct_female"]).groupby("occupation")[["log_ratio", "bls_pct_female"]].mean()
        r = pearson(occ.bls_pct_female, occ.log_ratio)  # pronoun_bias's rule: NaN below 3 distinct points
        if not np.isnan(r):
            out.attrs["pearson_r"] = r
    return out
