"""Model view: every layer x head as a small line drawing; click one to enlarge it."""

from __future__ import annotations

from collections.abc import Sequence

from attnlab.viz._data import DEFAULT_MAX_TOKENS, attention_payload
from attnlab.viz._html import View
from attnlab.errors import InvalidInput, is_integer

__all__ = ["model_view"]


def model_view(
    model,
    text,
    *,
    layers: int | Sequence[int] | None = None,
    heads: int | Sequence[int] | None = None,
    interventions=(),
    max_tokens: int = DEFAULT_MAX_TOKENS,
    threshold: float = 0.01,
    thumbnail: int = 76,
) -> View:
    """A grid of thumbnails, rows = layers and columns = heads, to spot head types at a glance.

    >>> from attnlab.testing import tiny_model
    >>> view = model_view(tiny_model("bert"), ("the nurse said", "she was happy"))
    >>> len(view.data["attention"]), len(view.data["attention"][0])
    (2, 4)

    Same inputs and options as :func:`attnlab.viz.head_view`; ``thumbnail`` is the side of
    each thumbnail in pixels.
    """
    if not is_integer(thumbnail) or not 24 <= thumbnail <= 400:
        raise InvalidInput(f"thumbnail must be an integer number of pixels in 24..400, got {thumbnail!r}")
    thumbnail = int(thumbnail)
    data, _ = attention_payload(
        model, text, kind="model", title="Model view", layers=layers, heads=heads,
        interventions=interventions, max_tokens=max_tokens, threshold=threshold,
    )
    data["thumbnail"] = thumbnail
    return View("model", f"Model view: {model.cfg.name}", data)
