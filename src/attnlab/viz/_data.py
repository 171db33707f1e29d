"""What the views show, read from the model: tokens, sentence segments and attention tensors.

Every view encodes one input (a text, a sentence pair for encoders, or one row of token
ids), checks it against the token cap *before* running the model, and reads the sites it
needs with ``run_with_cache`` (inside ``model.intervene`` when interventions are given).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from jaxtyping import Float

from attnlab.engine.forward import run
from attnlab.engine.locations import hook_name
from attnlab.engine.tokens import Tokens
from attnlab.errors import InvalidInput, InvalidLocation

__all__ = [
    "Encoded", "encode", "select", "read_sites", "to_list", "DEFAULT_MAX_TOKENS",
    "interventions_tuple", "base_payload", "attention_payload", "check_threshold",
]

#: Default token cap: the page holds layers x heads x tokens^2 numbers, so long inputs make huge pages.
DEFAULT_MAX_TOKENS = 64


@dataclass
class Encoded:
    """One input, ready to run: ids ``[1, pos]``, extra model kwargs, token strings, segments."""

    ids: torch.Tensor
    kwargs: dict[str, torch.Tensor] = field(default_factory=dict)
    tokens: list[str] = field(default_factory=list)
    segments: list[int] | None = None  # 0 = sentence A, 1 = sentence B (pairs only)

    @property
    def n_tokens(self) -> int:
        return int(self.ids.shape[1])


def _is_pair(text) -> bool:
    return isinstance(text, (tuple, list)) and len(text) == 2 and all(isinstance(t, str) for t in text)


def _check_cap(n: int, max_tokens: int, view: str) -> None:
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise InvalidInput(f"max_tokens must be a positive integer, got {max_tokens!r}")
    if n > max_tokens:
        raise InvalidInput(
            f"the input has {n} tokens but the {view} caps it at max_tokens={max_tokens} (the page holds "
            f"layers x heads x tokens^2 numbers); pass max_tokens={n} or more to raise the cap, "
            "restrict layers=/heads=, or shorten the text"
        )


def encode(model, text, *, max_tokens: int = DEFAULT_MAX_TOKENS, view: str = "view") -> Encoded:
    """Tokenise ``text``: a string, a ``(sentence_a, sentence_b)`` pair, or one row of token ids."""
    if isinstance(text, torch.Tensor):
        ids = text.reshape(1, -1) if text.ndim == 1 else text
        if ids.ndim != 2 or ids.shape[0] != 1:
            raise InvalidInput(f"views show one input: give 1-D token ids or shape [1, pos], got {tuple(text.shape)}")
        if ids.shape[1] == 0:
            raise InvalidInput("no tokens given: the token id tensor is empty")
        _check_cap(ids.shape[1], max_tokens, view)
        ids = ids.to(model.device)
        tokens = model.to_str_tokens(ids[0]) if model.tokenizer is not None else [str(int(i)) for i in ids[0]]
        return Encoded(ids=ids, tokens=tokens)
    if isinstance(text, (list, tuple)) and len(text) == 1 and isinstance(text[0], str):
        text = text[0]
    if isinstance(text, str):
        if not text.strip():
            raise InvalidInput("no text given: the text is empty")
        enc = model.tokenize(text) if len(text) < 20 * max_tokens else None
        if enc is None:  # a very long text: count tokens without building tensors the model may refuse
            n = len(model._need_tokenizer()(text)["input_ids"])
            _check_cap(n, max_tokens, view)
            enc = model.tokenize(text)
        _check_cap(enc["input_ids"].shape[1], max_tokens, view)
        ids = enc["input_ids"]
        return Encoded(ids=ids, kwargs={"attention_mask": enc["attention_mask"]}, tokens=model.to_str_tokens(ids[0]))
    if _is_pair(text):
        return _encode_pair(model, text, max_tokens, view)
    raise InvalidInput(
        "a view takes one text (str), a sentence pair (sentence_a, sentence_b) for encoders, "
        f"or one row of token ids; got {type(text).__name__}"
    )


def _encode_pair(model, pair: Sequence[str], max_tokens: int, view: str) -> Encoded:
    if model.cfg.is_causal:
        raise InvalidInput(
            f"sentence pairs are for encoders (BERT-style, with segment ids); {model.cfg.name} is a decoder: "
            "join the two sentences into one text instead"
        )
    if not all(t.strip() for t in pair):
        raise InvalidInput("both sentences of a pair must be non-empty")
    tok = model._need_tokenizer()
    enc = tok(pair[0], pair[1], return_tensors="pt")
    n = enc["input_ids"].shape[1]
    _check_cap(n, max_tokens, view)
    if model.cfg.n_ctx is not None and n > model.cfg.n_ctx:
        raise InvalidInput(f"input has {n} tokens but {model.cfg.name} handles at most {model.cfg.n_ctx}")
    seq_ids = enc.sequence_ids(0)  # None for special tokens, 0 for sentence A, 1 for sentence B
    segments, current = [], 0
    for s in seq_ids:
        current = current if s is None else s
        segments.append(current)
    if 1 not in segments:
        raise InvalidInput(f"the tokenizer of {model.cfg.name} did not mark a second sentence; it may not support pairs")
    kwargs = {k: enc[k].to(model.device) for k in ("attention_mask", "token_type_ids") if k in enc}
    hf_config = getattr(model.hf_model, "config", None)
    if "token_type_ids" not in kwargs and getattr(hf_config, "type_vocab_size", 0) >= 2:
        # a BERT-style model whose tokenizer gives no segment ids: supply them as BERT's tokenizer would
        kwargs["token_type_ids"] = torch.tensor([segments], dtype=torch.long, device=model.device)
    ids = enc["input_ids"].to(model.device)
    return Encoded(ids=ids, kwargs=kwargs, tokens=model.to_str_tokens(ids[0]), segments=segments)


def select(values, size: int, noun: str, model_name: str) -> list[int]:
    """``None`` -> all of ``range(size)``; an int or a list of ints checked against the range."""
    if values is None:
        return list(range(size))
    items = [values] if isinstance(values, int) and not isinstance(values, bool) else values
    try:
        items = [int(v) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else v for v in items]
    except TypeError:
        raise InvalidInput(f"{noun}s must be an int, a list of ints or None (all), got {values!r}") from None
    if not items:
        raise InvalidInput(f"{noun}s is empty: give at least one {noun} in 0..{size - 1}, or None for all")
    for v in items:
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < size:
            raise InvalidLocation(f"{noun} {v!r} out of range: {model_name} has {noun}s 0..{size - 1}")
    return list(dict.fromkeys(items))


@torch.no_grad()
def read_sites(
    model, enc: Encoded, layers: Sequence[int], sites: Sequence[str], interventions: Sequence = ()
) -> dict[tuple[int, str], Float[np.ndarray, "..."]]:
    """``{(layer, site): array}`` for batch row 0, run clean or inside ``model.intervene``."""
    # Only attention is read, so no LM head runs (for Gemma's 262k-word vocabulary the
    # projection costs more than all the layers together).
    names = [hook_name(layer, site) for layer in layers for site in sites]
    mask = enc.kwargs.get("attention_mask", torch.ones_like(enc.ids))
    extra = {k: v for k, v in enc.kwargs.items() if k != "attention_mask"}
    store = run(model, Tokens(enc.ids, mask.long(), "right"), logits=None, read=names, interventions=interventions,
                model_kwargs=extra).cache
    return {
        (layer, site): store[hook_name(layer, site)][0].float().cpu().numpy()
        for layer in layers
        for site in sites
    }


def to_list(array: np.ndarray, decimals: int = 4) -> list:
    """Rounded nested lists for JSON (the page size grows with every digit)."""
    out = np.round(np.asarray(array, dtype=np.float64), decimals)
    out[out == 0] = 0.0  # no "-0.0" in the page
    if np.isfinite(out).all():
        return out.tolist()
    # JSON has no NaN: an intervention that leaves a row undefined shows as "no value" (null)
    return np.where(np.isfinite(out), out, None).tolist()


def interventions_tuple(interventions) -> tuple:
    """Accept one spec or a sequence of specs (``None``/``()`` = none)."""
    if interventions is None:
        return ()
    if hasattr(interventions, "validate") and hasattr(interventions, "hooks"):
        return (interventions,)
    return tuple(interventions)


def base_payload(model, enc: Encoded, kind: str, title: str, layers: list[int], heads: list[int], interventions) -> dict:
    """The fields every view's data carries."""
    return {
        "kind": kind,
        "title": title,
        "model": model.cfg.name,
        "causal": bool(model.cfg.is_causal),
        "tokens": enc.tokens,
        "segments": enc.segments,
        "layers": layers,
        "heads": heads,
        "interventions": [repr(s) for s in interventions],
    }


def attention_payload(
    model, text, *, kind: str, title: str, layers, heads, interventions, max_tokens: int, threshold: float
) -> tuple[dict, Encoded]:
    """Tokens and patterns ``[layer][head][query][key]`` for the layers and heads asked for."""
    specs = interventions_tuple(interventions)
    layer_list = select(layers, model.cfg.n_layers, "layer", model.cfg.name)
    head_list = select(heads, model.cfg.n_heads, "head", model.cfg.name)
    check_threshold(threshold)
    enc = encode(model, text, max_tokens=max_tokens, view=f"{kind} view")
    patterns = read_sites(model, enc, layer_list, ["pattern"], specs)
    data = base_payload(model, enc, kind, title, layer_list, head_list, specs)
    data["threshold"] = threshold
    data["attention"] = [to_list(patterns[(layer, "pattern")][head_list]) for layer in layer_list]
    return data, enc


def check_threshold(threshold) -> float:
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0 <= threshold < 1:
        raise InvalidInput(f"threshold must be a number in [0, 1), got {threshold!r}")
    return float(threshold)
