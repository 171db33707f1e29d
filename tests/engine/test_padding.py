"""A right-padded batch gives every example what it gives alone (with and without edits)."""

from __future__ import annotations

import pytest
import torch

from attnlab.interventions import AblateHead, BlockKeys, EditNeuron, EditScores, SetPattern
from attnlab.testing import tiny_model

from .conftest import ARCHS

TEXTS = ["the nurse said that she was very happy", "he ran", "a dog sat on the car"]


def _specs():
    return [
        None,
        AblateHead(0, 1),
        EditNeuron(1, 2, site="k", dim=3, scale=0.0),
        EditScores(0, None, distance_penalty=0.5),
        BlockKeys(1, 0, keys=[1]),
        SetPattern(1, 3, fn=lambda p: p.pow(2)),  # pattern-shaped; masked keys stay 0
    ]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("spec", _specs(), ids=lambda s: type(s).__name__)
def test_padded_batch_equals_single_runs(arch, spec):
    model = tiny_model(arch)
    specs = [] if spec is None else [spec]
    enc = model.tokenize(TEXTS)
    assert (enc["attention_mask"] == 0).any()  # the batch really is padded
    with torch.no_grad(), model.intervene(*specs):
        batch = model(enc["input_ids"], attention_mask=enc["attention_mask"])
        singles = [model(text) for text in TEXTS]
    if spec is not None:
        with torch.no_grad():
            clean = model(TEXTS[0])
        assert (singles[0] - clean).abs().max() > 1e-4  # the edit does something
    for row, single in enumerate(singles):
        n = single.shape[1]
        assert int(enc["attention_mask"][row].sum()) == n
        assert (batch[row, :n] - single[0]).abs().max() <= 1e-5, f"row {row}"
