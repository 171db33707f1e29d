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

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy import stats

from attnlab.bias import _scoring
from attnlab.bias._stats import mean_ci
from attnlab.bias.datasets import fill_winogender
from attnlab.errors import InvalidInput

__all__ = ["CorefBias", "pair_log_ratio", "coref_bias", "winogender_bias", "SCORES"]

#: how a variant is scored (see the module docstring)
SCORES = ("sentence", "pronoun")


def _first_diff(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


@torch.no_grad()
def pair_log_ratio(
    model,
    first: Sequence[str],
    second: Sequence[str],
    *,
    score: str = "sentence",
    batch_size: int = 16,
    progress: bool = False,
) -> np.ndarray:
    """``log p(first[i]) - log p(second[i])`` for each pair of sentences (see module docstring)."""
    _scoring.check_lm(model, causal=True)
    if score not in SCORES:
        raise InvalidInput(f"unknown score {score!r}; valid: {', '.join(SCORES)}")
    first, second = _scoring._texts(first, "sentences"), _scoring._texts(second, "sentences")
    if len(first) != len(second):
        raise InvalidInput(f"got {len(first)} first sentences but {len(second)} second ones; pairs must match")
    rows, spans = [], []  # spans: (first scored token, number of scored tokens)
    for a, b in zip(first, second):
        ia, ib = _scoring.token_ids(model, a, special=True), _scoring.token_ids(model, b, special=True)
        for ids in (ia, ib):
            _scoring._check_length(model, len(ids), a)
        c = max(_first_diff(ia, ib), 1)
        for ids in (ia, ib):
            n = 0 if c >= len(ids) else (1 if score == "pronoun" else len(ids) - c)
            rows.append(ids)
            spans.append((c, n))
    logp = np.zeros(len(rows))
    for s in _scoring._batches(len(rows), batch_size, progress, "pair scores"):
        chunk, sp = rows[s : s + batch_size], spans[s : s + batch_size]
        k = max(max(n for _, n in sp), 1)
        enc = _scoring._pad(model, chunk)
        pos = torch.tensor([[c - 1 + min(j, max(n - 1, 0)) for j in range(k)] for c, n in sp])
        lp = _scoring._logits_at(model, enc, pos).log_softmax(-1)
        for r, (c, n) in enumerate(sp):
            if n:
                tgt = enc.ids[r, c : c + n].to(lp.device)
                logp[s + r] = float(lp[r, torch.arange(n), tgt].sum())
    return logp[0::2] - logp[1::2]


@dataclass
class CorefBias:
    """Per-pair gaps and the summary table of a coreference-bias evaluation."""

    per_pair: pd.DataFrame  # the input columns + gap, prefers_pro
    summary: pd.DataFrame  # group, metric, value, low, high, n
    score: str

    def value(self, metric: str = "mean_gap", group: str = "all") -> float:
        row = self.summary[(self.summary.metric == metric) & (self.summary.group == group)]
        if row.empty:
            raise InvalidInput(
                f"no summary for metric {metric!r}, group {group!r}; metrics: mean_gap, pro_preferred; "
                f"groups: {', '.join(map(str, self.summary.group.unique()))}"
            )
        return float(row.value.iloc[0])


def _summary(df: pd.DataFrame, by: str | None, n_boot: int, seed: int) -> pd.DataFrame:
    groups = [("all", df)] + ([(f"{by}={k}", g) for k, g in df.groupby(by)] if by and by in df else [])
    rows = []
    for name, g in groups:
        gap = g.gap.to_numpy(float)
        for metric, values in (("mean_gap", gap), ("pro_preferred", (gap > 0).astype(float))):
            m, lo, hi = mean_ci(values, n_boot=n_boot, seed=seed)
            rows.append({"group": name, "metric": metric, "value": m, "low": lo, "high": hi, "n": len(g)})
    return pd.DataFrame(rows)


def coref_bias(
    model,
    pairs: pd.DataFrame,
    *,
    score: str = "sentence",
    by: str | None = "type",
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
    >>> coref_bias(tiny_model("gpt2"), pairs, n_boot=0).per_pair.shape[0]
    1

    ``by`` adds summary rows per value of that column (WinoBias ``type``).
    """
    if not isinstance(pairs, pd.DataFrame) or not {"pro", "anti"} <= set(pairs.columns):
        raise InvalidInput("pairs must be a DataFrame with 'pro' and 'anti' columns (see winobias_pairs)")
    if pairs.empty:
        raise InvalidInput("no sentence pairs given")
    gap = pair_log_ratio(model, list(pairs.pro), list(pairs.anti), score=score, batch_size=batch_size, progress=progress)
    per_pair = pairs.reset_index(drop=True).assign(gap=gap, prefers_pro=gap > 0)
    return CorefBias(per_pair, _summary(per_pair, by, n_boot, seed), score)


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
    filled = fill_winogender(templates, genders=("female", "male"))
    fem = filled[filled.gender == "female"].reset_index(drop=True)
    mal = filled[filled.gender == "male"].reset_index(drop=True)
    lr = pair_log_ratio(model, list(fem.sentence), list(mal.sentence), score=score, batch_size=batch_size, progress=progress)
    out = fem[["occupation", "participant", "answer"]].assign(log_ratio=lr)
    if stats_table is not None:
        out = out.merge(stats_table[["occupation", "bls_pct_female"]], on="occupation", how="left")
        occ = out.dropna(subset=["bls_pct_female"]).groupby("occupation")[["log_ratio", "bls_pct_female"]].mean()
        if len(occ) > 2 and occ.log_ratio.std() > 0:
            out.attrs["pearson_r"] = float(stats.pearsonr(occ.bls_pct_female, occ.log_ratio).statistic)
    return out
