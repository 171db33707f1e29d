"""Causal mediation scores log odds with a single-token LogitDiff: the LM head computes two rows, same numbers."""

from __future__ import annotations

import pytest

from attnlab.bias.mediation import MediationPair, causal_mediation
from attnlab.engine import forward as fw
from attnlab.testing import tiny_model
from tests.measure.test_vocab_subset import assert_frames_equal, both_ways

PAIRS = [
    MediationPair("The nurse said that", "The man said that", " she", " he", "nurse"),
    MediationPair("The mechanic told the customer that", "The woman told the customer that", " he", " she", "mechanic"),
    MediationPair("The teacher said that", "The man said that", " she", " he", "teacher"),
]


@pytest.mark.parametrize("arch", ["gpt2", "gemma3"])
def test_mediation_equals_the_full_head(arch, monkeypatch):
    model = tiny_model(arch)
    assert fw._subset_head(model)
    fast, slow = both_ways(
        monkeypatch, lambda: causal_mediation(model, PAIRS, levels=("head", "layer", "model"), batch_size=5, n_boot=20)
    )
    assert_frames_equal(fast.table, slow.table)
    assert_frames_equal(fast.per_prompt, slow.per_prompt)
    assert_frames_equal(fast.total, slow.total)
