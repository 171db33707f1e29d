"""``run(precision=...)``: the blocks' linear layers multiply in bfloat16 from kept rounded weights.

Checked against a reference that does the same thing by hand (each linear's forward replaced
by ``linear(x.bf16, W.bf16).float() + b`` on a second copy of the model), so the hooks' plumbing
(zero positions, hook order, edits of a linear's input, weight versions) is what is tested.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from attnlab.engine.forward import run
from attnlab.engine.locations import hook_name
from attnlab.engine.precision import check_precision, forget_rounded_weights, reduced_linears
from attnlab.errors import InvalidInput, InvalidSpec, UnsupportedModel
from attnlab.interventions import AblateHead, EditMLPNeuron
from attnlab.testing import tiny_model

TEXTS = ["the nurse said that she", "a cat sat on the mat today"]
ARCHS = ["llama", "gpt2", "gemma3"]


def hand_rounded(arch: str):
    """The same tiny model with every block linear computing in bfloat16 by hand (the reference).

    As the engine does: an input is rounded once for consecutive products (q, k, v; gate, up),
    and an MLP's hidden activations stay in bfloat16 until its last linear returns float32.
    """
    model = tiny_model(arch)
    kept = {}

    def rounded(x):
        if x.dtype == torch.bfloat16:
            return x
        if "x" not in kept or kept["x"][0] is not x or kept["x"][1] != x._version:
            kept["x"] = (x, x._version, x.bfloat16())
        return kept["x"][2]

    blocks = model.layout.blocks
    hidden = {id(m) for b in blocks for m in (b.mlp_in, b.mlp_in_linear) if m is not None}
    last = {id(b.mlp_down) for b in blocks}
    for layer in model.decoder_layers():
        for m in layer.modules():
            if type(m) not in (nn.Linear, Conv1D):
                continue
            weight = (lambda m=m: m.weight.t()) if type(m) is Conv1D else (lambda m=m: m.weight)
            if id(m) in hidden:
                m.forward = lambda x, m=m, w=weight: F.linear(
                    rounded(x), w().bfloat16(), None if m.bias is None else m.bias.bfloat16())
            else:
                m.forward = lambda x, m=m, w=weight: F.linear(rounded(x), w().bfloat16()).to(
                    torch.float32 if id(m) in last else x.dtype) + (m.bias if m.bias is not None else 0)
    return model


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_equal_the_hand_rounded_model_and_differ_from_full_precision(arch):
    model, ref = tiny_model(arch), hand_rounded(arch)
    tokens = model.tokens(TEXTS)
    full = run(model, tokens, logits="all").logits
    low = run(model, tokens, logits="all", precision="bfloat16").logits
    expected = run(ref, tokens, logits="all").logits
    torch.testing.assert_close(low, expected, rtol=0, atol=1e-6)
    assert low.dtype == full.dtype == torch.float32
    assert (low - full).abs().max() > 1e-5  # something was rounded
    torch.testing.assert_close(low, full, rtol=0, atol=5e-2 * full.abs().max().item())
    assert model.count_hooks() == 0 and all(p.dtype == torch.float32 for p in model.hf_model.parameters())


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_edits_and_reads_of_linear_inputs_and_outputs_still_apply(arch):
    """Hook points on a linear's input (MLP post) or reached through it (z, attn_out) act before the product."""
    model, ref = tiny_model(arch), hand_rounded(arch)
    tokens = model.tokens(TEXTS)
    edits = [EditMLPNeuron(1, 3, scale=0.0), AblateHead(0, 1)]
    names = [hook_name(1, "post"), hook_name(0, "attn_out"), hook_name(1, "mlp_out"), hook_name(0, "z"), hook_name(1, "result")]
    low = run(model, tokens, logits="all", interventions=edits, read=names, precision="bf16")
    expected = run(ref, tokens, logits="all", interventions=edits, read=names)
    torch.testing.assert_close(low.logits, expected.logits, rtol=0, atol=1e-6)
    for name in names:
        torch.testing.assert_close(low.cache[name], expected.cache[name], rtol=0, atol=1e-6)
    assert float(low.cache[hook_name(1, "post")][..., 3].abs().max()) == 0.0


def test_gradients_flow_through_the_rounded_linears():
    model, ref = tiny_model("llama"), hand_rounded("llama")
    tokens = model.tokens(TEXTS)
    grads = []
    for m, precision in ((model, "bf16"), (ref, None)):
        kept = {}

        def keep(x, hook, kept=kept):
            x = x.detach().requires_grad_(True)
            kept["z"] = x
            return x

        out = run(m, tokens, logits="last", hooks=[(hook_name(0, "z"), keep)], grad=True, precision=precision)
        (g,) = torch.autograd.grad(out.logits[:, 5].sum(), [kept["z"]])
        grads.append(g)
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-6)


def test_an_in_place_weight_edit_is_seen_by_the_kept_rounded_weights():
    model, ref = tiny_model("llama"), hand_rounded("llama")
    tokens = model.tokens(TEXTS)
    before = run(model, tokens, logits="last", precision="bf16").logits
    for m in (model, ref):
        with torch.no_grad():
            m.hf_model.model.layers[1].mlp.down_proj.weight.mul_(3.0)
    after = run(model, tokens, logits="last", precision="bf16").logits
    torch.testing.assert_close(after, run(ref, tokens, logits="last").logits, rtol=0, atol=1e-6)
    assert (after - before).abs().max() > 1e-3


def test_another_thread_computes_in_full_precision_meanwhile():
    model = tiny_model("llama")
    tokens = model.tokens(TEXTS)
    full = run(model, tokens, logits="last").logits
    seen = {}
    with reduced_linears(model, torch.bfloat16):
        inside = model.hf_model(input_ids=tokens.ids, attention_mask=tokens.mask).logits[:, -1]
        worker = threading.Thread(target=lambda: seen.setdefault("logits", run(model, tokens, logits="last").logits))
        worker.start()
        worker.join()
    torch.testing.assert_close(seen["logits"], full, rtol=0, atol=0)
    assert (inside - model.hf_model(input_ids=tokens.ids, attention_mask=tokens.mask).logits[:, -1]).abs().max() > 1e-5
    assert model.count_hooks() == 0
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.hf_model.modules() if type(m) is nn.Linear)


@pytest.mark.parametrize("bad", ["int8", "float64", torch.float32, 16, ""])
def test_bad_precision_is_refused_before_anything_runs(bad):
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.hf_model.state_dict().items()}
    with pytest.raises(InvalidInput, match="precision must be None, torch.bfloat16, torch.float16"):
        run(model, model.tokens(TEXTS), logits="last", precision=bad)
    assert model.count_hooks() == 0
    assert all(torch.equal(before[k], v) for k, v in model.hf_model.state_dict().items())


def test_precision_names():
    assert check_precision(None) is None
    assert check_precision("BF16") is check_precision("bfloat16") is check_precision(torch.bfloat16) is torch.bfloat16
    assert check_precision("fp16") is torch.float16


def test_score_edits_stay_in_float32_under_a_callers_autocast():
    """A caller's torch.autocast would round the upcast scores back to bfloat16; the engine switches it off there."""
    model = tiny_model("llama")
    dtypes = []

    def look(scores, hook):
        dtypes.append(scores.dtype)
        return scores

    with torch.autocast("cpu", dtype=torch.bfloat16):
        run(model, model.tokens(TEXTS), logits="last", hooks=[(hook_name(0, "attn_scores"), look)])
    assert dtypes == [torch.float32]


def test_bfloat16_sweeps_equal_sweeps_of_the_hand_rounded_model():
    """Prefix reuse, grouped heads and edits run through the same rounded linears as a plain forward."""
    from attnlab.interventions import EditMLPNeuron as Edit
    from attnlab.measure import LogitDiff, sweep_heads, sweep_interventions, sweep_neurons

    model, ref = tiny_model("llama"), hand_rounded("llama")
    metric, prompts = LogitDiff(" she", " he"), ["the nurse said that", "a cat sat on the mat and", "he told her"]
    counter = ["the doctor said that", "a dog ran to the car and", "she told him"]
    opts = dict(progress=False, n_boot=0, batch_size=4)
    pairs = [
        (sweep_heads(model, prompts, metric, "zero", precision="bfloat16", **opts), sweep_heads(ref, prompts, metric, "zero", **opts)),
        (sweep_neurons(model, prompts, metric, 1, site="k", precision=torch.bfloat16, **opts),
         sweep_neurons(ref, prompts, metric, 1, site="k", **opts)),
        (sweep_interventions(model, prompts, metric, {"n3": [Edit(1, 3, scale=0.0)]}, precision="bfloat16", **opts),
         sweep_interventions(ref, prompts, metric, {"n3": [Edit(1, 3, scale=0.0)]}, **opts)),
    ]
    for low, expected in pairs:
        assert low.meta["precision"] == "bfloat16" and "precision" not in expected.meta
        assert np.abs(low.per_prompt.effect.to_numpy() - expected.per_prompt.effect.to_numpy()).max() < 1e-5
    # patch sources (the counterfactual patterns) are computed once, in full precision, like means
    patched = sweep_heads(model, prompts, metric, "patch", counterfactuals=counter, precision="bf16", **opts)
    exact = sweep_heads(model, prompts, metric, "patch", counterfactuals=counter, **opts).per_prompt.effect.to_numpy()
    assert np.abs(patched.per_prompt.effect.to_numpy() - exact).max() < 0.05 * np.abs(exact).max()
    full = sweep_heads(model, prompts, metric, "zero", **opts)
    assert np.abs(full.table.effect.to_numpy() - pairs[0][0].table.effect.to_numpy()).max() > 1e-6
    assert model.count_hooks() == 0


def test_offloaded_weights_are_refused_with_what_to_do():
    model = tiny_model("llama")
    linear = model.hf_model.model.layers[0].mlp.down_proj
    real = linear.weight
    linear.weight = nn.Parameter(torch.empty_like(real, device="meta"), requires_grad=False)  # what offloading leaves
    try:
        with pytest.raises(UnsupportedModel, match="weights are offloaded .*precision=None"):
            run(model, model.tokens(TEXTS), logits="last", precision="bf16")
    finally:
        linear.weight = real
    assert model.count_hooks() == 0
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.hf_model.modules() if type(m) is nn.Linear)


def test_hooks_on_a_linear_see_its_real_input_and_output():
    """Tools that record a linear's input (SAE data, adapters) see what they see in full precision."""
    model = tiny_model("llama")
    seen = []
    proj = model.hf_model.model.layers[0].mlp.down_proj
    handle = proj.register_forward_hook(lambda mod, args, out: seen.append((tuple(args[0].shape), tuple(out.shape))))
    try:
        run(model, model.tokens(TEXTS), logits="last")
        run(model, model.tokens(TEXTS), logits="last", precision="bf16")
    finally:
        handle.remove()
    assert seen[0] == seen[1] and seen[0][0][1] > 0


def test_a_nested_full_precision_run_in_a_hook_is_full_precision():
    model = tiny_model("llama")
    tokens = model.tokens(TEXTS)
    full = run(model, tokens, logits="last").logits
    inner = {}

    def nested(z, hook):
        if not inner:  # the outer block's hook acts in the nested run too: run once
            inner["busy"] = True
            inner["logits"] = run(model, tokens, logits="last").logits
        return z

    low = run(model, tokens, logits="last", hooks=[(hook_name(0, "z"), nested)], precision="bf16").logits
    torch.testing.assert_close(inner["logits"], full, rtol=0, atol=1e-5)  # explicit vs fused attention: ~1e-7
    assert (low - full).abs().max() > 1e-3


def test_a_new_parameter_is_seen_and_forget_drops_the_kept_weights():
    model, ref = tiny_model("llama"), hand_rounded("llama")
    tokens = model.tokens(TEXTS)
    run(model, tokens, logits="last", precision="bf16")
    assert model.__dict__["_rounded_weights"]
    for m in (model, ref):
        proj = m.hf_model.model.layers[1].mlp.down_proj
        proj.weight = nn.Parameter(proj.weight.detach() * 2)
    for layer in ref.decoder_layers():  # the hand-rounded copy reads the new weight too
        mlp = layer.mlp.down_proj
        mlp.forward = lambda x, m=mlp: F.linear(x.bfloat16(), m.weight.bfloat16()).float()
    got = run(model, tokens, logits="last", precision="bf16").logits
    torch.testing.assert_close(got, run(ref, tokens, logits="last").logits, rtol=0, atol=1e-6)
    # a write the version counter misses (.data) needs forget_rounded_weights
    with torch.no_grad():
        model.hf_model.model.layers[1].mlp.down_proj.weight.data.mul_(0.5)
    stale = run(model, tokens, logits="last", precision="bf16").logits
    forget_rounded_weights(model)
    fresh = run(model, tokens, logits="last", precision="bf16").logits
    assert "_rounded_weights" in model.__dict__ and (fresh - stale).abs().max() > 1e-3


def test_float16_overflow_is_an_error_not_nan():
    model = tiny_model("llama")
    with torch.no_grad():
        model.hf_model.model.layers[0].mlp.up_proj.weight.mul_(1e5)  # activations ~2e5, as outlier neurons reach
    run(model, model.tokens(TEXTS), logits="last", precision="bf16")  # float32's range: fine
    with pytest.raises(InvalidSpec, match="overflowed float16 .*use precision='bfloat16'"):
        run(model, model.tokens(TEXTS), logits="last", precision="fp16")
    assert model.count_hooks() == 0


def test_another_threads_hook_block_does_not_change_this_threads_numbers():
    model = tiny_model("llama")
    tokens = model.tokens(TEXTS)
    expected = run(model, tokens, logits="last", precision="bf16").logits
    opened, done = threading.Event(), threading.Event()

    def other():
        with model.hooks(fwd_hooks=[(hook_name(0, "result"), lambda x, hook: x * 0)]):
            opened.set()
            done.wait(30)

    worker = threading.Thread(target=other)
    worker.start()
    opened.wait(30)
    try:
        got = run(model, tokens, logits="last", precision="bf16").logits
    finally:
        done.set()
        worker.join()
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_a_conversion_that_swaps_the_storage_is_seen():
    """``model.half()`` / ``.to(device)`` give the same Parameter a new storage without a version bump."""
    model = tiny_model("llama")
    tokens = model.tokens(TEXTS)
    before_stamp = model.weights_stamp()
    run(model, tokens, logits="last", precision="bf16")
    with torch.no_grad():
        for p in model.hf_model.parameters():  # what Module._apply does: p.data = fn(p.data)
            p.data = p.data * 3
    assert model.weights_stamp() != before_stamp
    got = run(model, tokens, logits="last", precision="bf16").logits
    forget_rounded_weights(model)
    assert torch.equal(got, run(model, tokens, logits="last", precision="bf16").logits)


@pytest.mark.parametrize("arch", ARCHS)
def test_mlp_hidden_activations_stay_bfloat16_and_the_block_returns_float32(arch):
    """Rounded before the last product anyway: kept in bfloat16 between the MLP's linears (float16 would overflow)."""
    model = tiny_model(arch)
    names = [hook_name(0, "pre"), hook_name(0, "post"), hook_name(0, "mlp_out"), hook_name(0, "resid_post")]
    seen = {}
    for precision in ("bf16", "fp16", None):
        out = run(model, model.tokens(TEXTS), logits="last", read=names, precision=precision)
        seen[precision] = [out.cache[n].dtype for n in names]
    assert seen["bf16"] == [torch.bfloat16, torch.bfloat16, torch.float32, torch.float32]
    assert seen["fp16"] == seen[None] == [torch.float32] * 4


def test_reduced_precision_runs_under_inference_mode():
    """Activations made under torch.inference_mode() have no version counter: rounded each time, same numbers."""
    from attnlab.measure import LogitDiff, sweep_heads

    model = tiny_model("llama")
    tokens = model.tokens(TEXTS)
    expected = run(model, tokens, logits="all", precision="bf16").logits
    opts = dict(progress=False, n_boot=0)
    swept = sweep_heads(model, TEXTS, LogitDiff(" she", " he"), "zero", precision="bf16", **opts).table.effect.to_numpy()
    with torch.inference_mode():
        got = run(model, tokens, logits="all", precision="bf16").logits
        again = sweep_heads(model, TEXTS, LogitDiff(" she", " he"), "zero", precision="bf16", **opts).table.effect.to_numpy()
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    np.testing.assert_allclose(again, swept, rtol=0, atol=1e-6)
    assert model.count_hooks() == 0


@pytest.mark.parametrize("native", [False, True])
def test_emulated_bfloat16_products_warn_once(native, monkeypatch):
    """On an x86 CPU without bfloat16 matrix instructions precision= makes a call slower: say so, once."""
    import attnlab.engine.precision as precision

    monkeypatch.setattr(precision.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(precision, "_warned_emulated", set())
    model = tiny_model("llama")
    ids = model.tokens(TEXTS)
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(model, ids, precision="bfloat16")
        run(model, ids, precision="bfloat16")
        run(model, ids)
    slow = [w for w in caught if "emulates every product" in str(w.message)]
    assert len(slow) == (0 if native else 1)
    if not native:
        assert issubclass(slow[0].category, RuntimeWarning) and "precision=None" in str(slow[0].message)
        assert slow[0].filename == __file__  # points at the caller's line, not into attnlab
    assert precision.has_native_products(torch.bfloat16, torch.device("cpu")) is native
    if not native:  # through a measurement too: its torch.no_grad() decorator is no user's line either
        from attnlab.measure import LogitDiff, sweep_heads

        monkeypatch.setattr(precision, "_warned_emulated", set())
        with pytest.warns(RuntimeWarning, match="emulates every product") as caught:
            sweep_heads(model, TEXTS, LogitDiff(" she", " he"), "zero", layers=[0], heads=[0], n_boot=0,
                        progress=False, precision="bfloat16")
        assert [w.filename for w in caught if "emulates" in str(w.message)] == [__file__]
