"""What the views show, read from the model: tokens, sentence segments and attention tensors.

Every view turns its input (a text, a sentence pair for encoders, or one row of token
ids) into engine :class:`~attnlab.engine.tokens.Tokens`, checks it against the token cap
*before* running the model, and reads the sites it needs through the engine's one forward
primitive (:func:`attnlab.engine.forward.run`, no LM head; interventions applied there).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float

from attnlab.engine.dropout import check_deterministic
from attnlab.engine.forward import as_specs, run
from attnlab.engine.locations import hook_name
from attnlab.engine.model import HookedModel
from attnlab.engine.tokens import Tokens, check_unicode
from attnlab.errors import InvalidInput, check_positive_int, is_integer

__all__ = [
    "ViewInput", "view_input", "check_model", "select", "read_sites", "to_list", "DEFAULT_MAX_TOKENS",
    "interventions_tuple", "base_payload", "attention_payload", "check_threshold",
]

#: Default token cap: the page holds layers x heads x tokens^2 numbers, so long inputs make huge pages.
DEFAULT_MAX_TOKENS = 64


@dataclass(frozen=True)
class ViewInput:
    """One input as a view shows it: the engine's ``tokens`` (one row), their strings and sentence segments.

    ``token_type_ids`` ``[1, pos]`` is set for a sentence pair on a BERT-style model (segment
    embeddings), the one model input :class:`Tokens` does not carry.
    """

    tokens: Tokens
    strings: list[str]
    segments: list[int] | None = None  # 0 = sentence A, 1 = sentence B (pairs only)
    token_type_ids: torch.Tensor | None = None

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.ids.shape[1])


def _is_pair(text) -> bool:
    return isinstance(text, (tuple, list)) and len(text) == 2 and all(isinstance(t, str) for t in text)


def _check_cap(n: int, max_tokens: int, view: str) -> None:
    if n > max_tokens:
        raise InvalidInput(
            f"the input has {n} tokens but the {view} caps it at max_tokens={max_tokens} (the page holds "
            f"layers x heads x tokens^2 numbers); pass max_tokens={n} or more to raise the cap "
            f"(attnlab view: --max-tokens {n}), restrict layers=/heads= (--layers/--heads), or shorten the text"
        )


def view_input(model, text, *, max_tokens: int = DEFAULT_MAX_TOKENS, view: str = "view") -> ViewInput:
    """Tokenise ``text`` through the engine: a string, a ``(sentence_a, sentence_b)`` pair, or one row of token ids."""
    check_positive_int(max_tokens, "max_tokens")
    max_tokens = int(max_tokens)
    if isinstance(text, torch.Tensor):
        if text.ndim not in (1, 2) or (text.ndim == 2 and text.shape[0] != 1):
            raise InvalidInput(f"views show one input: give 1-D token ids or shape [1, pos], got {tuple(text.shape)}")
        if text.numel() == 0:
            raise InvalidInput("no tokens given: the token id tensor is empty")
        _check_cap(text.numel(), max_tokens, view)
        tokens = model.tokens(text)  # checks the ids against the vocabulary and the context length
        ids = tokens.ids[0]
        strings = model.to_str_tokens(ids) if model.tokenizer is not None else [str(int(i)) for i in ids]
        return ViewInput(tokens, strings)
    if isinstance(text, (list, tuple)) and len(text) == 1 and isinstance(text[0], str):
        text = text[0]
    if isinstance(text, str):
        if not text.strip():
            raise InvalidInput("no text given: the text is empty")
        rows = model.token_rows(text)  # checked against the context length by the engine
        _check_cap(len(rows[0]), max_tokens, view)
        tokens = model.pad(rows)
        return ViewInput(tokens, model.to_str_tokens(tokens.ids[0]))
    if _is_pair(text):
        return _pair_input(model, text, max_tokens, view)
    raise InvalidInput(
        "a view takes one text (str), a sentence pair (sentence_a, sentence_b) for encoders, "
        f"or one row of token ids; got {type(text).__name__}"
    )


def _pair_input(model, pair: Sequence[str], max_tokens: int, view: str) -> ViewInput:
    """Two sentences as an encoder's tokenizer joins them ([CLS] A [SEP] B [SEP]), with their segments."""
    if model.cfg.is_causal:
        raise InvalidInput(
            f"sentence pairs are for encoders (BERT-style, with segment ids); {model.cfg.name} is a decoder: "
            "join the two sentences into one text instead"
        )
    if not all(t.strip() for t in pair):
        raise InvalidInput("both sentences of a pair must be non-empty")
    # the pair goes to the tokenizer directly, not through the engine: a lone surrogate failed inside it
    # with "TypeError: TextInputSequence must be str"
    for name, sentence in zip(("sentence_a", "sentence_b"), pair):
        check_unicode(sentence, name)
    if model.tokenizer is None:
        raise InvalidInput(f"{model.cfg.name} was loaded without a tokenizer; a sentence pair needs one")
    # The engine tokenises single texts; a pair's joining and segment marks come from the tokenizer itself.
    enc = model.tokenizer(pair[0], pair[1], return_tensors="pt")
    _check_cap(enc["input_ids"].shape[1], max_tokens, view)
    tokens = model.tokens(enc["input_ids"])  # vocabulary and context-length checks
    seq_ids = enc.sequence_ids(0)  # None for special tokens, 0 for sentence A, 1 for sentence B
    segments, current = [], 0
    for s in seq_ids:
        current = current if s is None else s
        segments.append(current)
    if 1 not in segments:
        raise InvalidInput(f"the tokenizer of {model.cfg.name} did not mark a second sentence; it may not support pairs")
    types = enc.get("token_type_ids")
    segment_embedding = model.layout.token_type_embed
    if types is None and segment_embedding is not None and getattr(segment_embedding, "num_embeddings", 0) >= 2:
        # a BERT-style model whose tokenizer gives no segment ids: supply them as BERT's tokenizer would
        types = torch.tensor([segments], dtype=torch.long)
    types = types.to(model.device) if types is not None else None
    return ViewInput(tokens, model.to_str_tokens(tokens.ids[0]), segments, types)


def check_model(model, view: str) -> None:
    """A view draws a wrapped model; a bare HF model or a name failed with "... has no attribute 'cfg'"."""
    if not isinstance(model, HookedModel):
        raise InvalidInput(
            f"the {view} takes a model wrapped by attnlab.load(...) (an embedded name, an HF id or folder, a loaded "
            f"transformers model with tokenizer=, or a TransformerBridge), got {type(model).__name__}"
        )


def select(model, values, noun: str) -> list[int]:
    """``layers=``/``heads=`` of a view: ``None`` -> all; an int or a list of ints, each checked by the engine."""
    size, check = (model.cfg.n_layers, model.check_layer) if noun == "layer" else (model.cfg.n_heads, model.check_head)
    if values is None:
        return list(range(size))
    if isinstance(values, (str, bytes)):  # iterated, "12" was heads 1 and 2 and the error named only '1'
        raise InvalidInput(f"{noun}s must be an int, a list of ints or None (all), got {values!r}")
    items = [values] if is_integer(values) else values  # numpy's too: a layer read back from a result table
    try:
        items = [int(v) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else v for v in items]
    except TypeError:
        raise InvalidInput(f"{noun}s must be an int, a list of ints or None (all), got {values!r}") from None
    if not items:
        raise InvalidInput(f"{noun}s is empty: give at least one {noun} in 0..{size - 1}, or None for all")
    return list(dict.fromkeys(check(v) for v in items))


def read_sites(
    model, source: ViewInput, layers: Sequence[int], sites: Sequence[str], interventions: Sequence = ()
) -> dict[tuple[int, str], Float[np.ndarray, "..."]]:
    """``{(layer, site): array}`` for the input's one row, run clean or with ``interventions``."""
    # Only attention is read, so no LM head runs (for Gemma's 262k-word vocabulary the
    # projection costs more than all the layers together).
    names = {(layer, site): hook_name(layer, site) for layer in layers for site in sites}
    extra = {"token_type_ids": source.token_type_ids} if source.token_type_ids is not None else {}
    check_deterministic(model)
    store = run(model, source.tokens, logits=None, read=list(names.values()), interventions=interventions,
                model_kwargs=extra).cache
    return {key: store[name][0].float().cpu().numpy() for key, name in names.items()}


def to_list(array: np.ndarray, decimals: int = 4) -> list:
    """Rounded nested lists for JSON (the page size grows with every digit)."""
    out = np.round(np.asarray(array, dtype=np.float64), decimals)
    out[out == 0] = 0.0  # no "-0.0" in the page
    if np.isfinite(out).all():
        return out.tolist()
    # JSON has no NaN: an intervention that leaves a row undefined shows as "no value" (null)
    return np.where(np.isfinite(out), out, None).tolist()


def interventions_tuple(interventions) -> tuple:
    """Accept one spec or a sequence of specs (``None``/``()`` = none), each checked to be a spec.

    Checked here, before any forward pass: the diff view validates each spec itself, so a
    string (iterated letter by letter), a number or a ``None`` in the list failed there with a
    bare ``AttributeError``/``TypeError``.
    """
    specs = as_specs(interventions)
    for spec in specs:
        if not (hasattr(spec, "validate") and hasattr(spec, "prepare")):
            raise InvalidInput(f"interventions must be intervention specs (e.g. AblateHead(layer, head)), "
                               f"got {type(spec).__name__}: {spec!r}")
    return specs


def base_payload(model, source: ViewInput, kind: str, title: str, layers: list[int], heads: list[int],
                 interventions) -> dict:
    """The fields every view's data carries."""
    return {
        "kind": kind,
        "title": title,
        "model": model.cfg.name,
        "causal": bool(model.cfg.is_causal),
        "tokens": source.strings,
        "segments": source.segments,
        "layers": layers,
        "heads": heads,
        "interventions": [repr(s) for s in interventions],
    }


def attention_payload(
    model, text, *, kind: str, title: str, layers, heads, interventions, max_tokens: int, threshold: float
) -> tuple[dict, ViewInput]:
    """Tokens and patterns ``[layer][head][query][key]`` for the layers and heads asked for."""
    check_model(model, f"{kind} view")
    specs = interventions_tuple(interventions)
    layer_list = select(model, layers, "layer")
    head_list = select(model, heads, "head")
    threshold = check_threshold(threshold)
    source = view_input(model, text, max_tokens=max_tokens, view=f"{kind} view")
    patterns = read_sites(model, source, layer_list, ["pattern"], specs)
    data = base_payload(model, source, kind, title, layer_list, head_list, specs)
    data["threshold"] = threshold
    data["attention"] = [to_list(patterns[(layer, "pattern")][head_list]) for layer in layer_list]
    return data, source


def check_threshold(threshold) -> float:
    """A real number in [0, 1) (numpy's too: ``np.float32(0.05)`` was refused as "not a number"), as a float."""
    if not isinstance(threshold, numbers.Real) or isinstance(threshold, bool) or not 0 <= threshold < 1:
        raise InvalidInput(f"threshold must be a number in [0, 1), got {threshold!r}")
    return float(threshold)
