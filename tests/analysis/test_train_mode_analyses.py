"""The analyses and views refuse a model in training mode whose dropout acts, as measurements do.

Dropout would make every attention map, loss curve and neuron table a random draw.
"""

from __future__ import annotations

import pytest
import torch

from attnlab.analysis import head_stats, loss_by_position, neuron_data
from attnlab.errors import InvalidInput
from attnlab.testing import tiny_model
from attnlab.viz import head_view

TEXT = "the nurse said that she would come back soon ."
CALLS = {
    "head_stats": lambda m: head_stats(m, [TEXT], progress=False),
    "loss_by_position": lambda m: loss_by_position(m, [TEXT], progress=False),
    "neuron_data": lambda m: neuron_data(m, TEXT, layer=0, head=0, query=2),
    "head_view": lambda m: head_view(m, TEXT),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_a_train_mode_model_with_dropout_is_refused_and_left_as_it_was(name):
    model = tiny_model("gpt2")
    model.train()
    before = {k: v.clone() for k, v in model.hf_model.state_dict().items()}
    with pytest.raises(InvalidInput, match=r"training mode and its dropout acts .*call model\.eval\(\) first"):
        CALLS[name](model)
    assert model.hf_model.training and model.count_hooks() == 0
    assert all(torch.equal(before[k], v) for k, v in model.hf_model.state_dict().items())


def test_the_same_analysis_in_eval_mode_repeats_exactly():
    model = tiny_model("gpt2")
    model.train()
    model.eval()
    first = head_stats(model, [TEXT], progress=False).table
    second = head_stats(model, [TEXT], progress=False).table
    assert first.equals(second)
