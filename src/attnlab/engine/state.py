"""What the hook points need to know about the forward pass that is running now.

Position-addressed edits (``positions=[3]``, ``BlockKeys(keys=[0])``) name *tokens*, not
tensor columns. With left padding, row ``i``'s token ``t`` sits in column ``t + pad_left[i]``;
while decoding with a KV cache, a call only sees the newest columns. The engine's forward
path records both facts here for the duration of one call, per context (thread), so the
hook points can translate columns into token positions for every row.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace

import torch
from torch import nn

from attnlab.engine.hooks import scoped_module_hook
from attnlab.errors import InvalidInput

__all__ = ["ForwardState", "forward_state", "current_state", "root_calls", "check_row_keys"]


@dataclass(frozen=True)
class ForwardState:
    """One forward call: left padding per row, columns already cached, the generation flag, which prompt each row is.

    ``row_keys``: a measurement split into chunks (or stacked copies of its rows) names the
    prompt behind every row, so a random per-prompt choice (resample ablation) is the same
    whatever the batch size. ``lengths``: each row's own tokens, so an edit by token position
    knows where a short row's padding (either side) or, while generating, its new tokens begin.
    """

    pad_left: torch.Tensor | None = None  # [batch] left-padding columns of each row (None: no padding)
    n_positions: int | None = None  # longest row in tokens (range checks of position edits)
    lengths: torch.Tensor | None = None  # [batch] tokens of each row, on the CPU (in generate(): its prompt's)
    past: int = 0  # columns already held in the KV cache before this call
    generating: bool = False  # inside generate(): positions not reached yet are not errors
    row_keys: torch.Tensor | None = None  # [batch] which prompt each row is (None: its row index)
    n_rows: int | None = None  # rows of the batch (HF computes one row of position embeddings for all of them)

    def rows(self, index: slice) -> ForwardState:
        pad = self.pad_left[index] if self.pad_left is not None and self.pad_left.shape[0] > 1 else self.pad_left
        keys = self.row_keys[index] if self.row_keys is not None else None
        lengths = self.lengths[index] if self.lengths is not None else None
        n_rows = len(range(self.n_rows)[index]) if self.n_rows is not None else None
        return replace(self, pad_left=pad, row_keys=keys, lengths=lengths, n_rows=n_rows)


def check_row_keys(row_keys, n_rows: int) -> torch.Tensor | None:
    """``row_keys`` as a ``[n_rows]`` int64 tensor of prompt numbers (>= 0), or None; anything else is an error."""
    if row_keys is None:
        return None
    try:
        keys = torch.as_tensor(row_keys)
    except (TypeError, ValueError, RuntimeError):
        keys = None
    ok = keys is not None and keys.ndim == 1 and (keys.dtype in _INTEGER_DTYPES or keys.numel() == 0)
    if not ok or keys.shape[0] != n_rows or (keys.numel() and int(keys.min()) < 0):
        raise InvalidInput(f"row_keys must be one non-negative integer per row ({n_rows} rows: which prompt each row "
                           f"is), got {row_keys!r}")
    return keys.to(torch.long).cpu()


_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
_STATE: ContextVar[ForwardState | None] = ContextVar("attnlab_forward_state", default=None)


def current_state() -> ForwardState | None:
    return _STATE.get()


@contextmanager
def forward_state(state: ForwardState) -> Iterator[ForwardState]:
    token = _STATE.set(state)
    try:
        yield state
    finally:
        _STATE.reset(token)


@contextmanager
def root_calls(root) -> Iterator[None]:
    """Inside, a call of ``root`` (an ``nn.Module``) made during this pass's own call of it — a hook
    calling the HF model — runs with no forward state: it is a plain HF call, whose rows are not
    this pass's rows (no padding offsets, early stop or LM-head plumbing of this pass apply).

    Entries are counted for this pass's state; the exit is counted even when the call raises
    (a hook that catches an error of its own HF call).
    """
    if not isinstance(root, nn.Module):
        yield
        return
    state = current_state()
    depth = [0]
    cleared: list = []  # tokens of the inner calls' cleared state, innermost last
    inside_cleared = [0]  # calls of root made while the state is cleared (deeper still): left alone

    def enter(module, args, kwargs):
        now = current_state()
        if now is state:
            depth[0] += 1
            if depth[0] > 1:
                cleared.append(_STATE.set(None))
        elif now is None and cleared:
            inside_cleared[0] += 1

    def leave(module, args, output):
        now = current_state()
        if now is None and cleared:
            if inside_cleared[0]:
                inside_cleared[0] -= 1
                return
            _STATE.reset(cleared.pop())
            depth[0] -= 1
        elif now is state:
            depth[0] -= 1

    with scoped_module_hook(root, enter, kind="pre", prepend=True), scoped_module_hook(root, leave, always_call=True):
        yield
