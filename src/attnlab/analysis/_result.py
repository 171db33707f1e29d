"""What every analysis result shares beyond :class:`attnlab.measure.result.Result`.

The old spellings of a result's table (``.df``, ``.table()``, ``.ranking()``,
``.to_frame()``, ``.windows``) keep working for one release: each warns once per call
with a ``DeprecationWarning`` that names the new spelling, so users' scripts do not break.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd

from attnlab._deprecation import Renamed, deprecated

__all__ = ["deprecated", "Renamed", "CallableTable", "empty_frame"]


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
