"""Stopping a forward pass early: stop_at_layer (TransformerLens) and the stop after the last hooked layer."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from attnlab.engine.forward import run
from attnlab.errors import InvalidInput
from attnlab.interventions import AblateHead

TEXTS = ["the cat sat on the mat", "a dog"]


@contextmanager
def block_calls(model):
    """Which blocks ran (plain PyTorch hooks: they do not count as attnlab hooks, so they do not stop the stop)."""
    seen: list[int] = []
    handles = [b.register_forward_hook(lambda m, a, o, i=i: seen.append(i)) for i, b in enumerate(model.decoder_layers())]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def _module_hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.hf_model.modules())


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma", "bert"])
def test_stop_at_layer_returns_the_stream_entering_that_block(arch, request):
    model = request.getfixturevalue(f"tiny_{arch}")
    n = model.cfg.n_layers
    tokens = model.tokens(TEXTS)
    last = f"blocks.{n - 1}.hook_normalized_resid_post"  # a post-norm block (BERT) ends with its norm
    last = last if last in model.hook_dict else f"blocks.{n - 1}.hook_resid_post"
    names = [f"blocks.{k}.hook_resid_pre" for k in range(n)] + [last]
    full = run(model, tokens, logits=None, read=names, stop_early=False).cache
    for k in range(-n, n + 1):
        with block_calls(model) as seen:
            out = run(model, tokens, logits=None, stop_at_layer=k)
        kk = k % n if k < 0 else k
        assert seen == list(range(kk))
        assert torch.equal(out.hidden, full[names[kk]])
    assert _module_hooks(model) == 0 and model.count_hooks() == 0


def test_a_pass_that_reads_an_early_layer_stops_after_it(tiny_llama):
    tokens = tiny_llama.tokens(TEXTS)
    name = "blocks.0.attn.hook_z"
    with block_calls(tiny_llama) as seen:
        early = run(tiny_llama, tokens, logits=None, read=[name]).cache[name]
    assert seen == [0]
    with block_calls(tiny_llama) as seen:
        whole = run(tiny_llama, tokens, logits=None, read=[name], stop_early=False).cache[name]
    assert seen == [0, 1]
    assert torch.equal(early, whole)
    assert _module_hooks(tiny_llama) == 0


def test_edits_and_outer_blocks_keep_their_layers_running(tiny_llama):
    tokens = tiny_llama.tokens(TEXTS)
    with block_calls(tiny_llama) as seen:  # an intervention at layer 1 is a hook acting there
        run(tiny_llama, tokens, logits=None, read=["blocks.0.attn.hook_z"], interventions=[AblateHead(1, 0)])
    assert seen == [0, 1]
    fired = []
    with tiny_llama.hooks(fwd_hooks=[("blocks.1.hook_mlp_out", lambda x, hook: fired.append(hook.name))]):
        with block_calls(tiny_llama) as seen:  # a block opened by the caller around the engine's pass
            run(tiny_llama, tokens, logits=None, read=["blocks.0.attn.hook_z"])
    assert seen == [0, 1] and fired == ["blocks.1.hook_mlp_out"]
    with tiny_llama.hooks(fwd_hooks=[("ln_final.hook_normalized", lambda x, hook: None)]):
        with block_calls(tiny_llama) as seen:  # a hook after the blocks needs them all
            run(tiny_llama, tokens, logits=None, read=["blocks.0.attn.hook_z"])
    assert seen == [0, 1]
    with tiny_llama.clean(), block_calls(tiny_llama) as seen:  # with no hook at all: nothing needs any block
        run(tiny_llama, tokens, logits=None)
    assert seen == []


def test_head_means_of_an_early_layer_equal_the_whole_pass(tiny_gemma):
    from attnlab.interventions.reference_means import reference_means

    name = "blocks.0.attn.hook_z"
    with block_calls(tiny_gemma) as seen:
        early = reference_means(tiny_gemma, [name], TEXTS)[name]
    assert seen == [0]
    total = torch.zeros_like(early, dtype=torch.float64)
    count = 0
    for text in TEXTS:
        z = run(tiny_gemma, tiny_gemma.tokens([text]), logits=None, read=[name], stop_early=False).cache[name][0]
        total += z.double().sum(dim=0)
        count += z.shape[0]
    assert torch.allclose(early, (total / count).float(), atol=1e-6)


def test_tl_forward_and_run_with_cache(tiny_gpt2):
    resid = tiny_gpt2(TEXTS, stop_at_layer=1)
    _, cache = tiny_gpt2.run_with_cache(TEXTS)  # every hook point: the explicit attention path, equal to rounding
    assert torch.allclose(resid, cache["blocks.1.hook_resid_pre"], atol=1e-6)
    resid2, stopped = tiny_gpt2.run_with_cache(TEXTS, stop_at_layer=-1)
    assert torch.allclose(resid2, cache["blocks.1.hook_resid_pre"], atol=1e-6)
    later = [k for k in stopped.keys() if k.startswith("blocks.1.")]
    assert "blocks.0.hook_resid_post" in stopped.keys() and later == ["blocks.1.hook_resid_pre"]  # the stream returned
    assert "ln_final.hook_normalized" not in stopped.keys()
    fired = []  # block k's own hooks do not run when stopping before it (as in TransformerLens)
    tiny_gpt2.run_with_hooks(TEXTS, stop_at_layer=1, fwd_hooks=[("blocks.1.hook_resid_pre", lambda x, hook: fired.append(1))])
    assert fired == []
    with block_calls(tiny_gpt2) as seen:  # return_type=None runs for the hooks' sake: all blocks, plain hooks too
        tiny_gpt2(TEXTS, return_type=None)
    assert seen == [0, 1]
    assert tiny_gpt2.count_hooks() == 0 and _module_hooks(tiny_gpt2) == 0


def test_gradients_flow_to_the_stopped_stream(tiny_llama):
    tokens = tiny_llama.tokens(TEXTS)
    out = run(tiny_llama, tokens, logits=None, stop_at_layer=1, grad=True)
    out.hidden.sum().backward()
    grads = [p.grad for p in tiny_llama.decoder_layers()[0].parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in tiny_llama.decoder_layers()[1].parameters())
    tiny_llama.hf_model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("bad", [True, 1.5, "1", 3, -3])
def test_bad_stop_at_layer_is_refused_and_leaves_no_hook(tiny_llama, bad):
    tokens = tiny_llama.tokens(TEXTS)
    with pytest.raises(InvalidInput, match=r"stop_at_layer must be None or an integer in -2\.\.2"):
        run(tiny_llama, tokens, logits=None, stop_at_layer=bad)
    with pytest.raises(InvalidInput, match="stop_at_layer"):
        tiny_llama(TEXTS, stop_at_layer=bad)
    assert tiny_llama.count_hooks() == 0 and _module_hooks(tiny_llama) == 0


def test_stop_at_layer_with_logits_or_loss_is_refused(tiny_llama):
    with pytest.raises(InvalidInput, match="pass logits=None"):
        run(tiny_llama, tiny_llama.tokens(TEXTS), logits="last", stop_at_layer=1)
    with pytest.raises(InvalidInput, match="needs the whole model"):
        tiny_llama(TEXTS, return_type="loss", stop_at_layer=1)


def test_a_pass_started_inside_a_hook_runs_on(tiny_llama):
    """The stop belongs to the pass that set it: a nested run in a hook (here at layer 0) still reaches the logits."""
    text = "the nurse said that"
    alone = tiny_llama.run(text, logits="last").logits
    nested = {}

    def peek(x, hook):
        if nested:  # the hook acts in the nested passes too (same context): once is enough
            return
        nested["started"] = True
        nested["logits"] = tiny_llama.run(text, logits="last").logits
        nested["z1"] = tiny_llama.run(text, logits=None, read=["blocks.1.attn.hook_z"]).cache["blocks.1.attn.hook_z"]

    with block_calls(tiny_llama) as seen:
        run(tiny_llama, tiny_llama.tokens([text]), logits=None, hooks=[("blocks.0.attn.hook_z", peek)])
    assert torch.allclose(nested["logits"], alone, atol=1e-6) and nested["z1"].shape[2] == tiny_llama.cfg.n_heads
    assert seen == [0, 1, 0, 1, 0]  # the nested passes (0, 1) twice inside outer block 0, which then ends the outer pass


def test_a_direct_call_of_the_hf_model_in_a_hook_runs_on(tiny_llama):
    """A hook that calls model.hf_model(...) itself gets its logits; the outer pass still stops after it."""
    ids = tiny_llama.to_tokens("the nurse said that she")
    expected = tiny_llama.hf_model(input_ids=ids).logits
    got, busy = [], []

    def reference_run(z, hook):
        if not busy:  # the hook acts in the inner call too (same context): once is enough
            busy.append(True)
            got.append(tiny_llama.hf_model(input_ids=ids).logits)

    with block_calls(tiny_llama) as seen:
        tiny_llama.run(ids, logits=None, hooks=[("blocks.0.attn.hook_z", reference_run)])
    assert torch.allclose(got[0], expected, atol=1e-6)
    assert seen == [0, 1, 0]  # the inner call ran both blocks inside the outer block 0, after which the outer stopped
    assert _module_hooks(tiny_llama) == 0


def test_stop_at_layer_before_a_resume_or_under_kept_layers_is_refused(tiny_llama):
    from attnlab.engine.forward import Resume

    tokens = tiny_llama.tokens(TEXTS)
    kept = run(tiny_llama, tokens, logits=None, keep_layers={0}, stop_early=False)
    with pytest.raises(InvalidInput, match="stops before layer 1, where the resumed pass starts"):
        run(tiny_llama, tokens, logits=None, stop_at_layer=0, resume=Resume(kept.prefix, 1))
    resumed = run(tiny_llama, tokens, logits=None, stop_at_layer=1, resume=Resume(kept.prefix, 1)).hidden
    assert torch.equal(resumed, run(tiny_llama, tokens, logits=None, stop_at_layer=1).hidden)
    with pytest.raises(InvalidInput, match=r"keep_layers=\[1\] asks for layers that stop_at_layer=1 does not run"):
        run(tiny_llama, tokens, logits=None, stop_at_layer=1, keep_layers={1})
    assert _module_hooks(tiny_llama) == 0 and tiny_llama.count_hooks() == 0


def test_a_stopped_cache_says_why_a_later_site_is_missing(tiny_gpt2):
    from attnlab.errors import InvalidLocation

    resid, cache = tiny_gpt2.run_with_cache(TEXTS, stop_at_layer=1)
    assert cache.stopped_at == 1 and cache.apply_slice_to_batch_dim(0).stopped_at == 1
    with pytest.raises(InvalidLocation, match=r"stop_at_layer=1\), so blocks 1\.\. and what follows them did not run"):
        cache.decompose_resid(layer=2)
    assert torch.equal(cache["blocks.1.hook_resid_pre"], resid)  # the stream entering block 1 is cached (as in TL's bridge)
    assert torch.allclose(cache.accumulated_resid(layer=1), tiny_gpt2.run_with_cache(TEXTS)[1].accumulated_resid(layer=1),
                          atol=1e-6)


def test_logits_of_a_model_without_lm_head_are_refused(tiny_bert):
    with pytest.raises(InvalidInput, match="has no LM head, so it has no logits to read: pass logits=None"):
        run(tiny_bert, tiny_bert.tokens(TEXTS), logits="last")


@pytest.mark.parametrize("logits", ["last", "all"])
def test_a_direct_hf_call_in_a_hook_of_a_logits_pass_gets_all_its_logits(tiny_llama, logits):
    """The engine's LM head plumbing (one position, a few vocabulary rows) is for its own pass, not for a hook's HF call."""
    ids = tiny_llama.to_tokens("the nurse said that she")
    expected = tiny_llama.hf_model(input_ids=ids).logits
    got, busy = [], []

    def reference_run(z, hook):
        if not busy:
            busy.append(True)
            got.append(tiny_llama.hf_model(input_ids=ids).logits)

    out = tiny_llama.run(ids, logits=logits, vocab=torch.tensor([3, 5]), hooks=[("blocks.1.attn.hook_z", reference_run)])
    assert got[0].shape == expected.shape and torch.allclose(got[0], expected, atol=1e-6)
    own = expected[:, -1] if logits == "last" else expected
    assert torch.allclose(out.logits, own[..., [3, 5]], atol=1e-5)
    assert _module_hooks(tiny_llama) == 0


def test_a_hook_that_catches_its_own_hf_calls_error_leaves_the_pass_intact(tiny_llama):
    """The inner call raised inside the model: its exit is still counted, so the pass keeps reading its own logits."""
    texts = ["the nurse said that she", "a cat"]
    tokens = tiny_llama.tokens(texts, padding_side="right")
    expected = tiny_llama.run(tokens, logits="last").logits
    bad = torch.full((1, 3), 10_000)  # no such token: the embedding raises

    def probe(x, hook):
        try:
            tiny_llama.hf_model(input_ids=bad)
        except (IndexError, RuntimeError):
            pass

    out = tiny_llama.run(tokens, logits="last", hooks=[("blocks.0.hook_resid_post", probe)])
    assert torch.allclose(out.logits, expected, atol=1e-6)
    stopped = tiny_llama.run(tokens, logits=None, stop_at_layer=1, hooks=[("blocks.0.hook_resid_post", probe)])
    assert stopped.hidden is not None and stopped.hidden.shape[:2] == tokens.ids.shape
    assert _module_hooks(tiny_llama) == 0


def test_a_plain_torch_hook_outside_the_body_gets_full_logits_from_its_hf_call(tiny_gpt2):
    """A hook on the LM head itself (outside the body) that calls the HF model: a second entry, left alone."""
    ids = tiny_gpt2.to_tokens("the nurse said that she")
    expected = tiny_gpt2.hf_model(input_ids=ids).logits
    got = []

    def pre(module, args):
        if not got:
            got.append(None)
            got[0] = tiny_gpt2.hf_model(input_ids=ids).logits

    handle = tiny_gpt2.layout.unembed.register_forward_pre_hook(pre)
    try:
        out = tiny_gpt2.run(ids, logits="last", vocab=torch.tensor([3, 5]))
    finally:
        handle.remove()
    assert got[0].shape == expected.shape and torch.allclose(got[0], expected, atol=1e-6)
    assert torch.allclose(out.logits, expected[:, -1, [3, 5]], atol=1e-5)


def test_a_direct_hf_call_in_a_hook_is_a_plain_call_for_position_edits(tiny_llama):
    """Position-addressed edits in a hook's own HF call read its columns, not the outer batch's left padding."""
    texts = ["the nurse said that she was", "a cat"]  # left-padded: row 1 is shifted
    ids = tiny_llama.to_tokens("the doctor said")
    edit = AblateHead(0, 1, positions=[1])
    with tiny_llama.intervene(edit):
        expected = tiny_llama.hf_model(input_ids=ids).logits  # a plain HF call under the edit
        got, busy = [], []

        def reference_run(x, hook):
            if not busy:
                busy.append(True)
                got.append(tiny_llama.hf_model(input_ids=ids).logits)

        outer = tiny_llama.run(texts, logits="last", padding_side="left", hooks=[("blocks.1.hook_resid_pre", reference_run)])
        alone = tiny_llama.run(texts, logits="last", padding_side="left")
    assert torch.allclose(got[0], expected, atol=1e-6)
    assert torch.allclose(outer.logits, alone.logits, atol=1e-6)
    with tiny_llama.clean():
        unedited = tiny_llama.hf_model(input_ids=ids).logits
    assert (unedited - expected).abs().max() > 1e-4  # the edit does act in the plain call


@pytest.mark.parametrize("arch", ["gpt2", "bert", "llama", "gemma3"])
def test_reads_past_the_stop_are_refused_and_the_rest_come_back(arch):
    """read=[...] of a site a stop_at_layer pass never reaches came back as an empty cache, without a word."""
    from attnlab.engine.stop import not_reached
    from attnlab.testing import tiny_model

    model = tiny_model(arch)
    tokens = model.tokens(TEXTS)
    n = model.cfg.n_layers
    every = set(model.run_with_cache(TEXTS)[1].keys())
    for k in range(n + 1):
        reached = [name for name in every if not not_reached(model.hook_dict[name], k)]
        _, stopped = model.run_with_cache(TEXTS, stop_at_layer=k)  # every point: what the stopped pass reached
        assert set(stopped.keys()) == set(reached), k
        out = run(model, tokens, logits=None, stop_at_layer=k, read=reached)
        assert set(out.cache) == set(reached), k
        if k < n:  # block k's input is the stream returned, as in run_with_cache
            assert torch.equal(out.cache[f"blocks.{k}.hook_resid_pre"], out.hidden)
        later = sorted(set(every) - set(reached))
        if not later:  # BERT at k = n_layers: no final norm, every point ran
            continue
        for read in ([later[0]], [reached[0], later[-1]]):
            with pytest.raises(InvalidInput, match=rf"read asks for '{later[-1] if len(read) > 1 else later[0]}', which a "
                                                   rf"pass with stop_at_layer={k} never reaches"):
                run(model, tokens, logits=None, stop_at_layer=k, read=read)
            with pytest.raises(InvalidInput, match=rf"names_filter asks for .* stop_at_layer={k} never reaches"):
                model.run_with_cache(TEXTS, stop_at_layer=k, names_filter=read)
    assert model.count_hooks() == 0 and _module_hooks(model) == 0


def test_a_stopped_read_names_the_blocks_that_ran(tiny_gemma):
    tokens = tiny_gemma.tokens(TEXTS)
    read = ["blocks.2.attn.hook_pattern", "ln_final.hook_normalized"]
    with pytest.raises(InvalidInput, match=r"read asks for 'blocks.2.attn.hook_pattern', 'ln_final.hook_normalized', which a "
                                           r"pass with stop_at_layer=1 never reaches: it runs block 0 only"):
        run(tiny_gemma, tokens, logits=None, stop_at_layer=1, read=read)
    with pytest.raises(InvalidInput, match=r"stop_at_layer=-1 never reaches: it runs blocks 0\.\.1 only"):
        run(tiny_gemma, tokens, logits=None, stop_at_layer=-1, read=read)
    with pytest.raises(InvalidInput, match=r"stop_at_layer=0 never reaches: it runs no block"):
        run(tiny_gemma, tokens, logits=None, stop_at_layer=0, read=["blocks.0.attn.hook_z"])
    # a predicate picks among what runs
    assert list(run(tiny_gemma, tokens, logits=None, stop_at_layer=1, read=lambda n: "pattern" in n).cache) == \
        ["blocks.0.attn.hook_pattern"]


@pytest.mark.parametrize("bad, message", [
    ({99}, r"keep_layers holds 99; layers lie in 0\.\.2 \(or -3\.\.-1 from the end\)"),
    ({3}, r"keep_layers holds 3; layers lie in 0\.\.2"),
    ({-4}, r"keep_layers holds -4; layers lie in 0\.\.2"),
    ({True}, r"keep_layers holds True"),
    ({1.0}, r"keep_layers holds 1\.0"),
    (2, r"keep_layers must be a set of layer indices in 0\.\.2 \(or -3\.\.-1 from the end\), got 2"),
])
def test_keep_layers_out_of_range_are_named(tiny_gemma, bad, message):
    from attnlab.errors import InvalidLocation

    with pytest.raises(InvalidLocation, match=message):  # was a raw IndexError (99, 3)
        run(tiny_gemma, tiny_gemma.tokens(TEXTS), logits=None, keep_layers=bad)
    assert tiny_gemma.count_hooks() == 0 and _module_hooks(tiny_gemma) == 0


def test_negative_keep_layers_count_from_the_end(tiny_gemma):
    """{-1} was silently ignored; it is the last block, as in cache["z", -1] and stop_at_layer."""
    import numpy as np

    def stream(output):  # a layer returns a tensor or a tuple starting with one
        return output[0] if isinstance(output, tuple) else output

    tokens = tiny_gemma.tokens(TEXTS)
    last = run(tiny_gemma, tokens, logits=None, keep_layers={2}).prefix.outputs
    for same in ({-1}, {np.int64(-1)}, [2]):
        kept = run(tiny_gemma, tokens, logits=None, keep_layers=same).prefix.outputs
        assert list(kept) == [2]
        assert torch.equal(stream(kept[2]), stream(last[2]))
    with pytest.raises(InvalidInput, match=r"keep_layers=\[2\] asks for layers that stop_at_layer=2 does not run"):
        run(tiny_gemma, tokens, logits=None, stop_at_layer=2, keep_layers={-1})


def test_a_stopped_cache_says_the_pass_stopped_for_any_later_site(tiny_gemma):
    from attnlab.errors import InvalidLocation

    _, cache = tiny_gemma.run_with_cache(TEXTS, stop_at_layer=1)
    for key in (("pattern", 2), ("pattern", 1), "ln_final.hook_normalized", ("resid_pre", 2), ("scale", 1, "ln1")):
        with pytest.raises(InvalidLocation, match=r"is not in this cache: the pass stopped at layer 1 \(stop_at_layer=1: it "
                                                  r"ran block 0 only.*Run without stop_at_layer"):
            cache[key]
    assert cache["resid_pre", 1].shape[0] == 2 and cache["pattern", 0].shape[0] == 2
    _, some = tiny_gemma.run_with_cache(TEXTS, stop_at_layer=1, names_filter=["blocks.0.attn.hook_z"])
    with pytest.raises(InvalidLocation, match="pass names_filter= to run_with_cache"):
        some["pattern", 0]  # reached, just not asked for
