"""Token rows ready to run: ids, attention mask and which side the padding is on.

Every forward pass in attnlab starts from :class:`Tokens`. Texts are tokenised one by one
(special tokens included) and padded on the side asked for; token-id tensors are checked
against the vocabulary and the context length exactly like text, so a model never sees an
input it would index out of range.

Right padding keeps row ``i``'s token ``t`` in column ``t``; left padding puts every row's
last token in the last column (what generation needs, and what ``logits[:, -1]`` assumes).
Position-addressed edits mean the same *token* either way (see :mod:`attnlab.engine.state`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Int

from attnlab.errors import InvalidInput

__all__ = ["Tokens", "PADDING_SIDES", "check_padding_side", "check_texts", "check_unicode", "pad_rows"]

PADDING_SIDES = ("right", "left")


def check_padding_side(side) -> str:
    if side not in PADDING_SIDES:
        raise InvalidInput(f"padding_side must be 'right' or 'left', got {side!r}")
    return side


def check_texts(text, what: str = "text", plural: str | None = None) -> list[str]:
    """A non-empty list of non-empty strings (one string is one text)."""
    texts = [text] if isinstance(text, str) else text
    try:
        texts = list(texts)
    except TypeError:
        raise InvalidInput(f"{what} must be a string or a list of strings, got {type(text).__name__}") from None
    if not texts:
        raise InvalidInput(f"no {plural or what} given: pass a string or a non-empty list of strings")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InvalidInput(f"{what} {i} is {type(t).__name__}, not a string")
        if not t.strip():
            raise InvalidInput(f"{what} {i} is empty; every {what} needs at least one word")
        check_unicode(t, f"{what} {i}")
    return texts


def check_unicode(text: str, what: str) -> str:
    """``text`` if every character is one a tokenizer can take (a lone surrogate fails deep inside it with a TypeError)."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise InvalidInput(f"{what} holds {text[err.start]!r} at character {err.start}, which is not a Unicode "
                               "character (bytes decoded with errors='surrogateescape'?)") from None
    return text


@dataclass(frozen=True)
class Tokens:
    """Padded token rows: ``ids`` and ``mask`` are ``[batch, pos]``; ``side`` is where the padding is.

    ``longest``: tokens of the longest row of the set these rows were selected from (a measurement's
    chunk keeps its prompts' longest), so a position edit is checked against every prompt of a
    measurement, not only against the prompts of one chunk; None: these rows' own longest.
    """

    ids: Int[torch.Tensor, "batch pos"]
    mask: Int[torch.Tensor, "batch pos"]
    side: str = "right"
    longest: int | None = None

    @property
    def n_rows(self) -> int:
        return int(self.ids.shape[0])

    @property
    def n_positions(self) -> int:
        """Tokens of the longest row these rows belong with (their set's, when they were selected from one)."""
        own = int(self.lengths.max()) if self.n_rows else 0
        return max(own, self.longest or 0)

    @property
    def lengths(self) -> Int[torch.Tensor, " batch"]:
        return self.mask.sum(dim=1)

    @property
    def pad_left(self) -> Int[torch.Tensor, " batch"]:
        """Padding columns before each row's first token (zero under right padding)."""
        return self.mask.long().argmax(dim=1)

    @property
    def last(self) -> Int[torch.Tensor, " batch"]:
        """Column of each row's last real token."""
        width = self.mask.shape[1]
        return width - 1 - self.mask.long().flip(dims=[1]).argmax(dim=1)

    @classmethod
    def from_mask(cls, ids: torch.Tensor, mask: torch.Tensor) -> Tokens:
        """Rows given as ids and a 0/1 mask; the side is read off the mask (left if a row starts with padding).

        Every row must be one run of tokens padded on that one side: positions, the last token and
        the prefix reuse all count tokens from the run's start, so a gap or a row padded on the other
        side would be read at the wrong columns.
        """
        mask = mask.long()
        side = "left" if bool((mask[:, 0] == 0).any()) else "right"
        steps = mask[:, 1:] - mask[:, :-1]  # left padding: 0s then 1s (never 1 -> 0); right: 1s then 0s
        broken = (steps < 0).any(dim=1) if side == "left" else (steps > 0).any(dim=1)
        if bool(broken.any()):
            row = int(broken.nonzero()[0, 0])
            raise InvalidInput(
                f"attention_mask row {row} is {mask[row].tolist()}: each row must be one run of 1s padded on one side, "
                f"and every row on the same side ({side}, as another row starts with padding)" if side == "left" else
                f"attention_mask row {row} is {mask[row].tolist()}: each row must be one run of 1s followed by its padding")
        return cls(ids, mask, side)

    def columns(self, positions: Int[torch.Tensor, "batch k"]) -> Int[torch.Tensor, "batch k"]:
        """Columns holding token ``positions`` of each row."""
        return positions + self.pad_left[:, None].to(positions.device)

    @property
    def position_ids(self) -> Int[torch.Tensor, "batch pos"]:
        """Each column's token position (pads get 0): what a left-padded row needs as position ids."""
        return (self.mask.cumsum(dim=1) - 1).clamp(min=0)

    def select(self, index: slice | torch.Tensor) -> Tokens:
        """Rows ``index``, without the columns that are padding in every one of them."""
        ids, mask = self.ids[index], self.mask[index]
        width = int(mask.sum(dim=1).max()) if mask.shape[0] else 0
        cut = slice(0, width) if self.side == "right" else slice(mask.shape[1] - width, mask.shape[1])
        return Tokens(ids[:, cut], mask[:, cut], self.side, self.n_positions)

    def repeat(self, times: int) -> Tokens:
        """The rows stacked ``times`` over (copy g holds rows ``g * n ... g * n + n - 1``)."""
        if times == 1:
            return self
        return Tokens(self.ids.repeat(times, 1), self.mask.repeat(times, 1), self.side, self.longest)

    def to(self, device) -> Tokens:
        return Tokens(self.ids.to(device), self.mask.to(device), self.side, self.longest)


def pad_rows(rows: Sequence[Sequence[int]], *, pad_id: int, side: str = "right") -> Tokens:
    """Pad token lists into :class:`Tokens` (``side``: where the padding goes)."""
    check_padding_side(side)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        cols = slice(0, len(r)) if side == "right" else slice(width - len(r), width)
        ids[i, cols] = torch.as_tensor(list(r), dtype=torch.long)
        mask[i, cols] = 1
    return Tokens(ids, mask, side)
