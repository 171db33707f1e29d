"""Score edits in half precision: computed in float32, so a constant added to every score changes nothing."""

from __future__ import annotations

import pytest
import torch

import attnlab
from attnlab.errors import InvalidSpec
from attnlab.interventions import EditScores, SetPattern
from attnlab.testing import tiny_hf_model, tiny_model, tiny_tokenizer

TEXT = "the nurse said that she was happy"


@pytest.mark.parametrize("arch", ["gpt2", "bert", "llama", "gemma3"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_adding_a_constant_to_the_scores_changes_nothing_in_half_precision(arch, dtype):
    tok = tiny_tokenizer("encoder" if arch == "bert" else "decoder")
    full = attnlab.load(tiny_hf_model(arch), tokenizer=tok)
    half = attnlab.load(tiny_hf_model(arch), tokenizer=tok, dtype=dtype)
    with torch.no_grad():
        reference = full(TEXT)
        plain_error = (half(TEXT).float() - reference).abs().max()
        for constant in (1e4, -1e4, 7e4, 1e5):
            with half.intervene(EditScores(0, None, add=constant), EditScores(1, None, add=constant)):
                edited = half(TEXT).float()
            assert torch.isfinite(edited).all(), constant
            # the same error as the unedited half-precision model, not the 18-55% of fp16 scores
            assert (edited - reference).abs().max() <= 5 * plain_error + 1e-3, constant


def test_an_edit_that_overflows_downstream_is_a_typed_error(tiny_llama):
    clean = tiny_llama(TEXT)
    spec = SetPattern(0, 0, fn=lambda p: p * 3e38, allow_unnormalized=True)
    with pytest.raises(InvalidSpec, match=r"edits at layer 0 gave non-finite attention output"):
        with tiny_llama.intervene(spec):
            tiny_llama(TEXT)
    assert tiny_llama.count_hooks() == 0
    assert torch.equal(tiny_llama(TEXT), clean)


def test_huge_pattern_values_are_caught_before_they_reach_the_logits():
    model = tiny_model("gpt2")
    n = model.to_tokens(TEXT).shape[1]
    spec = SetPattern(1, 0, pattern=torch.full((n, n), 3e38), allow_unnormalized=True)
    with pytest.raises(InvalidSpec, match="non-finite attention output"):
        with model.intervene(spec):
            model(TEXT)
