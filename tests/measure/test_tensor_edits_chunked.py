"""Tensor pattern and score edits in a measurement that chunks its prompts: each prompt gets what it gets alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnlab.errors import InvalidInput, ShapeMismatch
from attnlab.interventions import EditScores, SetPattern
from attnlab.measure import LogitDiff, effect, score, sweep_interventions
from attnlab.testing import tiny_model

PROMPTS = ["the nurse said that", "a dog", "the doctor told the teacher that she was", "he", "the king gave her a book"]
METRIC = LogitDiff(" she", " he")


def _alone(model, specs_of, lengths):
    """Each prompt measured on its own, with the tensor cut to its own length."""
    return np.array([effect(model, [p], METRIC, specs_of(m, i), n_boot=0, progress=False).per_prompt.intervened[0]
                     for i, (p, m) in enumerate(zip(PROMPTS, lengths))])


@pytest.mark.parametrize("kind", ["pattern", "add"])
def test_a_tensor_for_the_longest_prompt_fits_every_chunk(kind):
    """batch_size=2 chunks the prompts; a chunk's longest prompt is shorter than the tensor (it was a ShapeMismatch:
    'needs [..., 6, 6]'), which is read at each row's own positions."""
    model = tiny_model("gpt2")
    lengths = [len(r) for r in model.token_rows(PROMPTS)]
    n = max(lengths)
    assert len(set(lengths)) == len(PROMPTS)
    torch.manual_seed(0)
    given = torch.rand(n, n).tril() + 0.05

    def specs_of(m, i=None):
        return [SetPattern(1, None, pattern=given[:m, :m], renormalize=True) if kind == "pattern"
                else EditScores(1, None, add=given[:m, :m] * 8)]

    want = _alone(model, specs_of, lengths)
    got = effect(model, PROMPTS, METRIC, specs_of(n), batch_size=2, n_boot=0, progress=False).per_prompt
    assert np.abs(got.intervened.to_numpy() - want).max() < 1e-4
    assert np.abs(got.effect.to_numpy()).max() > 1e-3
    assert np.abs(score(model, PROMPTS, METRIC, specs_of(n), batch_size=2) - want).max() < 1e-4
    swept = sweep_interventions(model, PROMPTS, METRIC, {"edit": specs_of(n)}, batch_size=2, n_boot=0, progress=False)
    assert np.abs(swept.per_prompt.intervened.to_numpy() - want).max() < 1e-4
    assert model.count_hooks() == 0


def test_a_tensor_with_one_row_per_prompt_follows_its_prompts():
    """Row i of a [batch, query, key] tensor is prompt i: the prompts run in one batch, as for rows= (effect() with
    batch_size=2 was 'has 5 rows but the batch has 2'); a sweep says it needs batch_size >= the rows."""
    model = tiny_model("gpt2")
    lengths = [len(r) for r in model.token_rows(PROMPTS)]
    n = max(lengths)
    torch.manual_seed(1)
    given = torch.rand(len(PROMPTS), n, n).tril() + 0.05

    def specs_of(m, i):
        return [SetPattern(0, 2, pattern=given[i, :m, :m], renormalize=True)]

    want = _alone(model, specs_of, lengths)
    spec = [SetPattern(0, 2, pattern=given, renormalize=True)]
    got = effect(model, PROMPTS, METRIC, spec, batch_size=2, n_boot=0, progress=False).per_prompt.intervened.to_numpy()
    assert np.abs(got - want).max() < 1e-4
    assert np.abs(score(model, PROMPTS, METRIC, spec, batch_size=2) - want).max() < 1e-4
    with pytest.raises(InvalidInput, match=r"tied to batch rows need all 5 rows in one batch; pass batch_size >= 5"):
        sweep_interventions(model, PROMPTS, METRIC, {"edit": spec}, batch_size=2, n_boot=0, progress=False)
    swept = sweep_interventions(model, PROMPTS, METRIC, {"edit": spec}, batch_size=5, n_boot=0, progress=False)
    assert np.abs(swept.per_prompt.intervened.to_numpy() - want).max() < 1e-4
    assert model.count_hooks() == 0


def test_a_tensor_too_small_for_a_prompt_names_the_shape_it_needs():
    model = tiny_model("gpt2")
    n = max(len(r) for r in model.token_rows(PROMPTS))
    with torch.no_grad():
        clean = model(PROMPTS[2])
    for spec, valid in ((SetPattern(1, 0, pattern=torch.eye(n - 1)), f"{n}, {n}"),
                        (EditScores(1, 0, add=torch.zeros(1, n, n - 1)), f"1, {n}, {n}")):
        with pytest.raises(ShapeMismatch, match=rf"has shape \(.*{n - 1}\) but this input needs \[{valid}\] "
                                                rf"\(query x key: one row and one column per token of the longest prompt"):
            effect(model, PROMPTS, METRIC, [spec], batch_size=2, n_boot=0, progress=False)
    for spec, valid in ((SetPattern(1, 0, pattern=torch.eye(n + 1)), f"{n}, {n}"),
                        (EditScores(1, 0, add=torch.zeros(1, n, n + 1)), f"1, {n}, {n}")):
        # larger than the longest prompt: a miscount (a forgotten BOS, another text), refused in every chunk
        with pytest.raises(ShapeMismatch, match=rf"has shape \(.*{n + 1}\) but this input needs \[{valid}\] "):
            effect(model, PROMPTS, METRIC, [spec], batch_size=2, n_boot=0, progress=False)
    with pytest.raises(ShapeMismatch, match=r"pattern has 3 rows but the batch has 5 \(one row per batch row"):
        effect(model, PROMPTS, METRIC, [SetPattern(1, 0, pattern=torch.eye(n).expand(3, n, n))], batch_size=2,
               n_boot=0, progress=False)
    assert model.count_hooks() == 0
    with torch.no_grad():
        assert torch.equal(model(PROMPTS[2]), clean)
