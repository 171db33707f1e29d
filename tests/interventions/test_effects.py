"""Every kind of intervention changes the output, and matches a hand computation where one is cheap."""

from __future__ import annotations

import copy

import pytest
import torch

from attnlab.interventions import (
    AblateHead,
    BlockKeys,
    EditNeuron,
    EditScores,
    Patch,
    SetPattern,
    head_means,
    hooks_for,
    per_row,
)
from attnlab.testing import tiny_model

from .conftest import ARCHS, OTHER, TEXT, output_projection, project_by_hand, scaling


def _last_layer(model) -> int:
    return model.cfg.n_layers - 1  # on tiny Gemma-3 the last layer is a full-attention layer


def _mask(model, n: int) -> torch.Tensor:
    """[query, key] True where attention is allowed (whole text: no padding here)."""
    if model.cfg.is_causal:
        return torch.ones(n, n).tril().bool()
    return torch.ones(n, n, dtype=torch.bool)


@pytest.mark.parametrize("arch", ARCHS)
def test_zero_ablation_equals_removing_the_head_slice_before_the_output_projection(arch):
    model = tiny_model(arch)
    layer, head = _last_layer(model), 1
    proj = output_projection(model, layer)
    captured = []
    handle = proj.register_forward_hook(lambda mod, args, out: captured.append(out.detach()))
    try:
        with torch.no_grad():
            clean, cache = model.run_with_cache(TEXT, names_filter=f"blocks.{layer}.attn.hook_z")
            with model.intervene(AblateHead(layer, head)):
                ablated = model(TEXT)
    finally:
        handle.remove()
    z = cache[f"blocks.{layer}.attn.hook_z"].clone()
    z[:, :, head] = 0  # the head's slice removed
    assert torch.allclose(captured[-1], project_by_hand(proj, z), atol=1e-5)
    assert (ablated - clean).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ARCHS)
def test_zeroing_a_key_dimension_equals_the_pattern_recomputed_without_it(arch):
    model = tiny_model(arch)
    layer, head, dim = _last_layer(model), 2, 3
    q_name, k_name, p_name = (f"blocks.{layer}.attn.hook_{s}" for s in ("q", "k", "pattern"))
    with torch.no_grad():
        clean, cache = model.run_with_cache(TEXT, names_filter=[q_name, k_name, p_name])
        with model.intervene(EditNeuron(layer, head, site="k", dim=dim, scale=0.0)):
            edited, edited_cache = model.run_with_cache(TEXT, names_filter=[p_name])
    q, k = cache[q_name][0, :, head], cache[k_name][0, :, head].clone()  # [pos, d_head]
    k[:, dim] = 0
    scores = (q @ k.T) * scaling(model)
    scores = scores.masked_fill(~_mask(model, q.shape[0]), float("-inf"))
    by_hand = scores.softmax(-1)
    got = edited_cache[p_name][0]
    assert torch.allclose(got[head], by_hand, atol=1e-5)
    others = [h for h in range(model.cfg.n_heads) if h != head]
    assert torch.allclose(got[others], cache[p_name][0, others], atol=1e-6)  # only head h moved
    assert (edited - clean).abs().max() > 1e-4


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_gqa_editing_k_at_one_head_leaves_the_heads_sharing_its_kv_alone(arch):
    model = tiny_model(arch)
    assert model.cfg.n_kv_heads < model.cfg.n_heads
    name = "blocks.0.attn.hook_pattern"
    with torch.no_grad():
        _, clean = model.run_with_cache(TEXT, names_filter=name)
        with model.intervene(EditNeuron(0, 1, site="k", dim=[0, 1, 2], scale=4.0)):
            _, edited = model.run_with_cache(TEXT, names_filter=name)
    for h in range(model.cfg.n_heads):
        same = torch.equal(edited[name][:, h], clean[name][:, h])
        assert same == (h != 1), f"head {h}"


@pytest.mark.parametrize("arch", ARCHS)
def test_set_pattern_gives_z_equal_pattern_times_v(arch):
    model = tiny_model(arch)
    layer, head = _last_layer(model), 0
    n = model.to_tokens(TEXT).shape[1]
    torch.manual_seed(1)
    pattern = torch.randn(n, n).masked_fill(~_mask(model, n), float("-inf")).softmax(-1)
    names = [f"blocks.{layer}.attn.hook_{s}" for s in ("v", "pattern", "z")]
    with torch.no_grad():
        clean = model(TEXT)
        with model.intervene(SetPattern(layer, head, pattern=pattern)):
            edited, cache = model.run_with_cache(TEXT, names_filter=names)
    v, got_pattern, z = (cache[name][0] for name in names)
    assert torch.equal(got_pattern[head], pattern)
    assert torch.allclose(z[:, head], pattern @ v[:, head], atol=1e-6)
    assert (edited - clean).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ARCHS)
def test_block_keys_zeroes_the_columns_and_renormalises_rows(arch):
    model = tiny_model(arch)
    layer, head, keys = _last_layer(model), 3, [1, 2]
    name = f"blocks.{layer}.attn.hook_pattern"
    with torch.no_grad():
        clean_out, clean = model.run_with_cache(TEXT, names_filter=name)
        with model.intervene(BlockKeys(layer, head, keys=keys)):
            edited_out, edited = model.run_with_cache(TEXT, names_filter=name)
    before, after = clean[name][0, head], edited[name][0, head]
    by_hand = before.clone()
    by_hand[:, keys] = 0
    rows = by_hand.sum(-1) > 0  # a causal row that saw only blocked keys has nothing left
    by_hand[rows] = by_hand[rows] / by_hand[rows].sum(-1, keepdim=True)
    assert torch.allclose(after, by_hand, atol=1e-6)
    assert (after[:, keys] == 0).all()
    assert torch.allclose(after[rows].sum(-1), torch.ones(int(rows.sum())), atol=1e-6)
    assert (edited_out - clean_out).abs().max() > 1e-4


@pytest.mark.parametrize("arch", ARCHS)
def test_distance_penalty_is_softmax_of_scores_minus_slope_times_distance(arch):
    model = tiny_model(arch)
    layer, head, slope = _last_layer(model), 2, 0.7
    s_name, p_name = f"blocks.{layer}.attn.hook_attn_scores", f"blocks.{layer}.attn.hook_pattern"
    with torch.no_grad():
        clean_out, clean = model.run_with_cache(TEXT, names_filter=s_name)
        with model.intervene(EditScores(layer, head, distance_penalty=slope)):
            edited_out, edited = model.run_with_cache(TEXT, names_filter=p_name)
    scores = clean[s_name][0, head]
    n = scores.shape[-1]
    dist = (torch.arange(n)[:, None] - torch.arange(n)[None, :]).abs().float()
    by_hand = (scores - slope * dist).masked_fill(~_mask(model, n), float("-inf")).softmax(-1)
    assert torch.allclose(edited[p_name][0, head], by_hand, atol=1e-6)
    assert (edited_out - clean_out).abs().max() > 1e-4


def test_score_add_and_replace(tiny_llama):
    model, layer, head = tiny_llama, 1, 0
    n = model.to_tokens(TEXT).shape[1]
    p_name = f"blocks.{layer}.attn.hook_pattern"
    with torch.no_grad():
        _, uniform = model.run_with_cache(TEXT, names_filter=p_name) if False else (None, None)
        with model.intervene(EditScores(layer, head, replace=torch.zeros(n, n))):
            _, replaced = model.run_with_cache(TEXT, names_filter=p_name)
        bonus = torch.zeros(n, n)
        bonus[:, 0] = 50.0  # everyone looks at the first token
        with model.intervene(EditScores(layer, head, add=bonus)):
            _, added = model.run_with_cache(TEXT, names_filter=p_name)
    causal_uniform = torch.ones(n, n).tril() / torch.arange(1, n + 1)[:, None]
    assert torch.allclose(replaced[p_name][0, head], causal_uniform, atol=1e-6)  # masked stays masked
    assert torch.allclose(added[p_name][0, head, :, 0], torch.ones(n), atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_mean_ablation_writes_the_reference_mean(arch):
    model = tiny_model(arch)
    reference = ["the cat sat on the car", "a dog ran", "the king gave her a book"]
    layer, head = 0, 2
    means = head_means(model, layer, reference)
    spec = AblateHead(layer, head, method="mean", reference=reference)
    name = f"blocks.{layer}.attn.hook_z"
    with torch.no_grad():
        clean = model(TEXT)
        with model.intervene(spec):
            edited, cache = model.run_with_cache(TEXT, names_filter=name)
    z = cache[name][0]
    assert torch.allclose(z[:, head], means[head].expand_as(z[:, head]), atol=1e-6)
    # computed once from the clean model and kept by the model, never on the (immutable) spec
    assert spec.mean is None and spec == copy.deepcopy(spec)
    assert torch.equal(spec.prepare(model).mean, means)
    assert (edited - clean).abs().max() > 1e-4
    # by hand: the mean over every real token of every reference prompt
    enc = model.tokenize(reference)
    _, ref_cache = model.run_with_cache(enc["input_ids"], attention_mask=enc["attention_mask"], names_filter=name)
    assert torch.allclose(means, ref_cache[name][enc["attention_mask"].bool()].mean(0), atol=1e-6)


def test_resample_ablation_copies_z_from_a_reference_prompt(tiny_gpt2):
    model = tiny_gpt2
    reference = ["the doctor said that he was sad", "a dog ran to the house and sat"]
    name = "blocks.1.attn.hook_z"
    _, ref_cache = model.run_with_cache(reference[0], names_filter=name)
    _, ref_cache1 = model.run_with_cache(reference[1], names_filter=name)
    with torch.no_grad(), model.intervene(AblateHead(1, 3, method="resample", reference=reference, seed=3)):
        _, cache = model.run_with_cache(TEXT, names_filter=name)
    z = cache[name][0, :, 3]
    candidates = [ref_cache[name][0, :, 3], ref_cache1[name][0, : z.shape[0], 3]]
    assert any(torch.allclose(z, c, atol=1e-6) for c in candidates)


@pytest.mark.parametrize("site", ["q", "k", "v", "attn_scores", "pattern", "z"])
def test_patch_copies_the_site_from_the_source_prompt(tiny_llama, site):
    model = tiny_llama
    assert model.to_tokens(TEXT).shape == model.to_tokens(OTHER).shape
    name = f"blocks.1.attn.hook_{site}"
    with torch.no_grad():
        clean, clean_cache = model.run_with_cache(TEXT, names_filter=name)
        _, source = model.run_with_cache(OTHER, names_filter=name)
        with model.intervene(Patch(1, 2, site=site, source=[OTHER])):
            patched, cache = model.run_with_cache(TEXT, names_filter=name)
        with model.intervene(Patch(1, 2, site=site, source=source)):  # from a cache: same thing
            patched_from_cache = model(TEXT)
    head_axis = 1 if site in ("attn_scores", "pattern") else 2
    pick = (slice(None),) * head_axis + (2,)
    assert torch.equal(cache[name][pick], source[name][pick])
    other = (slice(None),) * head_axis + (0,)
    assert torch.equal(cache[name][other], clean_cache[name][other])
    assert (patched - clean).abs().max() > 1e-5
    assert torch.equal(patched_from_cache, patched)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(
    "spec",
    [
        EditNeuron(0, 1, site="q", dim=2, scale=5.0),
        EditNeuron(0, 1, site="v", dim=2, value=3.0),
        EditNeuron(1, None, site="k", dim=[0, 1], value=-2.0, positions=[1, 2]),
        SetPattern(0, 0, fn=lambda p: p.pow(4), renormalize=True),
        AblateHead(1, None),
    ],
    ids=repr,
)
def test_every_kind_changes_the_output(arch, spec):
    model = tiny_model(arch)
    with torch.no_grad():
        clean = model(TEXT)
        with model.intervene(spec):
            edited = model(TEXT)
        again = model.run_with_hooks(TEXT, fwd_hooks=hooks_for(model, [spec]))
    assert (edited - clean).abs().max() > 1e-4
    assert torch.equal(again, edited)  # run_with_hooks(hooks_for(...)) == intervene


@pytest.mark.parametrize("arch", ARCHS)
def test_positions_restrict_an_edit_to_those_query_positions(arch):
    model = tiny_model(arch)
    name = "blocks.0.attn.hook_z"
    with torch.no_grad():
        _, clean = model.run_with_cache(TEXT, names_filter=name)
        with model.intervene(AblateHead(0, 1, positions=[2, 4])):
            _, edited = model.run_with_cache(TEXT, names_filter=name)
    z, z0 = edited[name][0, :, 1], clean[name][0, :, 1]
    assert (z[[2, 4]] == 0).all()
    keep = [p for p in range(z.shape[0]) if p not in (2, 4)]
    assert torch.equal(z[keep], z0[keep])


@pytest.mark.parametrize("arch", ARCHS)
def test_per_row_gives_each_row_its_own_intervention(arch):
    model = tiny_model(arch)
    texts = [TEXT, TEXT, OTHER]
    row_specs = [AblateHead(0, 1), None, EditScores(1, 2, distance_penalty=1.0)]
    enc = model.tokenize(texts)
    with torch.no_grad():
        with model.intervene(*per_row(row_specs)):
            batch = model(enc["input_ids"], attention_mask=enc["attention_mask"])
        singles = []
        for text, spec in zip(texts, row_specs):
            with model.intervene(*([spec] if spec else [])):
                singles.append(model(text)[0])
    for row in range(3):
        assert (batch[row] - singles[row]).abs().max() <= 1e-5
    assert (batch[0] - batch[1]).abs().max() > 1e-4  # same text, different intervention


def test_text_patch_sources_are_read_at_token_positions_under_left_padding():
    """Source texts of different lengths land on the same tokens whatever model.padding_side (they were
    run left-padded under padding_side='left', so a shorter row's source was read from the padding)."""
    model = tiny_model("gpt2")
    source, target = ["the nurse said that she was", "the dog ran"], ["the doctor said that he was", "a cat sat"]
    with torch.no_grad():
        with model.intervene(Patch(1, 0, site="z", source=[source[1]])):
            alone = model(target[1])[0]
        model.padding_side = "left"
        try:
            with model.intervene(Patch(1, 0, site="z", source=source)):
                left = model(target)
        finally:
            model.padding_side = "right"
    n = alone.shape[0]
    assert torch.allclose(left[1, -n:], alone, atol=1e-5)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_tensor_pattern_and_score_edits_address_tokens_not_columns(tiny_llama, padding_side):
    """Entry [i, j] of a SetPattern / EditScores tensor is token i to token j in every row: a short prompt in a
    padded batch gets what it gets alone (left padding shifted it onto padding columns: logits off by 1.3)."""
    from attnlab.interventions import EditScores, SetPattern

    model = tiny_llama
    prompts = ["the nurse said", "the doctor told the teacher that she was happy"]
    lengths = [model.to_tokens(p).shape[1] for p in prompts]
    n = max(lengths)
    torch.manual_seed(0)
    pattern = torch.rand(n, n).tril()
    pattern = pattern / pattern.sum(-1, keepdim=True)
    add = torch.randn(n, n) * 3
    for spec_of in (lambda m: SetPattern(1, None, pattern=pattern[:m, :m]),
                    lambda m: EditScores(1, None, add=add[:m, :m]),
                    lambda m: EditScores(1, 0, replace=add[:m, :m])):
        with torch.no_grad():
            batch = model.run(model.tokens(prompts, padding_side=padding_side), logits="last",
                              interventions=spec_of(n)).logits
            for row, (prompt, m) in enumerate(zip(prompts, lengths)):
                alone = model.run(prompt, logits="last", interventions=spec_of(m)).logits[0]
                clean = model.run(prompt, logits="last").logits[0]
                assert (batch[row] - alone).abs().max() < 1e-5
                assert (alone - clean).abs().max() > 1e-3
    assert model.count_hooks() == 0
