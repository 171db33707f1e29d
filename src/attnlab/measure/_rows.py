"""The token rows a metric scores: prompts (and continuations) tokenized, right-padded, sliceable.

A metric turns ``n`` prompts into ``n * per_prompt`` rows, prompt-major (rows
``i * per_prompt ... i * per_prompt + per_prompt - 1`` belong to prompt ``i``), plus per-row
payloads (target ids, where the continuation starts, which position to read). Sweeps slice
and repeat these rows; every slice drops trailing all-padding columns so a chunk costs only
its own longest prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Int

from attnlab.errors import InvalidInput

__all__ = ["Rows", "check_prompts", "encode_prompts", "continuation_ids", "pad_rows", "per_prompt_list"]


@dataclass
class Rows:
    """Right-padded token rows and what the metric needs to know about each."""

    input_ids: Int[torch.Tensor, "row pos"]
    attention_mask: Int[torch.Tensor, "row pos"]
    per_prompt: int  # rows per prompt (2 for a multi-token target/foil pair)
    positions: str  # "read": the metric reads one position per row (data["read"]); "all": every position
    data: dict[str, torch.Tensor] = field(default_factory=dict)  # per-row payloads, first axis = row

    @property
    def n_rows(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def n_prompts(self) -> int:
        return self.n_rows // self.per_prompt

    @property
    def lengths(self) -> torch.Tensor:
        return self.attention_mask.sum(dim=1)

    def select(self, index: slice | torch.Tensor) -> Rows:
        """Rows ``index`` with trailing all-padding columns dropped."""
        mask = self.attention_mask[index]
        width = int(mask.sum(dim=1).max()) if mask.shape[0] else 0
        return Rows(
            self.input_ids[index][:, :width], mask[:, :width], self.per_prompt, self.positions,
            {k: v[index] for k, v in self.data.items()},
        )

    def repeat(self, times: int) -> Rows:
        """The rows stacked ``times`` over (group-major: copy g holds rows ``g * n ... g * n + n - 1``)."""
        rep = lambda t: t.repeat(times, *([1] * (t.ndim - 1)))  # noqa: E731
        return Rows(rep(self.input_ids), rep(self.attention_mask), self.per_prompt, self.positions,
                    {k: rep(v) for k, v in self.data.items()})

    def to(self, device) -> Rows:
        return Rows(self.input_ids.to(device), self.attention_mask.to(device), self.per_prompt, self.positions,
                    {k: v.to(device) for k, v in self.data.items()})


def check_prompts(prompts: Sequence[str] | str) -> list[str]:
    """A non-empty list of non-empty strings (a single string is one prompt)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    try:
        prompts = list(prompts)
    except TypeError:
        raise InvalidInput(f"prompts must be a string or a list of strings, got {type(prompts).__name__}") from None
    if not prompts:
        raise InvalidInput("no prompts given: pass a non-empty list of strings")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise InvalidInput(f"prompt {i} is {type(p).__name__}, not a string")
        if not p.strip():
            raise InvalidInput(f"prompt {i} is empty; every prompt needs at least one word")
    return prompts


def per_prompt_list(value: str | Sequence[str], n: int, what: str) -> list[str]:
    """One string for every prompt: a shared string, or a list with exactly one per prompt."""
    if isinstance(value, str):
        return [value] * n
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
    ids = _tokenizer(model)(list(prompts), add_special_tokens=True)["input_ids"]
    n_ctx = model.cfg.n_ctx
    for i, row in enumerate(ids):
        if n_ctx is not None and len(row) > n_ctx:
            raise InvalidInput(f"prompt {i} has {len(row)} tokens but {model.cfg.name} handles at most {n_ctx}")
    return [list(r) for r in ids]


def continuation_ids(model, text: str, what: str = "continuation", *, single: bool = False) -> list[int]:
    """Token ids of a continuation (no special tokens); ``single`` demands exactly one token."""
    tok = _tokenizer(model)
    ids = tok(text, add_special_tokens=False)["input_ids"]
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


def pad_rows(model, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists into ``input_ids`` and ``attention_mask`` [row, pos]."""
    n_ctx = model.cfg.n_ctx
    width = max(len(r) for r in rows)
    if n_ctx is not None and width > n_ctx:
        raise InvalidInput(f"a prompt with its continuation has {width} tokens but {model.cfg.name} handles at most {n_ctx}")
    tok = _tokenizer(model)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), int(pad), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask
