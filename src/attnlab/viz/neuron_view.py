"""Neuron view (Vig 2019): how one head's query and key vectors produce its attention.

For a query token and each key: q, k, their elementwise product q*k (whose sum is the raw
score), the scaled score q.k and the softmax. q and k are read at ``hook_q``/``hook_k``,
i.e. after rotary embeddings and q/k norms, exactly what the scores are computed from; the
scale is the model's own (``model.cfg.scaling``). The same numbers for one head and query,
as tables, come from :func:`attnlab.analysis.neuron_data`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from einops import einsum

from attnlab.engine.attention import masked
from attnlab.errors import InvalidLocation, is_integer
from attnlab.viz._data import base_payload, check_model, interventions_tuple, read_sites, select, to_list, view_input
from attnlab.viz._html import View

__all__ = ["neuron_view"]


def neuron_view(
    model,
    text,
    *,
    layers: int | Sequence[int] | None = None,
    heads: int | Sequence[int] | None = None,
    query: int | None = None,
    interventions=(),
    max_tokens: int = 32,
) -> View:
    """q, k, q*k, q.k and softmax for every selected layer/head and every query token.

    >>> from attnlab.testing import tiny_model
    >>> view = neuron_view(tiny_model("llama"), "the nurse said that she", layers=0, heads=[1])
    >>> len(view.data["q"][0][0][0])  # d_head
    8

    The page holds q and k (layers x heads x tokens x d_head each), so the default token
    cap is smaller than the other views'; restrict ``layers``/``heads`` for big models.
    ``query`` is the token selected first (default: the last token of a decoder, the first
    word of an encoder input).
    """
    check_model(model, "neuron view")
    specs = interventions_tuple(interventions)
    layer_list = select(model, layers, "layer")
    head_list = select(model, heads, "head")
    source = view_input(model, text, max_tokens=max_tokens, view="neuron view")
    n = source.n_tokens
    if query is None:
        query = n - 1 if model.cfg.is_causal else min(1, n - 1)
    if not is_integer(query) or not 0 <= query < n:
        raise InvalidLocation(f"query token {query!r} out of range: this input has tokens 0..{n - 1}")
    query = int(query)
    sites = read_sites(model, source, layer_list, ["q", "k", "attn_scores", "pattern"], specs)
    data = base_payload(model, source, "neuron", "Neuron view", layer_list, head_list, specs)
    data["query"] = query
    data["q"], data["k"], data["scores"], data["attention"], data["scales"] = [], [], [], [], []
    # Gemma 2 style logit soft-capping: scores = cap * tanh(scale * q.k / cap), not scale * q.k
    data["softcaps"] = [softcap(model, layer) for layer in layer_list]
    for layer in layer_list:
        q = sites[(layer, "q")][:, head_list]  # [pos, head, d_head]
        k = sites[(layer, "k")][:, head_list]
        scores = sites[(layer, "attn_scores")][head_list]  # [head, query, key]
        hidden = masked(torch.from_numpy(scores)).numpy()  # keys the query cannot see
        data["q"].append(to_list(np.moveaxis(q, 1, 0), 3))  # [head, pos, d_head]
        data["k"].append(to_list(np.moveaxis(k, 1, 0), 3))
        rounded = np.round(scores.astype(np.float64), 4).astype(object)
        rounded[hidden] = None
        data["scores"].append(rounded.tolist())
        data["attention"].append(to_list(sites[(layer, "pattern")][head_list]))
        data["scales"].append(model.cfg.scaling)
    return View("neuron", f"Neuron view: {model.cfg.name}", data)


def softcap(model, layer: int) -> float | None:
    """The soft cap the model applies to layer ``layer``'s scores (``cap * tanh(s / cap)``), or None.

    Read from the attention module, which passes it to the attention function
    (``attn_logit_softcapping`` on Gemma 2): what the model really does, as for the scale.
    """
    return model.layout.blocks[layer].score_softcap


def effective_scale(q: np.ndarray, k: np.ndarray, scores: np.ndarray, masked: np.ndarray) -> float:
    """Deprecated: the scale is ``model.cfg.scaling``. The factor s with scores = s * (q . k), by least squares."""
    warnings.warn("attnlab.viz.neuron_view.effective_scale is deprecated and will be removed in the next release; "
                  "use model.cfg.scaling", DeprecationWarning, stacklevel=2)
    dots = einsum(q.astype(np.float64), k.astype(np.float64), "qp h d, kp h d -> h qp kp")
    keep = ~masked
    denom = float((dots[keep] ** 2).sum())
    return float((scores.astype(np.float64)[keep] * dots[keep]).sum() / denom) if denom > 0 else 1.0
