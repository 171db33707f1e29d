"""Tiny models are faster on one thread; on a busy 2-core machine two threads spin and stall (x50)."""

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):  # the shared fixture of tests/conftest.py, for every test here
    yield
