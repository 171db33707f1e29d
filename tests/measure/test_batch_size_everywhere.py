"""One batch-size rule: every measuring function takes a positive integer (numpy ones too) or "auto"."""

import numpy as np
import pytest

from attnlab.errors import InvalidInput
from attnlab.measure import KL, LogitDiff, effect, perplexity, score
from attnlab.interventions import AblateHead
from attnlab.measure.batch_size import CPU_ROWS
from attnlab.testing import tiny_model

PROMPTS = ["the nurse said that", "the mechanic said that he", "a dog"]


@pytest.fixture(scope="module")
def gpt2():
    return tiny_model("gpt2")


def test_auto_and_numpy_sizes_give_the_explicit_sizes_numbers(gpt2):
    metric = LogitDiff(" she", " he")
    fixed = score(gpt2, PROMPTS, metric, batch_size=CPU_ROWS)
    assert np.array_equal(score(gpt2, PROMPTS, metric, batch_size="auto"), fixed)
    assert np.array_equal(score(gpt2, PROMPTS, metric, batch_size=np.int64(CPU_ROWS)), fixed)
    spec = [AblateHead(0, 1)]
    a = effect(gpt2, PROMPTS, KL(), spec, batch_size="auto", n_boot=0, progress=False)
    b = effect(gpt2, PROMPTS, KL(), spec, batch_size=CPU_ROWS, n_boot=0, progress=False)
    assert np.array_equal(a.per_prompt["effect"].to_numpy(), b.per_prompt["effect"].to_numpy())
    assert perplexity(gpt2, PROMPTS, batch_size="auto", n_boot=0)[0] == perplexity(gpt2, PROMPTS, batch_size=CPU_ROWS, n_boot=0)[0]


@pytest.mark.parametrize("bad", [0, -1, "big", 1.5, True, None])
def test_bad_sizes_name_the_valid_values(gpt2, bad):
    for call in (lambda: score(gpt2, PROMPTS, LogitDiff(" she", " he"), batch_size=bad),
                 lambda: effect(gpt2, PROMPTS, KL(), [AblateHead(0, 1)], batch_size=bad, progress=False),
                 lambda: perplexity(gpt2, PROMPTS, batch_size=bad)):
        with pytest.raises(InvalidInput, match="batch_size must be a positive integer or 'auto'"):
            call()
