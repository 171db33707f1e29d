"""``weights_digest``: equal for equal weights in separate objects, different after an edit or for another seed."""

from __future__ import annotations

import torch

from attnlab.testing import tiny_model


def test_weights_digest_tells_weights_apart_and_sees_in_place_edits():
    model = tiny_model("llama")
    first = model.weights_digest()
    assert tiny_model("llama").weights_digest() == first  # another object, same weights
    assert tiny_model("llama", seed=1).weights_digest() != first
    with torch.no_grad():
        next(model.hf_model.parameters())[0, 0] += 1.0  # an in-place edit: the kept digest must not be reused
    assert model.weights_digest() != first
