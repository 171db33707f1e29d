"""Every name that left a package's surface still works, and its warning names an import that works too.

The warning said ``attnlab.bias.templates.occupation_table``: a dotted path that fails, since the
package's ``templates`` is also a function (AttributeError: 'function' object has no attribute ...).
"""

from __future__ import annotations

import importlib
import re
import warnings

import pytest

PACKAGES = ["attnlab.bias", "attnlab.measure", "attnlab.analysis", "attnlab.viz", "attnlab.interventions", "attnlab"]


def _moved(package: str) -> dict[str, str]:
    module = importlib.import_module(package)
    getter = getattr(module, "__getattr__", None)
    cells = dict(zip(getter.__code__.co_freevars, (c.cell_contents for c in getter.__closure__ or ()))) if getter else {}
    return cells.get("moved", {})


CASES = [(package, name) for package in PACKAGES for name in _moved(package)]


def test_there_are_moved_names_to_check():
    assert ("attnlab.bias", "occupation_table") in CASES


@pytest.mark.parametrize(("package", "name"), CASES)
def test_a_moved_name_warns_with_an_import_that_gives_the_same_object(package, name):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = getattr(importlib.import_module(package), name)
    (warning,) = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    advice = re.search(r"use (from [\w.]+ import \w+)$", str(warning.message))
    assert advice, str(warning.message)
    namespace: dict = {}
    exec(advice.group(1), namespace)  # noqa: S102 - the advice, run as a user would
    assert namespace[name if name in namespace else advice.group(1).split()[-1]] is old
