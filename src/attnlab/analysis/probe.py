"""An attention-probe dependency parser (Clark et al. 2019, section 5).

Each word i picks its head j (a word, or the root) with probability

    p(head(i) = j) ∝ exp( sum over heads f of  w_f * A_f[i, j] + u_f * A_f[j, i]  + b[clip(j - i, -K, K)] )

where A_f is head f's word-level attention map: the learned weights combine every head's
attention in both directions, and ``b`` is an optional relative-position feature. The
root candidate has its own weights applied to attention to / from the first special
token ([CLS] or BOS). Training maximises the log-likelihood of the gold heads with Adam;
everything (initialisation, shuffling) is fixed by ``seed``. Evaluation reports UAS
(unlabelled attachment score: the fraction of words given the right head).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import nn

from attnlab.analysis._result import deprecated, empty_frame
from attnlab.analysis.conllu import DependencySentence
from attnlab.analysis.syntax import check_map, check_sentences, word_maps
from attnlab.errors import InvalidInput, check_flag, check_positive_int, is_integer
from attnlab.measure.result import Result

__all__ = ["AttentionProbe", "ProbeScore"]


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class _Scorer(nn.Module):
    def __init__(self, n_features: int, max_offset: int, distance: bool, reach: int):
        """``reach``: the largest word offset training can see (longest sentence - 1); the offset table stops there.

        An offset past ``reach`` (up to ``max_offset``) never gets a gradient, so its weight would stay 0:
        it scores 0 without being stored (max_offset=10**9 allocated 8 GB for nothing).
        """
        super().__init__()
        self.w = nn.Parameter(torch.zeros(n_features))  # dependent -> candidate attention
        self.u = nn.Parameter(torch.zeros(n_features))  # candidate -> dependent attention
        self.w_root = nn.Parameter(torch.zeros(n_features))
        self.u_root = nn.Parameter(torch.zeros(n_features))
        self.root_bias = nn.Parameter(torch.zeros(()))
        self.max_offset = max_offset
        self.reach = min(max_offset, max(reach, 0))
        self.dist = nn.Parameter(torch.zeros(2 * self.reach + 1)) if distance else None

    def forward(self, maps: torch.Tensor, n_words: torch.Tensor) -> torch.Tensor:
        """``maps`` [batch, feature, 1+N, 1+N] -> scores [batch, 1+N (dependent), 1+N (candidate)], invalid = -inf."""
        b, _, size, _ = maps.shape
        fwd = torch.einsum("f,bfij->bij", self.w, maps)
        bwd = torch.einsum("f,bfji->bij", self.u, maps)
        scores = fwd + bwd
        root = torch.einsum("f,bfi->bi", self.w_root, maps[:, :, :, 0]) + torch.einsum("f,bfi->bi", self.u_root, maps[:, :, 0, :])
        scores[:, :, 0] = root + self.root_bias
        pos = torch.arange(size)
        if self.dist is not None:
            off = (pos[None, :] - pos[:, None]).clamp(-self.max_offset, self.max_offset)  # [i, j]
            stored = self.dist[off.clamp(-self.reach, self.reach) + self.reach]
            extra = torch.where(off.abs() <= self.reach, stored, torch.zeros((), dtype=stored.dtype))
            extra[:, 0] = 0.0
            scores = scores + extra[None]
        valid = pos[None, None, :] <= n_words[:, None, None]  # candidate exists
        valid = valid & (pos[None, :, None] != pos[None, None, :])  # never itself
        return scores.masked_fill(~valid, float("-inf"))


def _stack(maps: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    size = max(m.shape[-1] for m in maps)
    out = torch.zeros(len(maps), maps[0].shape[0] * maps[0].shape[1], size, size)
    for i, m in enumerate(maps):
        k = m.shape[-1]
        out[i, :, :k, :k] = m.reshape(-1, k, k)  # [(layer head), 1+n, 1+n]
    return out, torch.tensor([m.shape[-1] - 1 for m in maps])


def _check_maps(maps: Sequence[torch.Tensor], sentences: Sequence[DependencySentence]) -> list[torch.Tensor]:
    """The caller's word maps, one per sentence in order, each ``[layer, head, 1 + n, 1 + n]`` for its n words."""
    if isinstance(maps, torch.Tensor) or not isinstance(maps, Iterable):  # one tensor was split along its layers
        raise InvalidInput(f"maps must be a list of word maps (from word_maps), got {type(maps).__name__}")
    maps = list(maps)
    if len(maps) != len(sentences):
        raise InvalidInput(f"got {len(maps)} maps for {len(sentences)} sentences; pass one map per sentence, in order "
                           "(from word_maps)")
    for i, (m, s) in enumerate(zip(maps, sentences)):
        check_map(m, i, "map")
        if m.ndim != 4 or m.shape[-1] != m.shape[-2] or m.shape[-1] != len(s) + 1:
            raise InvalidInput(f"map {i} has shape {tuple(m.shape)}; a sentence of {len(s)} words needs "
                               f"[layer, head, {len(s) + 1}, {len(s) + 1}]")
        if m.shape[:2] != maps[0].shape[:2]:
            raise InvalidInput(f"map {i} has {tuple(m.shape[:2])} layers x heads but map 0 has {tuple(maps[0].shape[:2])}; "
                               "pass maps of one model")
    return maps


def _gold(sentences: Sequence[DependencySentence], size: int) -> torch.Tensor:
    gold = torch.full((len(sentences), size), -100, dtype=torch.long)  # -100: ignored
    for i, s in enumerate(sentences):
        gold[i, 1 : len(s) + 1] = torch.tensor(s.heads)
    return gold


@dataclass
class ProbeScore(Result):
    """UAS of the probe and of two simple baselines on the same words.

    ``table``: one row per parser (``parser, uas, n_words``); ``per_prompt``: one row per
    sentence (``sentence, n_words, correct, uas``) for the probe; ``summary`` = ``table``.
    """

    uas: float
    n_words: int
    n_sentences: int
    right_branching: float  # every word's head is the next word
    left_branching: float  # every word's head is the previous word
    per_prompt: pd.DataFrame | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.per_prompt is None:
            self.per_prompt = empty_frame(["sentence", "n_words", "correct", "uas"])

    @property
    def table(self) -> pd.DataFrame:
        return pd.DataFrame([
            {"parser": "attention probe", "uas": self.uas},
            {"parser": "head = next word", "uas": self.right_branching},
            {"parser": "head = previous word", "uas": self.left_branching},
        ]).assign(n_words=self.n_words)

    def to_frame(self) -> pd.DataFrame:
        deprecated("ProbeScore.to_frame()", "ProbeScore.table")
        return self.table

    def plot(self, ax=None):
        """Bars of the UAS of the probe and of the two baselines."""
        from attnlab.viz.plots import grouped_bars

        return grouped_bars(self.table, "uas", x="parser", ylim=(0, 1),
                            title=f"attention probe: {self.n_words} words, {self.n_sentences} sentences", ax=ax)


class AttentionProbe:
    """Predict each word's syntactic head from all heads' attention maps (both directions).

    >>> from attnlab.analysis.conllu import parse_conllu
    >>> from attnlab.testing import tiny_model
    >>> sents = parse_conllu("1\\tshe\\t_\\t_\\t_\\t_\\t2\\tnsubj\\t_\\t_\\n2\\tleft\\t_\\t_\\t_\\t_\\t0\\troot\\t_\\t_\\n")
    >>> probe = AttentionProbe(epochs=20, seed=0).fit(tiny_model("bert"), sents, progress=False)
    >>> probe.evaluate(tiny_model("bert"), sents, progress=False).uas
    1.0
    """

    def __init__(
        self,
        *,
        distance_features: bool = True,
        max_offset: int = 5,
        epochs: int = 30,
        lr: float = 0.05,
        batch_size: int = 32,
        weight_decay: float = 0.0,
        seed: int = 0,
    ):
        for name, v in (("epochs", epochs), ("batch_size", batch_size), ("max_offset", max_offset)):
            check_positive_int(v, name)
        epochs, batch_size, max_offset = int(epochs), int(batch_size), int(max_offset)
        # checked here, not by torch at fit(): lr=inf trained to NaN weights and reported a UAS without a word,
        # a negative weight_decay or a float seed failed only in fit() with torch's bare ValueError / RuntimeError
        if not _is_real(lr) or not 0 < lr < math.inf:
            raise InvalidInput(f"lr must be a finite number > 0, got {lr!r}")
        if not _is_real(weight_decay) or not 0 <= weight_decay < math.inf:
            raise InvalidInput(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
        if not is_integer(seed) or not 0 <= seed < 2**63:  # the range measure's seeds take
            raise InvalidInput(f"seed must be an integer in 0..2**63-1, got {seed!r}")
        distance_features = check_flag(distance_features, "distance_features")
        lr, weight_decay, seed = float(lr), float(weight_decay), int(seed)
        self.distance_features = distance_features
        self.max_offset = max_offset
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.seed = seed
        self.scorer: _Scorer | None = None
        self.losses: list[float] = []
        self._shape: tuple[int, int] | None = None

    def fit(self, model, sentences: Sequence[DependencySentence], *, maps: Sequence[torch.Tensor] | None = None,
            progress: bool = True) -> AttentionProbe:
        """Train on ``sentences`` (their word maps are computed unless ``maps`` is given)."""
        from tqdm.auto import tqdm

        sentences = check_sentences(sentences)
        maps = _check_maps(maps, sentences) if maps is not None else word_maps(model, sentences, progress=progress)
        self._shape = tuple(maps[0].shape[:2])
        gen = torch.Generator().manual_seed(self.seed)
        self.scorer = _Scorer(self._shape[0] * self._shape[1], self.max_offset, self.distance_features,
                              reach=max(m.shape[-1] for m in maps) - 2)
        opt = torch.optim.Adam(self.scorer.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        order = sorted(range(len(maps)), key=lambda i: maps[i].shape[-1])  # batches of similar length
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        packed = []
        for idx in batches:
            x, n = _stack([maps[i] for i in idx])
            packed.append((x, n, _gold([sentences[i] for i in idx], x.shape[-1])))
        self.losses = []
        for _ in tqdm(range(self.epochs), desc="probe", disable=not progress):
            total = 0.0
            for b in torch.randperm(len(packed), generator=gen).tolist():
                x, n, gold = packed[b]
                scores = self.scorer(x, n)  # [batch, dependent, candidate]
                safe = scores.masked_fill(gold[..., None] == -100, 0.0)  # padded rows: no NaN from all -inf
                loss = nn.functional.cross_entropy(safe.reshape(-1, safe.shape[-1]), gold.reshape(-1), ignore_index=-100)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach())
            self.losses.append(total / len(packed))
        return self

    @torch.no_grad()
    def predict(self, maps: Sequence[torch.Tensor]) -> list[list[int]]:
        """Predicted head (0 = root) of every word of every sentence."""
        if self.scorer is None:
            raise InvalidInput("the probe is not trained yet: call fit() first")
        out = []
        if isinstance(maps, torch.Tensor) or not isinstance(maps, Iterable):  # any iterable, as fit() and evaluate()
            raise InvalidInput(f"maps must be a list of word maps (from word_maps), got {type(maps).__name__}")
        for i, m in enumerate(maps):
            check_map(m, i, "map")
            if m.ndim != 4 or m.shape[-1] != m.shape[-2] or m.shape[-1] < 2:
                raise InvalidInput(f"map {i} has shape {tuple(m.shape)}; expected [layer, head, 1 + n_words, "
                                   "1 + n_words] with n_words >= 1 (see word_maps)")
            if tuple(m.shape[:2]) != self._shape:
                raise InvalidInput(f"maps have {tuple(m.shape[:2])} layers x heads but the probe was trained on {self._shape}")
            x, n = _stack([m])
            out.append(self.scorer(x, n)[0, 1:].argmax(-1).tolist())
        return out

    def evaluate(self, model, sentences: Sequence[DependencySentence], *, maps: Sequence[torch.Tensor] | None = None,
                 progress: bool = True) -> ProbeScore:
        """UAS on ``sentences`` (every word counted, punctuation included)."""
        sentences = check_sentences(sentences)
        maps = _check_maps(maps, sentences) if maps is not None else word_maps(model, sentences, progress=progress)
        preds = self.predict(maps)
        right = left = correct = total = 0
        rows = []
        for index, (s, p) in enumerate(zip(sentences, preds)):
            hits = sum(h == ph for h, ph in zip(s.heads, p))
            rows.append((index, len(s), hits, hits / len(s)))
            for i, h in enumerate(s.heads, start=1):
                right += h == (i + 1 if i < len(s) else 0)
                left += h == i - 1
            correct += hits
            total += len(s)
        per_sentence = pd.DataFrame(rows, columns=["sentence", "n_words", "correct", "uas"])
        return ProbeScore(correct / total, total, len(sentences), right / total, left / total, per_prompt=per_sentence)
