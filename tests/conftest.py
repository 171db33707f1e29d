"""Shared fixtures: tiny random models (fast) and the two real embedded models (slow, cached per session)."""

from __future__ import annotations

import os

import pytest
import torch

from attnlab.testing import TINY_ARCHITECTURES, tiny_model

torch.set_num_threads(1)  # tiny models: extra threads only add contention on 2 shared cores


@pytest.fixture(params=["gpt2", "bert", "llama", "gemma3"])
def any_tiny(request):
    """One tiny model per supported architecture family."""
    return tiny_model(request.param)


@pytest.fixture
def tiny_gpt2():
    return tiny_model("gpt2")


@pytest.fixture
def tiny_bert():
    return tiny_model("bert")


@pytest.fixture
def tiny_llama():
    return tiny_model("llama")


@pytest.fixture
def tiny_gemma():
    return tiny_model("gemma3")


@pytest.fixture(scope="session")
def gemma():
    """The real Gemma-3-270m (dequantised once into the attnlab cache)."""
    import attnlab

    return attnlab.load("gemma-3-270m")


@pytest.fixture(scope="session")
def minilm():
    import attnlab

    return attnlab.load("minilm")


@pytest.fixture
def one_thread():
    """Torch on one thread for the test (tiny models: on a busy 2-core machine two threads spin and stall)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
