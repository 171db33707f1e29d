"""The examples in the docstrings of attnlab.analysis and attnlab.viz run and print what they say."""

import doctest
import importlib
import pkgutil

import pytest

import attnlab.analysis
import attnlab.viz

MODULES = [
    info.name
    for package in (attnlab.analysis, attnlab.viz)
    for info in pkgutil.iter_modules(package.__path__, package.__name__ + ".")
]


@pytest.mark.parametrize("name", ["attnlab.analysis", "attnlab.viz", *MODULES])
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed (run with -s to see them)"
