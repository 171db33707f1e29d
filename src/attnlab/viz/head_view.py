"""Head view: attention lines between tokens for one layer at a time, one colour per head."""

from __future__ import annotations

from collections.abc import Sequence

from attnlab.viz._data import DEFAULT_MAX_TOKENS, attention_payload, check_model
from attnlab.viz._html import View

__all__ = ["head_view"]


def head_view(
    model,
    text,
    *,
    layers: int | Sequence[int] | None = None,
    heads: int | Sequence[int] | None = None,
    layer: int | None = None,
    interventions=(),
    max_tokens: int = DEFAULT_MAX_TOKENS,
    threshold: float = 0.01,
) -> View:
    """Lines from each query token (left) to the keys it attends to (right), as in Vig 2019.

    >>> from attnlab.testing import tiny_model
    >>> view = head_view(tiny_model("gpt2"), "the nurse said that she", layers=[1])
    >>> len(view.data["attention"][0])  # heads of layer 1
    4

    ``text`` is a string, a ``(sentence_a, sentence_b)`` pair for encoders (adds the
    A->A, B->B, A->B, B->A filter) or one row of token ids. ``layers``/``heads`` restrict
    what the page holds (it grows as layers x heads x tokens^2); ``layer`` is the one shown
    first. ``interventions`` (attnlab specs) are applied while reading the patterns. Lines
    below ``threshold`` are not drawn. Returns a :class:`View` (``.html``, ``.save(path)``).
    """
    check_model(model, "head view")
    # the engine's check, as for layers=, before any forward pass: ``True in [1]`` and ``1.0 in [1]``
    # hold, so the membership test alone took True or 1.0 for layer 1
    layer = None if layer is None else model.check_layer(layer)
    data, _ = attention_payload(
        model, text, kind="head", title="Head view", layers=layers, heads=heads,
        interventions=interventions, max_tokens=max_tokens, threshold=threshold,
    )
    data["layer"] = _start_layer(layer, data["layers"], model)
    return View("head", f"Head view: {model.cfg.name}", data)


def _start_layer(layer, layers: list[int], model) -> int:
    from attnlab.errors import InvalidLocation

    if layer is None:
        return 0
    if layer not in layers:
        raise InvalidLocation(f"layer {layer!r} is not among the layers shown ({layers}) of {model.cfg.name}")
    return layers.index(layer)
