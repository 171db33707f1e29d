"""One forward pass over metric rows, returning exactly what the metric reads.

For metrics that read one position per row, the LM head runs only at the positions read
(``logits_to_keep``, where the HF model accepts it): on a 262k-token vocabulary the head
costs as much as all of Gemma-3-270m's layers together, so this alone halves a sweep.
"""

from __future__ import annotations

import inspect

import torch

from attnlab.measure._rows import Rows

__all__ = ["metric_output", "supports_logits_to_keep"]


def supports_logits_to_keep(model) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.hf_model.forward).parameters
    except (TypeError, ValueError):
        return False


def metric_output(model, rows: Rows, output: str) -> torch.Tensor:
    """``[row, vocab]`` logits at ``rows.data["read"]``, else ``[row, pos, vocab]`` logits or ``[row, pos, d_model]`` hidden."""
    ids, mask = rows.input_ids.to(model.device), rows.attention_mask.to(model.device)
    kwargs = {"use_cache": False} if model.cfg.is_causal else {}
    if output == "hidden":
        return model(ids, attention_mask=mask, return_type="hidden", **kwargs)
    if rows.positions == "read":
        read = rows.data["read"].to(ids.device)
        if supports_logits_to_keep(model):
            keep = torch.unique(read)  # sorted
            logits = model.hf_model(input_ids=ids, attention_mask=mask, logits_to_keep=keep, **kwargs).logits
            return logits[torch.arange(len(read), device=ids.device), torch.searchsorted(keep, read)]
        logits = model(ids, attention_mask=mask, **kwargs)
        return logits[torch.arange(len(read), device=ids.device), read]
    return model(ids, attention_mask=mask, **kwargs)
