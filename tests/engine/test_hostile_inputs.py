"""Hostile input to the engine's public surface: every bad argument is refused with attnlab's typed error,
naming what was wrong and the valid range, instead of a raw torch/Python error from deep inside."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from attnlab.errors import InvalidInput, InvalidLocation, ShapeMismatch

IDS = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])


@pytest.fixture
def cached(tiny_gpt2):
    return tiny_gpt2.run_with_cache(IDS)[1]


# -- pos_slice / neuron_slice / batch_slice ------------------------------------------------------


@pytest.mark.parametrize("pos_slice", [4, -5, 100, [5], [0, -5], torch.tensor([0, 4]), torch.tensor([0.5]),
                                       torch.tensor([True, False]), (1, 2.5), slice(0, 2, -1), slice(0.5, 2)])
def test_a_bad_pos_slice_is_refused_naming_the_axis_size(cached, pos_slice):
    for method in (cached.accumulated_resid, cached.decompose_resid, cached.stack_head_results):
        with pytest.raises(InvalidInput, match=r"pos_slice indexes an axis of size 4: .*an int in -4\.\.3"):
            method(pos_slice=pos_slice, apply_ln=True)


def test_numpy_integers_and_every_valid_kind_of_pos_slice_select_what_plain_indexing_does(cached):
    full = cached.decompose_resid()
    for pos_slice, index in [(np.int64(2), 2), (-1, -1), ([0, 2], [0, 2]), ((1, 3), slice(1, 3)), (slice(None, None, 2), slice(None, None, 2)),
                             (torch.tensor([True, False, True, False]), [0, 2]), (torch.tensor(3), 3), ([np.int32(1)], [1])]:
        assert torch.equal(cached.decompose_resid(pos_slice=pos_slice), full[:, :, index])


def test_an_out_of_range_neuron_slice_is_refused(cached, tiny_gpt2):
    d_mlp = tiny_gpt2.cfg.d_mlp
    with pytest.raises(InvalidInput, match=rf"neuron_slice indexes an axis of size {d_mlp}: .*-{d_mlp}\.\.{d_mlp - 1}.*\[999\]"):
        cached.get_neuron_results(0, neuron_slice=[999])
    with pytest.raises(InvalidInput, match="neuron_slice"):
        cached.stack_neuron_results(1, neuron_slice=d_mlp)


def test_an_out_of_range_batch_slice_is_refused(cached):
    stack = cached.decompose_resid()
    with pytest.raises(InvalidInput, match=r"batch_slice indexes an axis of size 2: .*-2\.\.1.*got 2, out of range"):
        cached.apply_ln_to_stack(stack, batch_slice=2)


# -- cache keys, batch slices, stack_activation ------------------------------------------------


@pytest.mark.parametrize("key", [(), ("q", 0, "attn", 5), (5, 0), (None,)])
def test_a_malformed_cache_key_tuple_is_refused(cached, key):
    with pytest.raises(InvalidInput, match=r"cache keys are hook names or \(site, layer\[, sublayer type\]\) tuples"):
        cached[key]


@pytest.mark.parametrize("row", [1, np.int64(1), torch.tensor(1)])
def test_one_row_of_the_batch_drops_the_batch_axis_and_says_so(cached, row):
    one = cached.apply_slice_to_batch_dim(row)
    assert not one.has_batch_dim
    assert torch.equal(one["pattern", 0], cached["pattern", 0][1])
    assert one.remove_batch_dim() is one  # nothing more to drop
    assert torch.equal(one.decompose_resid(), cached.decompose_resid()[:, 1])


def test_an_out_of_range_batch_row_is_refused(cached):
    with pytest.raises(InvalidInput, match=r"batch_slice indexes an axis of size 2: .*got 2, out of range"):
        cached.apply_slice_to_batch_dim(2)


def test_stack_activation_checks_its_layer(cached):
    assert torch.equal(cached.stack_activation("pattern", None), cached.stack_activation("pattern"))
    assert torch.equal(cached.stack_activation("pattern", 1), cached["pattern", 0][None])
    for layer in (0, 3, -2, 1.0, "1"):
        with pytest.raises(InvalidLocation, match=r"stack_activation .* must be an integer in 1\.\.2, or -1 or None"):
            cached.stack_activation("pattern", layer)


# -- decoding ids --------------------------------------------------------------------------------


@pytest.mark.parametrize("ids", [[140], [-1], torch.tensor([1, 140]), torch.tensor([[1, 2], [3, -2]])])
def test_ids_outside_the_vocabulary_are_refused_when_decoded(tiny_gpt2, ids):
    """An id past the vocabulary decoded to "" (a silent wrong answer); a negative one raised an OverflowError."""
    for decode in (tiny_gpt2.to_string, tiny_gpt2.to_str_tokens):
        with pytest.raises(InvalidInput, match=r"token ids must lie in 0\.\.139 for tiny-gpt2"):
            decode(ids)
    with pytest.raises(InvalidInput, match=r"to_single_str_token: token ids must lie in 0\.\.139"):
        tiny_gpt2.to_single_str_token(140)


@pytest.mark.parametrize("ids, message", [
    (torch.zeros(2, 2, 2, dtype=torch.long), r"one id, a row \[pos\] or rows \[batch, pos\] of token ids, got shape \(2, 2, 2\)"),
    (torch.tensor([1.0, 2.0]), "integer token ids, got torch.float32"),
    (torch.tensor([True, False]), "integer token ids, got torch.bool"),
    ([1.5], "integer token ids, got torch.float32"),
])
def test_ids_of_the_wrong_kind_are_refused_when_decoded(tiny_gpt2, ids, message):
    """A 3-D tensor was flattened into one string; floats and bools failed deep inside or decoded as ids 0/1."""
    for decode in (tiny_gpt2.to_string, tiny_gpt2.to_str_tokens):
        with pytest.raises(InvalidInput, match=message):
            decode(ids)


@pytest.mark.parametrize("text", ["the nurse", ["the", "nurse"], None])
def test_to_string_refuses_what_is_not_token_ids(tiny_gpt2, text):
    with pytest.raises(InvalidInput, match=r"to_string takes token ids"):
        tiny_gpt2.to_string(text)


def test_valid_ids_still_decode(tiny_gpt2):
    ids = tiny_gpt2.to_tokens(["the nurse said", "he ran"], prepend_bos=False)
    rows = tiny_gpt2.to_string(ids)
    assert rows[0] == "the nurse said" and rows[1].startswith("he ran")
    assert tiny_gpt2.to_string(ids[0].tolist()) == "the nurse said"
    assert tiny_gpt2.to_string(np.asarray(ids[0])) == "the nurse said"
    assert tiny_gpt2.to_str_tokens(ids[:1]) == ["the", "nurse", "said"]
    assert tiny_gpt2.to_string([]) == ""


# -- run_with_cache(device=) ----------------------------------------------------------------------


@pytest.mark.parametrize("device", ["garbage", "cpu:x", 1.5, "meta:0:1"])
def test_a_bad_cache_device_is_refused_before_the_pass(tiny_gpt2, device):
    seen = []
    tiny_gpt2.add_hook("blocks.0.hook_resid_pre", lambda x, hook: seen.append(1))
    try:
        with pytest.raises(InvalidInput, match=rf"run_with_cache: device={device!r} is not a device this machine has"):
            tiny_gpt2.run_with_cache(IDS, device=device)
    finally:
        tiny_gpt2.reset_hooks()
    assert seen == []  # refused before any forward pass
    assert tiny_gpt2.count_hooks() == 0


def test_a_cache_device_given_by_name_is_where_the_cache_lands(tiny_gpt2):
    _, cache = tiny_gpt2.run_with_cache(IDS, device="cpu", names_filter="blocks.0.attn.hook_pattern")
    assert cache["pattern", 0].device == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_cache_device_this_machine_lacks_is_refused(tiny_gpt2):
    with pytest.raises(InvalidInput, match="device='cuda' is not a device this machine has"):
        tiny_gpt2.run_with_cache(IDS, device="cuda")
    assert tiny_gpt2.count_hooks() == 0


# -- apply_ln_to_stack / logit_attrs: the stack's shape -------------------------------------------


@pytest.mark.parametrize("stack", [torch.zeros(3, 2, 4, 7), torch.zeros(32), torch.zeros(3, 2, 4, 32, dtype=torch.long), [0.0] * 32])
def test_a_stack_that_is_not_float_components_of_d_model_is_refused(cached, stack):
    """d_model 7 was centred and scaled as if it were a stream, a (32,) vector came back (2, 4, 32), ints came back ints."""
    with pytest.raises(InvalidInput, match=r"residual_stack must be a float tensor \[component, \*batch_pos, d_model=32\]"):
        cached.apply_ln_to_stack(stack)


@pytest.mark.parametrize("shape, slices, expected", [
    ((3, 2, 5, 32), {}, r"\(2, 4, 1\): give \[component, 2, 4, 32\]"),
    ((3, 4, 32), {}, r"\(2, 4, 1\): give \[component, 2, 4, 32\]"),
    ((3, 2, 4, 32), {"pos_slice": -1}, r"\(2, 1\): give \[component, 2, 32\]"),
    # the whole stack divided by row 0's last scale came back (3, 4, 32) before
    ((3, 2, 4, 32), {"pos_slice": -1, "batch_slice": 0}, r"\(1,\): give \[component, 32\]"),
])
def test_a_stack_made_with_other_slices_is_refused(cached, shape, slices, expected):
    with pytest.raises(InvalidInput, match=rf"residual_stack has shape .*the norm's scale for this cache.* is {expected}"):
        cached.apply_ln_to_stack(torch.zeros(shape), **slices)
    with pytest.raises(InvalidInput, match="residual_stack has shape"):
        cached.logit_attrs(torch.zeros(shape), torch.tensor([1, 2]), **slices)


def test_stacks_made_with_the_same_slices_still_go_through(cached):
    stack = cached.decompose_resid(pos_slice=-1)
    scaled = cached.apply_ln_to_stack(stack, pos_slice=-1)
    assert torch.allclose(scaled, cached.decompose_resid(apply_ln=True, pos_slice=-1))
    one_row = cached.apply_ln_to_stack(stack, pos_slice=-1, batch_slice=1)
    assert torch.allclose(one_row, scaled[:, 1])


# -- switches must be True or False ---------------------------------------------------------------


@pytest.mark.parametrize("call, flag", [
    (lambda m: m.generate(IDS[:1], 2, do_sample="no"), "do_sample must be True or False, got 'no'"),
    (lambda m: m.generate(IDS[:1], 2, stop_at_eos="no"), "stop_at_eos must be True or False, got 'no'"),
    (lambda m: m.to_tokens("the nurse", prepend_bos="False"), "prepend_bos must be True, False or None, got 'False'"),
    (lambda m: m("the nurse", prepend_bos=0), "prepend_bos must be True, False or None, got 0"),
    (lambda m: m.token_rows("the nurse " * 100, truncate="no"), "truncate must be True, False or None, got 'no'"),
    (lambda m: m.run_with_cache(IDS, remove_batch_dim="no"), "remove_batch_dim must be True or False, got 'no'"),
    (lambda m: m.run_with_cache(IDS, return_cache_object="no"), "return_cache_object must be True or False, got 'no'"),
    (lambda m: m(IDS, return_type="loss", loss_per_token="no"), "loss_per_token must be True or False, got 'no'"),
])
def test_a_switch_that_is_not_a_bool_is_refused(tiny_gpt2, call, flag):
    """A string such as "no" is truthy: do_sample="no" sampled, prepend_bos="False" added the BOS token."""
    with pytest.raises(InvalidInput, match=flag):
        call(tiny_gpt2)
    assert tiny_gpt2.count_hooks() == 0


def test_numpy_bools_are_switches_too(tiny_gpt2):
    assert torch.equal(tiny_gpt2.to_tokens("the nurse", prepend_bos=np.bool_(False)), tiny_gpt2.to_tokens("the nurse", prepend_bos=False))
    assert torch.equal(tiny_gpt2.to_tokens("the nurse", prepend_bos=np.bool_(True)), tiny_gpt2.to_tokens("the nurse", prepend_bos=True))
    assert not torch.equal(tiny_gpt2.to_tokens("the nurse", prepend_bos=False), tiny_gpt2.to_tokens("the nurse", prepend_bos=True))


# -- TransformerLens helpers: tokens, unembed, QK / OV --------------------------------------------


def test_to_single_token_refuses_what_is_not_a_string(tiny_gpt2):
    with pytest.raises(InvalidInput, match="to_single_token takes a string, got int: 5"):
        tiny_gpt2.to_single_token(5)


def test_residual_directions_take_numpy_integers_and_refuse_bool_tensors(tiny_gpt2):
    assert torch.equal(tiny_gpt2.tokens_to_residual_directions(np.int64(3)), tiny_gpt2.tokens_to_residual_directions(3))
    with pytest.raises(InvalidInput, match=r"token ids must be integers in 0\.\.139"):
        tiny_gpt2.tokens_to_residual_directions(torch.tensor([True, False]))


@pytest.mark.parametrize("residual", [torch.zeros(3), torch.zeros(2, 4, 7), torch.zeros(2, 32, dtype=torch.long)])
def test_unembed_refuses_what_is_not_a_residual_stream(tiny_gpt2, residual):
    with pytest.raises(InvalidInput, match=r"unembed takes a float residual stream \[\.\.\., d_model=32\]"):
        tiny_gpt2.unembed(residual)


@pytest.mark.parametrize("index", [(0, 9), 5, -3, 0.5, (0, "a")])
def test_a_factored_matrix_index_out_of_its_leading_axes_is_refused(tiny_gpt2, index):
    with pytest.raises(InvalidInput, match=r"a FactoredMatrix's leading axes \(2, 4\) cannot be indexed"):
        tiny_gpt2.QK[index]


def test_a_factored_matrix_product_of_the_wrong_size_is_refused(tiny_gpt2):
    ov = tiny_gpt2.OV[0, 0]
    with pytest.raises(ShapeMismatch, match=r"FactoredMatrix product \(32, 32\) @ \(7,\): the inner sizes 32 and 7 differ"):
        ov @ torch.zeros(7)
    with pytest.raises(ShapeMismatch, match=r"\(5, 7\) @ \(32, 32\): the inner sizes 32 and 7 differ"):
        torch.zeros(5, 7) @ ov
    with pytest.raises(InvalidInput, match="multiplies tensors and FactoredMatrix objects, got str"):
        ov @ "x"
    x = torch.randn(32)
    assert torch.allclose(ov @ x, ov.AB @ x, atol=1e-5) and torch.allclose(x @ ov, x @ ov.AB, atol=1e-5)
    assert torch.allclose((ov @ tiny_gpt2.OV[1, 2]).AB, ov.AB @ tiny_gpt2.OV[1, 2].AB, atol=1e-5)


def test_a_hooks_block_switch_that_is_not_a_bool_is_refused(tiny_gpt2):
    with pytest.raises(InvalidInput, match="reset_hooks_end must be True or False, got 'no'"):
        tiny_gpt2.run_with_hooks(IDS, fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: x * 0)], reset_hooks_end="no")
    assert tiny_gpt2.count_hooks() == 0


# -- generate: logits no token can be picked from ------------------------------------------------


@pytest.mark.parametrize("sample", [False, True])
def test_generate_refuses_non_finite_logits_from_a_hook(tiny_gpt2, sample):
    """Greedy decoding picked token 0 from NaN logits without a word; sampling failed inside torch.multinomial."""
    nan = [("blocks.1.hook_resid_post", lambda x, hook: x * float("nan"))]
    with pytest.raises(InvalidInput, match=r"generate\(\): the logits for new token 0 hold inf or NaN"):
        tiny_gpt2.generate(IDS[:1], 3, fwd_hooks=nan, do_sample=sample, seed=0)
    assert tiny_gpt2.count_hooks() == 0


@pytest.mark.parametrize("temperature", [1e-40, 1e-300, 5e-324])
def test_a_temperature_near_zero_samples_the_greedy_tokens(tiny_gpt2, temperature):
    """logits / 1e-40 overflowed to inf (and 1e-300 is 0 in float32: 0 / 0), so torch.multinomial failed on NaN."""
    greedy = tiny_gpt2.generate(IDS[:1], 4, return_type="tokens", stop_at_eos=False)
    sampled = tiny_gpt2.generate(IDS[:1], 4, return_type="tokens", stop_at_eos=False, do_sample=True,
                                 temperature=temperature, seed=0)
    assert torch.equal(sampled, greedy)


def test_an_infinite_temperature_is_refused(tiny_gpt2):
    with pytest.raises(InvalidInput, match="temperature must be a positive finite number, got inf"):
        tiny_gpt2.generate(IDS[:1], 2, do_sample=True, temperature=float("inf"))


# -- model.pad and hand-built Tokens ---------------------------------------------------------------


@pytest.mark.parametrize("rows, message", [
    ([[999]], r"token ids must lie in 0\.\.139 for tiny-gpt2, got \[999\]"),
    ([[-1, 2]], r"token ids must lie in 0\.\.139 for tiny-gpt2, got \[-1\]"),
    ([[1.5, 2]], r"row 0 must be a list of integer token ids, got \[1\.5, 2\]"),  # was cut to [1, 2]
    ([[True, 2]], r"row 0 must be a list of integer token ids"),  # was read as [1, 2]
    ([[1, 2], ["a"]], r"row 1 must be a list of integer token ids"),
    ([torch.tensor([1.0, 2.0])], r"row 0 must be a list of integer token ids"),
])
def test_pad_refuses_ids_that_are_not_token_ids_of_the_model(tiny_gpt2, rows, message):
    with pytest.raises(InvalidInput, match=message):
        tiny_gpt2.pad(rows)


def test_pad_takes_ints_numpy_ints_and_integer_tensors(tiny_gpt2):
    for rows in ([[1, 2], [3]], [np.array([1, 2]), np.array([3])], [torch.tensor([1, 2]), torch.tensor([3])]):
        tokens = tiny_gpt2.pad(rows)
        assert tokens.ids.tolist() == [[1, 2], [3, tiny_gpt2.pad_token_id]] and tokens.mask.tolist() == [[1, 1], [1, 0]]


def test_hand_built_tokens_are_checked_like_ids(tiny_gpt2):
    """Tokens went to the embedding unchecked: an id past the vocabulary was a raw IndexError (a device assert on a GPU)."""
    from attnlab.engine.tokens import Tokens

    outside = Tokens(torch.tensor([[1, 999]]), torch.ones(1, 2, dtype=torch.long), "right")
    with pytest.raises(InvalidInput, match=r"token ids must lie in 0\.\.139 for tiny-gpt2, got \[999\]"):
        tiny_gpt2(outside)
    too_long = Tokens(torch.ones(1, 200, dtype=torch.long), torch.ones(1, 200, dtype=torch.long), "right")
    with pytest.raises(InvalidInput, match="input has 200 tokens but tiny-gpt2 handles at most 128"):
        tiny_gpt2.run(too_long)
    assert tiny_gpt2.count_hooks() == 0


@pytest.mark.parametrize("tokens, pos_slice, stack_axes", [
    (torch.tensor([1, 2, 3]), -1, r"\(2,\)"),
    (torch.tensor([1, 2, 3]), None, r"\(2, 4\)"),
    (torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4]]), -1, r"\(2,\)"),
    (torch.tensor([[1, 2], [3, 4]]), None, r"\(2, 4\)"),
])
def test_logit_attrs_refuses_tokens_that_do_not_fit_the_stack(cached, tokens, pos_slice, stack_axes):
    stack = cached.decompose_resid(pos_slice=pos_slice)
    with pytest.raises(InvalidInput, match=rf"logit_attrs: tokens of shape {re.escape(str(tuple(tokens.shape)))} do not fit "
                                           rf"the stack's {stack_axes}"):
        cached.logit_attrs(stack, tokens, pos_slice=pos_slice)


def test_logit_attrs_takes_one_token_one_per_row_or_one_per_position(cached):
    stack = cached.decompose_resid()
    per_position = cached.logit_attrs(stack, torch.tensor([[1, 1, 1, 1], [2, 2, 2, 2]]))
    assert torch.allclose(cached.logit_attrs(stack, torch.tensor([1, 2])), per_position)
    assert torch.allclose(cached.logit_attrs(stack, 1)[:, 0], per_position[:, 0])


def test_moving_a_cache_to_a_bad_device_is_refused(cached):
    with pytest.raises(InvalidInput, match=r"ActivationCache.to: device='garbage' is not a device this machine has"):
        cached.to("garbage")
    assert cached.to("cpu")["pattern", 0].device == torch.device("cpu")


def test_run_refuses_an_unknown_option_naming_the_valid_ones(tiny_gpt2):
    with pytest.raises(InvalidInput, match=r"unknown keyword argument\(s\) \['bogus'\] for model.run\(\); valid: logits, vocab, .*prepend_bos"):
        tiny_gpt2.run(IDS, bogus=1)
    assert tiny_gpt2.run(IDS, logits="last", padding_side="left").logits.shape == (2, 140)


@pytest.mark.parametrize("flag", ["is_permanent", "prepend"])
def test_add_hook_switches_must_be_bools(tiny_gpt2, flag):
    """is_permanent="no" made a hook that reset_hooks() keeps."""
    with pytest.raises(InvalidInput, match=rf"{flag} must be True or False, got 'no'"):
        tiny_gpt2.add_hook("blocks.0.hook_resid_pre", lambda x, hook: x, **{flag: "no"})
    assert tiny_gpt2.count_hooks() == 0


def test_a_layer_or_head_that_is_not_a_whole_number_is_named_as_such():
    """sweep_heads(layers=[1.0]) said 'layer 1.0 out of range' (a valid layer number); True, '1' likewise."""
    from attnlab.errors import InvalidLocation
    from attnlab.measure import LogitDiff, sweep_heads
    from attnlab.testing import tiny_model

    model = tiny_model("gpt2")
    for bad in (1.0, True, "1"):
        with pytest.raises(InvalidLocation, match=rf"^layer must be a whole number \(an int\), got {bad!r} "
                                                  rf"\({type(bad).__name__}\); tiny-gpt2 has layers 0\.\.1$"):
            model.check_layer(bad)
        with pytest.raises(InvalidLocation, match=rf"head must be a whole number \(an int\), got {bad!r}"):
            model.check_head(bad)
    with pytest.raises(InvalidLocation, match=r"layer must be a whole number \(an int\), got 1\.0 \(float\)"):
        sweep_heads(model, ["the nurse said that"], LogitDiff(" she", " he"), "zero", layers=[1.0], progress=False)
    assert model.check_layer(np.int64(1)) == 1 and model.count_hooks() == 0


@pytest.mark.parametrize("flag", ["grad", "hidden", "stop_early"])
def test_run_switches_must_be_bools(tiny_gpt2, flag):
    """run(grad="no") built an autograd graph (a non-empty string is truthy)."""
    with pytest.raises(InvalidInput, match=rf"^{flag} must be True or False, got 'no'$"):
        tiny_gpt2.run(IDS, logits="last", **{flag: "no"})
    assert tiny_gpt2.count_hooks() == 0
    assert not tiny_gpt2.run(IDS, logits="last", grad=False).logits.requires_grad
