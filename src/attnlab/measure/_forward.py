"""One forward pass over metric rows, returning exactly what the metric reads (via the engine), and the check
every measurement makes of the model before its first pass."""

from __future__ import annotations

import torch

from attnlab.engine.config import ModelConfig
from attnlab.engine.dropout import check_deterministic
from attnlab.engine.forward import run
from attnlab.errors import InvalidInput
from attnlab.measure._rows import Rows

__all__ = ["metric_output", "check_model", "check_measurable", "check_deterministic"]


def check_model(model) -> None:
    """The first check of every public measurement: ``model`` is an attnlab model (not a name, an HF model, None)."""
    if not isinstance(getattr(model, "cfg", None), ModelConfig):
        raise InvalidInput(f"model must be an attnlab model (attnlab.load(name), HookedModel(hf_model, tokenizer) or "
                           f"attnlab.testing.tiny_model(...)), got {type(model).__name__} {repr(model)[:60]}")


def check_measurable(model, metric) -> None:
    """What every public measurement checks of ``model`` before its first forward pass (the metric fits it, the
    passes are deterministic)."""
    metric.check_model(model)
    check_deterministic(model)


def metric_output(model, rows: Rows, metric, **options) -> torch.Tensor:
    """``[row, vocab]`` logits at ``rows.data["read"]``, else ``[row, pos, vocab]`` logits or ``[row, pos, d_model]`` hidden.

    ``vocab`` is only the ids ``metric.vocab(rows)`` names when it names some (the engine then
    computes only those rows of the LM head: every score, effect, sweep and attribution gets
    that here). ``options`` go to :func:`attnlab.engine.forward.run` (``resume=``,
    ``keep_layers=``, ``hooks=``, ...); with ``keep_layers`` the kept prefix is returned as a
    second value. Every row names its prompt to the hooks (``row_keys``), so per-prompt random
    draws do not depend on how the rows were chunked.
    """
    options.setdefault("row_keys", rows.prompt_index)
    if metric.output == "hidden":
        out = run(model, rows.tokens, logits=None, hidden=True, **options)
        value = out.hidden
    elif rows.positions == "read":
        out = run(model, rows.tokens, logits=rows.data["read"][:, None], vocab=metric.vocab(rows), **options)
        value = out.logits[:, 0]
    else:
        out = run(model, rows.tokens, logits="all", vocab=metric.vocab(rows), **options)
        value = out.logits
    return (value, out.prefix) if options.get("keep_layers") else value
