"""Whatever fails, and wherever: no PyTorch hook, patched forward or edited weight is left behind."""

from __future__ import annotations

import asyncio

import pytest
import torch

from attnlab.engine.forward import Resume, run
from attnlab.interventions import AblateHead, EditMLPNeuron
from attnlab.measure import LogitDiff, attribute, sweep_heads
from attnlab.testing import tiny_model

TEXT = "the nurse said that she was happy"


def _torch_hooks(model) -> int:
    modules = set(model.modules()) | set(model.hf_model.modules())
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in modules)


def _patched_forwards(model) -> int:
    return sum("forward" in layer.__dict__ for layer in model.decoder_layers())


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.hf_model.state_dict().items()}


def _untouched(model, weights) -> bool:
    return _torch_hooks(model) == 0 and _patched_forwards(model) == 0 and model.count_hooks() == 0 and all(
        torch.equal(v, weights[k]) for k, v in model.hf_model.state_dict().items()
    )


@pytest.mark.parametrize("arch", ["gpt2", "bert", "llama", "gemma3"])
def test_an_exception_in_a_block_edge_hook_leaves_nothing(arch):
    model = tiny_model(arch)
    weights, clean = _weights(model), model(TEXT)

    def boom(x, hook):
        raise RuntimeError("boom")

    for name in ("blocks.1.hook_resid_mid", "blocks.0.mlp.hook_post", "blocks.1.attn.hook_result", "hook_embed"):
        with pytest.raises(RuntimeError, match="boom"):
            model.run_with_hooks(TEXT, fwd_hooks=[(name, boom)])
        assert _untouched(model, weights), name
    assert torch.equal(model(TEXT), clean)


def test_keyboard_interrupt_during_generation_leaves_nothing(tiny_llama):
    model = tiny_llama
    weights, calls = _weights(model), []

    def interrupt(x, hook):
        calls.append(1)
        if len(calls) == 3:  # the third decoding step
            raise KeyboardInterrupt
        return x

    with pytest.raises(KeyboardInterrupt):
        model.generate("the nurse said that", max_new_tokens=8, interventions=[EditMLPNeuron(0, 3, scale=0.0)],
                       fwd_hooks=[("blocks.1.hook_resid_pre", interrupt)])
    assert _untouched(model, weights)


def test_an_exception_while_resuming_from_a_prefix_restores_the_layers(tiny_gemma):
    model = tiny_gemma
    weights = _weights(model)
    tokens = model.tokens([TEXT])
    prefix = run(model, tokens, keep_layers={1}).prefix
    with pytest.raises(RuntimeError, match="in the resumed pass"):
        run(model, tokens, resume=Resume(prefix, 2),
            hooks=[("blocks.2.attn.hook_z", lambda x, hook: (_ for _ in ()).throw(RuntimeError("in the resumed pass")))])
    assert _untouched(model, weights)
    full = run(model, tokens).logits
    assert torch.allclose(run(model, tokens, resume=Resume(prefix, 2)).logits, full, atol=1e-5)


def test_sweeps_and_attribution_leave_the_weights_as_they_were(tiny_llama):
    model = tiny_llama
    weights = _weights(model)
    prompts = ["the nurse said that", "the doctor said that he"]
    sweep_heads(model, prompts, LogitDiff(" she", " he"), "zero", progress=False, n_boot=0)
    attribute(model, prompts, LogitDiff(" she", " he"), site="z", method="zero", n_boot=0)
    assert _untouched(model, weights)
    assert all(not p.requires_grad or p.grad is None for p in model.hf_model.parameters())


def test_asyncio_tasks_keep_their_own_edits(tiny_gpt2):
    """Contexts follow asyncio tasks too: an edit made in one task is invisible to another."""
    model = tiny_gpt2
    with torch.no_grad():
        clean = model(TEXT)
        with model.intervene(AblateHead(0, None)):
            ablated = model(TEXT)

    async def edited():
        with torch.no_grad(), model.intervene(AblateHead(0, None)):
            await asyncio.sleep(0.01)  # the other task runs while this block is open
            return model(TEXT)

    async def plain():
        await asyncio.sleep(0.005)
        with torch.no_grad():
            return model(TEXT)

    async def both():
        return await asyncio.gather(edited(), plain())

    got_edited, got_plain = asyncio.run(both())
    assert torch.equal(got_edited, ablated) and torch.equal(got_plain, clean)
    assert model.count_hooks() == 0
