"""Hostile arguments to the measuring floor's entry points: typed errors, never silent nonsense."""

from __future__ import annotations

import numpy as np
import pytest

from attnlab.errors import InvalidInput, InvalidSpec
from attnlab.interventions import AblateHead
from attnlab.measure import LogitDiff, TokenProb, effect, score

PROMPTS = ["the nurse said that", "the man said that"]


def test_logit_diff_refuses_the_same_text_as_target_and_foil():
    with pytest.raises(InvalidSpec, match=r"^LogitDiff: target and foil are the same text ' she', so the difference is 0"):
        LogitDiff(" she", " she")


@pytest.mark.parametrize("target, foil, bad", [
    ([" she", " he"], [" he", " he"], r"prompt 1 \(' he' and ' he'\)"),  # equal in one prompt's pair
    (" she", "she", r"prompt 0 \(' she' and 'she'\) are the same tokens for tiny-gpt2 \(\['she'\]\)"),  # alike once tokenized
])
def test_logit_diff_refuses_a_target_and_foil_that_are_the_same_tokens(tiny_gpt2, target, foil, bad):
    with pytest.raises(InvalidInput, match=bad + r".*difference is 0 whatever the model does"):
        score(tiny_gpt2, PROMPTS, LogitDiff(target, foil))
    with pytest.raises(InvalidInput, match=bad):
        effect(tiny_gpt2, PROMPTS, LogitDiff(target, foil), [AblateHead(1, 0)], progress=False)
    assert tiny_gpt2.count_hooks() == 0


@pytest.mark.parametrize("metric, what, given", [
    (lambda: LogitDiff(1, " he"), "target", "int 1"),
    (lambda: LogitDiff(" she", None), "foil", "NoneType None"),
    (lambda: TokenProb(5), "token", "int 5"),
    (lambda: LogitDiff({" she": 1, " he": 2}, " he"), "target", "dict"),
])
def test_a_continuation_that_is_not_text_is_a_typed_error(tiny_gpt2, metric, what, given):
    with pytest.raises(InvalidInput, match=rf"{what} must be a string or a list of strings \(one per prompt\), got {given}"):
        score(tiny_gpt2, PROMPTS, metric())


def test_per_prompt_targets_may_be_any_sequence_of_strings(tiny_gpt2):
    listed = score(tiny_gpt2, PROMPTS, LogitDiff([" she", " he"], [" he", " she"]))
    as_array = score(tiny_gpt2, PROMPTS, LogitDiff(np.array([" she", " he"]), (" he", " she")))
    np.testing.assert_array_equal(listed, as_array)
