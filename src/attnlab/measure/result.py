"""The one shape every attnlab result has.

Whatever produced it (an effect, a sweep, a bias metric, a head analysis), a result has:

* ``table``: a DataFrame with one row per unit of the question (a head, a variant, an
  occupation, a relation), the headline numbers as columns;
* ``per_prompt``: a DataFrame in long format with one row per unit and prompt (or pair,
  sentence), the numbers the table averages;
* ``summary``: a small DataFrame of the few numbers worth quoting (``metric, value, low,
  high`` and more where useful);
* ``plot(ax=None)``: a matplotlib Figure (drawn on ``ax`` when given), built without pyplot,
  so it never changes the backend or leaves figures open.

A table column named ``head`` collides with ``DataFrame.head`` (``t.head == 3`` silently
compares a method): read columns with ``result["head"]`` or ``result.column("head")``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from attnlab._deprecation import Renamed
from attnlab.errors import InvalidInput, did_you_mean

__all__ = ["Result", "renamed"]


#: A deprecated name for an attribute or method of a result: ``per_unit = renamed("table")``.
renamed = Renamed


class Result:
    """Base class of every result: ``table``, ``per_prompt``, ``summary`` and ``plot(ax=None)``."""

    table: pd.DataFrame
    per_prompt: pd.DataFrame

    @property
    def summary(self) -> pd.DataFrame:  # subclasses override with their headline numbers
        return self.table

    def plot(self, ax=None, **options):
        raise NotImplementedError(f"{type(self).__name__} has no plot")

    @property
    def can_plot(self) -> bool:
        """Whether ``plot()`` draws this result with its defaults; ``save`` writes the PNG only then.

        False for a class without a plot; a subclass whose figure needs what a result may
        lack (a mediation map needs the head level) says so here.
        """
        return type(self).plot is not Result.plot

    def column(self, name: str) -> pd.Series:
        """One column of ``table`` (the safe spelling of ``table["head"]``)."""
        if name not in self.table.columns:
            raise InvalidInput(
                f"{type(self).__name__}.table has no column {name!r}{did_you_mean(name, list(self.table.columns))}; "
                f"columns: {', '.join(map(str, self.table.columns))}"
            )
        return self.table[name]

    def __getitem__(self, name: str) -> pd.Series:
        return self.column(name)

    def save(self, folder: str | Path, *, stem: str | None = None) -> list[Path]:
        """Write ``table``, ``per_prompt`` and ``summary`` as CSV (and the plot as PNG, when
        :attr:`can_plot`) into ``folder``."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        stem = stem or type(self).__name__.lower()
        written = []
        for part in ("table", "per_prompt", "summary"):
            frame = getattr(self, part)
            if isinstance(frame, pd.DataFrame):
                path = out / f"{stem}_{part}.csv"
                frame.to_csv(path, index=False)
                written.append(path)
        if not self.can_plot:
            return written
        fig = self.plot()
        path = out / f"{stem}.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        written.append(path)
        return written
