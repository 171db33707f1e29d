"""Sweeps equal a naive loop of one forward per variant, reuse the prefix, and batch variants."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from attnlab.errors import InvalidInput, InvalidLocation, InvalidSpec
from attnlab.interventions import AblateHead, EditNeuron, Patch
from attnlab.measure import KL, GenerationDiff, HiddenShift, LogitDiff, TopKChange, effect, sweep_heads, sweep_interventions, sweep_neurons
from attnlab.engine.layout import decoder_layers
from attnlab.testing import tiny_model

PROMPTS = ["the nurse said that", "the doctor said that he was", "a man", "the king told the queen that"]


def _naive(model, specs_per_variant, metric, prompts=PROMPTS):
    """One plain forward per variant over all prompts (one batch)."""
    return np.stack([
        effect(model, prompts, metric, specs, batch_size=1000, n_boot=1, progress=False).per_prompt.intervened.to_numpy()
        for specs in specs_per_variant
    ])


def _matrix(res, n):
    return res.per_prompt.intervened.to_numpy().reshape(-1, n)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3"])
@pytest.mark.parametrize("batch_size", [7, 64])
def test_zero_sweep_equals_naive_loop(arch, batch_size):
    model = tiny_model(arch)
    metric = LogitDiff(" she", " he")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback to full forwards would warn
        res = sweep_heads(model, PROMPTS, metric, "zero", batch_size=batch_size, progress=False)
    keys = list(zip(res.table.layer, res.table["head"]))
    assert len(keys) == model.cfg.n_layers * model.cfg.n_heads
    naive = _naive(model, [[AblateHead(l, h)] for l, h in keys], metric)
    assert np.abs(_matrix(res, len(PROMPTS)) - naive).max() <= 1e-4
    clean = effect(model, PROMPTS, metric, [], progress=False).per_prompt.clean.to_numpy()
    assert np.allclose(res.table.effect, (naive - clean).mean(1), atol=1e-4)
    assert (res.table.ci_low <= res.table.effect + 1e-12).all() and (res.table.effect <= res.table.ci_high + 1e-12).all()
    assert model.count_hooks() == 0
    assert all("forward" not in layer.__dict__ for layer in decoder_layers(model))


@pytest.mark.parametrize("method", ["mean", "resample"])
def test_mean_and_resample_equal_naive(tiny_gemma, method):
    metric = KL()
    ref = ["the cat sat on the mat", "a dog ran", "she gave him the book"]
    res = sweep_heads(tiny_gemma, PROMPTS, method, metric, reference=ref, seed=3, layers=[1, 2], batch_size=64, progress=False)
    keys = list(zip(res.table.layer, res.table["head"]))
    naive = _naive(tiny_gemma, [[AblateHead(l, h, method=method, reference=ref, seed=3)] for l, h in keys], metric)
    assert np.abs(_matrix(res, len(PROMPTS)) - naive).max() <= 1e-4
    assert (res.table.effect > 0).any()  # KL of a real change is positive


def test_resample_of_one_prompt_without_reference_is_refused(tiny_gpt2):
    """The one prompt was its own reference: every head's output was replaced by itself, every effect 0 (5e-7)."""
    metric = LogitDiff(" she", " he")
    with pytest.raises(InvalidInput, match=r"method='resample' .* without reference= the one prompt is the only "
                                           r"reference, so nothing would change \(every effect 0\); give reference="):
        sweep_heads(tiny_gpt2, ["the nurse said that"], metric, "resample", progress=False)
    assert tiny_gpt2.count_hooks() == 0
    # a reference of its own, or several prompts, is a real resample: some head changes the metric
    for prompts, ref in ((["the nurse said that"], ["a dog ran to the car"]), (PROMPTS[:2], None)):
        res = sweep_heads(tiny_gpt2, prompts, metric, "resample", reference=ref, n_boot=0, progress=False)
        assert res.table.effect.abs().max() > 1e-3


def test_resample_draws_per_prompt_whatever_the_batch_size(tiny_gpt2):
    """Each prompt draws its reference from (seed, its index), so chunking or stacking copies changes nothing."""
    metric, ref = LogitDiff(" she", " he"), ["the cat sat on the mat", "a dog ran", "she gave him the book", "it rained"]
    prompts = PROMPTS * 2
    swept = [sweep_heads(tiny_gpt2, prompts, metric, "resample", reference=ref, seed=5, layers=[1], batch_size=b,
                         progress=False, n_boot=0).per_prompt.intervened.to_numpy() for b in (1, 3, 64)]
    spec = [AblateHead(1, 2, method="resample", reference=ref, seed=5)]
    single = [effect(tiny_gpt2, prompts, metric, spec, batch_size=b, n_boot=0, progress=False).per_prompt.intervened.to_numpy()
              for b in (1, 2, 100)]
    for got in swept[1:]:
        np.testing.assert_allclose(got, swept[0], rtol=0, atol=1e-5)
    for got in single[1:]:
        np.testing.assert_allclose(got, single[0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(swept[0].reshape(-1, len(prompts))[2], single[0], rtol=0, atol=1e-5)
    # a repeated prompt is a different prompt: its own draw (not all prompts resampled from the same reference)
    with torch.no_grad(), tiny_gpt2.intervene(*spec):
        _, cache = tiny_gpt2.run_with_cache(["a man"] * 8, names_filter="blocks.1.attn.hook_z")
    z = cache["blocks.1.attn.hook_z"][:, -1, 2]
    assert len({tuple(row.tolist()) for row in z}) > 1


def test_pattern_patching_equals_naive(tiny_llama):
    prompts = ["the nurse said that", "the man said that"]
    cfs = ["the doctor said that", "the woman said that"]
    metric = LogitDiff(" she", " he")
    res = sweep_heads(tiny_llama, prompts, metric, "patch", counterfactuals=cfs, batch_size=5, progress=False)
    keys = list(zip(res.table.layer, res.table["head"]))
    naive = _naive(tiny_llama, [[Patch(l, h, site="pattern", source=cfs)] for l, h in keys], metric, prompts)
    assert np.abs(_matrix(res, 2) - naive).max() <= 1e-4
    assert np.abs(res.table.effect).max() > 1e-3  # patching different words changes something
    with pytest.raises(InvalidInput, match="mismatched prompt pairs: 2 prompts but 1 counterfactuals"):
        sweep_heads(tiny_llama, prompts, metric, "patch", counterfactuals=cfs[:1], progress=False)
    with pytest.raises(InvalidInput, match="mismatched prompt pair 0: .* has 5 tokens but counterfactual .* has 6"):
        sweep_heads(tiny_llama, prompts, metric, "patch", counterfactuals=["the old doctor said that", cfs[1]], progress=False)


def test_multi_token_metric_sweep(tiny_gpt2):
    metric = LogitDiff([" she said", " he", " she", " he was"], " he told")
    res = sweep_heads(tiny_gpt2, PROMPTS, metric, "zero", layers=[1], batch_size=6, progress=False)
    naive = _naive(tiny_gpt2, [[AblateHead(1, h)] for h in res.table["head"]], metric)
    assert np.abs(_matrix(res, len(PROMPTS)) - naive).max() <= 1e-4


@pytest.mark.parametrize("arch", ["bert", "bert-mlm"])
def test_encoder_sweeps(arch):
    model = tiny_model(arch)
    metric = HiddenShift() if arch == "bert" else TopKChange(5)
    res = sweep_heads(model, PROMPTS, metric, "zero", batch_size=9, progress=False)
    keys = list(zip(res.table.layer, res.table["head"]))
    naive = _naive(model, [[AblateHead(l, h)] for l, h in keys], metric)
    assert np.abs(_matrix(res, len(PROMPTS)) - naive).max() <= 1e-4


def test_prefix_is_really_skipped(tiny_llama):
    """Layer 0's attention runs only in the clean pass when only layer 1 is swept."""
    calls = []
    attn0 = decoder_layers(tiny_llama)[0].self_attn
    handle = attn0.register_forward_hook(lambda *a: calls.append(1))
    try:
        sweep_heads(tiny_llama, PROMPTS, KL(), "zero", layers=[1], batch_size=8, progress=False)
    finally:
        handle.remove()
    # 4 prompts in chunks of 4 rows -> 1 clean pass + 1 self-check pass; 4 heads in 2 batches skip layer 0
    assert len(calls) == 1


def test_memory_bounded_by_batch_size(tiny_gpt2):
    seen = []
    h = tiny_gpt2.hf_model.transformer.wte.register_forward_hook(lambda m, a, out: seen.append(out.shape[0]))
    try:
        sweep_heads(tiny_gpt2, PROMPTS, KL(), "zero", batch_size=9, progress=False)
    finally:
        h.remove()
    assert max(seen) <= 9 and max(seen) == 8  # two heads (2 x 4 rows) per batch


def test_neuron_sweep_equals_naive(tiny_gemma):
    metric = KL()
    res = sweep_neurons(tiny_gemma, PROMPTS, metric, 2, [0, 3], site="q", dims=[0, 1, 5], scale=3.0,
                        batch_size=10, progress=False)
    assert list(res.table.dim) == [0, 1, 5, 0, 1, 5] and list(res.table["head"]) == [0, 0, 0, 3, 3, 3]
    naive = _naive(tiny_gemma, [[EditNeuron(2, h, site="q", dim=d, scale=3.0)] for h, d in zip(res.table["head"], res.table.dim)], metric)
    assert np.abs(_matrix(res, len(PROMPTS)) - naive).max() <= 1e-4
    fig = res.heatmap()
    assert fig.axes[0].get_xlabel() == "dim" and fig.axes[0].get_ylabel() == "head"
    with pytest.raises(InvalidLocation, match="dim 8 out of range"):
        sweep_neurons(tiny_gemma, PROMPTS, layer=2, head=0, dims=[8], progress=False)
    with pytest.raises(InvalidSpec, match=r"site 'z'.*q, k, v"):
        sweep_neurons(tiny_gemma, PROMPTS, layer=2, head=0, site="z", progress=False)


def test_neuron_sweep_value_alone_sets_each_dim_and_both_is_refused(tiny_llama):
    # scale= used to default to 0.0, so value= alone sent both and every call raised
    metric = KL()
    res = sweep_neurons(tiny_llama, PROMPTS, metric, 1, 0, site="k", value=0.7, progress=False)
    assert res.meta["what"] == "k dims (set to 0.7)" and len(res.table) == tiny_llama.cfg.d_head
    for d, got in zip(res.table.dim, res.table.effect):
        want = effect(tiny_llama, PROMPTS, metric, [EditNeuron(1, 0, site="k", dim=d, value=0.7)], progress=False).mean
        assert want > 0 and got == pytest.approx(want, rel=1e-5)
    zeroed = sweep_neurons(tiny_llama, PROMPTS, metric, 1, 0, site="k", dims=[0], progress=False)  # neither: zero the dim
    want = effect(tiny_llama, PROMPTS, metric, [EditNeuron(1, 0, site="k", dim=0, scale=0.0)], progress=False).mean
    assert zeroed.meta["what"] == "k dims (scale 0.0)" and zeroed.table.effect.iloc[0] == pytest.approx(want, rel=1e-5)
    with pytest.raises(InvalidSpec, match=r"scale= \(multiply\) or value= \(set\), not both; got scale=2.0 and value=0.7"):
        sweep_neurons(tiny_llama, PROMPTS, metric, 1, 0, site="k", scale=2.0, value=0.7, progress=False)


def test_sweep_interventions_and_heatmap(tiny_gpt2):
    variants = {"L0": [AblateHead(0)], "L1": [AblateHead(1)], "both": [AblateHead(0), AblateHead(1, [0, 1])]}
    res = sweep_interventions(tiny_gpt2, PROMPTS, KL(), variants, batch_size=8, progress=False)
    naive = _naive(tiny_gpt2, list(variants.values()), KL())
    assert np.abs(_matrix(res, len(PROMPTS)) - naive).max() <= 1e-4
    heads = sweep_heads(tiny_gpt2, PROMPTS, KL(), "zero", progress=False)
    fig = heads.heatmap()
    img = fig.axes[0].images[0].get_array()
    assert img.shape == (2, 4) and np.allclose(np.asarray(img), heads.matrix().to_numpy())
    assert "largest |effect|" in repr(heads)


def test_sweep_bad_input(tiny_gpt2):
    m = tiny_gpt2
    with pytest.raises(InvalidSpec, match="did you mean 'zero'"):
        sweep_heads(m, PROMPTS, KL(), "zeros", progress=False)
    with pytest.raises(InvalidInput, match="no prompts"):
        sweep_heads(m, [], KL(), "zero", progress=False)
    with pytest.raises(InvalidLocation, match="layer 5 out of range"):
        sweep_heads(m, PROMPTS, KL(), "zero", layers=[5], progress=False)
    with pytest.raises(InvalidLocation, match="head 4 out of range"):
        sweep_heads(m, PROMPTS, KL(), "zero", heads=[4], progress=False)
    with pytest.raises(InvalidInput, match="needs counterfactuals"):
        sweep_heads(m, PROMPTS, KL(), "patch", progress=False)
    with pytest.raises(InvalidInput, match="cannot be swept"):
        sweep_heads(m, PROMPTS, GenerationDiff(3), "zero", progress=False)
    with pytest.raises(InvalidInput, match="handles at most 128"):
        sweep_heads(m, ["the " * 200], KL(), "zero", progress=False)
    assert m.count_hooks() == 0


def test_an_outer_spec_with_rows_is_seen_through_a_second_wrapper_of_the_same_model():
    """Two wrappers of one HF model share its hook points, so an outer ``rows=`` spec opened on one decides how the
    other may batch (it was looked up by wrapper: the second cut the prompts and hit row 0 of every chunk)."""
    from attnlab.engine.model import HookedModel
    from attnlab.measure import score
    from attnlab.testing import tiny_hf_model, tiny_tokenizer

    hf = tiny_hf_model("gpt2")
    a, b = HookedModel(hf, tiny_tokenizer(), name="a"), HookedModel(hf, tiny_tokenizer(), name="b")
    prompts, metric = ["the nurse said that", "the doctor said that", "the man went to", "a girl saw the"], LogitDiff(" she", " he")
    clean = score(a, prompts, metric)
    with a.intervene(AblateHead(1, [0, 1, 2, 3], rows=[0])):
        want = score(a, prompts, metric, batch_size=32)
        assert b.acting_interventions() == a.acting_interventions() != []
        got = score(b, prompts, metric, batch_size=1)
    assert np.allclose(got, want, atol=1e-6)
    assert abs(want[0] - clean[0]) > 1e-3 and np.allclose(want[1:], clean[1:], atol=1e-6)


def test_an_outer_spec_with_rows_edits_those_prompts_whatever_batch_size(tiny_gpt2):
    """Inside ``model.intervene(spec with rows=[0])`` the outer spec edits prompt 0 only: sweeps stacked copies of
    the prompts (only copy 0 got it; variants resuming from the clean prefix did) and cut chunks (row 0 of each
    chunk got it), so effects changed with batch_size."""
    from attnlab.measure import score

    prompts, metric = ["the nurse said that", "the doctor said that he was", "a man"], LogitDiff(" she", " he")
    outer = [AblateHead(1, [0, 1])]
    want = np.zeros((8, 3))  # [layer x head, prompt]: each prompt alone, with the outer edit only on prompt 0
    for i, p in enumerate(prompts):
        with tiny_gpt2.intervene(*(outer if i == 0 else [])):
            want[:, i] = [effect(tiny_gpt2, [p], metric, [AblateHead(l, h)], progress=False, n_boot=0).per_prompt.effect[0]
                          for l in range(2) for h in range(4)]
    assert np.abs(want[:, 0] - want[:, 1:].mean(1)).max() > 1e-3  # the outer edit matters
    with tiny_gpt2.intervene(AblateHead(1, [0, 1], rows=[0])):
        alone = score(tiny_gpt2, prompts, metric, batch_size=64)
        for batch_size in (1, 2, 3, 9, 64):
            res = sweep_heads(tiny_gpt2, prompts, metric, "zero", batch_size=batch_size, progress=False, n_boot=0)
            assert np.allclose(res.per_prompt.effect.to_numpy().reshape(8, 3), want, atol=1e-5)
            one = effect(tiny_gpt2, prompts, metric, [AblateHead(0, 2)], batch_size=batch_size, progress=False, n_boot=0)
            assert np.allclose(one.per_prompt.effect, want[2], atol=1e-5)
            assert np.allclose(score(tiny_gpt2, prompts, metric, batch_size=batch_size), alone, atol=1e-5)


def test_attribution_inside_an_outer_spec_with_rows_does_not_depend_on_batch_size(tiny_llama):
    """attribute() under ``intervene(spec with rows=[0])`` cut the prompts into chunks, so row 0 of each chunk got the
    outer edit and the estimates moved with batch_size; it now sees every prompt in one batch, like each prompt alone."""
    from attnlab.measure import attribute

    prompts, metric = ["the nurse said that", "the doctor said that", "the man went to", "a girl saw the"], LogitDiff(" she", " he")
    outer = AblateHead(1, [0, 1, 2, 3])
    alone = []
    for i, p in enumerate(prompts):
        with tiny_llama.intervene(*([outer] if i == 0 else [])):
            alone.append(attribute(tiny_llama, [p], metric, layers=[0], progress=False, n_boot=0).table.effect.to_numpy())
    with tiny_llama.intervene(AblateHead(1, [0, 1, 2, 3], rows=[0])):
        for batch_size in (1, 2, 4):
            got = attribute(tiny_llama, prompts, metric, layers=[0], batch_size=batch_size, progress=False, n_boot=0)
            per_prompt = got.per_prompt.pivot(index="prompt", columns="head", values="effect").loc[prompts].to_numpy()
            assert np.allclose(per_prompt, np.stack(alone), atol=1e-5)


def test_generation_metrics_draw_resamples_per_prompt_whatever_the_batch_size(tiny_gpt2):
    """effect() with a generation metric generates chunk by chunk; each chunk names its prompts' numbers."""
    ref = ["the cat sat on the mat", "a dog ran", "she gave him the book", "it rained all day"]
    prompts = ["the nurse said", "a man", "the king told", "she left the", "they ran to", "it was a"]
    specs = [AblateHead(layer, None, method="resample", reference=ref, seed=1) for layer in (0, 1)]
    texts = [effect(tiny_gpt2, prompts, GenerationDiff(max_new_tokens=4), specs, batch_size=b, n_boot=0,
                    progress=False).per_prompt.intervened_text.tolist() for b in (1, 3, 6)]
    assert texts[0] == texts[1] == texts[2]


def test_row_keys_are_checked(tiny_gpt2):
    tokens = tiny_gpt2.tokens(["the nurse said that", "a man"])
    from attnlab.engine.forward import run

    for bad in ([7], torch.tensor([7, 9, 11]), [-1, 2], [[0, 1]], ["a", "b"], [0.5, 1.5]):
        with pytest.raises(InvalidInput, match=r"row_keys must be one non-negative integer per row \(2 rows"):
            run(tiny_gpt2, tokens, logits="last", row_keys=bad)
        with pytest.raises(InvalidInput, match="row_keys must be"):
            tiny_gpt2.generate(["the nurse said that", "a man"], max_new_tokens=1, row_keys=bad)
    assert tiny_gpt2.count_hooks() == 0
    spec = AblateHead(1, 0, method="resample", reference=["the cat sat", "a dog ran off", "it rained today"], seed=2)
    with torch.no_grad(), tiny_gpt2.intervene(spec):
        keyed = run(tiny_gpt2, tokens, logits="last", row_keys=[5, 9]).logits
        alone = [run(tiny_gpt2, tokens.select(slice(i, i + 1)), logits="last", row_keys=[k]).logits for i, k in ((0, 5), (1, 9))]
    torch.testing.assert_close(keyed, torch.cat(alone), rtol=0, atol=1e-5)
