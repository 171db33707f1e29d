"""The checks every bias measurement starts with: a model that gives word probabilities, word pairs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set

from attnlab.errors import InvalidInput, UnsupportedModel

__all__ = ["check_lm", "check_pronouns", "distinct_tokens", "single_token"]


def check_lm(model, *, causal: bool | None = None) -> None:
    """Raise :class:`UnsupportedModel` unless ``model`` returns vocabulary logits (of the kind asked for)."""
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


def check_pronouns(pronouns, what: str = "pronouns") -> tuple[str, str]:
    """A (female, male) pair of words, stripped; ``what`` names the argument in the error.

    A set has no order (which one is female?), a dict raised ``KeyError: 0`` and None a ``TypeError``.
    """
    given = pronouns
    pronouns = list(pronouns) if isinstance(pronouns, Iterable) and not isinstance(pronouns, (str, Mapping, Set)) else []
    if len(pronouns) != 2 or not all(isinstance(p, str) and p.strip() for p in pronouns):
        raise InvalidInput(f"{what} must be a (female, male) pair of words (a tuple or list), got {given!r}")
    female, male = pronouns[0].strip(), pronouns[1].strip()
    if female == male:  # every log ratio would be exactly 0: a result that looks like "no bias" (see distinct_tokens)
        raise InvalidInput(f"{what} must be two different words (female, male), got {given!r}")
    return female, male


def single_token(model, word: str, why: str) -> None:
    """Raise :class:`InvalidInput` (saying ``why``) unless ``word`` is one token for ``model``."""
    pieces = model.to_str_tokens(word, prepend_bos=False)
    if len(pieces) != 1:
        raise InvalidInput(f"{word!r} is {len(pieces)} tokens for {model.cfg.name} ({pieces!r}); {why}")


def distinct_tokens(model, first: str, second: str, what: str) -> None:
    """Raise :class:`InvalidInput` if the two words are the same token ids for ``model``.

    Different strings can be one token (" she" and " SHE" for a lower-casing tokenizer):
    every log ratio or odds ratio between them is exactly 0, which reads as "no bias".
    """
    a, b = model.token_rows([first, second], prepend_bos=False)
    if a == b:
        raise InvalidInput(f"{what}: {first!r} and {second!r} are the same token{'s' if len(a) > 1 else ''} for "
                           f"{model.cfg.name} ({a}), so every log ratio between them would be exactly 0; "
                           "choose two words that tokenize differently")
