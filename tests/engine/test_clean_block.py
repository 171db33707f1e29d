"""``model.clean()``: no hook acts inside it, whatever the engine opens for its own plumbing.

The engine opens hook blocks of its own inside a forward (the LM head at chosen positions,
the rows of a vocabulary subset, rounded linear layers, resuming from a prefix). A block
opened inside ``clean()`` used to end the clean state for everything, so a persistent
``add_hook`` edit acted in a "clean" run that read logits at the last position.
"""

from __future__ import annotations

import pytest
import torch

from attnlab.engine.forward import run
from attnlab.engine.locations import hook_name
from attnlab.interventions import AblateHead
from attnlab.testing import tiny_model

TEXTS = ["the nurse said that", "a cat sat on the mat"]
Z0 = hook_name(0, "z")


def zero(z, hook):
    return z * 0


CALLS = {
    "all": dict(logits="all"),
    "last": dict(logits="last"),
    "vocab": dict(logits="last", vocab=torch.tensor([3, 5])),
    "bfloat16": dict(logits="last", precision="bfloat16"),
}


@pytest.mark.parametrize("call", CALLS)
def test_a_persistent_hook_does_not_act_inside_clean(call):
    model = tiny_model("llama")
    tokens = model.tokens(TEXTS)
    options = CALLS[call]
    base = run(model, tokens, **options).logits
    model.add_hook(Z0, zero)
    try:
        edited = run(model, tokens, **options).logits
        with model.clean():
            clean = run(model, tokens, **options).logits
            assert model.count_hooks() == 0
    finally:
        model.reset_hooks()
    assert (edited - base).abs().max() > 1e-3  # the hook does act outside clean()
    torch.testing.assert_close(clean, base, rtol=0, atol=1e-6)


def test_interventions_and_blocks_opened_inside_clean_act_alone():
    model = tiny_model("llama")
    tokens = model.tokens(TEXTS)
    base = run(model, tokens, logits="last").logits
    only_inner = run(model, tokens, logits="last", interventions=[AblateHead(1, 0)]).logits
    model.add_hook(Z0, zero)
    try:
        with model.intervene(AblateHead(1, 1)), model.clean():
            inner = run(model, tokens, logits="last", interventions=[AblateHead(1, 0)]).logits
            with model.hooks(fwd_hooks=[(Z0, zero)]):
                assert model.count_hooks() == 1  # this block's hook, not the persistent one nor the outer edit
            assert model.count_hooks() == 0
    finally:
        model.reset_hooks()
    torch.testing.assert_close(inner, only_inner, rtol=0, atol=1e-6)
    assert (inner - base).abs().max() > 1e-4
