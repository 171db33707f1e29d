"""Distances between heads (Jensen-Shannon divergence of their attention) and a 2-D map of them.

Clark et al. (2019, section 6): two heads are close when, for the same query token, they
spread attention over the keys in the same way. The distance between heads a and b is

    D(a, b) = mean over every query token i of the corpus of JS(a_i || b_i),
    JS(p || q) = 1/2 KL(p || m) + 1/2 KL(q || m),  m = (p + q) / 2   (nats, at most log 2),

pooled over all sentences (Clark et al.'s sum over the tokens of the data, divided by the
number of tokens, so a long sentence weighs by its length; the MDS map is the same up to
scale), and multidimensional scaling (scikit-learn, fixed random state) places the heads in 2-D.
Each head also gets a behaviour label from its statistics (see :func:`behaviour`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float

from attnlab.analysis._corpus import attention_batches, check_corpus, check_fraction, prepare
from attnlab.analysis._result import Renamed, empty_frame
from attnlab.analysis.heads import HeadStats, entropy, head_stats
from attnlab.engine.locations import check_head_pair
from attnlab.errors import InvalidInput, is_integer
from attnlab.measure.result import Result

__all__ = ["js_divergence_matrix", "head_distances", "HeadMap", "behaviour", "BEHAVIOURS"]

BEHAVIOURS = ("special", "previous", "next", "self", "broad", "other")


def js_divergence_matrix(pattern: Float[torch.Tensor, "n_heads query key"]) -> Float[torch.Tensor, "n_heads n_heads"]:
    """Mean over query rows of the JS divergence between every pair of heads' attention rows."""
    if not (isinstance(pattern, torch.Tensor) and pattern.is_floating_point() and pattern.ndim == 3):
        # a 2-D [query, key] map was read as one-row heads, and its answer was query x query
        got = f"{pattern.dtype} of shape {tuple(pattern.shape)}" if isinstance(pattern, torch.Tensor) else type(pattern).__name__
        raise InvalidInput(f"pattern must be a float tensor [head, query, key], got {got}")
    p = pattern.double()
    h_each = entropy(p)  # [head, query]
    out = torch.zeros(p.shape[0], p.shape[0], dtype=torch.float64)
    for a in range(p.shape[0]):
        m = (p[a : a + 1] + p) / 2  # [head, query, key]
        js = entropy(m) - (h_each[a : a + 1] + h_each) / 2  # JS = H(m) - (H(p) + H(q)) / 2
        out[a] = js.clamp_min(0).mean(-1)
    return out


def behaviour(stats: pd.DataFrame, *, threshold: float = 0.5, broad: float = 0.7) -> pd.Series:
    """Label each head: ``special`` (> threshold of its attention on special tokens),
    ``previous`` / ``next`` / ``self`` (> threshold on that token), ``broad`` (entropy above
    ``broad`` x the uniform entropy), else ``other``. Checked in that order."""
    threshold, broad = check_fraction(threshold, "threshold"), check_fraction(broad, "broad")  # 50 or NaN: all "broad"
    if not isinstance(stats, pd.DataFrame):  # a HeadStats failed on .iterrows, a missing column with a bare KeyError
        raise InvalidInput(f"stats must be a DataFrame of head statistics (HeadStats.table), got {type(stats).__name__}")
    needed = ["special", "prev", "next", "self", "entropy", "uniform_entropy"]
    missing = [c for c in needed if c not in stats.columns]
    if missing:
        raise InvalidInput(f"stats lacks column(s) {', '.join(missing)}; behaviour needs {', '.join(needed)} "
                           "(HeadStats.table has them)")
    labels = []
    for _, r in stats.iterrows():
        if r["special"] > threshold:
            labels.append("special")
        elif r["prev"] > threshold:
            labels.append("previous")
        elif r["next"] > threshold:
            labels.append("next")
        elif r["self"] > threshold:
            labels.append("self")
        elif r["uniform_entropy"] > 0 and r["entropy"] > broad * r["uniform_entropy"]:
            labels.append("broad")
        else:
            labels.append("other")
    return pd.Series(labels, index=stats.index, name="behaviour")


class HeadMap(Result):
    """JS distances between all heads and their 2-D MDS embedding.

    ``distances``: ``[n_layers * n_heads]`` square matrix, head index = layer * n_heads + head.
    ``table``: one row per head with ``layer, head, x, y, behaviour``; ``summary``: how
    many heads have each behaviour; ``per_prompt`` is empty (distances are pooled over
    the corpus).
    """

    def __init__(self, distances: np.ndarray, table: pd.DataFrame, model_name: str):
        self.distances = distances
        self.table = table
        self.model_name = model_name
        self.per_prompt = empty_frame(["sentence", "layer", "head"])

    def __repr__(self) -> str:
        return f"HeadMap({self.model_name}: {len(self.table)} heads)"

    df = Renamed("table")

    @property
    def summary(self) -> pd.DataFrame:
        counts = self.table["behaviour"].value_counts()
        return pd.DataFrame({"behaviour": [b for b in BEHAVIOURS if b in counts],
                             "n_heads": [int(counts[b]) for b in BEHAVIOURS if b in counts]})

    def distance(self, a: tuple[int, int], b: tuple[int, int]) -> float:
        """JS distance between heads ``a`` and ``b``, each a ``(layer, head)`` pair."""
        n_layers, n_heads = int(self.table["layer"].max()) + 1, int(self.table["head"].max()) + 1
        index = []
        for name, loc in (("a", a), ("b", b)):
            layer, head = check_head_pair(loc, f"head {name}", n_layers, n_heads, f"{self.model_name} has")
            index.append(layer * n_heads + head)
        return float(self.distances[index[0], index[1]])

    def plot(self, ax=None):
        """Two panels like Clark et al. Fig. 6: the MDS map coloured by layer and by behaviour (``ax``: two Axes)."""
        from attnlab.viz.plots import clustering_embedding, panels

        fig, (by_layer, by_behaviour) = panels(ax, 2, 10, 4.2, "HeadMap.plot")
        clustering_embedding(self.table, color="layer", title="heads coloured by layer", ax=by_layer)
        clustering_embedding(self.table, color="behaviour", title="heads coloured by behaviour", ax=by_behaviour)
        if ax is None:  # a caller's figure keeps its own title
            fig.suptitle(f"{self.model_name}: MDS of Jensen-Shannon distances between heads")
        return fig


def _mds(dist: np.ndarray, seed: int) -> np.ndarray:
    """2-D metric MDS of precomputed distances: 4 random starts, the best kept.

    scikit-learn 1.8 renamed the options: ``metric="precomputed"`` and ``init="random"``
    where 1.4-1.7 take ``dissimilarity="precomputed"`` (``metric`` was the bool now called
    ``metric_mds``) and always start at random; 1.7 and later give the same SMACOF run with
    either spelling (1.4-1.6 stop by another convergence rule: coordinates differ slightly,
    the behaviours read from them do not).
    """
    import inspect

    from sklearn.manifold import MDS

    common = dict(n_components=2, random_state=seed, n_init=4, max_iter=300, eps=1e-6, normalized_stress="auto")
    if "init" in inspect.signature(MDS).parameters:  # scikit-learn >= 1.8
        mds = MDS(metric="precomputed", init="random", **common)
    else:
        mds = MDS(dissimilarity="precomputed", **common)
    return mds.fit_transform(dist)


@torch.no_grad()
def head_distances(
    model,
    corpus,
    *,
    stats: HeadStats | None = None,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = True,
) -> HeadMap:
    """JS distances between every pair of heads over ``corpus``, with an MDS map and behaviour labels.

    >>> from attnlab.testing import tiny_model
    >>> hm = head_distances(tiny_model("gpt2"), ["the nurse said that she left ."], progress=False)
    >>> hm.distances.shape, bool((hm.distances.diagonal() == 0).all())
    ((8, 8), True)
    """
    corpus = check_corpus(corpus)  # a generator is read once: head_stats below needs the texts again
    # checked before the forward passes: scikit-learn's MDS refused them only at the end, with its own error
    if not is_integer(seed) or not 0 <= seed < 2**32:
        raise InvalidInput(f"seed must be an integer in 0..2**32-1 (scikit-learn's MDS takes no more), got {seed!r}")
    if stats is not None and not isinstance(stats, HeadStats):
        raise InvalidInput(f"stats must be a HeadStats from head_stats() or None, got {type(stats).__name__}")
    sentences = prepare(model, corpus)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    total = torch.zeros(L * H, L * H, dtype=torch.float64)  # JS summed over query tokens
    n = 0  # query tokens
    for s in attention_batches(model, sentences, batch_size=batch_size, progress=progress, desc="head distances"):
        flat = s.pattern.reshape(L * H, s.n_tokens, s.n_tokens)  # [(layer head), query, key]
        total += js_divergence_matrix(flat) * s.n_tokens
        n += s.n_tokens
    dist = (total / n).numpy()
    dist = (dist + dist.T) / 2
    np.fill_diagonal(dist, 0.0)
    if L * H >= 3:
        xy = _mds(dist, int(seed))
    else:
        xy = np.zeros((L * H, 2))
    if stats is None:
        stats = head_stats(model, corpus, batch_size=batch_size, progress=progress)
    elif len(stats.table) != L * H:
        raise InvalidInput(f"stats has {len(stats.table)} heads but {model.cfg.name} has {L * H}")
    df = pd.DataFrame({
        "layer": np.repeat(np.arange(L), H), "head": np.tile(np.arange(H), L), "x": xy[:, 0], "y": xy[:, 1],
    })
    df["behaviour"] = behaviour(stats.table.sort_values(["layer", "head"]).reset_index(drop=True)).values
    return HeadMap(dist, df, model.cfg.name)
