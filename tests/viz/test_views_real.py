"""The views on the two real embedded models (slow: loads Gemma-3-270m and MiniLM)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnlab.engine.locations import hook_name
from attnlab.viz import head_view, neuron_view

pytestmark = pytest.mark.slow

TEXT = "The nurse said that she was tired."


def test_gemma_neuron_view_reproduces_its_scores(gemma):
    view = neuron_view(gemma, TEXT, layers=[4], heads=[0, 3])
    assert view.data["scales"][0] == pytest.approx(gemma.hf_model.config.query_pre_attn_scalar ** -0.5, rel=1e-3)
    q, k = np.asarray(view.data["q"])[0], np.asarray(view.data["k"])[0]  # [head, pos, d_head=256]
    assert q.shape[-1] == 256
    scores = view.data["scores"][0]
    n = q.shape[1]
    for h in range(2):
        s = np.asarray([scores[h][n - 1][j] for j in range(n)], dtype=float)
        np.testing.assert_allclose((q[h, -1] * k[h]).sum(-1) * view.data["scales"][0], s, atol=0.02, rtol=0.01)
    # one key/value head serves all four query heads (GQA): the k the page shows is the same for each
    all_heads = np.asarray(neuron_view(gemma, TEXT, layers=[4]).data["k"])[0]
    np.testing.assert_allclose(all_heads[0], all_heads[3], atol=1e-3)


def test_minilm_sentence_pair_runs_with_segment_ids(minilm):
    pair = ("The nurse said that she was tired.", "The shift was long.")
    view = head_view(minilm, pair, layers=[2])
    enc = minilm.tokenizer(*pair, return_tensors="pt")
    assert view.data["segments"] == enc["token_type_ids"][0].tolist()
    with torch.no_grad():
        _, cache = minilm.run_with_cache(enc["input_ids"], names_filter=[hook_name(2, "pattern")],
                                         attention_mask=enc["attention_mask"], token_type_ids=enc["token_type_ids"])
    np.testing.assert_allclose(np.asarray(view.data["attention"])[0], cache[hook_name(2, "pattern")][0].numpy(), atol=6e-5)
