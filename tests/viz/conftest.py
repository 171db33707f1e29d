"""A headless-chromium renderer for the view tests (skips cleanly when chromium is missing)."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

INSTALL = "apt-get update && apt-get install -y chromium chromium-driver"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-extensions", "--enable-logging=stderr", "--v=0",
    "--virtual-time-budget=5000",
]
_ROOT = re.compile(r'<div class="attnlab-view"([^>]*)>')
_ATTR = re.compile(r'([\w-]+)="([^"]*)"')


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Rendered:
    """What chromium made of a page: the DOM, each view root's attributes, console lines."""

    def __init__(self, dom: str, log: str):
        self.dom = dom
        self.console = [line for line in log.splitlines() if ":CONSOLE" in line]
        self.roots = [
            {k: html.unescape(v) for k, v in _ATTR.findall(m.group(1))} for m in _ROOT.finditer(dom)
        ]

    @property
    def root(self) -> dict:
        assert len(self.roots) == 1, f"expected one view, found {len(self.roots)}"
        return self.roots[0]

    @property
    def selftest(self) -> dict:
        return json.loads(self.root["data-selftest"])

    def count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.dom))


@pytest.fixture(scope="session")
def render(tmp_path_factory):
    """``render(html_text, selftest=True) -> Rendered`` via ``chromium --headless --dump-dom``."""
    binary = chromium_binary()
    if binary is None:
        pytest.skip(f"chromium is not installed; install it with: {INSTALL}")
    base = tmp_path_factory.mktemp("chromium")
    counter = iter(range(10**6))

    def _render(page: str, *, selftest: bool = True) -> Rendered:
        n = next(counter)
        path = Path(base) / f"page{n}.html"
        path.write_text(page, encoding="utf-8")
        url = path.as_uri() + ("#selftest" if selftest else "")
        proc = subprocess.run(
            [binary, *FLAGS, f"--user-data-dir={base / f'profile{n}'}", "--dump-dom", url],
            capture_output=True, text=True, timeout=120,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        return Rendered(proc.stdout, proc.stderr)

    return _render
