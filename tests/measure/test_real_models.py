"""The embedded models: the sweep's prefix reuse is exact on Gemma-3-270m, and its bias shows."""

from __future__ import annotations

import numpy as np
import pytest

from attnlab.interventions import AblateHead
from attnlab.measure import HiddenShift, LogitDiff, effect, sweep_heads
from attnlab.engine.layout import decoder_layers

pytestmark = pytest.mark.slow
PROMPTS = ["The nurse said that", "The mechanic told the customer that"]


def test_gemma_sweep_equals_naive_and_shows_bias(gemma):
    assert len(decoder_layers(gemma)) == 18
    metric = LogitDiff(" she", " he", single_token=True)
    res = sweep_heads(gemma, PROMPTS, metric, "zero", layers=[5, 17], batch_size=8, progress=False)
    naive = np.stack([
        effect(gemma, PROMPTS, metric, [AblateHead(l, h)], n_boot=1, progress=False).per_prompt.intervened.to_numpy()
        for l, h in zip(res.table["layer"], res.table["head"])
    ])
    assert np.abs(res.per_prompt.intervened.to_numpy().reshape(8, 2) - naive).max() <= 1e-4
    clean = res.per_prompt.clean.to_numpy()[:2]
    assert clean[0] > 1.0  # "The nurse said that" -> she far above he


def test_minilm_hidden_shift_sweep(minilm):
    res = sweep_heads(minilm, PROMPTS, HiddenShift(), "zero", layers=[0], batch_size=8, progress=False)
    assert (res.table.effect > 0).all() and len(res.table) == minilm.cfg.n_heads
