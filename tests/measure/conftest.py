"""Tiny models are faster on one thread; on a busy 2-core machine two threads spin and stall (x50)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
