"""What every analysis result shares beyond :class:`attnlab.measure.result.Result`.

The old spellings of a result's table (``.df``, ``.table()``, ``.ranking()``,
``.to_frame()``, ``.windows``) keep working for one release: each warns once per call
with a ``DeprecationWarning`` that names the new spelling, so users' scripts do not break.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import pandas as pd

__all__ = ["deprecated", "Renamed", "CallableTable", "empty_frame"]


def deprecated(old: str, new: str, *, stacklevel: int = 3) -> None:
    """Warn that ``old`` is deprecated in favour of ``new`` (both as users spell them)."""
    warnings.warn(f"{old} is deprecated and will be removed in the next release; use {new}",
                  DeprecationWarning, stacklevel=stacklevel)


class Renamed:
    """A deprecated attribute that reads and writes another one: ``df = Renamed("table")``."""

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


class CallableTable(pd.DataFrame):
    """A result's ``table`` that can still be called like the method it used to be (deprecated).

    ``result.table`` is a DataFrame; ``result.table(**options)`` warns, names the new
    spelling, and returns what the old method returned. Any operation on the frame gives
    a plain DataFrame.
    """

    _metadata = ["_old_call", "_old_name", "_new_name"]

    @property
    def _constructor(self):
        return pd.DataFrame

    @classmethod
    def wrap(cls, frame: pd.DataFrame, call: Callable[..., pd.DataFrame], old: str, new: str) -> CallableTable:
        table = cls(frame)
        table._old_call, table._old_name, table._new_name = call, old, new
        return table

    def __call__(self, *args, **kwargs) -> pd.DataFrame:
        deprecated(self._old_name, self._new_name)
        return self._old_call(*args, **kwargs)


def empty_frame(columns: Sequence[str]) -> pd.DataFrame:
    """A table with these columns and no rows (a result with no per-sentence breakdown)."""
    return pd.DataFrame({c: pd.Series(dtype="float64") for c in columns})
