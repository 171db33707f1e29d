"""A small self-contained HTML report: headline numbers, tables, figures and embedded views.

Figures are inlined as base64 PNG and views as ``<iframe srcdoc>``, so the report is one
file that opens offline, like every attnlab view.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from attnlab.errors import InvalidInput, is_integer
from attnlab.viz._html import View, write_page

__all__ = ["Report"]

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;font-size:.9em;margin:.6em 0} td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f4f4} td:first-child,th:first-child{text-align:left}
.numbers{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:.6em}
.num{background:#f7f7fb;border:1px solid #e3e3ee;border-radius:6px;padding:.6em}
.num b{display:block;font-size:1.3em} .note{color:#666;font-size:.9em}
img{max-width:100%} iframe{width:100%;height:560px;border:1px solid #ddd;border-radius:4px}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:1em}
"""


def _escaped(value, what: str) -> str:
    """``value`` escaped for HTML; anything but a string is refused here, not later as a bare AttributeError."""
    if not isinstance(value, str):
        raise InvalidInput(f"Report: {what} must be a string, got {type(value).__name__}: {value!r}")
    return html.escape(value)


class Report:
    """Collect sections, then ``.save(path)`` one offline HTML file."""

    def __init__(self, title: str, subtitle: str = ""):
        _escaped(title, "title"), _escaped(subtitle, "subtitle")  # else the failure came only at .html / .save()
        self.title, self.subtitle = title, subtitle
        self._parts: list[str] = []

    def heading(self, text: str) -> Report:
        self._parts.append(f"<h2>{_escaped(text, 'a heading')}</h2>")
        return self

    def text(self, text: str, *, note: bool = False) -> Report:
        cls = ' class="note"' if note else ""
        self._parts.append(f"<p{cls}>{_escaped(text, 'a text')}</p>")
        return self

    def numbers(self, items: Sequence[tuple[str, str]]) -> Report:
        pairs = list(items)
        for item in pairs:
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                raise InvalidInput(f"Report.numbers takes (label, value) pairs of strings, got {item!r}")
        cells = "".join(
            f'<div class="num">{_escaped(label, "a label")}<b>{_escaped(value, f"the value of {label!r}")}</b></div>'
            for label, value in pairs
        )
        self._parts.append(f'<div class="numbers">{cells}</div>')
        return self

    def table(self, df: pd.DataFrame, *, max_rows: int = 30, float_format: str = "{:.3f}") -> Report:
        if not isinstance(df, pd.DataFrame):
            raise InvalidInput(f"Report.table takes a pandas DataFrame, got {type(df).__name__}")
        if not is_integer(max_rows) or max_rows < 1:
            raise InvalidInput(f"max_rows must be a whole number >= 1, got {max_rows!r}")
        try:  # a format that fails would otherwise fail inside pandas, or only for some values
            float_format.format(1.5)
        except (AttributeError, ValueError, IndexError, KeyError) as err:
            raise InvalidInput(f"float_format must be a format string for one number, such as '{{:.3f}}', got "
                               f"{float_format!r} ({err})") from None
        shown = df.head(max_rows)
        self._parts.append(
            shown.to_html(index=False, border=0, float_format=lambda v: float_format.format(v), escape=True)
        )
        if len(df) > max_rows:
            self.text(f"({len(df) - max_rows} more rows in the CSV files)", note=True)
        return self

    def figure(self, fig, *, alt: str = "figure") -> Report:
        if not callable(getattr(fig, "savefig", None)):
            raise InvalidInput(f"Report.figure takes a matplotlib Figure, got {type(fig).__name__}")
        alt_text = _escaped(alt, "alt")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        data = base64.b64encode(buf.getvalue()).decode()
        self._parts.append(f'<img alt="{alt_text}" src="data:image/png;base64,{data}">')
        return self

    def views(self, *views) -> Report:
        for view in views:
            if not isinstance(view, View):
                raise InvalidInput(f"Report.views takes views (head_view(...) and the like), got {type(view).__name__}")
        frames = "".join(f'<iframe srcdoc="{html.escape(v.html, quote=True)}"></iframe>' for v in views)
        self._parts.append(f'<div class="pair">{frames}</div>' if len(views) == 2 else frames)
        return self

    @property
    def html(self) -> str:
        sub = f"<p class=\"note\">{html.escape(self.subtitle)}</p>" if self.subtitle else ""
        body = "\n".join(self._parts)
        return (
            f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(self.title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(self.title)}</h1>{sub}\n{body}\n</body></html>\n"
        )

    def save(self, path: str | Path) -> Path:
        """Write the report to ``path`` (UTF-8), making missing folders, and return the path."""
        return write_page(path, self.html, "the report", "report.html")
