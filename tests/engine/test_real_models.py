"""The two embedded real models load offline, have the right geometry, and respond to edits."""

from __future__ import annotations

import pytest
import torch

from attnlab.interventions import AblateHead, EditScores

pytestmark = pytest.mark.slow


def test_minilm_geometry_and_an_ablation_changes_it(minilm):
    cfg = minilm.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_model) == (6, 12, 12, 32, 384)
    assert cfg.architecture == "bert" and not cfg.is_causal and not cfg.has_lm_head
    text = "The doctor asked the nurse a question."
    with torch.no_grad():
        clean = minilm(text)
        with minilm.intervene(AblateHead(2, [0, 5, 11])):
            ablated = minilm(text)
    assert clean.shape == (1, minilm.to_tokens(text).shape[1], 384)
    assert (ablated - clean).abs().max() > 1e-2
    assert minilm.count_hooks() == 0


def test_gemma_geometry_bias_and_an_edit_changes_it(gemma):
    cfg = gemma.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.d_head) == (18, 4, 1, 256)
    assert cfg.is_causal and cfg.has_lm_head and cfg.architecture.startswith("gemma3")
    she, he = gemma.to_single_token(" she"), gemma.to_single_token(" he")
    with torch.no_grad():
        probs = gemma("The nurse said that")[0, -1].softmax(-1)
        with gemma.intervene(AblateHead(3, None), EditScores(9, 0, distance_penalty=0.5)):
            edited = gemma("The nurse said that")[0, -1].softmax(-1)
    assert probs[she] > probs[he]  # the documented gender bias of the base model
    assert probs[she] > 0.05
    assert (edited - probs).abs().sum() > 1e-2  # the edit moved the next-token distribution
    assert gemma.count_hooks() == 0


def test_gemma_batches_are_right_padded_and_match_single_runs(gemma):
    texts = ["The nurse said that", "Once upon a time, there was a"]
    enc = gemma.tokenize(texts)
    assert enc["attention_mask"][0, 0] == 1 and enc["attention_mask"][0, -1] == 0
    with torch.no_grad():
        batch = gemma(enc["input_ids"], attention_mask=enc["attention_mask"])
        single = gemma(texts[0])
    n = single.shape[1]
    assert (batch[0, :n] - single[0]).abs().max() < 1e-3
