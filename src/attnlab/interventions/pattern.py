"""Overwrite attention patterns (probabilities) and pre-softmax scores of chosen heads.

Patterns live on ``hook_pattern`` ([batch, head, query, key]); scores on
``hook_attn_scores``, where masked entries (causal, padding, sliding window) hold the
dtype's minimum and stay masked whatever an edit adds.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from attnlab.errors import InvalidSpec, ShapeMismatch
from attnlab.interventions._base import Intervention, as_index_tuple, register, tensor_or_none

__all__ = ["SetPattern", "BlockKeys", "EditScores"]


def _fit(value: torch.Tensor, x: torch.Tensor, what: str) -> torch.Tensor:
    """Broadcast a ``[query, key]``, ``[batch, query, key]`` or full-shape tensor onto ``x``."""
    q, k = x.shape[-2:]
    if value.shape[-2:] != (q, k):
        raise ShapeMismatch(f"{what} has shape {tuple(value.shape)} but this input needs [..., {q}, {k}] (query x key)")
    if value.ndim == 2:
        value = value[None, None]
    elif value.ndim == 3:
        if value.shape[0] not in (1, x.shape[0]):
            raise ShapeMismatch(f"{what} has {value.shape[0]} rows but the batch has {x.shape[0]}")
        value = value[:, None]
    elif value.ndim != 4:
        raise ShapeMismatch(f"{what} must be [query, key], [batch, query, key] or [batch, head, query, key]")
    return value.to(device=x.device, dtype=x.dtype).expand_as(x)


def _check_rows_sum_to_one(pattern: torch.Tensor, what: str) -> None:
    sums = pattern.sum(dim=-1)
    worst = (sums - 1).abs().max().item() if sums.numel() else 0.0
    if worst > 1e-4:
        raise InvalidSpec(
            f"{what} rows must sum to 1 over keys (largest deviation {worst:.3g}); "
            "pass renormalize=True to rescale them or allow_unnormalized=True to use them as they are"
        )


@register
class SetPattern(Intervention):
    """Set a head's attention pattern to a given tensor, or transform it with a function.

    ``pattern``: ``[query, key]`` (or ``[batch, query, key]``) probabilities. ``fn``: a
    function of the current ``[batch, head, query, key]`` pattern returning a new one (not
    JSON-serialisable). ``renormalize`` rescales each row to sum to 1 after the edit.
    """

    kind = "set_pattern"
    site = "pattern"
    fields = ("pattern", "fn", "renormalize", "allow_unnormalized")
    defaults = {"pattern": None, "fn": None, "renormalize": False, "allow_unnormalized": False}

    def __init__(
        self,
        layer: int,
        head=None,
        *,
        pattern=None,
        fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        renormalize: bool = False,
        allow_unnormalized: bool = False,
        positions=None,
        rows=None,
    ):
        super().__init__(layer, head, positions=positions, rows=rows)
        if (pattern is None) == (fn is None):
            raise InvalidSpec("SetPattern needs exactly one of pattern= (a tensor) or fn= (a function)")
        if fn is not None and not callable(fn):
            raise InvalidSpec(f"fn must be callable, got {type(fn).__name__}")
        self.pattern = tensor_or_none(pattern, "pattern")
        if self.pattern is not None:
            if self.pattern.ndim not in (2, 3, 4):
                raise ShapeMismatch(
                    f"pattern must be [query, key], [batch, query, key] or [batch, head, query, key], "
                    f"got {tuple(self.pattern.shape)}"
                )
            if (self.pattern < 0).any():
                raise InvalidSpec("pattern has negative entries; attention probabilities must be >= 0")
            if not renormalize and not allow_unnormalized:
                _check_rows_sum_to_one(self.pattern, "pattern")
        self.fn = fn
        self.renormalize = bool(renormalize)
        self.allow_unnormalized = bool(allow_unnormalized)

    def edit_fn(self, model):
        def edit(x, hook):
            if self.pattern is not None:
                new = _fit(self.pattern, x, "pattern")
            else:
                new = self.fn(x.clone())
                if not isinstance(new, torch.Tensor) or new.shape != x.shape:
                    raise ShapeMismatch(
                        f"SetPattern fn must return a tensor of shape {tuple(x.shape)}, got "
                        f"{tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__}"
                    )
                if not torch.isfinite(new).all():
                    raise InvalidSpec("SetPattern fn returned NaN or inf values")
            if self.renormalize:
                new = new / new.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(new.dtype).tiny)
            return new

        return edit


@register
class BlockKeys(Intervention):
    """Stop heads attending to given key positions (and renormalise the rest, by default)."""

    kind = "block_keys"
    site = "pattern"
    fields = ("keys", "renormalize")
    defaults = {"renormalize": True}

    def __init__(self, layer: int, head=None, *, keys, renormalize: bool = True, positions=None, rows=None):
        super().__init__(layer, head, positions=positions, rows=rows)
        keys = as_index_tuple(keys, "keys")
        if keys is None:
            raise InvalidSpec("BlockKeys needs keys= (the key positions to block: an int or a list of ints)")
        self.keys = list(keys)
        self.renormalize = bool(renormalize)

    def edit_fn(self, model):
        def edit(x, hook):
            n_keys, first = x.shape[-1], getattr(hook, "key_offset", 0)
            keys = [k - first for k in self.keys if 0 <= k - first < n_keys]
            new = x.clone()
            new[..., keys] = 0
            if self.renormalize:
                new = new / new.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(new.dtype).tiny)
            return new

        return edit


@register
class EditScores(Intervention):
    """Add to or replace pre-softmax scores; masked entries stay masked.

    ``add``/``replace``: ``[query, key]`` (or batched) tensors. ``distance_penalty``: a
    slope ``s`` giving ``score - s * |query_pos - key_pos|`` (positive s narrows attention).
    ``replace=0`` everywhere makes the pattern uniform over the keys a query may see.
    """

    kind = "edit_scores"
    site = "attn_scores"
    fields = ("add", "replace", "distance_penalty")
    defaults = {"add": None, "replace": None, "distance_penalty": None}

    def __init__(self, layer: int, head=None, *, add=None, replace=None, distance_penalty=None, positions=None, rows=None):
        super().__init__(layer, head, positions=positions, rows=rows)
        given = [v is not None for v in (add, replace, distance_penalty)]
        if sum(given) != 1:
            raise InvalidSpec("EditScores needs exactly one of add=, replace= or distance_penalty=")
        self.add = tensor_or_none(add, "add")
        self.replace = tensor_or_none(replace, "replace")
        if distance_penalty is not None:
            if not isinstance(distance_penalty, (int, float)) or distance_penalty != distance_penalty:
                raise InvalidSpec(f"distance_penalty must be a finite number, got {distance_penalty!r}")
            distance_penalty = float(distance_penalty)
        self.distance_penalty = distance_penalty

    def edit_fn(self, model):
        def edit(x, hook):
            masked = x <= torch.finfo(x.dtype).min / 2
            if self.distance_penalty is not None:
                q, k = x.shape[-2:]
                q_abs = torch.arange(hook.query_offset, hook.query_offset + q, device=x.device)
                k_abs = torch.arange(hook.key_offset, hook.key_offset + k, device=x.device)
                dist = (q_abs[:, None] - k_abs[None, :]).abs().to(x.dtype)
                new = x - self.distance_penalty * dist
            elif self.add is not None:
                add = self.add.expand(x.shape[-2:]) if self.add.ndim == 0 else self.add
                new = x + _fit(add, x, "add")
            else:
                value = self.replace if self.replace.ndim > 0 else self.replace.expand(x.shape[-2:])
                new = _fit(value, x, "replace")
            return new.masked_fill(masked, torch.finfo(x.dtype).min)

        return edit
