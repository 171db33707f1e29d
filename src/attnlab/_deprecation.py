"""Deprecated spellings that keep working for one release, each with a warning naming the new one.

One mechanism for every floor: a renamed attribute of a result (``Renamed``), a renamed
or moved public name of a package (``moved_names``), and a plain warning (``deprecated``).
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable

__all__ = ["deprecated", "Renamed", "moved_names"]


def deprecated(old: str, new: str, *, stacklevel: int = 3) -> None:
    """Warn that ``old`` is deprecated in favour of ``new`` (both as users spell them)."""
    warnings.warn(f"{old} is deprecated and will be removed in the next release; use {new}",
                  DeprecationWarning, stacklevel=stacklevel)


class Renamed:
    """A deprecated attribute that reads and writes another one: ``per_unit = Renamed("table")``."""

    def __init__(self, new: str):
        self.new = new

    def __set_name__(self, owner, name: str) -> None:
        self.old = name

    def _warn(self, obj) -> None:
        owner = type(obj).__name__
        deprecated(f"{owner}.{self.old}", f"{owner}.{self.new}", stacklevel=4)

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        self._warn(obj)
        return getattr(obj, self.new)

    def __set__(self, obj, value) -> None:
        self._warn(obj)
        setattr(obj, self.new, value)


def moved_names(package: str, moved: dict[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` for names that left a package's surface: ``{old: "module:name"}``.

    ``from attnlab.bias import PronounBias`` keeps working, warns once per use and names
    where the object lives now, as an import (``from attnlab.bias.pronouns import PronounBias``:
    a dotted path can be shadowed, ``attnlab.bias.templates`` is also a function's name).
    """

    def __getattr__(name: str):
        if name not in moved:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attr = moved[name].partition(":")
        deprecated(f"{package}.{name}", f"from {module} import {attr or name}")
        return getattr(importlib.import_module(module), attr or name)

    return __getattr__
