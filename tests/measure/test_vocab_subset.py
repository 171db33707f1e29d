"""Metrics name the vocabulary ids they read; the LM head computes only those (``Metric.vocab``).

A single-token :class:`LogitDiff` reads two logits, so every score, effect, sweep and
attribution computes two rows of the unembedding instead of all of them. The numbers must
equal the full-vocabulary path (``attnlab.engine.forward.SUBSET_HEAD = False``: full
logits, indexed) to float rounding.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from attnlab.engine import forward as fw
from attnlab.interventions import AblateHead
from attnlab.measure import (
    KL,
    LogitDiff,
    LogProbs,
    Loss,
    TokenProb,
    TopKChange,
    attribute,
    effect,
    score,
    sweep_heads,
    sweep_interventions,
)
from attnlab.measure._forward import metric_output
from attnlab.testing import tiny_model

PROMPTS = ["the nurse said that", "the doctor told the man that he", "a cat sat", "the king told the queen that"]
METRIC = LogitDiff(" she", " he")
ARCHS = ("gpt2", "llama", "gemma3")
TOL = 1e-5


def assert_frames_equal(a: pd.DataFrame, b: pd.DataFrame, tol: float = TOL) -> None:
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    for col in a.columns:
        x, y = a[col].to_numpy(), b[col].to_numpy()
        if np.issubdtype(x.dtype, np.number):
            assert np.allclose(x, y, rtol=0, atol=tol, equal_nan=True), (col, np.nanmax(np.abs(x - y)))
        else:
            assert (x == y).all(), col


def both_ways(monkeypatch, fn):
    """``fn()`` with the vocabulary subset, then with the full LM head (the previous path)."""
    fast = fn()
    monkeypatch.setattr(fw, "SUBSET_HEAD", False)
    slow = fn()
    monkeypatch.setattr(fw, "SUBSET_HEAD", True)
    return fast, slow


class HeadWidths:
    """Widths the LM head's own call computes while the block is open (0 positions: the subset ran)."""

    def __init__(self, model):
        self.model, self.positions = model, []

    def __enter__(self):
        self.handle = self.model.layout.unembed.register_forward_hook(lambda m, a, out: self.positions.append(out.shape[-2]))
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_which_metrics_name_ids():
    model = tiny_model("gpt2")
    she, he = model.to_single_token(" she"), model.to_single_token(" he")
    rows = METRIC.rows(model, PROMPTS)
    assert METRIC.vocab(rows).tolist() == sorted([she, he])
    per_prompt = LogitDiff([" she", " he"], [" he", " she"])
    assert per_prompt.vocab(per_prompt.rows(model, PROMPTS[:2])).tolist() == sorted([she, he])
    multi = LogitDiff(" she was", " he")
    assert multi.vocab(multi.rows(model, PROMPTS)) is None  # teacher-forced: every position, softmax
    for metric in (TokenProb(" she"), LogProbs([" she", " he"]), KL(), Loss(), TopKChange(3)):
        assert metric.vocab(metric.rows(model, PROMPTS)) is None


@pytest.mark.parametrize("arch", ARCHS)
def test_reduce_reads_the_subset_and_the_full_logits_alike(arch):
    model = tiny_model(arch)
    metric = LogitDiff([" she", " he", " it", " she"], [" he", " she", " she", " they"])
    rows = metric.rows(model, PROMPTS)
    sub = metric_output(model, rows, metric)
    assert sub.shape == (len(PROMPTS), 4)  # she, he, it, they
    full = metric_output(model, rows, TokenProb(" she"))  # same rows, every id
    assert full.shape[-1] == model.cfg.d_vocab
    assert (metric.reduce(sub, rows) - metric.reduce(full, rows)).abs().max() <= TOL


@pytest.mark.parametrize("arch", ARCHS)
def test_score_and_effect_equal_the_full_head(arch, monkeypatch):
    model = tiny_model(arch)
    with HeadWidths(model) as head:
        fast, slow = both_ways(monkeypatch, lambda: score(model, PROMPTS, METRIC))
    assert head.positions[0] == 0 and head.positions[-1] > 0  # subset on, then off
    assert np.abs(np.asarray(fast) - np.asarray(slow)).max() <= TOL
    spec = AblateHead(1, [0, 2])
    fast, slow = both_ways(monkeypatch, lambda: effect(model, PROMPTS, METRIC, [spec], n_boot=20, progress=False))
    assert_frames_equal(fast.per_prompt, slow.per_prompt)
    assert_frames_equal(fast.table, slow.table)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", ["zero", "mean"])
def test_head_sweeps_equal_the_full_head(arch, method, monkeypatch):
    model = tiny_model(arch)
    options = {"reference": PROMPTS} if method == "mean" else {}
    with HeadWidths(model) as head:
        fast, slow = both_ways(
            monkeypatch, lambda: sweep_heads(model, PROMPTS, METRIC, method, batch_size=7, n_boot=20, progress=False, **options)
        )
    assert 0 in head.positions
    assert_frames_equal(fast.per_prompt, slow.per_prompt)
    assert_frames_equal(fast.table, slow.table)


def test_intervention_sweep_with_per_prompt_targets(monkeypatch):
    model = tiny_model("llama")
    metric = LogitDiff([" she", " he", " she", " it"], [" he", " she", " they", " she"], single_token=True)
    variants = {f"L{layer}": [AblateHead(layer, [1, 3])] for layer in range(model.cfg.n_layers)}
    fast, slow = both_ways(
        monkeypatch, lambda: sweep_interventions(model, PROMPTS, metric, variants, batch_size=5, n_boot=20, progress=False)
    )
    assert_frames_equal(fast.per_prompt, slow.per_prompt)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(
    "site, options",
    [("z", {}), ("z", {"method": "patch"}), ("pattern", {"method": "patch"}), ("post", {"layers": [1]})],
)
def test_attribution_equals_the_full_head(arch, site, options, monkeypatch):
    model = tiny_model(arch)
    prompts = ["the nurse said that", "the doctor told the man that he", "a cat sat"]
    if options.get("method") == "patch":
        options = {**options, "counterfactuals": ["the doctor said that", "the nurse told the man that she", "a dog ran"]}
    with HeadWidths(model) as head:
        fast, slow = both_ways(
            monkeypatch, lambda: attribute(model, prompts, METRIC, site=site, n_boot=20, progress=False, **options)
        )
    assert 0 in head.positions
    assert_frames_equal(fast.per_prompt, slow.per_prompt)
    assert_frames_equal(fast.table, slow.table)


def test_work_balancing_counts_only_the_head_rows_computed():
    """Processes share work by its cost: a logit difference's head is two rows, not the vocabulary."""
    from attnlab.measure import TokenProb
    from attnlab.measure._batched import _head_layers

    model = tiny_model("gemma3")
    prompts = ["the nurse said that", "the mechanic said that"]
    diff, prob = LogitDiff(" she", " he"), TokenProb(" she")
    full = _head_layers(model, prob.rows(model, prompts), prob)
    two = _head_layers(model, diff.rows(model, prompts), diff)
    assert full > 0 and two == pytest.approx(full * 2 / model.cfg.d_vocab)
