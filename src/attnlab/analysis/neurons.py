"""Query/key neurons: the data behind Vig's neuron view, and neurons whose scores decay with distance.

A head's score for query i and key j is ``scale * sum_d q_i[d] k_j[d]`` (q, k read after
rotary embedding where the model has one). Each term ``scale * q_i[d] k_j[d]`` is the
contribution of *neuron* d. On rotary models the rotation mixes dimension d with its
partner d + d_head/2 (the ``rotate_half`` convention of Hugging Face), so the natural
unit there is the pair: its contribution ``scale * (q[d] k[d] + q[d'] k[d'])`` depends on
the query-key distance through one rotary frequency. Contributions of all units sum to
the score exactly (before soft-capping, which no supported model uses).

``decay_neurons`` averages each unit's contribution over a corpus as a function of the
distance i - j and ranks units by how strongly that mean falls with distance.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float

from attnlab.analysis._corpus import check_max_distance, prepare
from attnlab.analysis._result import deprecated, empty_frame
from attnlab.engine.dropout import check_deterministic
from attnlab.engine.attention import masked
from attnlab.engine.forward import run
from attnlab.engine.locations import hook_name
from attnlab.errors import InvalidInput, InvalidLocation, check_flag, check_positive_int, is_integer
from attnlab.measure.result import Result
from attnlab.measure.sweep import _index_list

__all__ = ["NeuronData", "neuron_data", "unit_dims", "unit_scores", "decay_neurons", "DecayProfile"]


def is_rotary(model) -> bool:
    """Deprecated: ``model.cfg.rotary``."""
    deprecated("attnlab.analysis.is_rotary(model)", "model.cfg.rotary")
    return model.cfg.rotary


def head_scale(model, layer: int) -> float:
    """Deprecated: ``model.cfg.scaling`` (the factor q.k is multiplied by; the same in every layer)."""
    deprecated("attnlab.analysis.head_scale(model, layer)", "model.cfg.scaling")
    model.check_layer(layer)
    return model.cfg.scaling


def unit_dims(model, unit: int, *, pairs: bool | None = None) -> list[int]:
    """The q/k dimensions of one unit: ``[unit]``, or ``[unit, unit + d_head/2]`` for a rotary pair."""
    pairs = _pairs(model, pairs)
    n_units = model.cfg.d_head // 2 if pairs else model.cfg.d_head
    if not is_integer(unit) or not 0 <= unit < n_units:
        raise InvalidLocation(f"unit {unit!r} out of range: {model.cfg.name} has {'pairs' if pairs else 'dims'} 0..{n_units - 1}")
    unit = int(unit)
    return [unit, unit + model.cfg.d_head // 2] if pairs else [unit]


def _pairs(model, pairs) -> bool:
    """``pairs=``: None (the model is rotary) or a bool; ``"no"`` is truthy and summed the rotary pairs."""
    return model.cfg.rotary if pairs is None else check_flag(pairs, "pairs")


def _check_index(value, size: int, what: str, where: str) -> int:
    """An index into one axis of a result's array: negative ones wrapped round silently, past the end numpy's IndexError."""
    if not is_integer(value):
        raise InvalidLocation(f"{what} must be a whole number (an int), got {value!r} ({type(value).__name__}); "
                              f"{where} 0..{size - 1}")
    if not 0 <= value < size:
        raise InvalidLocation(f"{what} {value!r} out of range: {where} 0..{size - 1}")
    return int(value)


def _to_units(x: torch.Tensor, pairs: bool) -> torch.Tensor:
    """Sum the last (d_head) axis into units: pairs (d, d + d_head/2) or single dims."""
    if not pairs:
        return x
    half = x.shape[-1] // 2
    return x[..., :half] + x[..., half:]


def _text_tokens(model, text):
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput(f"text must be a non-empty string, got {text!r}")
    return model.tokens(text)


def _qk_scores(model, tokens, layer: int) -> list[torch.Tensor]:
    """q, k ``[pos, head, d_head]`` and scores ``[head, query, key]`` of ``layer`` for the one row of ``tokens``."""
    names = [hook_name(layer, site) for site in ("q", "k", "attn_scores")]
    check_deterministic(model)
    cache = run(model, tokens, logits=None, read=names).cache
    return [cache[name][0].float() for name in names]


class NeuronData(Result):
    """Everything Vig's neuron view shows for one head and one query position.

    ``q`` [d_head]; ``k``, ``qk`` [n_keys, d_head] (``qk = q * k`` elementwise); ``scores``
    [n_keys] = ``scale * qk.sum(-1)`` (soft-capped as the model does, ``cap * tanh(. / cap)``,
    on Gemma 2), ``-inf`` where the key is masked (causal, sliding window); ``pattern``
    [n_keys] = softmax of ``scores`` (equals the model's own pattern).

    ``table``: one row per key (``key, token, visible, score, pattern``); ``per_prompt``:
    one row per key and q/k dimension (``key, dim, q, k, contribution``), the terms each
    score is the sum of; ``summary``: the key the query attends to most.
    """

    def __init__(self, *, model_name: str, layer: int, head: int, query: int, tokens: list[str], q: torch.Tensor,
                 k: torch.Tensor, qk: torch.Tensor, scale: float, scores: torch.Tensor, visible: torch.Tensor,
                 pattern: torch.Tensor, rotary: bool):
        self.model_name, self.layer, self.head, self.query, self.tokens = model_name, layer, head, query, tokens
        self.q, self.k, self.qk, self.scale = q, k, qk, scale
        self.scores, self.visible, self.pattern, self.rotary = scores, visible, pattern, rotary

    def __repr__(self) -> str:
        return (f"NeuronData({self.model_name} layer {self.layer} head {self.head}, query {self.query} "
                f"{self.tokens[self.query]!r}, {len(self.tokens)} keys)")

    @property
    def table(self) -> pd.DataFrame:
        return pd.DataFrame({
            "key": np.arange(len(self.tokens)), "token": self.tokens, "visible": self.visible.numpy(),
            "score": self.scores.numpy(), "pattern": self.pattern.numpy(),
        })

    @property
    def per_prompt(self) -> pd.DataFrame:
        n, d = self.k.shape
        return pd.DataFrame({
            "key": np.repeat(np.arange(n), d), "dim": np.tile(np.arange(d), n),
            "q": np.tile(self.q.numpy(), n), "k": self.k.reshape(-1).numpy(),
            "contribution": (self.qk * self.scale).reshape(-1).numpy(),
        })

    @property
    def summary(self) -> pd.DataFrame:
        top = int(self.pattern.argmax())
        return pd.DataFrame([{
            "layer": self.layer, "head": self.head, "query": self.query, "query_token": self.tokens[self.query],
            "top_key": top, "top_key_token": self.tokens[top], "attention": float(self.pattern[top]),
            "score": float(self.scores[top]), "scale": self.scale,
        }])

    def top_dims(self, key: int, n: int = 5) -> pd.DataFrame:
        """The dimensions contributing most (by magnitude) to the score of one key."""
        key = _check_index(key, len(self.tokens), "key", "keys")  # True indexed a new axis; 1.5 failed in torch
        check_positive_int(n, "n", hint=" (how many dimensions to keep)")  # -1 kept every dimension but the last
        contrib = self.qk[key] * self.scale
        idx = contrib.abs().argsort(descending=True)[:n]
        return pd.DataFrame({"dim": idx.tolist(), "q": self.q[idx].tolist(), "k": self.k[key, idx].tolist(),
                             "contribution": contrib[idx].tolist()})

    def plot(self, ax=None):
        """Each visible key's score split over the q/k dimensions (``scale * q[d] * k[d]``), keys x dims."""
        from attnlab.viz.plots import head_heatmap

        terms = self.per_prompt
        terms = terms[self.visible.numpy()[terms["key"].to_numpy()]]
        return head_heatmap(terms, value="contribution", layer="key", head="dim", n_layers=len(self.tokens),
                            n_heads=self.k.shape[1], title=f"L{self.layer} H{self.head}: score of query "
                            f"{self.query} ({self.tokens[self.query]!r}) per key and dimension", ax=ax)


def neuron_data(model, text: str, *, layer: int, head: int, query: int) -> NeuronData:
    """q, k, q*k, scaled scores and softmax for one head and query position of ``text``.

    The data behind :func:`attnlab.viz.neuron_view` for one head (``layer=``/``head=`` name
    one location; the views take ``layers=``/``heads=`` for several).

    >>> from attnlab.testing import tiny_model
    >>> v = neuron_data(tiny_model("llama"), "the nurse said that", layer=1, head=2, query=3)
    >>> v.qk.shape, round(float(v.pattern.sum()), 4)
    (torch.Size([5, 8]), 1.0)
    """
    model.check_layer(layer)
    model.check_head(head)
    tokens = _text_tokens(model, text)
    n = int(tokens.lengths[0])
    if not is_integer(query) or not 0 <= query < n:
        raise InvalidLocation(f"query position {query!r} out of range: this text has positions 0..{n - 1}")
    query = int(query)
    q, k, scores = _qk_scores(model, tokens, layer)
    scale = model.cfg.scaling
    qv, kv = q[query, head].cpu(), k[:, head].cpu()  # [d_head], [key, d_head]
    qk = qv[None] * kv
    visible = ~masked(scores[head, query]).cpu()
    dots = qk.sum(-1) * scale
    cap = model.layout.blocks[layer].score_softcap  # Gemma 2: the model's scores are cap * tanh(dots / cap)
    if cap is not None:
        dots = cap * torch.tanh(dots / cap)
    dots = dots.masked_fill(~visible, float("-inf"))
    return NeuronData(
        model_name=model.cfg.name, layer=layer, head=head, query=query,
        tokens=model.to_str_tokens(tokens.ids[0]), q=qv, k=kv, qk=qk, scale=scale,
        scores=dots, visible=visible, pattern=torch.softmax(dots, -1), rotary=model.cfg.rotary,
    )


def neuron_view(model, text: str, *, layer: int, head: int, query: int) -> NeuronData:
    """Deprecated name of :func:`neuron_data` (``attnlab.viz.neuron_view`` is the HTML view)."""
    deprecated("attnlab.analysis.neuron_view(model, text, layer=, head=, query=)",
               "attnlab.analysis.neuron_data (same arguments); attnlab.viz.neuron_view is the HTML view")
    return neuron_data(model, text, layer=layer, head=head, query=query)


def unit_scores(
    model, text: str, *, layer: int, head: int, pairs: bool | None = None
) -> Float[torch.Tensor, "unit query key"]:
    """Each unit's contribution ``scale * q_u . k_u`` to every score of one head on ``text`` (masks ignored)."""
    model.check_layer(layer)
    model.check_head(head)
    pairs = _pairs(model, pairs)
    q, k, _ = _qk_scores(model, _text_tokens(model, text), layer)
    prod = torch.einsum("qd,kd->dqk", q[:, head], k[:, head]).cpu() * model.cfg.scaling  # [d_head, query, key]
    return _to_units(prod.movedim(0, -1), pairs).movedim(-1, 0)


_RANKINGS = ("decay", "spearman", "slope")
_RANK_COLUMNS = ["layer", "head", "unit", "dims", "decay", "slope", "spearman", "near", "far", "span"]


@dataclass
class DecayProfile(Result):
    """Mean contribution of every unit at every query-key distance over a corpus.

    ``mean`` [layer, head, unit, distance] (NaN where no pair of tokens had that distance),
    ``counts`` [layer, head, distance]. Distances are ``query - key`` (decoders) or
    ``|query - key|`` (encoders).

    ``table``: the units ranked by how strongly their contribution falls with distance
    (see :meth:`ranked` for the columns and the options, which a profile carries);
    ``summary``: the ten strongest; ``per_prompt`` is empty (token pairs are pooled over
    the corpus; :meth:`curve` gives one unit's mean by distance).
    """

    mean: np.ndarray
    counts: np.ndarray
    pairs: bool
    d_head: int
    model_name: str
    min_distance: int = 1
    max_distance: int | None = None
    by: str = "decay"
    min_count: int = 1

    def __repr__(self) -> str:
        L, H, U, D = self.mean.shape
        return f"DecayProfile({self.model_name}: {L} layers x {H} heads x {U} units, distances 0..{D - 1})"

    @property
    def table(self) -> pd.DataFrame:
        return self._rank()

    @property
    def per_prompt(self) -> pd.DataFrame:
        return empty_frame(["sentence", "layer", "head", "unit", "distance"])

    @property
    def summary(self) -> pd.DataFrame:
        return self.table.head(10)

    def curve(self, layer: int, head: int, unit: int) -> pd.DataFrame:
        """One unit's mean contribution by distance."""
        L, H, U, _ = self.mean.shape
        layer = _check_index(layer, L, "layer", "the profile has layers")
        head = _check_index(head, H, "head", "the profile has heads")
        unit = _check_index(unit, U, "unit", "the profile has units")
        m = self.mean[layer, head, unit]
        return pd.DataFrame({"distance": np.arange(len(m)), "contribution": m, "count": self.counts[layer, head]})

    def ranked(self, *, min_distance: int = 1, max_distance: int | None = None, by: str = "decay",
               min_count: int = 1) -> DecayProfile:
        """The same profile, its ``table`` ranked with these options.

        Over distances ``min_distance..max_distance`` with at least ``min_count`` token pairs:
        ``spearman`` = rank correlation of mean contribution with distance (-1: strictly
        falling), ``slope`` = least-squares slope (score units per token), ``decay`` =
        ``-slope * span``, the fitted fall of the score over the distances the head is ranked at
        (``span``: last minus first; a sliding-window layer sees only its window), ``near``/``far`` =
        mean contribution at the first/last of them. Sorted by ``by`` (``decay``:
        largest first; ``spearman``/``slope``: most negative first).
        """
        if by not in _RANKINGS:
            raise InvalidInput(f"unknown ranking {by!r}; valid: {', '.join(_RANKINGS)}")
        if not is_integer(min_distance) or min_distance < 0:  # 1.5 and 3.5 were taken as bounds, "1" failed in numpy
            raise InvalidInput(f"min_distance must be an integer >= 0, got {min_distance!r}")
        max_distance = check_max_distance(max_distance)
        min_count = check_positive_int(min_count, "min_count")  # 0 let in distances with no pairs: NaN rankings
        D = self.mean.shape[-1]
        hi = D - 1 if max_distance is None else min(max_distance, D - 1)
        if not 0 <= min_distance < hi:
            raise InvalidInput(f"need 0 <= min_distance < max_distance <= {D - 1}, got {min_distance}..{hi}")
        return dataclasses.replace(self, min_distance=min_distance, max_distance=max_distance, by=by, min_count=min_count)

    def ranking(self, *, min_distance: int = 1, max_distance: int | None = None, by: str = "decay",
                min_count: int = 1) -> pd.DataFrame:
        """Deprecated: ``profile.table``, or ``profile.ranked(...).table`` with options."""
        deprecated("DecayProfile.ranking(...)", "DecayProfile.table, or DecayProfile.ranked(...).table with options")
        return self.ranked(min_distance=min_distance, max_distance=max_distance, by=by, min_count=min_count).table

    def _hi(self) -> int:
        D = self.mean.shape[-1]
        return D - 1 if self.max_distance is None else min(self.max_distance, D - 1)

    def _window(self) -> np.ndarray:
        """``[layer, head, distance]``: the distances each head is ranked over."""
        d = np.arange(self.mean.shape[-1])
        return (d >= self.min_distance) & (d <= self._hi()) & (self.counts >= self.min_count)

    def _check_rankable(self) -> None:
        """Raise :class:`InvalidInput` unless some head has the 3 distances a ranking needs
        (texts too short left an empty table, and ``plot`` a raw pandas error)."""
        if self._window().sum(-1).max(initial=0) < 3:
            raise InvalidInput(
                f"need at least 3 ranked distances ({self.min_distance}..{self._hi()}, each with >= {self.min_count} "
                f"query-key pairs) to rank the units, but the profile holds distances up to {self.mean.shape[-1] - 1} "
                "(the texts' length or decay_neurons(max_distance=...) sets that); give longer texts or a larger "
                "max_distance")

    def _rank(self) -> pd.DataFrame:
        from scipy.stats import spearmanr

        L, H, U, D = self.mean.shape
        window = self._window()
        rows = []
        for layer in range(L):
            for head in range(H):
                ok = window[layer, head]
                d = np.arange(D)[ok]
                if len(d) < 3:
                    continue
                ys = self.mean[layer, head][:, ok]  # [unit, distance]
                dc = d - d.mean()
                slopes = (ys - ys.mean(1, keepdims=True)) @ dc / (dc @ dc)
                for u in range(U):
                    rho = spearmanr(d, ys[u]).statistic if np.ptp(ys[u]) > 0 else 0.0
                    rows.append((layer, head, u, slopes[u], float(rho), ys[u, 0], ys[u, -1], d[-1] - d[0]))
        df = pd.DataFrame(rows, columns=["layer", "head", "unit", "slope", "spearman", "near", "far", "span"])
        # the fall over the distances this head is ranked at: a sliding-window layer sees only its window,
        # and a line stretched past it would rank such heads first for a fall they never have
        df["decay"] = -df["slope"] * df["span"]
        half = self.d_head // 2
        df["dims"] = [f"{u},{u + half}" if self.pairs else f"{u}" for u in df["unit"]]
        return df[_RANK_COLUMNS].sort_values(self.by, ascending=self.by != "decay").reset_index(drop=True)

    def plot(self, ax=None, *, units: Sequence[tuple[int, int, int]] | None = None):
        """Mean contribution vs distance for ``units`` (``(layer, head, unit)`` triples; default: the table's top 3)."""
        from attnlab.viz.plots import context_window_curves

        if ax is not None and not hasattr(ax, "plot"):  # the old signature: plot(units)
            deprecated("DecayProfile.plot(units)", "DecayProfile.plot(units=...)")
            ax, units = None, ax
        if units is None:
            self._check_rankable()
            units = list(self.table[["layer", "head", "unit"]].head(3).itertuples(index=False, name=None))
        if isinstance(units, (str, bytes)) or not isinstance(units, Iterable):
            raise InvalidLocation(f"units must be a list of (layer, head, unit) triples or None, got {units!r}")
        units = list(units)
        if not units:  # pandas' "No objects to concatenate"
            raise InvalidLocation("units is empty: give at least one (layer, head, unit) triple, or None for the table's top 3")
        for i, u in enumerate(units):  # a pair failed unpacking with Python's bare ValueError
            if not (isinstance(u, (tuple, list)) and len(u) == 3):
                raise InvalidLocation(f"units[{i}] must be a (layer, head, unit) triple, got {u!r}")
        kind = "pair" if self.pairs else "dim"
        curves = pd.concat([
            self.curve(layer, head, unit).assign(unit=f"L{layer} H{head} {kind} {unit}") for layer, head, unit in units
        ], ignore_index=True).rename(columns={"contribution": "mean score contribution"})
        fig = context_window_curves(curves, y="mean score contribution", group="unit", reference=0.0, markers=False,
                                    title=f"{self.model_name}: distance-decay neurons", ax=ax)
        return fig


@torch.no_grad()
def decay_neurons(
    model,
    corpus,
    *,
    max_distance: int | None = None,
    layers: Sequence[int] | None = None,
    pairs: bool | None = None,
    ignore_first: bool = True,
    progress: bool = True,
) -> DecayProfile:
    """Mean contribution of every q/k unit of every head, by query-key distance, over ``corpus``.

    ``pairs`` (default: the model is rotary) groups dims d and d + d_head/2. Masked
    query-key pairs (causal, sliding window) are skipped, and so is key 0 when
    ``ignore_first`` (the BOS / [CLS] sink has an atypical key and would dominate the
    longest distances). Texts run one at a time (no padding) through the engine, with no
    LM head. The result's ``table`` ranks the units; ``ranked(...)`` re-ranks them.
    Texts too short for 3 ranked distances are refused (:class:`InvalidInput`).

    >>> from attnlab.testing import tiny_model
    >>> prof = decay_neurons(tiny_model("llama"), ["the nurse said that she left the house ."], progress=False)
    >>> prof.mean.shape  # layer, head, rotary pair, distance
    (2, 4, 4, 10)
    """
    from tqdm.auto import tqdm

    max_distance = check_max_distance(max_distance)
    pairs = _pairs(model, pairs)
    check_flag(ignore_first, "ignore_first")  # "no" is truthy: key 0 was left out
    # an int is one layer (layers=1 failed iterating it); [] is refused (it said "give longer texts"); [1, 1] is layer 1
    layer_list = list(dict.fromkeys(_index_list(layers, model.cfg.n_layers, "layers", model.check_layer)))
    sentences = prepare(model, corpus)
    longest = max(s.n_tokens for s in sentences)
    D = longest if max_distance is None else min(max_distance + 1, longest)
    H, d = model.cfg.n_heads, model.cfg.d_head
    sums = torch.zeros(len(layer_list), H, d, D, dtype=torch.float64)
    counts = torch.zeros(len(layer_list), H, D, dtype=torch.float64)
    sites = {layer: [hook_name(layer, site) for site in ("q", "k", "attn_scores")] for layer in layer_list}
    names = [name for layer in layer_list for name in sites[layer]]
    check_deterministic(model)
    for s in tqdm(sentences, desc="decay neurons", disable=not progress):
        cache = run(model, model.pad([s.token_ids]), logits=None, read=names).cache
        n = s.n_tokens
        for li, layer in enumerate(layer_list):
            q_name, k_name, scores_name = sites[layer]
            q = cache[q_name][0].double().cpu()  # [pos, head, d]
            k = cache[k_name][0].double().cpu()
            vis = (~masked(cache[scores_name][0])).double().cpu()  # [head, q, k]: 1 where the key is visible
            if ignore_first:
                vis[..., 0] = 0.0
            for dist in range(min(D, n)):
                prod = q[dist:] * k[: n - dist]  # query i = j + dist, key j: [n - dist, head, d]
                v = torch.diagonal(vis, offset=-dist, dim1=-2, dim2=-1)  # [head, n - dist]
                if not model.cfg.is_causal and dist > 0:  # encoders: pool both sides (|i - j|)
                    prod = torch.cat([prod, q[: n - dist] * k[dist:]], 0)
                    v = torch.cat([v, torch.diagonal(vis, offset=dist, dim1=-2, dim2=-1)], 1)
                sums[li, :, :, dist] += torch.einsum("phd,hp->hd", prod, v)
                counts[li, :, dist] += v.sum(-1)
    mean = sums * model.cfg.scaling / counts[:, :, None, :].clamp_min(1)  # [layer, head, d, dist]
    mean = _to_units(mean.movedim(2, -1), pairs).movedim(-1, 2)  # [layer, head, unit, dist]
    mean = mean.masked_fill(counts[:, :, None, :] == 0, float("nan"))
    full_mean = np.full((model.cfg.n_layers, H, mean.shape[2], D), np.nan)
    full_counts = np.zeros((model.cfg.n_layers, H, D))
    full_mean[layer_list] = mean.numpy()
    full_counts[layer_list] = counts.numpy()
    profile = DecayProfile(mean=full_mean, counts=full_counts, pairs=pairs, d_head=d, model_name=model.cfg.name)
    profile._check_rankable()
    return profile


def __getattr__(name: str):
    if name == "NeuronView":  # the old name of NeuronData
        deprecated("attnlab.analysis.neurons.NeuronView", "attnlab.analysis.neurons.NeuronData")
        return NeuronData
    raise AttributeError(f"module 'attnlab.analysis.neurons' has no attribute {name!r}")
