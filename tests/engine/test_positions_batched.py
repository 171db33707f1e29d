"""Positions name tokens: in a left-padded batch, in a KV-cached generation step, and alone, the same token."""

from __future__ import annotations

import pytest
import torch

from attnlab.interventions import AblateHead, BlockKeys, EditNeuron
from attnlab.measure import GenerationDiff, effect
from attnlab.testing import tiny_model

PROMPTS = ["the nurse said that she", "a dog", "the king gave her a book and"]
CASES = {
    "keys": [BlockKeys(0, None, keys=[0])],
    "keys-late": [BlockKeys(1, 1, keys=[2, 3])],
    "positions": [AblateHead(0, None, positions=[1, 2])],
    "neuron-positions": [EditNeuron(1, 0, site="k", dim=3, value=5.0, positions=[1])],
    "q-neuron-positions": [EditNeuron(0, None, site="q", dim=0, scale=-3.0, positions=[2, 6])],
}


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3"])
@pytest.mark.parametrize("case", list(CASES))
def test_batched_generation_equals_one_prompt_at_a_time(arch, case):
    model = tiny_model(arch)
    specs = CASES[case]
    batched = model.generate(PROMPTS, max_new_tokens=6, interventions=specs, return_type="tokens")
    for row, prompt in enumerate(PROMPTS):
        alone = model.generate(prompt, max_new_tokens=6, interventions=specs, return_type="tokens")[0]
        n = len(alone)
        assert batched[row, :n].tolist() == alone.tolist(), f"row {row}: {prompt!r}"


def test_generation_effect_of_a_key_block_is_the_same_in_a_batch():
    model = tiny_model("llama")
    spec = [BlockKeys(0, None, keys=[0])]
    together = effect(model, PROMPTS[:2], interventions=spec, metric=GenerationDiff(6), progress=False, n_boot=0).per_prompt["effect"]
    alone = [effect(model, [p], interventions=spec, metric=GenerationDiff(6), progress=False, n_boot=0).per_prompt["effect"][0] for p in PROMPTS[:2]]
    assert together.tolist() == alone


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3", "bert"])
def test_left_padded_batch_equals_single_runs_under_position_edits(arch):
    model = tiny_model(arch)
    specs = [AblateHead(0, None, positions=[1, 2]), BlockKeys(1, 0, keys=[1])]
    with torch.no_grad(), model.intervene(*specs):
        batch = model(PROMPTS, padding_side="left")
        tokens = model.tokens(PROMPTS, padding_side="left")
        singles = [model(p) for p in PROMPTS]
    for row, single in enumerate(singles):
        n = single.shape[1]
        cols = slice(tokens.ids.shape[1] - n, None)
        assert (batch[row, cols] - single[0]).abs().max() <= 1e-5, f"row {row}"
