"""``batch_size="auto"``: 64 rows on CPUs; on GPUs the rows whose estimated activations fit in free memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnlab.errors import InvalidInput
from attnlab.measure import KL, LogitDiff, Loss, sweep_heads, sweep_interventions
from attnlab.measure.batch_size import (
    CPU_ROWS,
    MAX_ROWS,
    MEMORY_SHARE,
    _d_mlp,
    auto_batch_size,
    check_batch_size,
    resolve_batch_size,
    row_bytes,
    rows_that_fit,
)
from attnlab.interventions import AblateHead
from attnlab.testing import tiny_model

PROMPTS = ["the nurse said that", "the doctor said that he was", "a man"]
CUDA = torch.device("cuda", 0)


@pytest.mark.parametrize("good", ["auto", 1, 64, 4096])
def test_accepted_batch_sizes(good):
    assert check_batch_size(good) == good


def test_numpy_integers_are_batch_sizes():
    import numpy as np

    got = check_batch_size(np.int64(4))
    assert got == 4 and type(got) is int
    model = tiny_model("llama")
    one = sweep_heads(model, PROMPTS, LogitDiff(" she", " he"), "zero", batch_size=4, n_boot=0, progress=False)
    two = sweep_heads(model, PROMPTS, LogitDiff(" she", " he"), "zero", batch_size=np.int64(4), n_boot=0, progress=False)
    assert np.array_equal(one.table["effect"].to_numpy(), two.table["effect"].to_numpy())


@pytest.mark.parametrize("bad", [0, -3, True, 2.5, "big", None, "AUTO", -1, 1.5, 4.0, float("nan"), np.int64(0)])
def test_refused_batch_sizes(bad):
    with pytest.raises(InvalidInput, match=r"batch_size must be a positive integer or 'auto', got"):
        check_batch_size(bad)


def test_cpu_rule_is_64_rows_and_an_integer_wins():
    model = tiny_model("llama")
    rows = LogitDiff(" she", " he").rows(model, PROMPTS)
    assert auto_batch_size(model, rows) == CPU_ROWS == 64
    assert resolve_batch_size(model, rows, "auto") == 64
    assert resolve_batch_size(model, rows, 7) == 7


def test_auto_sweep_on_cpu_is_the_64_row_sweep():
    model = tiny_model("gpt2")
    metric = LogitDiff(" she", " he")
    auto = sweep_heads(model, PROMPTS, "zero", metric, n_boot=10, progress=False)
    fixed = sweep_heads(model, PROMPTS, "zero", metric, batch_size=64, n_boot=10, progress=False)
    assert np.array_equal(auto.per_prompt["intervened"].to_numpy(), fixed.per_prompt["intervened"].to_numpy())


def test_auto_puts_rows_tied_to_the_batch_in_one_batch():
    model = tiny_model("gpt2")
    prompts = [f"the nurse said that {w}" for w in ["she", "he", "it", "they"] * 20]  # 80 rows > 64
    spec = AblateHead(1, 0, rows=[0, 2])
    res = sweep_interventions(model, prompts, {"rows": [spec]}, KL(), n_boot=10, progress=False)
    assert len(res.per_prompt) == 80
    with pytest.raises(InvalidInput, match=r"pass batch_size >= 80"):
        sweep_interventions(model, prompts, {"rows": [spec]}, KL(), batch_size=64, progress=False)


def test_row_bytes_arithmetic():
    # T=10 positions, 2 layers, d_model 16, 4 heads x 4, MLP 64, one vocabulary row of 100, float32
    per_row = row_bytes(n_positions=10, n_layers=2, d_model=16, n_heads=4, d_head=4, d_mlp=64,
                        output_width=100, output_positions=1, dtype_bytes=4)
    hidden = 4 * 10 * (2 * 16 + 8 * 16 + 3 * 64)  # 14080
    attention = 4 * 3 * 4 * 10 * 10  # 4800
    output = 4 * 3 * 1 * 100  # 1200
    assert per_row == hidden + attention + output == 20080


def test_rows_that_fit():
    assert rows_that_fit(int(10 * 1000 / MEMORY_SHARE) + 1, 1000) == 10
    assert rows_that_fit(10**15, 1000) == MAX_ROWS  # capped
    assert rows_that_fit(500, 1000) == 1  # never below one row
    assert rows_that_fit(0, 1000) == 1
    with pytest.raises(InvalidInput, match="bytes per row must be positive"):
        rows_that_fit(10, 0)


def test_gpu_rule_on_a_fake_device_follows_the_arithmetic():
    model = tiny_model("llama")
    cfg = model.cfg
    assert _d_mlp(model) == model.hf_model.config.intermediate_size
    metric = LogitDiff(" she", " he")
    rows = metric.rows(model, PROMPTS)
    T = rows.tokens.ids.shape[1]
    per_row = row_bytes(n_positions=T, n_layers=cfg.n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads,
                        d_head=cfg.d_head, d_mlp=_d_mlp(model), output_width=cfg.d_vocab, output_positions=1,
                        dtype_bytes=4)
    for wanted in (1, 3, 200, MAX_ROWS):
        free = int(np.ceil(wanted * per_row / MEMORY_SHARE)) + 8  # + a few bytes: float rounding of the share
        assert auto_batch_size(model, rows, device=CUDA, free_bytes=free) == wanted
    assert auto_batch_size(model, rows, device=CUDA, free_bytes=141 * 2**30) == MAX_ROWS
    # reading every position (Loss) costs more per row than one (LogitDiff): fewer rows fit
    loss_rows = Loss().rows(model, PROMPTS)
    free = int(100 * per_row / MEMORY_SHARE)
    assert auto_batch_size(model, loss_rows, device=CUDA, free_bytes=free) < auto_batch_size(model, rows, device=CUDA, free_bytes=free)
    # hidden-state metrics read d_model at every position, no vocabulary
    hidden_row = row_bytes(n_positions=T, n_layers=cfg.n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads,
                           d_head=cfg.d_head, d_mlp=_d_mlp(model), output_width=cfg.d_model, output_positions=T,
                           dtype_bytes=4)
    assert auto_batch_size(model, rows, "hidden", device=CUDA, free_bytes=free) == int(MEMORY_SHARE * free // hidden_row)


def test_gpu_rule_counts_only_the_vocabulary_entries_a_metric_reads():
    """A single-token logit difference keeps two logits per row, not the vocabulary: more rows fit."""
    from attnlab.measure import TokenProb
    from attnlab.measure.batch_size import backward_batch_size, metric_batch_size

    model = tiny_model("llama")
    cfg = model.cfg
    diff, prob = LogitDiff(" she", " he"), TokenProb(" she")
    rows = diff.rows(model, PROMPTS)
    T = rows.tokens.ids.shape[1]
    two = row_bytes(n_positions=T, n_layers=cfg.n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads, d_head=cfg.d_head,
                    d_mlp=_d_mlp(model), output_width=2, output_positions=1, dtype_bytes=4)
    free = int(40 * two / MEMORY_SHARE) + 8
    assert auto_batch_size(model, rows, vocab_width=2, device=CUDA, free_bytes=free) == 40
    assert auto_batch_size(model, rows, device=CUDA, free_bytes=free) < 40  # the whole vocabulary
    assert backward_batch_size(model, rows, "auto", vocab_width=2, device=CUDA, free_bytes=free) > \
        backward_batch_size(model, rows, "auto", device=CUDA, free_bytes=free)
    # on this CPU-only machine the metric-aware rule is the CPU rule, for every metric
    assert metric_batch_size(model, rows, "auto", diff) == metric_batch_size(model, prob.rows(model, PROMPTS), "auto", prob) == CPU_ROWS
    assert metric_batch_size(model, rows, 5, diff) == 5
