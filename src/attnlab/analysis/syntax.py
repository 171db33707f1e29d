"""Heads as dependency parsers (Clark et al. 2019, section 4).

For every relation and every head, in both directions:

* ``dep->head``: the word a dependent attends to most (itself and special tokens
  excluded) is predicted to be its syntactic head;
* ``head->dep``: the word a head word attends to most is predicted to be the dependent.

Accuracy is the fraction of arcs of that relation predicted right. The baseline is the
best *fixed offset* for the relation: always predicting the word ``k`` positions away,
with ``k`` chosen on the same data (so it is an upper bound for any fixed-offset rule; on a
tie the nearer ``k``, then the one to the left).
Attention is converted to word level first (see :func:`attnlab.analysis.word_attention`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

import pandas as pd
import torch

from attnlab.analysis._corpus import attention_batches, prepare
from attnlab.analysis._result import CallableTable, empty_frame
from attnlab.analysis.conllu import DependencySentence, tree_problem
from attnlab.analysis.heads import word_attention
from attnlab.errors import InvalidInput, check_flag, check_positive_int, is_integer
from attnlab.measure.result import Result

__all__ = ["word_maps", "relation_accuracy", "RelationAccuracy", "DIRECTIONS"]

DIRECTIONS = ("dep->head", "head->dep")


def check_sentences(sentences) -> list[DependencySentence]:
    if isinstance(sentences, DependencySentence):
        sentences = [sentences]
    elif isinstance(sentences, (str, bytes)) or not isinstance(sentences, Iterable):
        raise InvalidInput(f"sentences must be a list of DependencySentence (see read_conllu), got {type(sentences).__name__}")
    sentences = list(sentences)
    if not sentences:
        raise InvalidInput("no sentences given: pass a non-empty list of DependencySentence (see read_conllu)")
    for i, s in enumerate(sentences):
        if not isinstance(s, DependencySentence):
            raise InvalidInput(f"sentence {i} is a {type(s).__name__}; pass DependencySentence objects from read_conllu")
        _check_sentence(s, i)
    return sentences


def _check_sentence(s: DependencySentence, index: int) -> None:
    """A sentence made by hand holds what read_conllu guarantees: aligned lists, integer heads forming one tree.

    Heads [0] for two words made the probe score one word as if the sentence had one, a head
    out of range raised a bare IndexError, and a cycle or a head of -1 was evaluated as an arc.
    """
    where = f"sentence {index}" + (f" ({s.source}:{s.line})" if s.source and s.line else "")
    if not all(isinstance(x, (list, tuple)) for x in (s.words, s.heads, s.relations)):
        raise InvalidInput(f"{where}: words, heads and relations must be lists")
    n = len(s.words)
    if len(s.heads) != n or len(s.relations) != n:
        raise InvalidInput(f"{where}: {n} words but {len(s.heads)} heads and {len(s.relations)} relations; "
                           "a DependencySentence holds one head and one relation per word")
    bad = next((k for k, h in enumerate(s.heads) if not is_integer(h)), None)
    if bad is not None:
        raise InvalidInput(f"{where}: head of word {bad + 1} is {s.heads[bad]!r}; heads are integers (0 = root, "
                           f"else a word 1..{n})")
    bad = next((k for k, r in enumerate(s.relations) if not (isinstance(r, str) and r.strip())), None)
    if bad is not None:
        raise InvalidInput(f"{where}: relation of word {bad + 1} is {s.relations[bad]!r}; expected a relation name")
    problem = tree_problem(s) if n else None
    if problem is not None:
        raise InvalidInput(f"{where}: {problem[1]}")


@torch.no_grad()
def word_maps(
    model,
    sentences: Sequence[DependencySentence],
    *,
    batch_size: int = 16,
    progress: bool = True,
    interventions: Sequence = (),
) -> list[torch.Tensor]:
    """Word-level attention of every sentence as ``[layer, head, 1 + n_words, 1 + n_words]``.

    Index 0 is the first special token ([CLS] or BOS; zeros if the tokenizer adds none),
    which stands for the root; indices 1..n are the CoNLL-U words, so gold heads index it
    directly. Other special tokens ([SEP]) are dropped.
    """
    sentences = check_sentences(sentences)
    prepared = prepare(model, sentences)  # their words; errors name the sentence's file:line
    out: list[torch.Tensor | None] = [None] * len(prepared)
    index = {id(p): i for i, p in enumerate(prepared)}
    for s in attention_batches(model, prepared, batch_size=batch_size, progress=progress,
                               interventions=interventions, desc="word attention"):
        full = word_attention(s.pattern, s)  # [layer, head, unit, unit]
        words = sorted((u for u, w in enumerate(s.word_index) if w is not None), key=lambda u: s.word_index[u])
        first = [u for u, w in enumerate(s.word_index) if w is None][:1]
        idx = torch.tensor(first + words)
        m = full.index_select(-2, idx).index_select(-1, idx)
        if not first:  # no special token: an all-zero root row and column
            m = torch.nn.functional.pad(m, (1, 0, 1, 0))
        out[index[id(s)]] = m
        s.pattern = None  # free the token-level map
    return out  # type: ignore[return-value]


def check_map(m, index: int, what: str = "word map") -> None:
    """A caller's word map is a torch tensor of finite numbers (a NaN map was scored as if it were attention)."""
    if not isinstance(m, torch.Tensor):
        raise InvalidInput(f"{what} {index} is a {type(m).__name__}; pass the torch tensors word_maps gives")
    if m.is_floating_point() and not bool(torch.isfinite(m).all()):
        raise InvalidInput(f"{what} {index} holds NaN or infinite values; attention maps are finite weights "
                           "(did the model overflow?)")


def _argmax_excluding(rows: torch.Tensor, exclude: int) -> torch.Tensor:
    """Argmax over word columns 1..n of ``[..., 1 + n]`` rows, never choosing ``exclude`` or the root column."""
    r = rows.clone()
    r[..., 0] = -1.0
    r[..., exclude] = -1.0
    return r.argmax(-1)


_TABLE_COLUMNS = ["relation", "count", "direction", "layer", "head", "accuracy", "baseline_offset", "baseline_accuracy"]


class RelationAccuracy(Result):
    """How well single heads parse each relation, next to the best fixed offset.

    ``table``: Clark et al. Table 1, one row per relation (most frequent first): the best
    head in either direction (``direction, layer, head, accuracy``) and the best fixed
    offset (``baseline_offset, baseline_accuracy``); ``per_head``: the accuracy of every
    head, one row per (relation, direction, layer, head); ``baselines``: the offset rule per
    relation; ``summary``: the row of the pseudo-relation ``all`` (every non-root arc).
    ``per_prompt`` is empty (arcs are pooled over sentences).
    """

    def __init__(self, per_head: pd.DataFrame, baselines: pd.DataFrame, model_name: str):
        self.per_head = per_head
        self.baselines = baselines
        self.model_name = model_name
        self.per_prompt = empty_frame(["sentence", "relation", "direction", "layer", "head"])

    def __repr__(self) -> str:
        return f"RelationAccuracy({self.model_name}: {self.baselines['relation'].nunique()} relations)"

    @property
    def table(self) -> pd.DataFrame:
        return CallableTable.wrap(
            self._best_heads(), self._best_heads, "RelationAccuracy.table(min_count=, relations=)",
            "RelationAccuracy.table (a DataFrame: select rows with pandas, e.g. t[t['count'] >= 5])",
        )

    @property
    def summary(self) -> pd.DataFrame:
        t = self._best_heads()
        overall = t[t["relation"] == "all"]
        return (overall if len(overall) else t.head(1)).reset_index(drop=True)

    def _best_heads(self, *, min_count: int = 1, relations: Sequence[str] | None = None) -> pd.DataFrame:
        ph = self.per_head
        best = ph.loc[ph.groupby("relation")["accuracy"].idxmax()]
        t = best.merge(self.baselines, on=["relation", "count"], suffixes=("", "_baseline"))
        t = t.rename(columns={"offset": "baseline_offset", "accuracy_baseline": "baseline_accuracy"})
        t = t[t["count"] >= min_count]
        if relations is not None:
            t = t[t["relation"].isin(list(relations))]
        return t[_TABLE_COLUMNS].sort_values("count", ascending=False, kind="stable").reset_index(drop=True)  # ties: by name

    def head_matrix(self, relation: str, direction: str = "dep->head"):
        """Accuracy of every head for one relation as a ``[layer, head]`` array."""
        if direction not in DIRECTIONS:
            raise InvalidInput(f"unknown direction {direction!r}; valid: {', '.join(DIRECTIONS)}")
        sub = self.per_head.iloc[:0] if not isinstance(relation, str) else self.per_head[  # a list failed in pandas
            (self.per_head["relation"] == relation) & (self.per_head["direction"] == direction)]
        if sub.empty:
            raise InvalidInput(f"no arcs with relation {relation!r}; relations here: {', '.join(sorted(self.per_head['relation'].unique()))}")
        return sub.pivot(index="layer", columns="head", values="accuracy").to_numpy()

    def plot(self, ax=None, *, top: int = 10):
        """Bars of the best head's accuracy vs the fixed-offset baseline for the ``top`` most frequent relations."""
        from attnlab.viz.plots import grouped_bars

        t = self._best_heads().head(check_positive_int(top, "top"))  # head(-1) drew all but the last relation
        bars = pd.DataFrame({
            "relation": [f"{r}\n{l}-{h}" for r, l, h in zip(t["relation"], t["layer"], t["head"])],
            "best head": t["accuracy"], "best fixed offset": t["baseline_accuracy"],
        })
        return grouped_bars(bars, ["best head", "best fixed offset"], x="relation", ylabel="accuracy", ylim=(0, 1),
                            title=f"{self.model_name}: heads as dependency parsers", ax=ax)


def relation_accuracy(
    model,
    sentences: Sequence[DependencySentence],
    *,
    maps: Sequence[torch.Tensor] | None = None,
    batch_size: int = 16,
    progress: bool = True,
    include_all: bool = True,
    interventions: Sequence = (),
) -> RelationAccuracy:
    """Accuracy of every head at every relation, both directions, plus the best fixed offset.

    ``maps`` reuses word maps from :func:`word_maps`. ``include_all`` adds the pseudo
    relation ``"all"`` (every non-root arc). ``interventions`` are active while attention
    is read (e.g. to plant or ablate a head); with ``maps`` there is nothing to read, so
    they are refused (give them to :func:`word_maps`).

    >>> from attnlab.analysis.conllu import parse_conllu
    >>> from attnlab.testing import tiny_model
    >>> sents = parse_conllu("1\\tshe\\t_\\t_\\t_\\t_\\t2\\tnsubj\\t_\\t_\\n2\\tleft\\t_\\t_\\t_\\t_\\t0\\troot\\t_\\t_\\n")
    >>> res = relation_accuracy(tiny_model("bert"), sents, progress=False)
    >>> t = res.table
    >>> float(t.loc[t["relation"] == "nsubj", "baseline_accuracy"].iloc[0])
    1.0
    """
    sentences = check_sentences(sentences)
    if check_flag(include_all, "include_all"):  # an arc of a relation named "all" was counted twice in "all"
        clash = next((i for i, s in enumerate(sentences) if "all" in s.relations), None)
        if clash is not None:
            raise InvalidInput(f"sentence {clash} has a relation named 'all', the name of the pseudo-relation "
                               "include_all adds; pass include_all=False to score it as a relation of its own")
    if maps is None:
        maps = word_maps(model, sentences, batch_size=batch_size, progress=progress, interventions=interventions)
    elif hasattr(interventions, "validate") or list(interventions or ()):  # a lone spec, or a non-empty list
        raise InvalidInput("interventions act while word maps are computed, but maps= were given (read without them); "
                           "pass word_maps(model, sentences, interventions=...) as maps=, or no maps")
    elif isinstance(maps, torch.Tensor) or not isinstance(maps, Iterable):  # one tensor was split along its layers
        raise InvalidInput(f"maps must be a list of word maps (from word_maps), got {type(maps).__name__}")
    maps = list(maps)  # a generator has no len()
    if len(maps) != len(sentences):
        raise InvalidInput(f"got {len(maps)} maps for {len(sentences)} sentences")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    correct: dict[tuple[str, str], torch.Tensor] = defaultdict(lambda: torch.zeros(L, H, dtype=torch.long))  # exact counts
    counts: Counter = Counter()
    offsets: dict[str, Counter] = defaultdict(Counter)
    for index, (sent, m) in enumerate(zip(sentences, maps)):
        n = len(sent)
        check_map(m, index)
        if tuple(m.shape) != (L, H, n + 1, n + 1):
            raise InvalidInput(f"word map {index} has shape {tuple(m.shape)} but a sentence of {n} words on "
                               f"{model.cfg.name} needs [layer, head, 1 + words, 1 + words] = {(L, H, n + 1, n + 1)}; "
                               "pass the maps word_maps gives for this model and these sentences")
        for i in range(1, n + 1):
            h = sent.heads[i - 1]
            if h == 0:
                continue
            rels = [sent.relations[i - 1]] + (["all"] if include_all else [])
            pred_head = _argmax_excluding(m[:, :, i, :], i)  # [layer, head]
            pred_dep = _argmax_excluding(m[:, :, h, :], h)
            for r in rels:
                correct[(r, "dep->head")] += pred_head == h
                correct[(r, "head->dep")] += pred_dep == i
                counts[r] += 1
                offsets[r][h - i] += 1
    if not counts:
        raise InvalidInput("the sentences have no dependency arcs (only roots); nothing to evaluate")
    rows = []
    for (r, d), c in correct.items():
        acc = c.double().numpy() / counts[r]  # float64: 18/222 is 0.08108108108108109, not float32's 0.0810810774...
        for layer in range(L):
            for head in range(H):
                rows.append((r, d, layer, head, float(acc[layer, head]), counts[r]))
    per_head = pd.DataFrame(rows, columns=["relation", "direction", "layer", "head", "accuracy", "count"])
    base = []
    for r, cnt in offsets.items():
        # ties: the nearer offset, then the one to the left (+1 and -1 tied went to the first sentence's)
        off, k = max(cnt.items(), key=lambda kv: (kv[1], -abs(kv[0]), -kv[0]))
        base.append((r, counts[r], off, k / counts[r]))
    baselines = pd.DataFrame(base, columns=["relation", "count", "offset", "accuracy"])
    return RelationAccuracy(per_head, baselines, model.cfg.name)
