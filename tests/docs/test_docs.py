"""Every ```python block in README.md and docs/**/*.md runs (blocks of one page share a namespace)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks(page: Path) -> list[str]:
    return BLOCK.findall(page.read_text())


@pytest.mark.parametrize("page", [p for p in PAGES if _blocks(p)], ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # samples that save files write into a scratch folder
    namespace: dict = {"__name__": "__main__"}  # a page is a script: its `if __name__ == "__main__":` blocks run
    for i, code in enumerate(_blocks(page)):
        try:
            with warnings.catch_warnings():  # the docs teach the current names, not deprecated spellings
                warnings.filterwarnings("error", message=".* is deprecated and will be removed", category=DeprecationWarning)
                exec(compile(code, f"{page.name}[block {i}]", "exec"), namespace)
        except Exception as err:  # re-raise with the block that failed
            raise AssertionError(f"{page.relative_to(ROOT)} block {i} failed: {err!r}\n---\n{code}") from err


def test_docs_pages_exist():
    names = {p.name for p in PAGES}
    for needed in ("index.md", "concepts.md", "interventions.md", "performance.md"):
        assert needed in names, f"docs/{needed} is missing"
