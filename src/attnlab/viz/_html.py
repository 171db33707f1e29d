"""The one self-contained HTML document every view is: data as JSON, JavaScript and CSS inline.

Nothing is fetched from the network (no CDN, no web fonts): the page works opened from
disk, in Jupyter and offline. Every element id carries a per-instance suffix, and the
scripts only look inside their own root element, so several views can share one page.
"""

from __future__ import annotations

import html as _html
import json
import os
import uuid
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["View", "asset", "json_for_script", "write_page"]


@cache
def asset(name: str) -> str:
    """Text of a file in ``attnlab/viz/assets`` (JavaScript and CSS written for attnlab)."""
    return resources.files("attnlab.viz").joinpath("assets", name).read_text(encoding="utf-8")


def json_for_script(data: Any) -> str:
    """JSON that is safe inside ``<script>``: no ``</script>`` or ``<!--`` can end it early."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def write_page(path: str | Path, text: str, what: str, example: str) -> Path:
    """Write ``text`` to ``path`` (UTF-8), making missing folders; a path no file can be written to is an InvalidInput.

    A folder given as the path, or a file where one of the folders on the way should be,
    failed with a bare ``[Errno 21] Is a directory`` or ``[Errno 17] File exists`` naming
    another path than the one given.
    """
    from attnlab.errors import InvalidInput

    if not isinstance(path, (str, os.PathLike)):
        raise InvalidInput(f"cannot write {what} to {path!r}: give a file name (str or pathlib.Path)")
    path = Path(path)
    if path.is_dir():
        raise InvalidInput(f"cannot write {what} to {path}: it is a folder; give a file name such as {path / example}")
    blocker = next((p for p in path.parents if p.exists() or p.is_symlink()), None)
    if blocker is not None and not blocker.is_dir():
        raise InvalidInput(f"cannot write {what} to {path}: {blocker} is a file, not a folder, "
                           "so no folder can be made there")
    # Encoded before the file is opened: a lone surrogate (a model or folder name decoded with
    # surrogateescape, in the page's <title>) raised UnicodeEncodeError after the file had been
    # truncated, leaving it empty. It is written as its escape, \udce9, as the command line shows it.
    data = text.encode("utf-8", errors="backslashreplace")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


class View:
    """One rendered view: ``.html`` (a whole document), ``.save(path)``, ``.fragment()``, Jupyter display.

    ``data`` is exactly what the page's script draws, so tests and users can check it
    against the model without a browser.
    """

    def __init__(self, kind: str, title: str, data: dict[str, Any]):
        self.kind = kind
        self.title = title
        self.data = data

    def _parts(self, uid: str) -> tuple[str, str]:
        style = f"<style>{asset('views.css')}</style>"
        body = (
            f'<div class="attnlab-view" id="{uid}" data-kind="{self.kind}" data-status="pending"></div>\n'
            f'<script type="application/json" id="{uid}-data">{json_for_script(self.data)}</script>\n'
            f"<script>{asset('common.js')}\n{asset(self.kind + '_view.js')}</script>\n"
            f'<script>attnlab.run(document.getElementById("{uid}"), '
            f'JSON.parse(document.getElementById("{uid}-data").textContent));</script>'
        )
        return style, body

    @property
    def html(self) -> str:
        """The whole page: open it from disk in any browser, with no network."""
        style, body = self._parts("attnlab-" + uuid.uuid4().hex[:12])
        return (
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{_html.escape(self.title)}</title>\n{style}\n</head>\n<body>\n{body}\n</body>\n</html>\n"
        )

    def fragment(self) -> str:
        """A ``<div>`` with its own style and scripts, to place several views in one page (ids are unique)."""
        style, body = self._parts("attnlab-" + uuid.uuid4().hex[:12])
        return f"{style}\n{body}"

    def save(self, path: str | Path) -> Path:
        """Write the page to ``path`` (UTF-8) and return the path."""
        return write_page(path, self.html, "the view", "view.html")

    def _repr_html_(self) -> str:
        # An iframe keeps the page's CSS and script apart from the notebook's; it grows to fit.
        return (
            f'<iframe srcdoc="{_html.escape(self.html, quote=True)}" '
            'style="width:100%;height:620px;border:none" '
            'onload="try{this.style.height=(this.contentDocument.documentElement.scrollHeight+20)+\'px\'}catch(e){}">'
            "</iframe>"
        )

    def __repr__(self) -> str:
        return f"<attnlab {self.kind} view: {self.title}>"
