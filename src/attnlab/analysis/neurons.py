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

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float

from attnlab.analysis._corpus import capture, prepare
from attnlab.errors import InvalidInput, InvalidLocation

__all__ = [
    "NeuronView", "neuron_view", "is_rotary", "unit_dims", "unit_scores", "head_scale",
    "decay_neurons", "DecayProfile",
]


def is_rotary(model) -> bool:
    """True when the model rotates q and k (Llama, Gemma, ...): its neurons come in pairs."""
    return model.cfg.rotary


def unit_dims(model, unit: int, *, pairs: bool | None = None) -> list[int]:
    """The q/k dimensions of one unit: ``[unit]``, or ``[unit, unit + d_head/2]`` for a rotary pair."""
    pairs = is_rotary(model) if pairs is None else pairs
    n_units = model.cfg.d_head // 2 if pairs else model.cfg.d_head
    if not isinstance(unit, int) or isinstance(unit, bool) or not 0 <= unit < n_units:
        raise InvalidLocation(f"unit {unit!r} out of range: {model.cfg.name} has {'pairs' if pairs else 'dims'} 0..{n_units - 1}")
    return [unit, unit + model.cfg.d_head // 2] if pairs else [unit]


def head_scale(model, layer: int) -> float:
    """The factor the model multiplies q.k by in ``layer`` (1/sqrt(d_head) unless the config says otherwise)."""
    model.check_layer(layer)
    return model.cfg.scaling


def _to_units(x: torch.Tensor, pairs: bool) -> torch.Tensor:
    """Sum the last (d_head) axis into units: pairs (d, d + d_head/2) or single dims."""
    if not pairs:
        return x
    half = x.shape[-1] // 2
    return x[..., :half] + x[..., half:]


def _check_text(model, text) -> dict[str, torch.Tensor]:
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput(f"text must be a non-empty string, got {text!r}")
    return model.tokenize(text)


@torch.no_grad()
def _qk_scores(model, enc, layer: int):
    names = [f"blocks.{layer}.attn.hook_{s}" for s in ("q", "k", "attn_scores", "pattern")]
    cache = capture(model, enc["input_ids"], enc["attention_mask"], names)
    return [cache[n][0].float() for n in names]  # q/k [pos, head, d]; scores/pattern [head, q, k]


@dataclass
class NeuronView:
    """Everything Vig's neuron view shows for one head and one query position.

    ``q`` [d_head]; ``k``, ``qk`` [n_keys, d_head] (``qk = q * k`` elementwise); ``scores``
    [n_keys] = ``scale * qk.sum(-1)``, ``-inf`` where the key is masked (causal, sliding
    window); ``pattern`` [n_keys] = softmax of ``scores`` (equals the model's own pattern).
    """

    model_name: str
    layer: int
    head: int
    query: int
    tokens: list[str]
    q: torch.Tensor
    k: torch.Tensor
    qk: torch.Tensor
    scale: float
    scores: torch.Tensor
    visible: torch.Tensor
    pattern: torch.Tensor
    rotary: bool

    def top_dims(self, key: int, n: int = 5) -> pd.DataFrame:
        """The dimensions contributing most (by magnitude) to the score of one key."""
        if not 0 <= key < len(self.tokens):
            raise InvalidLocation(f"key {key} out of range: keys 0..{len(self.tokens) - 1}")
        contrib = self.qk[key] * self.scale
        idx = contrib.abs().argsort(descending=True)[:n]
        return pd.DataFrame({"dim": idx.tolist(), "q": self.q[idx].tolist(), "k": self.k[key, idx].tolist(),
                             "contribution": contrib[idx].tolist()})


def neuron_view(model, text: str, *, layer: int, head: int, query: int) -> NeuronView:
    """q, k, q*k, scaled scores and softmax for one head and query position of ``text``.

    >>> from attnlab.testing import tiny_model
    >>> v = neuron_view(tiny_model("llama"), "the nurse said that", layer=1, head=2, query=3)
    >>> v.qk.shape, round(float(v.pattern.sum()), 4)
    (torch.Size([5, 8]), 1.0)
    """
    model.check_layer(layer)
    model.check_head(head)
    enc = _check_text(model, text)
    n = enc["input_ids"].shape[1]
    if not isinstance(query, int) or isinstance(query, bool) or not 0 <= query < n:
        raise InvalidLocation(f"query position {query!r} out of range: this text has positions 0..{n - 1}")
    q, k, scores, _ = _qk_scores(model, enc, layer)
    scale = head_scale(model, layer)
    qv, kv = q[query, head], k[:, head]  # [d_head], [key, d_head]
    qk = qv[None] * kv
    visible = scores[head, query] > torch.finfo(torch.float32).min / 2
    dots = (qk.sum(-1) * scale).masked_fill(~visible, float("-inf"))
    return NeuronView(
        model_name=model.cfg.name, layer=layer, head=head, query=query,
        tokens=model.to_str_tokens(enc["input_ids"][0]), q=qv, k=kv, qk=qk, scale=scale,
        scores=dots, visible=visible, pattern=torch.softmax(dots, -1), rotary=is_rotary(model),
    )


def unit_scores(
    model, text: str, *, layer: int, head: int, pairs: bool | None = None
) -> Float[torch.Tensor, "unit query key"]:
    """Each unit's contribution ``scale * q_u . k_u`` to every score of one head on ``text`` (masks ignored)."""
    model.check_layer(layer)
    model.check_head(head)
    pairs = is_rotary(model) if pairs is None else pairs
    q, k, _, _ = _qk_scores(model, _check_text(model, text), layer)
    prod = torch.einsum("qd,kd->dqk", q[:, head], k[:, head]) * head_scale(model, layer)  # [d_head, query, key]
    return _to_units(prod.movedim(0, -1), pairs).movedim(-1, 0)


@dataclass
class DecayProfile:
    """Mean contribution of every unit at every query-key distance over a corpus.

    ``mean`` [layer, head, unit, distance] (NaN where no pair of tokens had that distance),
    ``counts`` [layer, head, distance]. Distances are ``query - key`` (decoders) or
    ``|query - key|`` (encoders).
    """

    mean: np.ndarray
    counts: np.ndarray
    pairs: bool
    d_head: int
    model_name: str

    def curve(self, layer: int, head: int, unit: int) -> pd.DataFrame:
        """One unit's mean contribution by distance."""
        m = self.mean[layer, head, unit]
        return pd.DataFrame({"distance": np.arange(len(m)), "contribution": m, "count": self.counts[layer, head]})

    def ranking(self, *, min_distance: int = 1, max_distance: int | None = None, by: str = "decay",
                min_count: int = 1) -> pd.DataFrame:
        """Rank units by how strongly their mean contribution falls with distance.

        Over distances ``min_distance..max_distance`` with at least ``min_count`` token pairs:
        ``spearman`` = rank correlation of mean contribution with distance (-1: strictly
        falling), ``slope`` = least-squares slope (score units per token), ``decay`` =
        ``-slope * (span)``, the fitted fall of the score over the range, ``near``/``far`` =
        mean contribution at the first/last distance. Sorted by ``by`` (``decay``:
        largest first; ``spearman``/``slope``: most negative first).
        """
        from scipy.stats import spearmanr

        valid_by = ("decay", "spearman", "slope")
        if by not in valid_by:
            raise InvalidInput(f"unknown ranking {by!r}; valid: {', '.join(valid_by)}")
        L, H, U, D = self.mean.shape
        hi = D - 1 if max_distance is None else min(max_distance, D - 1)
        if not 0 <= min_distance < hi:
            raise InvalidInput(f"need 0 <= min_distance < max_distance <= {D - 1}, got {min_distance}..{hi}")
        rows = []
        for layer in range(L):
            for head in range(H):
                ok = np.arange(D) >= min_distance
                ok &= np.arange(D) <= hi
                ok &= self.counts[layer, head] >= min_count
                d = np.arange(D)[ok]
                if len(d) < 3:
                    continue
                ys = self.mean[layer, head][:, ok]  # [unit, distance]
                dc = d - d.mean()
                slopes = (ys - ys.mean(1, keepdims=True)) @ dc / (dc @ dc)
                for u in range(U):
                    rho = spearmanr(d, ys[u]).statistic if np.ptp(ys[u]) > 0 else 0.0
                    rows.append((layer, head, u, slopes[u], float(rho), ys[u, 0], ys[u, -1]))
        df = pd.DataFrame(rows, columns=["layer", "head", "unit", "slope", "spearman", "near", "far"])
        df["decay"] = -df["slope"] * (hi - min_distance)
        half = self.d_head // 2
        df["dims"] = [f"{u},{u + half}" if self.pairs else f"{u}" for u in df["unit"]]
        df = df[["layer", "head", "unit", "dims", "decay", "slope", "spearman", "near", "far"]]
        ascending = by != "decay"
        return df.sort_values(by, ascending=ascending).reset_index(drop=True)

    def plot(self, units: Sequence[tuple[int, int, int]]):
        """Mean contribution vs distance for the given ``(layer, head, unit)`` triples."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        for layer, head, unit in units:
            ax.plot(self.mean[layer, head, unit], label=f"L{layer} H{head} {'pair' if self.pairs else 'dim'} {unit}")
        ax.set_xlabel("query - key distance (tokens)")
        ax.set_ylabel("mean score contribution")
        ax.axhline(0, color="gray", lw=0.5)
        ax.legend(frameon=False, fontsize=8)
        ax.set_title(f"{self.model_name}: distance-decay neurons")
        fig.tight_layout()
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
    longest distances). Texts run one at a time (no
    padding). Call ``.ranking()`` on the result for the strongest decaying units.

    >>> from attnlab.testing import tiny_model
    >>> prof = decay_neurons(tiny_model("llama"), ["the nurse said that she left the house ."], progress=False)
    >>> prof.mean.shape  # layer, head, rotary pair, distance
    (2, 4, 4, 10)
    """
    from tqdm.auto import tqdm

    sentences = prepare(model, corpus)
    pairs = is_rotary(model) if pairs is None else pairs
    layer_list = list(range(model.cfg.n_layers)) if layers is None else [model.check_layer(l) for l in layers]
    longest = max(s.n_tokens for s in sentences)
    D = longest if max_distance is None else min(int(max_distance) + 1, longest)
    if D < 1:
        raise InvalidInput(f"max_distance must be >= 0, got {max_distance!r}")
    H, d = model.cfg.n_heads, model.cfg.d_head
    sums = torch.zeros(len(layer_list), H, d, D, dtype=torch.float64)
    counts = torch.zeros(len(layer_list), H, D, dtype=torch.float64)
    names = [f"blocks.{l}.attn.hook_{s}" for l in layer_list for s in ("q", "k", "attn_scores")]
    floor = torch.finfo(torch.float32).min / 2
    for s in tqdm(sentences, desc="decay neurons", disable=not progress):
        ids = torch.tensor([s.token_ids], device=model.device)
        cache = capture(model, ids, None, names)
        n = s.n_tokens
        for li, layer in enumerate(layer_list):
            q = cache[f"blocks.{layer}.attn.hook_q"][0].double()  # [pos, head, d]
            k = cache[f"blocks.{layer}.attn.hook_k"][0].double()
            vis = (cache[f"blocks.{layer}.attn.hook_attn_scores"][0] > floor).double()  # [head, q, k]
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
    scales = torch.tensor([head_scale(model, l) for l in layer_list], dtype=torch.float64)
    mean = sums * scales[:, None, None, None] / counts[:, :, None, :].clamp_min(1)  # [layer, head, d, dist]
    mean = _to_units(mean.movedim(2, -1), pairs).movedim(-1, 2)  # [layer, head, unit, dist]
    mean = mean.masked_fill(counts[:, :, None, :] == 0, float("nan"))
    full_mean = np.full((model.cfg.n_layers, H, mean.shape[2], D), np.nan)
    full_counts = np.zeros((model.cfg.n_layers, H, D))
    full_mean[layer_list] = mean.numpy()
    full_counts[layer_list] = counts.numpy()
    return DecayProfile(mean=full_mean, counts=full_counts, pairs=pairs, d_head=d, model_name=model.cfg.name)
