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

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float

from attnlab.analysis._corpus import Sentence, attention_batches, is_punctuation, prepare
from attnlab.analysis._result import Renamed, deprecated, empty_frame
from attnlab.errors import InvalidInput, check_flag, check_positive_int
from attnlab.measure.result import Result

__all__ = ["word_attention", "head_stats", "HeadStats", "STAT_COLUMNS", "entropy"]

#: Columns of ``HeadStats.table`` after ``layer`` and ``head`` (all means over query tokens).
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
    order). A token that serves k words (``."`` for ``.`` and ``"``) is a piece of each:
    the attention to it is split evenly, 1/k to each, so rows still sum to 1, and those
    words attend from it alike. With ``drop_special=True`` special-token rows and columns are removed and the
    result is indexed by word (rows then sum to 1 minus the mass on special tokens).
    """
    # a list failed on .shape, an integer tensor in the matmul, and drop_special="no" (truthy) dropped them
    if not (isinstance(pattern, torch.Tensor) and pattern.is_floating_point()):
        got = pattern.dtype if isinstance(pattern, torch.Tensor) else type(pattern).__name__
        raise InvalidInput(f"pattern must be a float tensor [..., query, key], got {got}")
    check_flag(drop_special, "drop_special")
    if not isinstance(sentence, Sentence):
        raise InvalidInput(f"sentence must be a Sentence from prepare(model, corpus), got {type(sentence).__name__}")
    n = sentence.n_tokens
    if pattern.shape[-1] != n or pattern.shape[-2] != n:
        raise InvalidInput(f"pattern is {tuple(pattern.shape)} but the sentence has {n} tokens")
    a = sentence.alignment().to(pattern.dtype)  # [token, unit], a shared token split evenly
    to_words = pattern @ a  # [..., query_token, unit]: summed over the pieces of each key word
    pieces = (a > 0).to(pattern.dtype)  # [token, unit]: 1 where the token is a piece of the unit
    mean_from = pieces / pieces.sum(0, keepdim=True)  # [token, unit], columns average a word's pieces
    out = mean_from.transpose(0, 1) @ to_words  # [..., unit, unit]
    if drop_special:
        keep = [u for u, w in enumerate(sentence.word_index) if w is not None]
        order = sorted(keep, key=lambda u: sentence.word_index[u])
        idx = torch.tensor(order)
        out = out.index_select(-2, idx).index_select(-1, idx)
    return out


class HeadStats(Result):
    """Per-head averages over a corpus.

    ``table``: one row per head (``layer, head`` and :data:`STAT_COLUMNS`);
    ``per_prompt``: the same statistics per sentence and head (``sentence, layer, head,
    n_tokens, ...``): weighted by ``n_tokens`` (``n_tokens - 1`` for ``prev``/``next``;
    equal weights for ``entropy_first``/``entropy_last``) they average to ``table``;
    ``summary``: per statistic, its mean over heads and the head where it is largest.
    """

    def __init__(self, table: pd.DataFrame, model_name: str, n_sentences: int, n_tokens: int,
                 per_prompt: pd.DataFrame | None = None):
        self.table = table
        self.model_name = model_name
        self.n_sentences = n_sentences
        self.n_tokens = n_tokens
        self.per_prompt = per_prompt if per_prompt is not None else empty_frame(["sentence", "layer", "head", "n_tokens"])

    def __repr__(self) -> str:
        return f"HeadStats({self.model_name}: {len(self.table)} heads, {self.n_sentences} sentences, {self.n_tokens} tokens)"

    df = Renamed("table")

    @property
    def summary(self) -> pd.DataFrame:
        rows = []
        for column in STAT_COLUMNS:
            values = self.table[column]
            if values.notna().any():
                best = self.table.loc[values.idxmax()]
                rows.append({"statistic": column, "mean": float(values.mean()), "max": float(values.max()),
                             "layer": int(best["layer"]), "head": int(best["head"])})
        return pd.DataFrame(rows, columns=["statistic", "mean", "max", "layer", "head"])

    def matrix(self, column: str) -> np.ndarray:
        """One statistic as a ``[layer, head]`` array."""
        if not isinstance(column, str) or column not in self.table.columns or column in ("layer", "head"):
            raise InvalidInput(f"unknown statistic {column!r}; valid: {', '.join(STAT_COLUMNS)}")
        return self.table.pivot(index="layer", columns="head", values=column).to_numpy()

    def top(self, column: str, n: int = 5) -> pd.DataFrame:
        """The ``n`` heads with the highest value of ``column``."""
        self.matrix(column)
        check_positive_int(n, "n", hint=" (how many heads to keep)")  # pandas' nlargest(-1) gave an empty table
        return self.table.nlargest(n, column)[["layer", "head", column]].reset_index(drop=True)

    def plot(self, ax=None, *, kind: str = "targets", columns: Sequence[str] | None = None):
        """``kind="targets"``: Clark et al. Fig. 2, per layer each head's mean attention to special
        tokens / punctuation (one panel per column; ``ax``: one Axes per panel).
        ``kind="entropy"``: Fig. 4, mean attention entropy per head grouped by layer, with the
        entropy of uniform attention dashed."""
        from attnlab.viz.plots import grouped_bars, head_statistics

        if kind == "targets":
            if columns is None:
                columns = [c for c in ("cls", "sep", "first", "punct") if self.table[c].notna().any()]
            return head_statistics(self.table, columns, title=f"{self.model_name}: mean attention to each target", ax=ax)
        if kind == "entropy":
            wide = self.table.pivot(index="layer", columns="head", values="entropy")
            wide.columns = [f"head {h}" for h in wide.columns]
            return grouped_bars(wide.reset_index(), list(wide.columns), x="layer", ylabel="entropy (nats)",
                                reference=float(self.table["uniform_entropy"].iloc[0]), legend=False,
                                title=f"{self.model_name}: attention entropy per head (dashed: uniform)", ax=ax)
        raise InvalidInput(f"unknown plot kind {kind!r}; valid: targets, entropy")

    def plot_targets(self, columns: Sequence[str] | None = None):
        deprecated("HeadStats.plot_targets()", 'HeadStats.plot(kind="targets")')
        return self.plot(kind="targets", columns=columns)

    def plot_entropy(self):
        deprecated("HeadStats.plot_entropy()", 'HeadStats.plot(kind="entropy")')
        return self.plot(kind="entropy")


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
    >>> round(float(stats.table[["special", "punct"]].sum(axis=1).max()), 2) <= 1.0
    True
    """
    sentences = prepare(model, corpus)
    order = {id(s): i for i, s in enumerate(sentences)}
    tok = model.tokenizer
    targets = {"cls": getattr(tok, "cls_token", None), "sep": getattr(tok, "sep_token", None)}
    L, H = model.cfg.n_layers, model.cfg.n_heads
    per_query = ["special", "cls", "sep", "first", "punct", "self", "entropy", "uniform_entropy"]
    # per sentence: each statistic summed over its queries, [layer, head] (float64)
    sums: list[dict[str, torch.Tensor] | None] = [None] * len(sentences)
    for s in attention_batches(model, sentences, batch_size=batch_size, progress=progress, interventions=interventions):
        sums[order[id(s)]] = _sentence_sums(s, targets)
    n = torch.tensor([s.n_tokens for s in sentences], dtype=torch.float64)[:, None, None]  # [sentence, 1, 1]
    stacked = {k: torch.stack([t[k] for t in sums]) for k in sums[0]}  # [sentence, layer, head]
    means, per_sentence = {}, {}
    for name in per_query:
        means[name] = stacked[name].sum(0) / n.sum()
        per_sentence[name] = stacked[name] / n
    for name in ("prev", "next"):
        means[name] = stacked[name].sum(0) / (n - 1).sum() if (n > 1).any() else torch.full((L, H), float("nan"))
        per_sentence[name] = torch.where(n > 1, stacked[name] / (n - 1).clamp_min(1), float("nan"))
    for name in ("entropy_first", "entropy_last"):
        means[name] = stacked[name].mean(0)
        per_sentence[name] = stacked[name]
    for name, token in targets.items():
        if token is None:
            means[name] = torch.full((L, H), float("nan"))
            per_sentence[name] = torch.full((len(sentences), L, H), float("nan"))
    layer, head = np.repeat(np.arange(L), H), np.tile(np.arange(H), L)
    table = pd.DataFrame({"layer": layer, "head": head, **{c: means[c].reshape(-1).numpy() for c in STAT_COLUMNS}})
    per_prompt = pd.DataFrame({
        "sentence": np.repeat(np.arange(len(sentences)), L * H),
        "layer": np.tile(layer, len(sentences)),
        "head": np.tile(head, len(sentences)),
        "n_tokens": np.repeat(n.reshape(-1).numpy().astype(int), L * H),
        **{c: per_sentence[c].reshape(-1).numpy() for c in STAT_COLUMNS},
    })
    return HeadStats(table, model.cfg.name, n_sentences=len(sentences), n_tokens=int(n.sum()), per_prompt=per_prompt)


def _sentence_sums(s: Sentence, targets: dict[str, str | None]) -> dict[str, torch.Tensor]:
    """Each statistic of one sentence summed over its query tokens: ``{name: [layer, head]}``."""
    p = s.pattern.double()  # [layer, head, query, key]
    n = s.n_tokens
    masks = {
        "special": torch.tensor(s.special, dtype=torch.float64),
        "punct": torch.tensor([is_punctuation(t) and not sp for t, sp in zip(s.tokens, s.special)], dtype=torch.float64),
        "first": torch.nn.functional.one_hot(torch.tensor(0), n).double(),
    }
    for name, token in targets.items():
        mask = _named_token_mask(s, token)
        masks[name] = mask.double() if mask is not None else torch.zeros(n, dtype=torch.float64)
    out = {name: (p @ m).sum(-1) for name, m in masks.items()}
    out["self"] = torch.diagonal(p, dim1=-2, dim2=-1).sum(-1)
    zeros = torch.zeros(p.shape[:2], dtype=torch.float64)
    out["prev"] = torch.diagonal(p, offset=-1, dim1=-2, dim2=-1).sum(-1) if n > 1 else zeros
    out["next"] = torch.diagonal(p, offset=1, dim1=-2, dim2=-1).sum(-1) if n > 1 else zeros
    ent = entropy(p)  # [layer, head, query]
    out["entropy"] = ent.sum(-1)
    visible = (p > 0).sum(-1).clamp_min(1).double()  # keys each query can see
    out["uniform_entropy"] = visible.log().sum(-1)
    out["entropy_first"] = ent[..., 0]
    out["entropy_last"] = ent[..., -1]
    return out
