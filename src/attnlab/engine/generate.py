"""Generation with the KV cache, under whatever hooks and interventions are active.

attnlab decodes with its own short loop instead of ``hf_model.generate``: it must know, at
every step, which columns are new and how far each row is left-padded, so that an edit at
token position ``p`` lands on the same token in a batch as alone and in a cached decoding
step as in a full recomputation (tested on GPT-2, Llama and Gemma-3). The loop is greedy by
default; ``do_sample=True`` samples with temperature / top-k / top-p from a seeded generator.
"""

from __future__ import annotations

import inspect
from dataclasses import replace

import torch
from jaxtyping import Int

from attnlab.engine.finite import all_finite
from attnlab.engine.forward import blame_specs
from attnlab.engine.precision import computing_dtype
from attnlab.engine.state import ForwardState, forward_state
from attnlab.engine.tokens import Tokens
from attnlab.errors import InvalidInput, is_integer

__all__ = ["decode", "eos_ids"]


def _cache_kwarg(hf_model) -> str:
    params = inspect.signature(hf_model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _new_cache(hf_model):
    from transformers.cache_utils import DynamicCache

    return DynamicCache(config=hf_model.config)


def _pick(logits: torch.Tensor, do_sample: bool, temperature: float, top_k, top_p, generator) -> torch.Tensor:
    """Next token per row from ``[batch, vocab]`` logits."""
    if not do_sample:
        return logits.argmax(dim=-1)
    logits = logits.to(computing_dtype(logits.dtype))  # float32 at least; float64 stays float64
    # less the row's largest first, which stays 0: a small temperature (one that is 0 in this dtype too) sends the
    # others to -inf, never the largest to inf or 0 / 0 (NaN: torch's sampling failed)
    shifted = logits - logits.max(dim=-1, keepdim=True).values
    logits = torch.where(shifted == 0, shifted, shifted / temperature)
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs > top_p  # keep the smallest set reaching top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator)[:, 0].to(logits.device)


def eos_ids(eos, vocab: int | None) -> torch.Tensor | None:
    """The stop tokens as a 1-D long tensor (None: no stop): one id, or a list, tuple or 1-D tensor of ids (as HF)."""
    if eos is None:
        return None
    if is_integer(eos):
        ids = [eos]
    elif isinstance(eos, torch.Tensor) and eos.ndim <= 1 and not eos.is_floating_point() and not eos.is_complex() \
            and eos.dtype != torch.bool:
        ids = eos.reshape(-1).tolist()
    elif isinstance(eos, (list, tuple)) and all(is_integer(i) for i in eos):
        ids = list(eos)
    else:
        raise InvalidInput(f"eos_token_id must be a token id or a list, tuple or 1-D tensor of token ids, got {eos!r}")
    if not ids:
        raise InvalidInput("eos_token_id is empty; give at least one token id, or stop_at_eos=False to never stop early")
    bad = [int(i) for i in ids if int(i) < 0 or (vocab is not None and int(i) >= vocab)]
    if bad:
        raise InvalidInput(f"eos_token_id {bad} out of range: token ids lie in 0..{vocab - 1 if vocab else 'vocab - 1'}")
    return torch.tensor([int(i) for i in ids], dtype=torch.long)


@torch.no_grad()
def decode(
    model,
    tokens: Tokens,
    max_new_tokens: int,
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop_at_eos: bool = True,
    eos_token_id: int | torch.Tensor | None = None,
    pad_token_id: int = 0,
    row_keys: Int[torch.Tensor, " batch"] | None = None,
) -> Int[torch.Tensor, "batch new"]:
    """New token ids per row (``pad_token_id`` after a row has stopped at EOS).

    ``tokens`` must be left-padded or unpadded (every prompt's last token in the last column).
    ``eos_token_id``: one id or a 1-D tensor of ids; a row stops at any of them. Hooks and
    interventions the caller has opened act at every step.
    """
    # an unpadded batch (every mask entry 1) is left- and right-padded alike
    if tokens.side != "left" and not bool(tokens.mask.all()):
        raise InvalidInput("decode() needs left-padded tokens: new tokens must follow every prompt directly; "
                           "pad with padding_side='left' (model.tokens(texts, padding_side='left'))")
    n_ctx = model.cfg.n_ctx
    if n_ctx is not None and int(tokens.lengths.max()) + max_new_tokens > n_ctx:
        raise InvalidInput(
            f"the longest prompt has {int(tokens.lengths.max())} tokens; with max_new_tokens={max_new_tokens} it would "
            f"reach {int(tokens.lengths.max()) + max_new_tokens}, but {model.cfg.name} handles at most {n_ctx}"
        )
    hf = model.hf_model
    model.ensure_routed()
    tokens = tokens.to(model.device)
    generator = torch.Generator().manual_seed(seed) if (do_sample and seed is not None) else None
    cache, cache_key = _new_cache(hf), _cache_kwarg(hf)
    pad_left = tokens.pad_left
    ids, mask = tokens.ids, tokens.mask
    step_ids, step_pos = ids, tokens.position_ids
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    stops = None if eos_token_id is None else torch.as_tensor(eos_token_id, dtype=torch.long, device=ids.device).reshape(-1)
    new, positions = [], []  # the new tokens' ids and position ids
    prompt_lengths = tokens.lengths.cpu()  # a tensor edit covers each row's own prompt, not the longest one's
    for _ in range(max_new_tokens):
        state = ForwardState(n_rows=ids.shape[0], pad_left=pad_left, n_positions=int(mask.sum(dim=1).max()),
                             past=ids.shape[1] - step_ids.shape[1], generating=True, row_keys=row_keys,
                             lengths=prompt_lengths)
        kwargs = {"input_ids": step_ids, "attention_mask": mask, "use_cache": True, cache_key: cache}
        if model._accepts("position_ids"):
            kwargs["position_ids"] = step_pos
        if model._accepts("logits_to_keep"):
            kwargs["logits_to_keep"] = 1
        with forward_state(state):
            logits = hf(**kwargs).logits[:, -1]
        if not all_finite(logits):  # else argmax picks token 0 and sampling fails in torch
            specs = model.acting_interventions()
            if specs:
                full = {"input_ids": ids, "attention_mask": mask, "use_cache": False}
                if model._accepts("position_ids"):
                    full["position_ids"] = torch.cat([tokens.position_ids, *positions], dim=1)
                blame_specs(model, specs, full, replace(state, past=0, generating=False))
            raise InvalidInput(
                f"generate(): the logits for new token {len(new)} hold inf or NaN, so no token can be picked from them: "
                f"a hook (fwd_hooks=, add_hook) wrote a non-finite value, or {model.cfg.name} overflows by itself on "
                f"this input in {logits.dtype} (model(input) shows the same logits)")
        nxt = _pick(logits, do_sample, temperature, top_k, top_p, generator)
        nxt = torch.where(done, torch.full_like(nxt, pad_token_id), nxt)
        new.append(nxt)
        if stop_at_eos and stops is not None:
            done = done | torch.isin(nxt, stops)
            if bool(done.all()):
                break
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        step_ids = nxt[:, None]
        step_pos = step_pos[:, -1:] + 1
        positions.append(step_pos)
    return torch.stack(new, dim=1) if new else ids.new_zeros((ids.shape[0], 0))
