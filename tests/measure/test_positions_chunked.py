"""Position-addressed edits in a measurement that chunks its prompts: checked against every prompt, not one chunk."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnlab.errors import InvalidLocation
from attnlab.interventions import AblateHead, BlockKeys, Patch
from attnlab.measure import LogitDiff, effect, score, sweep_interventions
from attnlab.testing import tiny_model

PROMPTS = ["the nurse said that", "the doctor told the teacher that she was", "a cat", "the man said"]
METRIC = LogitDiff(" she", " he")


def _specs(model, kind: str, last: int) -> list:
    if kind == "ablate":
        return [AblateHead(0, 1, positions=[last])]
    if kind == "block_keys":
        return [BlockKeys(1, 0, keys=[last])]
    other = "a man told the nurse that he was"  # as long as the longest prompt: one source shared by every chunk
    assert model.to_tokens(other).shape[1] == last + 1
    name = "blocks.1.attn.hook_z"
    return [Patch(1, None, site="z", source=model.run(other, logits=None, read=[name]).cache[name])]


@pytest.mark.parametrize("kind", ["ablate", "block_keys", "patch"])
def test_a_position_of_the_longest_prompt_is_valid_in_every_chunk(kind):
    """batch_size=2 puts the 9-token prompt in one chunk only; the other chunk refused position 8 ('InvalidLocation:
    position 8 out of range: this input has positions 0..3'; a shared Patch source was a ShapeMismatch). Each row is
    edited at its own tokens: chunked equals unchunked, and a row shorter than the position is not edited."""
    model = tiny_model("gpt2")
    lengths = [len(r) for r in model.token_rows(PROMPTS)]
    last = max(lengths) - 1
    assert lengths[1] == last + 1 and max(lengths[2:]) <= last  # the second chunk lacks position `last`
    specs = _specs(model, kind, last)
    whole = effect(model, PROMPTS, METRIC, specs, batch_size=len(PROMPTS), n_boot=0, progress=False).per_prompt
    chunked = effect(model, PROMPTS, METRIC, specs, batch_size=2, n_boot=0, progress=False).per_prompt
    assert np.abs(chunked.intervened.to_numpy() - whole.intervened.to_numpy()).max() <= 1e-6
    assert abs(whole.effect[1]) > 1e-3  # the edit does something to the long prompt
    if kind != "patch":  # the shorter prompts have no position `last`: left as they are
        assert np.abs(whole.effect.to_numpy()[[0, 2, 3]]).max() <= 1e-6
    assert np.abs(score(model, PROMPTS, METRIC, specs, batch_size=2) - whole.intervened.to_numpy()).max() <= 1e-6
    swept = sweep_interventions(model, PROMPTS, METRIC, {"edit": specs}, batch_size=2, n_boot=0, progress=False)
    assert np.abs(swept.per_prompt.intervened.to_numpy() - whole.intervened.to_numpy()).max() <= 1e-6
    assert model.count_hooks() == 0


@pytest.mark.parametrize("batch_size", [2, 4])
@pytest.mark.parametrize("kind", ["ablate", "block_keys"])
def test_a_position_past_every_prompt_names_the_longest_prompts_range(kind, batch_size):
    """Past the longest prompt of the whole measurement, a position is an error naming that prompt's range, whatever
    chunk raises it (a first chunk without the longest prompt named its own: 0..3)."""
    model = tiny_model("gpt2")
    prompts = PROMPTS[2:] + PROMPTS[:2]  # the longest prompt in the last chunk
    n = max(len(r) for r in model.token_rows(prompts))
    spec = AblateHead(0, 1, positions=[n]) if kind == "ablate" else BlockKeys(1, 0, keys=[n])
    with pytest.raises(InvalidLocation, match=rf"position {n} out of range: this input has positions 0\.\.{n - 1}$"):
        effect(model, prompts, METRIC, [spec], batch_size=batch_size, n_boot=0, progress=False)
    with torch.no_grad(), pytest.raises(InvalidLocation, match=rf"positions 0\.\.{n - 1}$"):
        score(model, prompts, METRIC, [spec], batch_size=batch_size)
    assert model.count_hooks() == 0
