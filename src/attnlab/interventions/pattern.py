"""Overwrite attention patterns (probabilities) and pre-softmax scores of chosen heads.

Patterns live on ``hook_pattern`` ([batch, head, query, key]); scores on
``hook_attn_scores``, where masked entries (causal, padding, sliding window) hold the
dtype's minimum and stay masked whatever an edit adds.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from attnlab.engine.attention import masked
from attnlab.engine.finite import all_finite
from attnlab.errors import InvalidLocation, InvalidSpec, ShapeMismatch, check_flag
from attnlab.interventions._base import (
    Intervention,
    as_index_tuple,
    at_token_positions,
    finite_number,
    register,
    tensor_or_none,
)

__all__ = ["SetPattern", "BlockKeys", "EditScores"]


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

    ``pattern``: ``[query, key]`` (or ``[batch, query, key]``) probabilities by token position:
    entry ``[i, j]`` is token ``i`` attending to token ``j`` in every row, padded or not; it is
    sized for the longest row (no larger), and each row reads its own corner (padding on either side and, in
    ``generate()``, every new token keep their own pattern). ``fn``: a
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
        self.renormalize = check_flag(renormalize, "renormalize", error=InvalidSpec)
        self.allow_unnormalized = check_flag(allow_unnormalized, "allow_unnormalized", error=InvalidSpec)

    def make_edit(self, values):
        def edit(x, hook):
            if self.pattern is not None:
                given, covered = at_token_positions(self.pattern, x, hook, "pattern")
                new = torch.where(covered, given, x)  # padding and generated tokens keep their pattern
            else:
                new = self.fn(x.clone())
                if not isinstance(new, torch.Tensor) or new.shape != x.shape:
                    raise ShapeMismatch(
                        f"SetPattern fn must return a tensor of shape {tuple(x.shape)}, got "
                        f"{tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__}"
                    )
                if not all_finite(new):
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
        self.renormalize = check_flag(renormalize, "renormalize", error=InvalidSpec)

    def make_edit(self, values):
        blocked = torch.tensor(self.keys)

        def edit(x, hook):
            key_pos = hook.key_pos  # [batch or 1, key] token positions of this call's key columns
            if key_pos is None or key_pos.shape[-1] != x.shape[-1]:
                key_pos = torch.arange(x.shape[-1])[None, :]
            if not getattr(hook, "generating", False):  # as for positions=: a key past the input would block nothing
                longest = getattr(hook, "n_positions", None) or int(key_pos.max()) + 1
                bad = [k for k in self.keys if k >= longest]
                if bad:
                    raise InvalidLocation(
                        f"key position {bad[0]} out of range: this input has positions 0..{longest - 1}"
                    )
            block = torch.isin(key_pos, blocked).to(x.device)  # same tokens in every row, whatever the padding
            new = x.masked_fill(block[:, None, None, :], 0.0)
            if self.renormalize:
                new = new / new.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(new.dtype).tiny)
            return new

        return edit


@register
class EditScores(Intervention):
    """Add to or replace pre-softmax scores; masked entries stay masked.

    ``add``/``replace``: numbers or ``[query, key]`` (or batched) tensors by token position, as
    ``SetPattern``'s pattern. ``distance_penalty``: a
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
            distance_penalty = finite_number(distance_penalty, "distance_penalty")
        self.distance_penalty = distance_penalty

    def make_edit(self, values):
        def edit(x, hook):
            hidden = masked(x)
            if self.distance_penalty is not None:
                q_pos, k_pos = hook.query_pos, hook.key_pos  # [batch or 1, query], [batch or 1, key]
                if q_pos.shape[-1] != x.shape[-2] or k_pos.shape[-1] != x.shape[-1]:
                    q_pos, k_pos = torch.arange(x.shape[-2])[None], torch.arange(x.shape[-1])[None]
                dist = (q_pos[:, :, None] - k_pos[:, None, :]).abs().to(device=x.device, dtype=x.dtype)
                new = x - self.distance_penalty * dist[:, None]
            elif self.add is not None:
                if self.add.ndim == 0:
                    new = x + self.add.to(device=x.device, dtype=x.dtype)
                else:
                    given, covered = at_token_positions(self.add, x, hook, "add")
                    new = x + torch.where(covered, given, torch.zeros_like(given))
            elif self.replace.ndim == 0:
                new = torch.full_like(x, float(self.replace))
            else:
                given, covered = at_token_positions(self.replace, x, hook, "replace")
                new = torch.where(covered, given, x)
            new = new.masked_fill(hidden, torch.finfo(x.dtype).min)
            if not all_finite(new):
                raise InvalidSpec(
                    f"{self!r} gives scores beyond the range of {x.dtype} at {hook.name}; use smaller values"
                )
            return new

        return edit

