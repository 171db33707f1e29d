"""Hooks live only inside ``with``: removed after exceptions, and nested contexts compose."""

from __future__ import annotations

import contextvars
import functools

import pytest
import torch

from attnlab.errors import InvalidInput, InvalidLocation
from attnlab.interventions import AblateHead, EditNeuron, SetPattern

TEXT = "the nurse said that she was happy"


def _all_torch_hooks(model) -> int:
    """Every PyTorch hook on every module of the wrapper and the HF model (not just attnlab's count)."""
    modules = set(model.modules()) | set(model.hf_model.modules())
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) + len(m._backward_pre_hooks)
        for m in modules
    )


def _run(model):
    with torch.no_grad():
        return model(TEXT)


def test_exception_inside_intervene_removes_every_hook(any_tiny):
    model = any_tiny
    before, clean = _all_torch_hooks(model), _run(model)
    with pytest.raises(RuntimeError, match="boom"):
        with model.intervene(AblateHead(0, 1), EditNeuron(1, 0, site="q", dim=0, scale=3.0)):
            # the two hook points' hooks, and the pre-hook that checks a direct call of the HF model (and of its body)
            assert _all_torch_hooks(model) == before + 2 + (2 if model.layout.body is not model.hf_model else 1)
            raise RuntimeError("boom")
    assert _all_torch_hooks(model) == before == 0
    assert model.count_hooks() == 0
    assert torch.equal(_run(model), clean)


def test_exception_inside_a_hook_function_removes_every_hook(any_tiny):
    model = any_tiny
    clean = _run(model)

    def broken(x, hook):
        raise ValueError("bad hook")

    with pytest.raises(ValueError, match="bad hook"):
        model.run_with_hooks(TEXT, fwd_hooks=[("blocks.1.attn.hook_pattern", broken)])
    assert _all_torch_hooks(model) == 0
    with pytest.raises(ValueError, match="bad hook"):
        with model.hooks(fwd_hooks=[("blocks.0.attn.hook_q", broken)]):
            model(TEXT)
    assert _all_torch_hooks(model) == 0
    # an intervention whose function fails mid-forward
    spec = SetPattern(0, 0, fn=lambda p: p[..., :1])  # wrong shape -> attnlab ShapeMismatch inside the hook
    with pytest.raises(Exception, match="SetPattern fn must return a tensor of shape"):
        with model.intervene(spec):
            model(TEXT)
    assert _all_torch_hooks(model) == 0
    assert torch.equal(_run(model), clean)


def test_nested_intervene_composes_and_inner_exit_keeps_outer(tiny_llama):
    model = tiny_llama
    outer, inner = AblateHead(0, 1), AblateHead(1, 2)
    with torch.no_grad():
        clean = model(TEXT)
        with model.intervene(outer):
            only_outer = model(TEXT)
        with model.intervene(inner):
            only_inner = model(TEXT)
        with model.intervene(outer, inner):
            both_flat = model(TEXT)
        with model.intervene(outer):
            with model.intervene(inner):
                assert model.count_hooks() == 2
                both_nested = model(TEXT)
            assert model.count_hooks() == 1  # the inner exit removed only its own hook
            after_inner = model(TEXT)
        assert model.count_hooks() == 0
        final = model(TEXT)
    assert not torch.allclose(only_outer, clean) and not torch.allclose(only_inner, clean)
    assert not torch.allclose(both_nested, only_outer) and not torch.allclose(both_nested, only_inner)
    assert torch.equal(both_nested, both_flat)
    assert torch.equal(after_inner, only_outer)
    assert torch.equal(final, clean)


def _own_context(test):
    """Run ``test`` in a copy of this thread's context: were blocks left open, later tests would not inherit them."""

    @functools.wraps(test)
    def run(*args, **kwargs):
        return contextvars.copy_context().run(test, *args, **kwargs)

    return run


def _add_and_reset(model, clean):
    """A persistent add_hook then reset_hooks(): nothing may be left (it must not attach to a closed block)."""
    model.add_hook("blocks.0.attn.hook_z", lambda x, hook: x * 0)
    with torch.no_grad():
        assert not torch.allclose(model(TEXT), clean)  # it acts
    model.reset_hooks()
    assert model.count_hooks() == 0 and _all_torch_hooks(model) == 0
    assert torch.equal(_run(model), clean)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@_own_context
def test_blocks_closed_out_of_order_leave_nothing_open(arch):
    """The outer block closing first: the inner one acts alone until it closes; then nothing acts."""
    from attnlab.testing import tiny_model

    model = tiny_model(arch)
    first, second = AblateHead(1, 0), AblateHead(1, 1)
    clean = _run(model)
    with model.intervene(second):
        only_second = _run(model)
    c1, c2 = model.intervene(first), model.intervene(second)
    c1.__enter__()
    c2.__enter__()
    c1.__exit__(None, None, None)
    assert model.count_hooks() == 1 and torch.equal(_run(model), only_second)
    assert model.acting_interventions() == [second]
    model.add_hook("blocks.0.attn.hook_z", lambda x, hook: x * 0)  # belongs to the open block: leaves with it
    c2.__exit__(None, None, None)
    assert model.count_hooks() == 0 and _all_torch_hooks(model) == 0
    assert model.acting_interventions() == []
    assert torch.equal(_run(model), clean)
    _add_and_reset(model, clean)
    # hooks() blocks too, three deep, closed outermost first
    blocks = [model.hooks([(f"blocks.{i}.attn.hook_z", lambda x, hook: x * 0)]) for i in range(2)] + [model.intervene(first)]
    for block in blocks:
        block.__enter__()
    for block in blocks:
        block.__exit__(None, None, None)
    assert model.count_hooks() == 0 and torch.equal(_run(model), clean)
    _add_and_reset(model, clean)


@_own_context
def test_interleaved_generators_each_with_a_block(tiny_llama):
    """Generators holding a ``with model.intervene(...)``, closed in creation order (not LIFO)."""
    model, specs = tiny_llama, [AblateHead(1, 0), AblateHead(1, 1)]
    clean = _run(model)
    with model.intervene(specs[1]):
        only_second = _run(model)
    with model.intervene(*specs):
        both = _run(model)

    def under(spec):
        with model.intervene(spec):
            while True:
                yield _run(model)

    gens = [under(spec) for spec in specs]
    next(gens[0])
    assert torch.equal(next(gens[1]), both)
    gens[0].close()
    assert torch.equal(next(gens[1]), only_second)
    gens[1].close()
    assert model.count_hooks() == 0 and torch.equal(_run(model), clean)
    _add_and_reset(model, clean)


@_own_context
def test_a_clean_block_closed_before_a_block_opened_inside_it(tiny_gpt2):
    """clean() left first: afterwards the model is neither stuck clean nor holding the inner block."""
    model = tiny_gpt2
    clean = _run(model)
    model.add_hook("blocks.0.attn.hook_z", lambda x, hook: x * 0)
    persistent = _run(model)
    outer, inner = model.clean(), model.intervene(AblateHead(1, 0))
    outer.__enter__()
    inner.__enter__()
    outer.__exit__(None, None, None)
    inner.__exit__(None, None, None)
    assert torch.equal(_run(model), persistent)  # the persistent hook acts again, the ablation is gone
    model.reset_hooks()
    assert model.count_hooks() == 0 and torch.equal(_run(model), clean)


def test_nested_edits_on_the_same_site_apply_in_order(tiny_gpt2):
    """Two edits of the same hook compose: scale by 2 then by 3 is scale by 6."""
    model = tiny_gpt2
    six = EditNeuron(0, 1, site="v", dim=2, scale=6.0)
    with torch.no_grad():
        with model.intervene(six):
            expected = model(TEXT)
        with model.intervene(EditNeuron(0, 1, site="v", dim=2, scale=2.0)):
            with model.intervene(EditNeuron(0, 1, site="v", dim=2, scale=3.0)):
                got = model(TEXT)
    assert torch.allclose(got, expected, atol=1e-5)


def test_bad_spec_in_intervene_attaches_nothing(tiny_gemma):
    model = tiny_gemma
    clean = _run(model)
    with pytest.raises(InvalidLocation, match=r"layer 7 out of range: tiny-gemma3 has layers 0\.\.2"):
        with model.intervene(AblateHead(0, 0), AblateHead(7, 0)):
            pytest.fail("the body must not run")
    assert _all_torch_hooks(model) == 0
    assert torch.equal(_run(model), clean)


def _torch_hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.hf_model.modules()) + sum(
        len(p._forward_hooks) for p in model.hook_dict.values())


def test_add_hook_inside_a_block_acts_there_and_leaves_with_it(tiny_gpt2):
    """TransformerLens' add_hook inside a hooks() block: acts until the block ends, then nothing is left."""
    model, zero = tiny_gpt2, (lambda x, hook: torch.zeros_like(x))
    names = ["blocks.1.attn.hook_pattern", "blocks.1.hook_resid_post"]  # an attention point and a block edge
    with torch.no_grad():
        reference = model.run_with_hooks(TEXT, fwd_hooks=[(n, zero) for n in names])
        before = _torch_hooks(model)
        with model.hooks([("blocks.0.attn.hook_pattern", lambda x, hook: None)]):
            for n in names:
                model.add_hook(n, zero)
            model.blocks[1].hook_resid_pre.add_hook(lambda x, hook: None)  # a point's own add_hook too
            assert model.count_hooks() == 4
            inside = model(TEXT)
        assert torch.equal(inside, reference)  # the block edge's dispatcher was acquired: the zeroing acted
        assert model.count_hooks() == 0 and _torch_hooks(model) == before
        model.reset_hooks()
        assert _torch_hooks(model) == before


def test_add_hook_from_a_hook_during_a_plain_pass_is_persistent(tiny_gpt2):
    """The engine's own frames (LM-head plumbing) are not blocks: the hook persists until reset_hooks()."""
    model, zero = tiny_gpt2, (lambda x, hook: torch.zeros_like(x))
    added = []

    def adder(x, hook):
        if not added:
            added.append(1)
            model.add_hook("blocks.1.attn.hook_pattern", zero)

    with torch.no_grad():
        expected = model.run_with_hooks(TEXT, fwd_hooks=[("blocks.1.attn.hook_pattern", zero)])
        before = _torch_hooks(model)
        model.add_hook("blocks.0.attn.hook_pattern", adder)
        model(TEXT)  # adds the zeroing hook from layer 0's hook, during the pass
        assert model.count_hooks() == 2
        with model.clean():
            clean_out = model(TEXT)
        now = model(TEXT)
        assert (now - expected).abs().max() <= 1e-5 < (now - clean_out).abs().max()  # it acts in later passes
        model.reset_hooks()
    assert model.count_hooks() == 0 and _torch_hooks(model) == before


def test_a_hook_points_own_add_hook_acts_on_block_edges(tiny_gpt2):
    """TransformerLens' ``model.blocks[L].hook_X.add_hook(fn)`` on a block edge acquires its dispatcher."""
    model, zero = tiny_gpt2, (lambda x, hook: torch.zeros_like(x))
    name = "blocks.0.hook_resid_mid"
    with torch.no_grad():
        expected = model.run_with_hooks(TEXT, fwd_hooks=[(name, zero)])
        before = _torch_hooks(model)
        with model.hooks([("blocks.1.attn.hook_pattern", lambda x, hook: None)]):
            model.hook_dict[name].add_hook(zero)
            assert (model(TEXT) - expected).abs().max() <= 1e-5
        assert _torch_hooks(model) == before
        model.blocks[0].hook_resid_mid.add_hook(zero)  # outside a block: persistent
        assert torch.equal(model(TEXT), expected)
        model.reset_hooks()
        assert _torch_hooks(model) == before and not torch.equal(model(TEXT), expected)


def test_reset_hooks_keeps_permanent_hooks_and_filters_by_direction_as_transformer_lens(tiny_gpt2):
    """reset_hooks(including_permanent=False, direction=..., clear_contexts=...) did what reset_hooks() does:
    removed every persistent hook, of both directions, and left every hook point's ctx as it was."""
    model, calls = tiny_gpt2, []
    edge = "blocks.0.hook_resid_mid"  # a block edge: its dispatcher must stay while the permanent hook does
    zero = lambda x, hook: torch.zeros_like(x)  # noqa: E731
    with torch.no_grad():
        expected = model.run_with_hooks(TEXT, fwd_hooks=[(edge, zero)])
        before = _torch_hooks(model)
        model.add_hook(edge, zero, is_permanent=True)
        model.add_hook("blocks.0.attn.hook_z", lambda x, hook: calls.append("temp"))
        model.reset_hooks()  # the non-permanent one only
        assert torch.equal(model(TEXT), expected) and calls == []
        with model.hooks([("blocks.1.attn.hook_z", lambda x, hook: None)]):
            model.add_hook("blocks.1.attn.hook_pattern", lambda x, hook: calls.append("perm in block"), is_permanent=True)
        model(TEXT)  # a permanent hook added inside a block outlives it
        assert calls == ["perm in block"]
    model.add_hook("blocks.0.attn.hook_z", lambda x, hook: calls.append("fwd"))
    model.add_hook("blocks.0.attn.hook_z", lambda g, hook: calls.append("bwd"), dir="bwd")
    model.reset_hooks(direction="bwd")
    calls.clear()
    model(TEXT, return_type="loss").backward()
    assert calls == ["fwd", "perm in block"]  # the bwd hook is gone; layer 0 fires first
    model.reset_hooks(direction="fwd", including_permanent=True)
    assert model.count_hooks() == 0 and _torch_hooks(model) == before  # every dispatcher released

    def remember(x, hook):
        hook.ctx["seen"] = hook.ctx.get("seen", 0) + 1

    z = model.hook_dict["blocks.0.attn.hook_z"]
    model.run_with_hooks(TEXT, fwd_hooks=[("blocks.0.attn.hook_z", remember)])
    assert z.ctx == {"seen": 1}  # clear_contexts=False (run_with_hooks' default) keeps it
    model.reset_hooks(clear_contexts=False)
    assert z.ctx == {"seen": 1}
    model.reset_hooks()
    assert z.ctx == {}
    model.run_with_hooks(TEXT, fwd_hooks=[("blocks.0.attn.hook_z", remember)], clear_contexts=True)
    assert z.ctx == {}
    with pytest.raises(InvalidInput, match="direction must be one of 'fwd', 'bwd', 'both', got 'forward'"):
        model.reset_hooks(direction="forward")
    with pytest.raises(InvalidInput, match="dir must be one of 'fwd', 'bwd', got 'both'"):
        model.add_hook("blocks.0.attn.hook_z", remember, dir="both")
    assert model.count_hooks() == 0


def test_a_hook_points_add_hook_takes_transformer_lens_signature(tiny_gpt2):
    """``point.add_hook(fn, "fwd", True)`` (dir, is_permanent positionally) and ``level=`` as in TransformerLens."""
    point = tiny_gpt2.hook_dict["blocks.0.attn.hook_z"]
    seen = []
    point.add_hook(lambda x, hook: seen.append("permanent"), "fwd", True)
    point.add_hook(lambda x, hook: seen.append("plain"), dir="fwd", is_permanent=False, level=None)
    with torch.no_grad():
        tiny_gpt2("the nurse said that")
    assert seen == ["permanent", "plain"]
    tiny_gpt2.reset_hooks()
    seen.clear()
    with torch.no_grad():
        tiny_gpt2("the nurse said that")
    assert seen == ["permanent"]  # kept by reset_hooks() unless including_permanent=True
    tiny_gpt2.reset_hooks(including_permanent=True)
    assert tiny_gpt2.count_hooks() == 0


@_own_context
def test_add_hook_after_a_clean_block_closed_first_attaches_where_it_acts(tiny_gpt2):
    """A hooks() block opened inside a clean() that has ended acts no more: add_hook must not attach to it."""
    model = tiny_gpt2
    clean = _run(model)
    outer, inner = model.clean(), model.hooks([])
    outer.__enter__()
    inner.__enter__()
    outer.__exit__(None, None, None)
    calls = []
    model.add_hook("blocks.0.attn.hook_z", lambda x, hook: calls.append(1))
    _run(model)
    assert calls  # it acts (it was attached to the inert block before, and never fired)
    inner.__exit__(None, None, None)
    model.reset_hooks()
    assert model.count_hooks() == 0 and torch.equal(_run(model), clean)


@_own_context
def test_add_hook_racing_with_its_block_closing_leaves_nothing(tiny_gpt2, monkeypatch):
    """The block closes between add_hook choosing it and registering the undo: the hook goes with the block."""
    import attnlab.engine.hooks as hooks_module

    model = tiny_gpt2
    clean = _run(model)
    block = model.hooks([])
    block.__enter__()
    real = hooks_module.at_frame_exit

    def close_first(frame, fn):  # another thread closes the block right now
        block.__exit__(None, None, None)
        return real(frame, fn)

    monkeypatch.setattr(hooks_module, "at_frame_exit", close_first)
    model.add_hook("blocks.0.attn.hook_z", lambda x, hook: x * 0)
    monkeypatch.setattr(hooks_module, "at_frame_exit", real)
    assert model.count_hooks() == 0 and _all_torch_hooks(model) == 0
    assert not hooks_module._AT_EXIT
    assert torch.equal(_run(model), clean)
