"""``batch_size="auto"`` for attribution: a backward keeps every layer's activations, so fewer rows fit."""

import pytest
import torch

from attnlab.errors import InvalidInput
from attnlab.measure import LogitDiff, attribute
from attnlab.measure.batch_size import BACKWARD_CPU_ROWS, auto_batch_size, backward_batch_size
from attnlab.testing import tiny_model

PROMPTS = ["the nurse said that", "the mechanic said that"]


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


def test_auto_on_cpu_equals_the_explicit_default(llama):
    metric = LogitDiff(" she", " he")
    rows = metric.rows(llama, PROMPTS)
    assert backward_batch_size(llama, rows, "auto") == BACKWARD_CPU_ROWS
    assert backward_batch_size(llama, rows, 5) == 5
    auto = attribute(llama, PROMPTS, metric, progress=False)
    fixed = attribute(llama, PROMPTS, metric, batch_size=BACKWARD_CPU_ROWS, progress=False)
    assert (auto.table["effect"] - fixed.table["effect"]).abs().max() == 0
    exact = auto.verify(3)  # "auto" for the exact check too
    assert (exact.table["estimate"] - exact.table["effect"] - exact.table["error"]).abs().max() < 1e-12


def test_on_a_gpu_a_backward_row_costs_more_than_a_sweep_row(llama):
    metric = LogitDiff(" she", " he")
    rows = metric.rows(llama, PROMPTS)
    free = 2**20  # small enough that neither rule reaches its cap of 512 rows
    cuda = torch.device("cuda")
    backward = backward_batch_size(llama, rows, "auto", device=cuda, free_bytes=free)
    sweep = auto_batch_size(llama, rows, device=cuda, free_bytes=free)
    assert 1 <= backward < sweep
    # four times the memory buys (about) four times the rows, until the cap
    more = backward_batch_size(llama, rows, "auto", device=cuda, free_bytes=4 * free)
    assert abs(more - 4 * backward) <= 4


@pytest.mark.parametrize("bad", [0, -1, "big", 1.5, True])
def test_bad_batch_sizes_are_refused(llama, bad):
    with pytest.raises(InvalidInput, match="batch_size"):
        attribute(llama, PROMPTS, LogitDiff(" she", " he"), batch_size=bad, progress=False)
