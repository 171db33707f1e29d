"""The floors of the house, enforced: import-linter's contracts (pyproject.toml) hold, and cover every private module."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "pyproject.toml"


def test_import_contracts_are_kept(monkeypatch):
    cli = pytest.importorskip("importlinter.cli", reason="import-linter is a test dependency")
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT / "src"))
    assert cli.lint_imports(config_filename=str(CONFIG)) == 0  # the report above names any broken contract


def test_every_private_module_is_protected_by_a_contract():
    contracts = tomllib.loads(CONFIG.read_text())["tool"]["importlinter"]["contracts"]
    protected = {m for c in contracts if c["type"] == "forbidden" for m in c["forbidden_modules"]}
    private = {
        f"attnlab.{path.parent.name}.{path.stem}"
        for path in (ROOT / "src" / "attnlab").glob("*/_*.py")
        if path.name != "__init__.py"
    }
    assert private <= protected, f"add these to a 'Private modules of ...' contract in pyproject.toml: {sorted(private - protected)}"


def test_floors_list_every_package():
    contracts = tomllib.loads(CONFIG.read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c["layers"] for c in contracts if c["type"] == "layers")
    listed = {name.strip() for layer in layers for name in layer.replace("|", ":").split(":")}
    packages = {f"attnlab.{p.name}" for p in (ROOT / "src" / "attnlab").iterdir() if (p / "__init__.py").exists()}
    modules = {f"attnlab.{p.stem}" for p in (ROOT / "src" / "attnlab").glob("*.py") if p.stem != "__init__"}
    assert packages | modules <= listed, f"give these a floor in pyproject.toml: {sorted(packages | modules - listed)}"
