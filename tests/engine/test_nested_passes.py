"""A pass a hook starts in the middle of another is its own pass: the outer pass's plumbing is not disturbed.

Block-edge dispatchers keep per-block values (``resid_pre`` for ``resid_mid`` edits), and the
prefix plumbing (``resume=``, ``keep_layers=``) acts on the pass that asked for it; a nested pass
(``model(...)``, ``model.clean()``, or a direct HF call from a hook) must not read or overwrite them.
"""

from __future__ import annotations

import pytest
import torch

from attnlab.errors import InvalidInput
from attnlab.testing import tiny_model

P, Q, LONG = "the nurse said that", "a dog ran home", "a much longer prompt than the outer one, with many more tokens"


@pytest.fixture(params=["gpt2", "llama", "gemma3"])
def decoder(request):
    return tiny_model(request.param)


def _side(model, text, *, clean: bool):
    inside = []

    def hook(x, hook):
        if inside:  # the nested pass (not clean) runs this hook too: no third pass
            return None
        inside.append(1)
        try:
            with torch.no_grad():
                if clean:
                    with model.clean():
                        model(text)
                else:
                    model(text)
        finally:
            inside.pop()
        return None

    return hook


@pytest.mark.parametrize("text", [Q, LONG])
@pytest.mark.parametrize("clean", [True, False])
def test_resid_mid_of_the_outer_pass_survives_a_nested_pass(decoder, text, clean):
    """The nested pass runs between layer 0's resid_pre and its attention output (from a pattern hook)."""
    mid = "blocks.0.hook_resid_mid"
    noop = ("blocks.0.attn.hook_pattern", lambda x, hook: None)  # the same attention path, no nested pass
    side = ("blocks.0.attn.hook_pattern", _side(decoder, text, clean=clean))
    with torch.no_grad():
        with decoder.hooks([noop]):
            _, expected = decoder.run_with_cache(P, names_filter=[mid])
        with decoder.hooks([side]):
            _, got = decoder.run_with_cache(P, names_filter=[mid])
        assert torch.equal(got[mid], expected[mid])
        double = (mid, lambda x, hook: 2 * x)
        reference = decoder.run_with_hooks(P, fwd_hooks=[double, noop])
        edited = decoder.run_with_hooks(P, fwd_hooks=[double, side])
    assert torch.equal(edited, reference)
    assert (reference - decoder(P)).abs().max() > 1e-3  # the edit acts
    assert not any(decoder.tree._resid_pre.values())  # nothing left on the stacks


def _once(model, text, got):
    def hook(x, hook):
        if "out" not in got:
            got["out"] = None  # the nested pass runs this hook too
            got["out"] = model(text)
        return None

    return hook


def test_a_nested_pass_inside_a_resumed_pass_computes_its_own_layers(decoder):
    from attnlab.engine import Resume, run

    tp = decoder.tokens(P)
    prefix = run(decoder, tp, logits=None, keep_layers={0}).prefix
    got: dict = {}
    with torch.no_grad():
        outer = run(decoder, tp, logits="all", resume=Resume(prefix, 1), hooks=[("blocks.1.attn.hook_pattern", _once(decoder, Q, got))])
        with decoder.hooks([("blocks.1.attn.hook_pattern", lambda x, hook: None)]):
            alone = decoder(Q)
            plain = run(decoder, tp, logits="all").logits
    assert torch.equal(got["out"], alone)  # layer 0 computed on Q, not handed P's kept output
    assert (outer.logits - plain).abs().max() <= 1e-5


def test_a_nested_pass_does_not_overwrite_the_kept_layer_outputs(decoder):
    from attnlab.engine import run

    tp, noop = decoder.tokens(P), [("blocks.1.attn.hook_pattern", lambda x, hook: None)]
    with torch.no_grad():
        expected = run(decoder, tp, logits=None, keep_layers={0}, hooks=noop).prefix.outputs[0]
        got: dict = {}
        kept = run(decoder, tp, logits=None, keep_layers={0}, hooks=[("blocks.1.attn.hook_pattern", _once(decoder, Q, got))])
    first = lambda o: o[0] if isinstance(o, (tuple, list)) else o  # noqa: E731
    assert got["out"] is not None and torch.equal(first(kept.prefix.outputs[0]), first(expected))


def test_a_nested_pass_that_raises_leaves_the_outer_resid_mid_alone(decoder):
    """The inner pass fails inside block 0 and the outer hook catches it: its entry is popped all the same."""
    mid, busy, seen = "blocks.0.hook_resid_mid", [], {}

    def boom(x, hook):
        raise ValueError("inner")

    def runner(x, hook):
        if not busy:
            busy.append(1)
            try:
                with decoder.hooks([("blocks.0.attn.hook_z", boom)]), pytest.raises(ValueError):
                    decoder(Q)
            finally:
                busy.clear()

    with torch.no_grad():
        _, clean = decoder.run_with_cache(P, names_filter=[mid])
        with decoder.hooks([(mid, lambda x, hook: seen.update(mid=x)), ("blocks.0.attn.hook_pattern", runner)]):
            decoder(P)
        for _ in range(3):  # passes that raise inside the block keep nothing
            with decoder.hooks([(mid, lambda x, hook: None), ("blocks.0.attn.hook_z", boom)]), pytest.raises(ValueError):
                decoder(P)
    assert (seen["mid"] - clean[mid]).abs().max() <= 1e-5
    assert not any(decoder.tree._resid_pre.values())


def test_another_threads_resid_mid_hook_is_not_read_here(decoder):
    """A thread without a resid_mid hook of its own neither reads nor depends on another thread's entries."""
    import threading

    opened, closed, inside = threading.Event(), threading.Event(), threading.Event()
    errors = []

    def other():
        with decoder.hooks([("blocks.0.hook_resid_mid", lambda x, hook: 2 * x)]):
            opened.set()
            inside.wait(timeout=30)
        closed.set()

    def pause(x, hook):  # inside this thread's block 0, after its resid_pre
        inside.set()
        closed.wait(timeout=30)

    thread = threading.Thread(target=other)
    thread.start()
    opened.wait(timeout=30)
    try:
        with torch.no_grad(), decoder.hooks([("blocks.0.attn.hook_pattern", pause)]):
            got = decoder(LONG)
        with torch.no_grad(), decoder.hooks([("blocks.0.hook_attn_out", lambda x, hook: None)]):
            again = decoder(P)  # a later pass of another shape
    except Exception as err:  # noqa: BLE001
        errors.append(err)
    thread.join()
    assert not errors
    with torch.no_grad(), decoder.hooks([("blocks.0.attn.hook_pattern", lambda x, hook: None)]):
        expected = decoder(LONG)
    assert (got - expected).abs().max() <= 1e-5  # the other thread's doubling did not act here
    assert (again - decoder(P)).abs().max() <= 1e-5


def test_a_gradient_hook_on_resid_mid_fires_and_leaves_every_other_gradient_alone(decoder):
    """resid_mid is computed aside from the block's own sum: its gradient hook needs the gradient to pass through it."""
    mid, attn_out = "blocks.1.hook_resid_mid", "blocks.1.hook_attn_out"
    weight = decoder.hf_model.get_input_embeddings().weight

    def grads(bwd):
        decoder.hf_model.zero_grad()
        _, cache = decoder.run_with_cache(P, names_filter=bwd, incl_bwd=True, return_type="loss")
        return cache, weight.grad.clone()

    cache, with_hook = grads([mid, attn_out])
    _, without = grads([attn_out])
    assert torch.allclose(cache[mid + "_grad"], cache[attn_out + "_grad"], atol=1e-6)  # the same sum's gradient
    assert cache[mid + "_grad"].abs().max() > 0
    assert torch.allclose(with_hook, without, atol=1e-7)  # nothing counted twice
    decoder.hf_model.zero_grad()


@pytest.mark.parametrize("no_grad", [torch.no_grad, torch.inference_mode])
def test_incl_bwd_with_gradients_off_names_the_real_cause(decoder, no_grad):
    """return_type='loss' under torch.no_grad() was told to pass return_type='loss'; the error names grad mode."""
    with no_grad(), pytest.raises(InvalidInput, match=r"needs autograd: it ran with gradients off \(inside torch.no_grad"):
        decoder.run_with_cache(P, names_filter="blocks.0.attn.hook_z", incl_bwd=True, return_type="loss")
    with pytest.raises(InvalidInput, match=r"pass return_type='loss'"):  # logits: still the shape's message
        decoder.run_with_cache(P, names_filter="blocks.0.attn.hook_z", incl_bwd=True)
    assert decoder.count_hooks() == 0


@pytest.mark.parametrize("inner", ["stopped", "raising"])
def test_a_nested_pass_that_fails_before_its_block_runs_pops_nothing(decoder, inner):
    """An inner pass stopped (or failing) at block 0's entry had its exit hook pop the outer pass's resid_pre."""
    mid, shift = "blocks.0.hook_resid_mid", torch.full((decoder.cfg.d_model,), 0.5)

    def boom(x, hook):
        raise ValueError("inner")

    def side(x, hook):
        if inner == "stopped":
            decoder(Q, stop_at_layer=0)
        else:
            with decoder.hooks([("blocks.0.hook_resid_pre", boom)]), pytest.raises(ValueError):
                decoder(Q)

    with torch.no_grad():
        expected = decoder.run_with_hooks(P, fwd_hooks=[("blocks.0.hook_attn_out", lambda x, hook: x + shift)])
        got = decoder.run_with_hooks(P, fwd_hooks=[(mid, lambda x, hook: x + shift), ("blocks.0.attn.hook_z", side)])
    assert (got - expected).abs().max() <= 1e-5
    assert not any(decoder.tree._resid_pre.values())


def test_a_thread_without_resid_mid_hooks_keeps_nothing_when_another_closes_its_block(decoder):
    """Entries a call pushed while another thread's block held the exit hook go when the last block closes."""
    import threading
    import time

    stop, errors = threading.Event(), []

    def toggle():
        try:
            while not stop.is_set():
                with decoder.hooks([("blocks.0.hook_resid_mid", lambda x, hook: None)]):
                    time.sleep(0.0005)
                time.sleep(0.0005)  # a busy loop would starve the passes of the GIL
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    thread = threading.Thread(target=toggle)
    thread.start()
    try:
        with torch.no_grad():
            for _ in range(20):
                decoder(P)
    finally:
        stop.set()
        thread.join()
    assert not errors and not any(decoder.tree._resid_pre.values())
