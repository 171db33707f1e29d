"""Non-finite and out-of-range values are refused when the spec is made (InvalidSpec), never NaN logits later."""

from __future__ import annotations

import pytest
import torch

from attnlab.errors import InvalidSpec, ShapeMismatch
from attnlab.interventions import AblateHead, EditNeuron, EditScores, Patch, SetPattern, from_dict
from attnlab.testing import tiny_model

TEXT = "the nurse said that she was happy"


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), 1e39, float("nan")])
def test_distance_penalty_must_be_finite_in_float32(value):
    with pytest.raises(InvalidSpec, match="distance_penalty must be a finite number"):
        EditScores(0, None, distance_penalty=value)


@pytest.mark.parametrize(("field", "value"), [("scale", 1e308), ("value", 1e308), ("scale", -1e39), ("value", float("inf"))])
def test_neuron_values_must_fit_float32(field, value):
    with pytest.raises(InvalidSpec, match=f"{field} must be a finite number"):
        EditNeuron(0, 0, site="q", dim=0, **{field: value})


def test_tensors_are_checked_after_conversion():
    n = 8
    with pytest.raises(InvalidSpec, match="beyond float32's range"):
        EditScores(0, 0, add=torch.full((n, n), 1e300, dtype=torch.float64))
    with pytest.raises(InvalidSpec, match="beyond float32's range"):
        EditScores(0, 0, replace=[[1e300] * n] * n)
    with pytest.raises(InvalidSpec, match="Patch source tensor contains NaN or inf"):
        Patch(0, 0, site="attn_scores", source=torch.full((1, 4, n, n), float("nan")))
    with pytest.raises(InvalidSpec, match="mean contains NaN or inf"):
        AblateHead(0, 0, method="mean", mean=torch.full((4, 8), float("inf")))


@pytest.mark.parametrize("seed", ["x", float("nan"), float("inf"), 2**70, -1, True])
def test_seeds_must_be_integers_in_range(seed):
    with pytest.raises(InvalidSpec, match="seed must be an integer in 0..2\\*\\*63-1"):
        AblateHead(0, 0, method="resample", reference=["a dog"], seed=seed)
    with pytest.raises(InvalidSpec, match="seed must be an integer"):
        from_dict({"kind": "ablate_head", "layer": 0, "method": "resample", "reference": ["a dog"], "seed": seed})


def test_patch_source_must_be_text_cache_or_numbers():
    with pytest.raises(InvalidSpec, match="Patch source must be"):
        Patch(0, 0, site="z", source=[1, "two"])
    with pytest.raises(InvalidSpec, match="Patch source must be"):
        Patch(0, 0, site="z", source=object())
    with pytest.raises(ShapeMismatch, match="must have 4 axes"):
        Patch(0, 0, site="z", source=[[1.0, 2.0]])


def test_four_axis_tensors_of_the_wrong_batch_or_heads_are_shape_errors():
    model = tiny_model("gemma3")
    n = model.to_tokens(TEXT).shape[1]
    for spec in (
        SetPattern(0, 0, pattern=torch.full((3, 4, n, n), 1.0 / n)),
        SetPattern(0, 0, pattern=torch.full((1, 3, n, n), 1.0 / n)),
        EditScores(0, 0, add=torch.zeros(1, 7, n, n)),
        EditScores(0, 0, replace=torch.zeros(2, 4, n, n)),
    ):
        with pytest.raises(ShapeMismatch, match=r"has shape \(\d, \d, \d+, \d+\) but this input is \(1, 4, \d+, \d+\)"):
            with model.intervene(spec):
                model(TEXT)
    assert model.count_hooks() == 0
