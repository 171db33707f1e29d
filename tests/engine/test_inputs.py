"""No silent traps at the model's door: ids and text checked, unknown options refused, hooks that misfit named."""

from __future__ import annotations

import pytest
import torch

from attnlab.errors import InvalidInput, InvalidLocation, ShapeMismatch
from attnlab.testing import tiny_model

TEXT = "the nurse said that she was happy"


@pytest.mark.parametrize("arch", ["gpt2", "bert", "llama", "gemma3"])
def test_token_ids_are_checked_like_text(arch):
    model = tiny_model(arch)  # every tiny model has a 128-token context
    with pytest.raises(InvalidInput, match=r"input has 129 tokens but tiny-\w+ handles at most 128"):
        model(torch.full((1, 129), 9))
    with pytest.raises(InvalidInput, match=r"token ids of shape \(1, 0\) hold no tokens"):
        model(torch.zeros((1, 0), dtype=torch.long))
    with pytest.raises(InvalidInput, match=r"token ids must be \[pos\] or \[batch, pos\], got shape \(1, 1, 3\)"):
        model(torch.ones((1, 1, 3), dtype=torch.long))
    with pytest.raises(InvalidInput, match="attention_mask has a row with no tokens"):
        model(torch.ones((2, 3), dtype=torch.long), attention_mask=torch.tensor([[1, 1, 1], [0, 0, 0]]))
    assert model.count_hooks() == 0


def test_generation_past_the_context_is_refused(tiny_gpt2):
    long_prompt = " ".join(["the"] * 120)
    with pytest.raises(InvalidInput, match=r"with max_new_tokens=20 it would reach 14\d, but tiny-gpt2 handles at most 128"):
        tiny_gpt2.generate(long_prompt, max_new_tokens=20)


@pytest.mark.parametrize("arch", ["gpt2", "gemma3"])
def test_empty_text_is_refused_everywhere(arch):
    model = tiny_model(arch)
    for call in (lambda: model(""), lambda: model.run_with_cache("   "), lambda: model.generate(""),
                 lambda: model(["the nurse", ""]), lambda: model.to_tokens("")):
        with pytest.raises(InvalidInput, match="is empty; every text needs at least one word"):
            call()
    assert model.count_hooks() == 0


def test_a_text_with_a_lone_surrogate_is_named_before_the_tokenizer(tiny_llama):
    """Bytes decoded with surrogateescape (argv, some files) crashed the tokenizer with a TypeError."""
    from attnlab.bias.templates import Template
    from attnlab.measure import LogitDiff, score

    with pytest.raises(InvalidInput, match=r"text 1 holds '\\udce9' at character 3, which is not a Unicode character"):
        tiny_llama(["the nurse", "caf\udce9"])
    with pytest.raises(InvalidInput, match=r"target ' \\udce9' holds"):
        score(tiny_llama, ["the nurse said"], LogitDiff(" \udce9", " he"))
    with pytest.raises(InvalidInput, match=r"template prefix .* holds '\\udce9'"):
        Template("The {occupation} \udce9")


def test_unknown_keyword_arguments_are_refused(tiny_llama):
    with pytest.raises(InvalidInput, match=r"unknown keyword argument\(s\) \['logits_to_keep'\] .*valid: return_type"):
        tiny_llama(TEXT, logits_to_keep=1)
    with pytest.raises(InvalidInput, match=r"unknown keyword argument\(s\) \['temprature'\] for generate"):
        tiny_llama.generate(TEXT, max_new_tokens=2, temprature=0.5)
    with pytest.raises(InvalidInput, match="padding_side must be 'right' or 'left', got 'middle'"):
        tiny_llama([TEXT, "a dog"], padding_side="middle")


@pytest.mark.parametrize("arch", ["gpt2", "gemma3"])
def test_a_hook_returning_the_wrong_shape_is_named(arch):
    model = tiny_model(arch)
    clean = model(TEXT)
    n = model.to_tokens(TEXT).shape[1]
    one_head = lambda p, hook: p[:, :1]  # noqa: E731 - one head instead of four: used to broadcast silently
    with pytest.raises(ShapeMismatch, match=rf"on blocks\.1\.attn\.hook_pattern returned shape \(1, 1, {n}, {n}\), "
                                            rf"but the activation there has shape \(1, 4, {n}, {n}\)"):
        model.run_with_hooks(TEXT, fwd_hooks=[("blocks.1.attn.hook_pattern", one_head)])
    with pytest.raises(ShapeMismatch, match=r"hook_resid_pre returned shape"):
        model.run_with_hooks(TEXT, fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: x[:, :-1])])
    with pytest.raises(ShapeMismatch, match="returned str"):
        model.run_with_hooks(TEXT, fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: "oops")])
    # a tensor with no values (PyTorch's own error was a bare NotImplementedError)
    with pytest.raises(ShapeMismatch, match=rf"on blocks\.1\.attn\.hook_z returned a tensor on meta, which cannot be "
                                            rf"copied to cpu .*; it must return a tensor of shape \(1, {n}, 4, 8\) on cpu"):
        model.run_with_hooks(TEXT, fwd_hooks=[("blocks.1.attn.hook_z", lambda x, hook: x.to("meta"))])
    with pytest.raises(ShapeMismatch, match=r"on blocks\.0\.hook_resid_post returned a tensor on meta"):
        model.run_with_hooks(TEXT, fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: x.to("meta"))])
    assert model.count_hooks() == 0
    assert torch.equal(model(TEXT), clean)


def test_unknown_hook_names_list_the_kinds_that_exist(tiny_gemma):
    with pytest.raises(InvalidLocation, match=r"did you mean 'blocks.2.hook_resid_post'\?.*kinds of hook point .*resid_pre.*mlp_out"):
        tiny_gemma.run_with_cache(TEXT, names_filter=["blocks.2.hook_resid_postt"])
    with pytest.raises(InvalidLocation, match=r"no hook point 'blocks.1.hook_normalized_resid_post' in tiny-gemma3;.*kinds"):
        tiny_gemma.run_with_hooks(TEXT, fwd_hooks=[("blocks.1.hook_normalized_resid_post", lambda x, hook: x)])
    assert tiny_gemma.count_hooks() == 0


@pytest.mark.parametrize("mask, shown", [([[0.5, 1.0, 1.0]], "0.5"), ([[2, 2, 2]], "2"), ([[-1, 1, 1]], "-1"),
                                         ([[float("nan"), 1.0, 1.0]], "nan")])
def test_an_attention_mask_must_hold_only_zeros_and_ones(tiny_gpt2, mask, shown):
    """A float 0.5 was truncated to padding, 2s doubled the lengths (then a raw IndexError), -1 was kept."""
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(InvalidInput, match=rf"attention_mask must hold only 0 \(padding\) and 1 \(a token\).*got {shown}$"):
        tiny_gpt2(ids, attention_mask=torch.tensor(mask))
    with pytest.raises(InvalidInput, match="attention_mask must be a tensor"):
        tiny_gpt2(ids, attention_mask=[[1, 1, 1]])
    assert tiny_gpt2.count_hooks() == 0


@pytest.mark.parametrize("mask, message", [([[1, 0, 1], [1, 1, 1]], r"row 0 is \[1, 0, 1\]: each row must be one run"),
                                           ([[0, 1, 1], [1, 1, 0]], r"row 1 is \[1, 1, 0\].*every row on the same side \(left")])
def test_a_mask_with_a_gap_or_both_sides_padded_is_refused(tiny_gpt2, mask, message):
    """Positions and the last token are counted from each row's run of tokens: a gap would read the wrong columns."""
    with pytest.raises(InvalidInput, match=message):
        tiny_gpt2(torch.tensor([[5, 6, 7], [8, 9, 10]]), attention_mask=torch.tensor(mask))
    right = tiny_gpt2(torch.tensor([[5, 6, 7], [8, 9, 10]]), attention_mask=torch.tensor([[1, 1, 0], [1, 0, 0]]))
    assert torch.allclose(right[1, 0], tiny_gpt2(torch.tensor([[8]]))[0, 0], atol=1e-5)  # one-sided padding is fine


def test_bool_integer_and_float_masks_of_zeros_and_ones_mean_the_same(tiny_gpt2):
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    ref = tiny_gpt2(ids, attention_mask=mask)
    for same in (mask.bool(), mask.float(), mask.to(torch.int32)):
        assert torch.equal(tiny_gpt2(ids, attention_mask=same), ref)
    assert tiny_gpt2.tokens(ids[0], attention_mask=mask[1]).mask.tolist() == [[1, 1, 1]]  # 1-D ids, 1-D mask


def test_token_type_ids_are_checked_on_bert(tiny_bert):
    ids = tiny_bert.to_tokens(TEXT)
    n = ids.shape[1]
    with pytest.raises(InvalidInput, match=rf"token_type_ids shape \(1, 2\) != ids shape \(1, {n}\)"):
        tiny_bert(TEXT, token_type_ids=torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(InvalidInput, match=r"token_type_ids must lie in 0\.\.1 for tiny-bert, got \[7\]"):
        tiny_bert(TEXT, token_type_ids=torch.full((1, n), 7))
    with pytest.raises(InvalidInput, match=r"token_type_ids must lie in 0\.\.1 for tiny-bert, got \[-1\]"):
        tiny_bert(TEXT, token_type_ids=torch.full((1, n), -1))
    with pytest.raises(InvalidInput, match="token_type_ids must be an integer tensor shaped like the ids"):
        tiny_bert(TEXT, token_type_ids=[[0] * n])
    with pytest.raises(InvalidInput, match="token_type_ids must be an integer tensor, got torch.float32"):
        tiny_bert(TEXT, token_type_ids=torch.zeros(1, n))
    with pytest.raises(InvalidInput, match="token_type_ids shape"):
        tiny_bert.run_with_cache(TEXT, token_type_ids=torch.zeros(1, n + 1, dtype=torch.long))
    assert tiny_bert.count_hooks() == 0
    # valid ones still reach the model: segment 1 changes the output, and 1-D types go with one row
    types = torch.tensor([[0] * (n - 2) + [1, 1]])
    assert not torch.equal(tiny_bert(TEXT, token_type_ids=types), tiny_bert(TEXT))
    assert torch.equal(tiny_bert(TEXT, token_type_ids=types[0]), tiny_bert(TEXT, token_type_ids=types))


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3"])
def test_token_type_ids_are_refused_where_there_are_no_token_types(arch):
    model = tiny_model(arch)
    with pytest.raises(InvalidInput, match=rf"tiny-{arch} has no token types"):
        model(TEXT, token_type_ids=torch.zeros(1, 9, dtype=torch.long))
    assert model.count_hooks() == 0
