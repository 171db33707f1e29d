"""One forward pass over metric rows, returning exactly what the metric reads.

For metrics that read one position per row, the LM head runs only at that position: a
forward pre-hook on the model's output embedding gathers each row's read position before
the head is applied (anything the model does after the head, such as Gemma's logit
soft-capping, still runs). On a 262k-token vocabulary the head costs as much as all of
Gemma-3-270m's layers together, so this alone roughly halves a sweep.
"""

from __future__ import annotations

import torch

from attnlab.measure._rows import Rows

__all__ = ["metric_output"]


def metric_output(model, rows: Rows, output: str) -> torch.Tensor:
    """``[row, vocab]`` logits at ``rows.data["read"]``, else ``[row, pos, vocab]`` logits or ``[row, pos, d_model]`` hidden."""
    ids, mask = rows.input_ids.to(model.device), rows.attention_mask.to(model.device)
    kwargs = {"use_cache": False} if model.cfg.is_causal else {}
    if output == "hidden":
        return model(ids, attention_mask=mask, return_type="hidden", **kwargs)
    if rows.positions != "read":
        return model(ids, attention_mask=mask, **kwargs)
    read = rows.data["read"].to(ids.device)
    at = torch.arange(len(read), device=ids.device)
    head = model.hf_model.get_output_embeddings()

    def gather(module, args):
        hidden = args[0]
        if isinstance(hidden, torch.Tensor) and hidden.ndim == 3 and hidden.shape[:2] == ids.shape:
            return (hidden[at, read][:, None], *args[1:])  # [row, 1, d_model]
        return None

    handle = head.register_forward_pre_hook(gather) if head is not None else None
    try:
        logits = model(ids, attention_mask=mask, **kwargs)
    finally:
        if handle is not None:
            handle.remove()
    return logits[:, 0] if logits.shape[1] == 1 else logits[at, read]
