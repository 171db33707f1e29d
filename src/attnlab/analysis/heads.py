"""Surface statistics of every head (Clark et al. 2019, section 3) and word-level attention maps.

``head_stats`` runs a corpus through the model once and averages, per layer x head and
over every query token of every sentence: the attention to special tokens ([CLS], [SEP],
BOS / the first token), to punctuation, to the same / previous / next token, and the
entropy of the attention distribution. ``word_attention`` turns a token-level map into a
word-level one: attention *to* a word is the sum over its pieces, attention *from* a word
is the mean over its pieces, so every row still sums to 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float

from attnlab.analysis._corpus import Sentence, attention_batches, is_punctuation, prepare
from attnlab.errors import InvalidInput

__all__ = ["word_attention", "head_stats", "HeadStats", "STAT_COLUMNS", "entropy"]

#: Columns of ``HeadStats.df`` after ``layer`` and ``head`` (all means over query tokens).
STAT_COLUMNS = (
    "special", "cls", "sep", "first", "punct", "self", "prev", "next",
    "entropy", "entropy_first", "entropy_last", "uniform_entropy",
)


def entropy(pattern: Float[torch.Tensor, "... key"]) -> Float[torch.Tensor, "..."]:
    """Entropy in nats of each attention row (``0 log 0 = 0``); a uniform row over n keys gives log n."""
    p = pattern.clamp_min(0)
    return -torch.special.xlogy(p, p).sum(-1)


def word_attention(
    pattern: Float[torch.Tensor, "... query key"],
    sentence: Sentence,
    *,
    drop_special: bool = False,
) -> Float[torch.Tensor, "... query_word key_word"]:
    """Token attention -> word attention: sum over the pieces a word is attended *as*, mean over the pieces it attends *from*.

    Units are ordered as ``sentence.word_index`` (words plus special tokens in token
    order). With ``drop_special=True`` special-token rows and columns are removed and the
    result is indexed by word (rows then sum to 1 minus the mass on special tokens).
    """
    n = sentence.n_tokens
    if pattern.shape[-1] != n or pattern.shape[-2] != n:
        raise InvalidInput(f"pattern is {tuple(pattern.shape)} but the sentence has {n} tokens")
    a = sentence.alignment().to(pattern.dtype)  # [token, unit]
    to_words = pattern @ a  # [..., query_token, unit]: summed over the pieces of each key word
    mean_from = a / a.sum(0, keepdim=True)  # [token, unit], columns average a word's pieces
    out = mean_from.transpose(0, 1) @ to_words  # [..., unit, unit]
    if drop_special:
        keep = [u for u, w in enumerate(sentence.word_index) if w is not None]
        order = sorted(keep, key=lambda u: sentence.word_index[u])
        idx = torch.tensor(order)
        out = out.index_select(-2, idx).index_select(-1, idx)
    return out


@dataclass
class HeadStats:
    """Per-head averages over a corpus; ``df`` has one row per (layer, head)."""

    df: pd.DataFrame
    model_name: str
    n_sentences: int
    n_tokens: int

    def matrix(self, column: str) -> np.ndarray:
        """One statistic as a ``[layer, head]`` array."""
        if column not in self.df.columns or column in ("layer", "head"):
            raise InvalidInput(f"unknown statistic {column!r}; valid: {', '.join(STAT_COLUMNS)}")
        return self.df.pivot(index="layer", columns="head", values=column).to_numpy()

    def top(self, column: str, n: int = 5) -> pd.DataFrame:
        """The ``n`` heads with the highest value of ``column``."""
        self.matrix(column)
        return self.df.nlargest(n, column)[["layer", "head", column]].reset_index(drop=True)

    def plot_targets(self, columns: Sequence[str] | None = None):
        """Clark et al. Fig. 2: per layer, each head's mean attention to special tokens / punctuation."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        if columns is None:
            columns = [c for c in ("cls", "sep", "first", "punct") if self.df[c].notna().any()]
        fig, axes = plt.subplots(1, len(columns), figsize=(3.2 * len(columns), 3), sharey=True, squeeze=False)
        for ax, col in zip(axes[0], columns):
            ax.scatter(self.df["layer"], self.df[col], s=14, alpha=0.7)
            means = self.df.groupby("layer")[col].mean()
            ax.plot(means.index, means.values, color="black", lw=1)
            ax.set_title(f"attention to {col}")
            ax.set_xlabel("layer")
        axes[0][0].set_ylabel("mean attention")
        fig.suptitle(self.model_name)
        fig.tight_layout()
        return fig

    def plot_entropy(self):
        """Clark et al. Fig. 4: mean attention entropy per head, grouped by layer, with the uniform baseline."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        ent = self.matrix("entropy")
        n_layers, n_heads = ent.shape
        fig, ax = plt.subplots(figsize=(max(4, 0.6 * n_layers + 2), 3))
        width = 0.8 / n_heads
        for h in range(n_heads):
            ax.bar(np.arange(n_layers) + h * width - 0.4, ent[:, h], width=width, color="C0", alpha=0.8)
        ax.axhline(float(self.df["uniform_entropy"].iloc[0]), color="gray", ls="--", label="uniform attention")
        ax.set_xlabel("layer")
        ax.set_ylabel("entropy (nats)")
        ax.set_xticks(range(n_layers))
        ax.legend(frameon=False)
        ax.set_title(f"{self.model_name}: attention entropy per head")
        fig.tight_layout()
        return fig


def _named_token_mask(sentence: Sentence, token: str | None) -> torch.Tensor | None:
    if token is None:
        return None
    return torch.tensor([t == token for t in sentence.tokens], dtype=torch.float32)


@torch.no_grad()
def head_stats(
    model,
    corpus,
    *,
    batch_size: int = 16,
    progress: bool = True,
    interventions: Sequence = (),
) -> HeadStats:
    """Clark et al.'s per-head statistics over ``corpus`` (texts or word lists).

    Every column is a mean over all query tokens of all sentences: ``special``/``cls``/
    ``sep``/``first``/``punct`` = attention mass on those keys; ``self``/``prev``/``next``
    = attention to key i, i-1, i+1 (queries without such a key are skipped); ``entropy`` =
    row entropy in nats; ``entropy_first``/``entropy_last`` = entropy of the first ([CLS]
    or BOS) / last query row (the first row of a decoder is always 0); ``uniform_entropy`` =
    what uniform attention over the visible keys would give. ``cls``/``sep`` are NaN for
    tokenizers without such tokens.

    >>> from attnlab.testing import tiny_model
    >>> stats = head_stats(tiny_model("bert"), ["the nurse said that she left ."], progress=False)
    >>> round(float(stats.df[["special", "punct"]].sum(axis=1).max()), 2) <= 1.0
    True
    """
    sentences = prepare(model, corpus)
    tok = model.tokenizer
    cls_token = getattr(tok, "cls_token", None)
    sep_token = getattr(tok, "sep_token", None)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    names = ["special", "cls", "sep", "first", "punct", "self", "entropy", "uniform_entropy"]
    sums = {k: torch.zeros(L, H, dtype=torch.float64) for k in names + ["prev", "next", "entropy_first", "entropy_last"]}
    n_q = n_prev = 0
    n_sent = 0
    for s in attention_batches(model, sentences, batch_size=batch_size, progress=progress, interventions=interventions):
        p = s.pattern.double()  # [layer, head, query, key]
        n = s.n_tokens
        masks = {
            "special": torch.tensor(s.special, dtype=torch.float64),
            "punct": torch.tensor([is_punctuation(t) and not sp for t, sp in zip(s.tokens, s.special)], dtype=torch.float64),
            "first": torch.nn.functional.one_hot(torch.tensor(0), n).double(),
        }
        for name, tname in (("cls", cls_token), ("sep", sep_token)):
            m = _named_token_mask(s, tname)
            if m is not None:
                masks[name] = m.double()
        for name, m in masks.items():
            sums[name] += (p @ m).sum(-1)
        sums["self"] += torch.diagonal(p, dim1=-2, dim2=-1).sum(-1)
        if n > 1:
            sums["prev"] += torch.diagonal(p, offset=-1, dim1=-2, dim2=-1).sum(-1)
            sums["next"] += torch.diagonal(p, offset=1, dim1=-2, dim2=-1).sum(-1)
        ent = entropy(p)  # [layer, head, query]
        sums["entropy"] += ent.sum(-1)
        visible = (p > 0).sum(-1).clamp_min(1).double()  # keys each query can see
        sums["uniform_entropy"] += visible.log().sum(-1)
        sums["entropy_first"] += ent[..., 0]
        sums["entropy_last"] += ent[..., -1]
        n_q += n
        n_prev += n - 1
        n_sent += 1
    rows = []
    for layer in range(L):
        for head in range(H):
            row = {"layer": layer, "head": head}
            for name in names:
                row[name] = float(sums[name][layer, head] / n_q)
            for name in ("prev", "next"):
                row[name] = float(sums[name][layer, head] / n_prev) if n_prev else float("nan")
            for name in ("entropy_first", "entropy_last"):
                row[name] = float(sums[name][layer, head] / n_sent)
            rows.append(row)
    df = pd.DataFrame(rows)
    if cls_token is None:
        df["cls"] = float("nan")
    if sep_token is None:
        df["sep"] = float("nan")
    df = df[["layer", "head", *STAT_COLUMNS]]
    return HeadStats(df=df, model_name=model.cfg.name, n_sentences=n_sent, n_tokens=n_q)
