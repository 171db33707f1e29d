"""The token rows a metric scores: prompts (and continuations) as engine :class:`Tokens`, sliceable.

A metric turns ``n`` prompts into ``n * per_prompt`` rows, prompt-major (rows
``i * per_prompt ... i * per_prompt + per_prompt - 1`` belong to prompt ``i``), plus per-row
payloads (target ids, where the continuation starts, which token position to read).
Positions in payloads are token positions; the engine maps them to columns whatever the
padding. Sweeps slice and repeat these rows; every slice drops the columns that are padding
in all its rows, so a chunk costs only its own longest prompt.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Int

from attnlab.engine.tokens import Tokens, check_texts, check_unicode
from attnlab.errors import InvalidInput

__all__ = ["Rows", "check_prompts", "encode_prompts", "continuation_ids", "per_prompt_list"]


@dataclass
class Rows:
    """Token rows and what the metric needs to know about each."""

    tokens: Tokens
    per_prompt: int  # rows per prompt (2 for a multi-token target/foil pair)
    positions: str  # "read": the metric reads one position per row (data["read"]); "all": every position
    data: dict[str, torch.Tensor] = field(default_factory=dict)  # per-row payloads, first axis = row

    def __post_init__(self):
        # which prompt each row is, carried through select/repeat: chunks draw per prompt, not per batch row
        if "prompt" not in self.data:
            self.data["prompt"] = torch.arange(self.tokens.n_rows) // self.per_prompt

    @property
    def prompt_index(self) -> Int[torch.Tensor, " row"]:
        return self.data["prompt"]

    @property
    def input_ids(self) -> Int[torch.Tensor, "row pos"]:
        return self.tokens.ids

    @property
    def attention_mask(self) -> Int[torch.Tensor, "row pos"]:
        return self.tokens.mask

    @property
    def n_rows(self) -> int:
        return self.tokens.n_rows

    @property
    def n_prompts(self) -> int:
        return self.n_rows // self.per_prompt

    @property
    def lengths(self) -> torch.Tensor:
        return self.tokens.lengths

    def select(self, index: slice | torch.Tensor) -> Rows:
        """Rows ``index`` with the all-padding columns dropped."""
        return Rows(self.tokens.select(index), self.per_prompt, self.positions, {k: v[index] for k, v in self.data.items()})

    def repeat(self, times: int) -> Rows:
        """The rows stacked ``times`` over (group-major: copy g holds rows ``g * n ... g * n + n - 1``)."""
        rep = lambda t: t.repeat(times, *([1] * (t.ndim - 1)))  # noqa: E731
        return Rows(self.tokens.repeat(times), self.per_prompt, self.positions, {k: rep(v) for k, v in self.data.items()})

    def to(self, device) -> Rows:
        return Rows(self.tokens.to(device), self.per_prompt, self.positions, {k: v.to(device) for k, v in self.data.items()})


def check_prompts(prompts: Sequence[str] | str) -> list[str]:
    """A non-empty list of non-empty strings (a single string is one prompt)."""
    return check_texts(prompts, "prompt", "prompts")


def per_prompt_list(value: str | Sequence[str], n: int, what: str) -> list[str]:
    """One string for every prompt: a shared string, or a list with exactly one per prompt."""
    if isinstance(value, str):
        return [value] * n
    if isinstance(value, (bytes, Mapping)) or not isinstance(value, Iterable):
        raise InvalidInput(f"{what} must be a string or a list of strings (one per prompt), got {type(value).__name__} {value!r}")
    items = list(value)
    if len(items) != n:
        raise InvalidInput(f"mismatched {what}s: {len(items)} {what}s for {n} prompts; give one per prompt or a single string")
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item:
            raise InvalidInput(f"{what} {i} must be a non-empty string, got {item!r}")
    return items


def _tokenizer(model):
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise InvalidInput(f"{model.cfg.name} was loaded without a tokenizer; metrics need one to read text")
    return tok


def encode_prompts(model, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt (special tokens included), checked against the context length."""
    _tokenizer(model)
    try:
        return model.token_rows(list(prompts))
    except InvalidInput as err:
        raise InvalidInput(str(err).replace("text ", "prompt ", 1)) from None


def continuation_ids(model, text: str, what: str = "continuation", *, single: bool = False) -> list[int]:
    """Token ids of a continuation (no special tokens); ``single`` demands exactly one token."""
    tok = _tokenizer(model)
    ids = tok(check_unicode(text, f"{what} {text!r}"), add_special_tokens=False)["input_ids"]
    if not ids:
        raise InvalidInput(f"{what} {text!r} tokenizes to no tokens for {model.cfg.name}")
    if single and len(ids) != 1:
        pieces = [tok.decode([i]) for i in ids]
        raise InvalidInput(
            f"{what} {text!r} is {len(ids)} tokens for {model.cfg.name} ({pieces!r}), but this metric needs a "
            "single token; pick a word that is one token or use a multi-token metric"
        )
    if tok.unk_token_id is not None and tok.unk_token_id in ids:
        raise InvalidInput(f"{what} {text!r} contains a word {model.cfg.name}'s tokenizer does not know (it maps to {tok.unk_token!r})")
    return list(ids)
