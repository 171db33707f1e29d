"""The one family of errors attnlab raises.

Every error names what was wrong and the valid range or set, so a researcher can fix the
call without reading the source. Children also inherit the matching built-in exception
(``except IndexError`` keeps working for an out-of-range layer).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "AttnlabError",
    "InvalidLocation",
    "InvalidSpec",
    "ShapeMismatch",
    "UnsupportedModel",
    "InvalidInput",
    "DataFormatError",
    "DistributedError",
    "ProcessLeft",
    "NotSupported",
]


class AttnlabError(Exception):
    """Base class of every error attnlab raises on purpose."""


class InvalidLocation(AttnlabError, IndexError):
    """A layer, head, dimension, position or hook name that the model does not have."""


class InvalidSpec(AttnlabError, ValueError):
    """An intervention or option that is malformed (unknown method, NaN values, ...)."""


class ShapeMismatch(AttnlabError, ValueError):
    """A supplied tensor whose shape does not fit the place it is written to."""


class UnsupportedModel(AttnlabError, TypeError):
    """A model whose attention attnlab cannot reach (e.g. a state-space model)."""


class InvalidInput(AttnlabError, ValueError):
    """Prompts, token strings or data that cannot be used (empty, too long, mismatched)."""


class DataFormatError(AttnlabError, ValueError):
    """A data file (CoNLL-U, WinoBias, Winogender, JSON spec) with a malformed line."""


class NotSupported(AttnlabError, AttributeError):
    """A TransformerLens name (method, module or config field) attnlab does not provide; the message says what to use."""


class DistributedError(AttnlabError, RuntimeError):
    """A process of a parallel run failed with an error that is not attnlab's own (rank and traceback inside)."""


class ProcessLeft(DistributedError):
    """Another process of a parallel run left the group before a gather: its own error is the cause."""


def did_you_mean(name: str, options: Iterable[str]) -> str:
    """Return ``"; did you mean 'x'?"`` for the closest option, or ``""`` if none is close."""
    close = difflib.get_close_matches(str(name), [str(o) for o in options], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def is_integer(value) -> bool:
    """An integer of any kind (Python, numpy, a 0-d integer tensor's ``.item()``), but not a bool."""
    import numbers

    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_flag(value, name: str, *, none: bool = False, error: type[AttnlabError] = InvalidInput) -> bool | None:
    """``value`` as a bool: True or False (a NumPy bool too), or None where ``none``.

    A string such as ``"no"`` is truthy, so an option taking any value would silently switch on.
    """
    import numpy as np

    if none and value is None:
        return None
    if not isinstance(value, (bool, np.bool_)):
        raise error(f"{name} must be True{', False or None' if none else ' or False'}, got {value!r}")
    return bool(value)


def check_positive_int(value, what: str, *, hint: str = "", error: type[AttnlabError] = InvalidInput) -> int:
    """``value`` as an int >= 1 (Python's or NumPy's; not a bool): ``-1`` or ``1.5`` would slice or fail far away."""
    if not is_integer(value) or value < 1:
        raise error(f"{what} must be a positive integer{hint}, got {value!r}")
    return int(value)
