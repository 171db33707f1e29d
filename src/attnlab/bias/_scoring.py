"""Batched log-probabilities of chosen tokens, continuations and whole texts.

Every text is tokenised on its own and the batch is padded on the RIGHT with an explicit
attention mask, whatever the tokenizer's own padding side: under a causal mask, right
padding leaves every real token's computation unchanged, so a batched score equals the
score of the text run alone. Logits are computed only at the positions that are read
(``logits_to_keep``) where the model supports it, which matters for a 262k vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from attnlab.engine.forward import run
from attnlab.engine.tokens import Tokens
from attnlab.errors import InvalidInput, UnsupportedModel

__all__ = [
    "Encoded",
    "encode",
    "token_ids",
    "check_lm",
    "next_token_scores",
    "next_token_logprobs",
    "continuation_logprobs",
    "token_logprobs",
    "masked_scores",
]


@dataclass
class Encoded:
    """Right-padded token ids of a batch and the length of each row."""

    ids: torch.Tensor  # [batch, pos]
    mask: torch.Tensor  # [batch, pos], 1 on real tokens
    lengths: list[int]


def check_lm(model, *, causal: bool | None = None) -> None:
    """Raise :class:`UnsupportedModel` unless ``model`` returns vocabulary logits."""
    if not model.cfg.has_lm_head:
        raise UnsupportedModel(
            f"{model.cfg.name} has no language-model head (it returns hidden states), so it gives no "
            "word probabilities; bias metrics need a causal LM or a masked LM with its MLM head "
            "(e.g. attnlab.load('gemma-3-270m'), or tiny_model('bert-mlm') for tests)"
        )
    if causal is True and not model.cfg.is_causal:
        raise UnsupportedModel(f"{model.cfg.name} is a masked (bidirectional) model; this needs a causal LM")
    if causal is False and model.cfg.is_causal:
        raise UnsupportedModel(f"{model.cfg.name} is a causal LM; this needs a masked LM")


def _texts(texts: Sequence[str], what: str = "prompts") -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise InvalidInput(f"no {what} given: pass a non-empty list of strings")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise InvalidInput(f"{what}[{i}] must be a non-empty string, got {t!r}")
    return texts


def _pad_id(model) -> int:
    tok = model.tokenizer
    for cand in (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, 0):
        if cand is not None:
            return int(cand)
    return 0


def _check_length(model, n: int, text: str) -> None:
    n_ctx = model.cfg.n_ctx
    if n_ctx is not None and n > n_ctx:
        raise InvalidInput(f"{text[:40]!r}... is {n} tokens but {model.cfg.name} handles at most {n_ctx}")


def token_ids(model, text: str, *, special: bool) -> list[int]:
    tok = model._need_tokenizer()
    return list(tok(text, add_special_tokens=special)["input_ids"])


def _pad(model, rows: list[list[int]]) -> Encoded:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), _pad_id(model), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return Encoded(ids.to(model.device), mask.to(model.device), [len(r) for r in rows])


def encode(model, texts: Sequence[str]) -> Encoded:
    """Tokenise each text alone (special tokens included) and pad the batch on the right."""
    rows = []
    for t in _texts(texts, "texts"):
        r = token_ids(model, t, special=True)
        _check_length(model, len(r), t)
        rows.append(r)
    return _pad(model, rows)


@torch.no_grad()
def _logits_at(model, enc: Encoded, positions: torch.Tensor) -> torch.Tensor:
    """Logits ``[batch, k, vocab]`` at token ``positions`` ``[batch, k]`` of each row."""
    tokens = Tokens(enc.ids, enc.mask, "right")
    return run(model, tokens, logits=positions.to(torch.long)).logits.float()


def _batches(n: int, batch_size: int, progress: bool, desc: str):
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInput(f"batch_size must be a positive integer, got {batch_size!r}")
    starts = range(0, n, batch_size)
    return tqdm(starts, desc=desc, disable=not progress or len(starts) < 2, leave=False)


def next_token_logprobs(
    model, prompts: Sequence[str], *, batch_size: int = 16, progress: bool = False
) -> Float[torch.Tensor, "prompt vocab"]:
    """Full next-token log-distribution after each prompt, ``[n_prompts, vocab]``."""
    check_lm(model, causal=True)
    prompts = _texts(prompts)
    out = []
    for s in _batches(len(prompts), batch_size, progress, "next-token"):
        enc = encode(model, prompts[s : s + batch_size])
        last = torch.tensor(enc.lengths)[:, None] - 1
        out.append(_logits_at(model, enc, last)[:, 0].log_softmax(-1).cpu())
    return torch.cat(out)


def next_token_scores(
    model, prompts: Sequence[str], targets: Sequence[int], *, batch_size: int = 32, progress: bool = False
) -> np.ndarray:
    """``log p(target | prompt)`` for single-token targets, ``[n_prompts, n_targets]``."""
    check_lm(model, causal=True)
    prompts = _texts(prompts)
    tgt = torch.tensor(list(targets), dtype=torch.long)
    out = []
    order = np.argsort([-len(p) for p in prompts], kind="stable")  # similar lengths share a batch
    for s in _batches(len(prompts), batch_size, progress, "next-token"):
        chunk = [prompts[i] for i in order[s : s + batch_size]]
        enc = encode(model, chunk)
        last = torch.tensor(enc.lengths)[:, None] - 1
        logp = _logits_at(model, enc, last)[:, 0].log_softmax(-1)
        out.append(logp[:, tgt.to(logp.device)].cpu().numpy())
    scores = np.concatenate(out)
    result = np.empty_like(scores)
    result[order] = scores
    return result


def continuation_logprobs(
    model, prompts: Sequence[str], continuations: Sequence[str], *, batch_size: int = 32, progress: bool = False
) -> np.ndarray:
    """``sum_t log p(c_t | prompt, c_<t)`` for every prompt and continuation, ``[n_prompts, n_cont]``.

    A continuation is tokenised without special tokens and appended to the prompt's ids, so
    ``" she"`` is scored as the word that follows. Single-token continuations take one
    forward pass per prompt; multi-token ones one pass per (prompt, continuation).
    """
    check_lm(model, causal=True)
    prompts = _texts(prompts)
    conts = _texts(continuations, "continuations")
    cont_ids = []
    for c in conts:
        ids = token_ids(model, c, special=False)
        if not ids:
            raise InvalidInput(f"continuation {c!r} gives no tokens for {model.cfg.name}")
        cont_ids.append(ids)
    if all(len(c) == 1 for c in cont_ids):
        return next_token_scores(model, prompts, [c[0] for c in cont_ids], batch_size=batch_size, progress=progress)
    rows, spans = [], []
    for p in prompts:
        p_ids = token_ids(model, p, special=True)
        for c in cont_ids:
            _check_length(model, len(p_ids) + len(c), p)
            rows.append(p_ids + c)
            spans.append((len(p_ids), len(c)))
    flat = np.zeros(len(rows))
    for s in _batches(len(rows), batch_size, progress, "continuations"):
        enc = _pad(model, rows[s : s + batch_size])
        k = max(n for _, n in spans[s : s + batch_size])
        # position t predicts token t+1: read logits at start-1 .. start+n-2
        pos = torch.tensor([[max(a - 1 + j, 0) if j < n else a - 1 for j in range(k)] for a, n in spans[s : s + batch_size]])
        logp = _logits_at(model, enc, pos).log_softmax(-1)
        for r, (a, n) in enumerate(spans[s : s + batch_size]):
            tgt = enc.ids[r, a : a + n]
            flat[s + r] = float(logp[r, torch.arange(n), tgt.to(logp.device)].sum())
    return flat.reshape(len(prompts), len(conts))


@torch.no_grad()
def token_logprobs(model, texts: Sequence[str], *, batch_size: int = 8, progress: bool = False) -> list[np.ndarray]:
    """Per text, ``log p(token_t | tokens_<t)`` for t = 1 .. n-1 (the first token is given)."""
    check_lm(model, causal=True)
    texts = _texts(texts, "texts")
    out: list[np.ndarray] = []
    for s in _batches(len(texts), batch_size, progress, "text log-prob"):
        enc = encode(model, texts[s : s + batch_size])
        logits = run(model, Tokens(enc.ids, enc.mask, "right")).logits.float()
        logp = logits[:, :-1].log_softmax(-1).gather(-1, enc.ids[:, 1:, None])[..., 0]
        for r, n in enumerate(enc.lengths):
            out.append(logp[r, : n - 1].cpu().numpy())
    return out


@torch.no_grad()
def masked_scores(
    model, texts: Sequence[str], targets: Sequence[int], *, batch_size: int = 32, progress: bool = False
) -> np.ndarray:
    """``log p(target at [MASK] | text)`` for texts holding exactly one mask token, ``[n, n_targets]``."""
    check_lm(model, causal=False)
    texts = _texts(texts)
    mask_id = getattr(model.tokenizer, "mask_token_id", None)
    if mask_id is None:
        raise UnsupportedModel(f"{model.cfg.name}'s tokenizer has no mask token")
    tgt = torch.tensor(list(targets), dtype=torch.long)
    out = []
    for s in _batches(len(texts), batch_size, progress, "masked"):
        enc = encode(model, texts[s : s + batch_size])
        hits = (enc.ids == mask_id).sum(1)
        if (hits != 1).any():
            bad = int(torch.nonzero(hits != 1)[0, 0])
            raise InvalidInput(f"text {texts[s + bad]!r} has {int(hits[bad])} mask tokens; exactly one is needed")
        pos = (enc.ids == mask_id).float().argmax(1)
        logits = _logits_at(model, enc, pos[:, None])[:, 0]
        logp = logits.log_softmax(-1)
        out.append(logp[:, tgt.to(logp.device)].cpu().numpy())
    return np.concatenate(out)
