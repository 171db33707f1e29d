"""Diff view: the same input's attention clean and under interventions, side by side and as a difference.

No other attention viewer shows this: which heads an ablation or edit changed (directly,
or downstream through the residual stream), and how each changed head's pattern moved.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from attnlab.engine.attention import masked
from attnlab.errors import InvalidInput, InvalidLocation
from attnlab.viz._data import (
    DEFAULT_MAX_TOKENS, base_payload, check_model, check_threshold, interventions_tuple, read_sites, select, to_list,
    view_input,
)
from attnlab.viz._html import View

__all__ = ["diff_view"]


def diff_view(
    model,
    text,
    interventions,
    *,
    layers: int | Sequence[int] | None = None,
    heads: int | Sequence[int] | None = None,
    start: tuple[int, int] | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    threshold: float = 0.01,
) -> View:
    """Run ``text`` once clean and once inside ``model.intervene(*interventions)``; show both patterns.

    >>> from attnlab.testing import tiny_model
    >>> from attnlab.interventions import BlockKeys
    >>> view = diff_view(tiny_model("gpt2"), "the nurse said that she", [BlockKeys(1, 2, keys=[0])])
    >>> view.data["start"]  # the (layer, head) whose pattern changed most is shown first
    [1, 2]

    The grid colours each layer x head by the largest change of any attention weight; the
    detail panel shows the chosen head clean (lines), intervened (lines) and intervened
    minus clean as a red (more attention) / blue (less) heatmap. ``start`` picks the head
    shown first as ``(layer, head)``; default: the head that changed most.
    """
    check_model(model, "diff view")
    specs = interventions_tuple(interventions)
    if not specs:
        raise InvalidInput("diff_view needs at least one intervention (e.g. AblateHead(layer, head)) to compare against")
    layer_list = select(model, layers, "layer")
    head_list = select(model, heads, "head")
    threshold = check_threshold(threshold)
    start = _start(model, start, layer_list, head_list)
    for spec in specs:  # fail before any forward pass
        spec.validate(model.cfg)
    source = view_input(model, text, max_tokens=max_tokens, view="diff view")
    # the clean scores say which keys each query cannot see (edits keep masked scores masked)
    clean = read_sites(model, source, layer_list, ["pattern", "attn_scores"])
    edited = read_sites(model, source, layer_list, ["pattern"], specs)

    def payload(arr: np.ndarray, hidden: np.ndarray) -> list:
        out = np.round(arr.astype(np.float64), 4).astype(object)
        out[~np.isfinite(arr)] = None  # JSON has no NaN
        # masked keys (a decoder's future, outside a sliding window) are "masked", not "zero attention":
        # a fixed causal triangle showed out-of-window keys of Gemma's sliding layers as 0
        out[hidden] = None
        return out.tolist()

    data = base_payload(model, source, "diff", "Diff view", layer_list, head_list, specs)
    data["threshold"] = threshold
    data["clean"], data["intervened"], data["change"] = [], [], []
    for layer in layer_list:
        c = clean[(layer, "pattern")][head_list]
        e = edited[(layer, "pattern")][head_list]
        # a pattern edit (SetPattern) may put weight on a masked key: that weight is shown
        hidden = masked(torch.from_numpy(clean[(layer, "attn_scores")][head_list])).numpy() & (e == 0)
        data["clean"].append(payload(c, hidden))
        data["intervened"].append(payload(e, hidden))
        data["change"].append(to_list(np.abs(e - c).max(axis=(1, 2))))
    change = np.asarray(data["change"])
    data["max_change"] = float(change.max())
    if start is None:
        start = np.unravel_index(int(change.argmax()), change.shape)
    data["start"] = [int(i) for i in start]
    return View("diff", f"Diff view: {model.cfg.name}", data)


def _start(model, start, layer_list: list[int], head_list: list[int]) -> tuple[int, int] | None:
    """``start=(layer, head)`` as positions in the layers x heads shown, checked before any forward pass."""
    if start is None:
        return None
    if not (isinstance(start, (tuple, list)) and len(start) == 2):
        raise InvalidInput(f"start must be a (layer, head) pair, got {start!r}")
    # the engine's checks, as for layers=/heads=: a membership test alone took (True, 0.0) for (1, 0)
    layer, head = model.check_layer(start[0]), model.check_head(start[1])
    if layer not in layer_list or head not in head_list:
        raise InvalidLocation(f"start {(layer, head)} is not among the layers {layer_list} x heads {head_list} shown")
    return layer_list.index(layer), head_list.index(head)
