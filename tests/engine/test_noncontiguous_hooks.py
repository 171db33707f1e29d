"""A hook may return a same-shape tensor laid out differently in memory (an expand, a transpose).

The batch mean-ablation idiom ``x.mean(0, keepdim=True).expand_as(x)`` returns a view with
stride 0 over the batch; GPT-2's Conv1D calls ``.view`` on what it reads and crashed on it.
The replacement is made contiguous, only when it is not already.
"""

from __future__ import annotations

import pytest
import torch

from attnlab.testing import tiny_model

ARCHS = ("gpt2", "bert", "llama", "gemma3")
PROMPTS = ["the nurse said that she was happy", "a dog ran"]


def _mean_expand(x, hook):
    return x.mean(0, keepdim=True).expand_as(x)


def _mean_expand_contiguous(x, hook):
    return x.mean(0, keepdim=True).expand_as(x).contiguous()


@pytest.mark.parametrize("arch", ARCHS)
def test_an_expanded_replacement_equals_the_contiguous_one_at_every_site(arch):
    torch.manual_seed(0)
    model = tiny_model(arch)
    names = sorted(model.hook_dict)
    assert any(".mlp.hook_post" in n for n in names) and any("ln1.hook_normalized" in n for n in names)
    with torch.no_grad():
        for name in names:
            out = model.run_with_hooks(PROMPTS, fwd_hooks=[(name, _mean_expand)], return_type="hidden")
            ref = model.run_with_hooks(PROMPTS, fwd_hooks=[(name, _mean_expand_contiguous)], return_type="hidden")
            assert torch.equal(out, ref), name
    assert model.count_hooks() == 0


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_transposed_layout_replacement_is_read_as_its_values(arch):
    model = tiny_model(arch)

    def transposed(x, hook):  # same shape and values, pos-major memory
        return (x * 2).transpose(0, 1).contiguous().transpose(0, 1)

    with torch.no_grad():
        for name in ("blocks.0.mlp.hook_pre", "blocks.0.mlp.hook_post", "blocks.1.ln2.hook_normalized"):
            out = model.run_with_hooks(PROMPTS, fwd_hooks=[(name, transposed)], return_type="hidden")
            ref = model.run_with_hooks(PROMPTS, fwd_hooks=[(name, lambda x, hook: x * 2)], return_type="hidden")
            assert torch.equal(out, ref), name


def test_a_contiguous_replacement_is_passed_on_as_is():
    """No copy when none is needed: the next hook on the point receives the very tensor returned."""
    model = tiny_model("gpt2")
    returned, seen = {}, {}

    def first(x, hook):
        returned["t"] = x * 2
        return returned["t"]

    def second(x, hook):
        seen["t"] = x

    with torch.no_grad():
        model.run_with_hooks(PROMPTS, fwd_hooks=[("blocks.0.mlp.hook_post", first), ("blocks.0.mlp.hook_post", second)])
    assert seen["t"] is returned["t"]
