"""Metrics and effect(): every number checked against a direct computation from the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnlab.errors import InvalidInput, InvalidLocation, InvalidSpec
from attnlab.interventions import AblateHead
from attnlab.measure import (
    KL,
    GenerationDiff,
    HiddenShift,
    LogitDiff,
    Loss,
    TokenProb,
    TopKChange,
    bootstrap_mean,
    effect,
    metric_from_name,
    score,
)

PROMPTS = ["the nurse said that", "the doctor said that he was", "a man"]
ABLATE = [AblateHead(1, 0), AblateHead(0, 2)]


def _ids(model, text):
    return model.tokenizer(text, return_tensors="pt")["input_ids"]


def _last_logits(model, text, specs=()):
    with torch.no_grad(), model.intervene(*specs):
        return model(_ids(model, text))[0, -1]


def _cont_logprob(model, prompt, cont, specs=()):
    ids = torch.cat([_ids(model, prompt), model.tokenizer(cont, add_special_tokens=False, return_tensors="pt")["input_ids"]], 1)
    n = _ids(model, prompt).shape[1]
    with torch.no_grad(), model.intervene(*specs):
        logp = model(ids)[0].log_softmax(-1)
    return sum(float(logp[t - 1, ids[0, t]]) for t in range(n, ids.shape[1]))


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3"])
def test_logit_diff_single_token_matches_unpadded_logits(arch):
    from attnlab.testing import tiny_model

    model = tiny_model(arch)
    she, he = model.to_single_token(" she"), model.to_single_token(" he")
    res = effect(model, PROMPTS, LogitDiff(" she", " he"), ABLATE, progress=False)
    for i, p in enumerate(PROMPTS):
        clean, inter = _last_logits(model, p), _last_logits(model, p, ABLATE)
        assert res.per_prompt.clean[i] == pytest.approx(float(clean[she] - clean[he]), abs=1e-4)
        assert res.per_prompt.intervened[i] == pytest.approx(float(inter[she] - inter[he]), abs=1e-4)
    assert np.allclose(res.per_prompt.effect, res.per_prompt.intervened - res.per_prompt.clean)
    assert model.count_hooks() == 0


def test_multi_token_and_per_prompt_targets(tiny_gpt2):
    targets, foils = [" she said", " she", " he was"], [" he", " he told", " she"]
    res = effect(tiny_gpt2, PROMPTS, LogitDiff(targets, foils), ABLATE, progress=False)
    for i, p in enumerate(PROMPTS):
        want = _cont_logprob(tiny_gpt2, p, targets[i], ABLATE) - _cont_logprob(tiny_gpt2, p, foils[i], ABLATE)
        assert res.per_prompt.intervened[i] == pytest.approx(want, abs=1e-4)
    prob = effect(tiny_gpt2, PROMPTS, TokenProb(" she said"), ABLATE, progress=False)
    assert prob.per_prompt.clean[0] == pytest.approx(np.exp(_cont_logprob(tiny_gpt2, PROMPTS[0], " she said")), rel=1e-4)


def test_token_prob_kl_topk_match_direct_computation(tiny_llama):
    m = tiny_llama
    she = m.to_single_token(" she")
    prob = effect(m, PROMPTS, TokenProb(" she"), ABLATE, progress=False).per_prompt
    kl = effect(m, PROMPTS, KL(), ABLATE, progress=False).per_prompt
    top = effect(m, PROMPTS, TopKChange(5), ABLATE, progress=False).per_prompt
    top1 = effect(m, PROMPTS, TopKChange(measure="top1"), ABLATE, progress=False).per_prompt
    for i, p in enumerate(PROMPTS):
        c, x = _last_logits(m, p).log_softmax(-1), _last_logits(m, p, ABLATE).log_softmax(-1)
        assert prob.intervened[i] == pytest.approx(float(x[she].exp()), rel=1e-4)
        assert kl.clean[i] == 0
        assert kl.intervened[i] == pytest.approx(float((c.exp() * (c - x)).sum()), abs=1e-5)
        a, b = set(c.topk(5).indices.tolist()), set(x.topk(5).indices.tolist())
        assert top.intervened[i] == pytest.approx(1 - len(a & b) / len(a | b))
        assert top1.intervened[i] == float(c.argmax() != x.argmax())


def test_loss_matches_hf_loss(tiny_gemma):
    res = effect(tiny_gemma, PROMPTS, Loss(), ABLATE, progress=False).per_prompt
    ppl = effect(tiny_gemma, PROMPTS, Loss(perplexity=True), ABLATE, progress=False).per_prompt
    for i, p in enumerate(PROMPTS):
        ids = _ids(tiny_gemma, p)
        with torch.no_grad():
            want = float(tiny_gemma.hf_model(input_ids=ids, labels=ids).loss)
        assert res.clean[i] == pytest.approx(want, abs=1e-4)
        assert ppl.clean[i] == pytest.approx(np.exp(want), rel=1e-4)


def test_hidden_shift_on_encoder(tiny_bert):
    res = effect(tiny_bert, PROMPTS, HiddenShift(), [AblateHead(1, 0)], progress=False).per_prompt
    p = PROMPTS[1]
    with torch.no_grad():
        clean = tiny_bert(p, return_type="hidden")[0]
        with tiny_bert.intervene(AblateHead(1, 0)):
            inter = tiny_bert(p, return_type="hidden")[0]
    assert res.intervened[1] == pytest.approx(float((clean - inter).norm(dim=-1).mean()), rel=1e-4)
    assert (res.clean == 0).all()
    with pytest.raises(InvalidInput, match="no LM head"):
        effect(tiny_bert, PROMPTS, KL(), [], progress=False)


def test_masked_lm_reads_the_mask_token():
    from attnlab.testing import tiny_model

    m = tiny_model("bert-mlm")
    res = effect(m, ["the [MASK] said that", "he told [MASK] ."], LogitDiff(" she", " he", read_at="mask"), [], progress=False)
    ids = m.tokenizer("the [MASK] said that", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = m(ids)[0, 2]
    assert res.per_prompt.clean[0] == pytest.approx(float(logits[m.to_single_token("she")] - logits[m.to_single_token("he")]), abs=1e-4)
    with pytest.raises(InvalidInput, match="exactly one"):
        effect(m, ["the nurse said"], LogitDiff(" she", " he", read_at="mask"), [], progress=False)


def test_generation_diff(tiny_gpt2):
    same = effect(tiny_gpt2, PROMPTS[:2], GenerationDiff(4), [], progress=False).per_prompt
    assert (same.effect == 0).all() and (same.clean == 4).all()
    res = effect(tiny_gpt2, PROMPTS[:2], GenerationDiff(4), ABLATE, progress=False).per_prompt
    want = tiny_gpt2.generate(PROMPTS[:2], max_new_tokens=4, interventions=ABLATE)
    assert [t.strip() for t in res.intervened_text] == [w.strip() for w in want]
    eq = effect(tiny_gpt2, PROMPTS[:2], GenerationDiff(4, measure="equal"), ABLATE, progress=False).per_prompt
    assert list(eq.intervened) == [float(a == b) for a, b in zip(res.clean_text, res.intervened_text)]


def test_bootstrap_interval():
    vals = np.arange(10.0)
    mean, low, high = bootstrap_mean(vals[None], n_boot=500, seed=3)
    rng = np.random.default_rng(3)
    boots = vals[rng.integers(0, 10, size=(500, 10))].mean(1)
    assert mean[0] == 4.5
    assert low[0] == pytest.approx(np.quantile(boots, 0.025)) and high[0] == pytest.approx(np.quantile(boots, 0.975))
    assert low[0] < 4.5 < high[0]
    res = effect(__import__("attnlab.testing", fromlist=["x"]).tiny_model("gpt2"), PROMPTS, KL(), ABLATE, progress=False)
    assert res.summary.ci_low[0] <= res.mean <= res.summary.ci_high[0]
    assert "effect" in repr(res) and "95% CI" in repr(res)


def test_bad_input(tiny_gpt2):
    m = tiny_gpt2
    with pytest.raises(InvalidInput, match="no prompts"):
        effect(m, [], KL(), ABLATE, progress=False)
    with pytest.raises(InvalidInput, match="prompt 1 is empty"):
        effect(m, ["the cat", "  "], KL(), ABLATE, progress=False)
    with pytest.raises(InvalidInput, match="handles at most 128"):
        effect(m, ["the " * 200], KL(), ABLATE, progress=False)
    with pytest.raises(InvalidInput, match="mismatched targets: 2 targets for 3 prompts"):
        effect(m, PROMPTS, LogitDiff([" she", " he"], " he"), ABLATE, progress=False)
    with pytest.raises(InvalidInput, match=r"'she', 'said'.*single token"):
        effect(m, PROMPTS, LogitDiff(" she said", " he", single_token=True), ABLATE, progress=False)
    with pytest.raises(InvalidLocation, match="layer 9 out of range"):
        effect(m, PROMPTS, KL(), [AblateHead(9, 0)], progress=False)
    with pytest.raises(InvalidInput, match="batch_size"):
        effect(m, PROMPTS, KL(), ABLATE, batch_size=0, progress=False)
    with pytest.raises(InvalidSpec, match="did you mean 'kl'"):
        metric_from_name("kll")
    with pytest.raises(InvalidSpec, match="valid: jaccard, overlap, top1"):
        TopKChange(measure="jacard")
    assert m.count_hooks() == 0


def test_chunking_does_not_change_results(tiny_llama):
    a = effect(tiny_llama, PROMPTS, LogitDiff(" she said", " he"), ABLATE, batch_size=64, progress=False).per_prompt
    b = effect(tiny_llama, PROMPTS, LogitDiff(" she said", " he"), ABLATE, batch_size=1, progress=False).per_prompt
    assert np.allclose(a.intervened, b.intervened, atol=1e-5)


def test_score_is_the_clean_or_intervened_column(tiny_llama):
    metric = LogitDiff(" she", [" he", " he was", " he"])
    res = effect(tiny_llama, PROMPTS, metric, ABLATE, progress=False).per_prompt
    assert np.allclose(score(tiny_llama, PROMPTS, metric), res.clean, atol=1e-6)
    assert np.allclose(score(tiny_llama, PROMPTS, metric, ABLATE, batch_size=1), res.intervened, atol=1e-5)
    with pytest.raises(InvalidInput, match="use effect"):
        score(tiny_llama, PROMPTS, KL())


def test_log_probs_are_the_parts_of_a_logit_diff(tiny_llama):
    from attnlab.measure import LogProbs

    m = tiny_llama
    she, he = m.to_single_token(" she"), m.to_single_token(" he")
    parts = score(m, PROMPTS, LogProbs([" she", " he"]))
    assert parts.shape == (3, 2)
    for i, p in enumerate(PROMPTS):
        lp = _last_logits(m, p).log_softmax(-1)
        assert parts[i] == pytest.approx([float(lp[she]), float(lp[he])], abs=1e-5)
    assert np.allclose(parts[:, 0] - parts[:, 1], score(m, PROMPTS, LogitDiff(" she", " he")), atol=1e-5)
    multi = score(m, PROMPTS, LogProbs([" she said", " he"]), batch_size=1)
    assert multi[1, 0] == pytest.approx(_cont_logprob(m, PROMPTS[1], " she said"), abs=1e-4)
    with pytest.raises(InvalidInput, match="several numbers per prompt; use score"):
        effect(m, PROMPTS, LogProbs([" she"]), ABLATE, progress=False)


def test_pair_log_ratio_scores_from_the_first_difference(tiny_gpt2):
    from attnlab.measure import PairLogRatio

    m = tiny_gpt2
    first = ["the nurse said that she was tired", "a man"]
    second = ["the nurse said that he was very tired", "a man"]
    gap = score(m, first, PairLogRatio(second), batch_size=2)
    whole = [_cont_logprob(m, "the nurse said that", t) for t in (" she was tired", " he was very tired")]
    assert gap[0] == pytest.approx(whole[0] - whole[1], abs=1e-4)
    assert gap[1] == 0.0
    first_token = score(m, first[:1], PairLogRatio(second[:1], score="pronoun"))[0]
    lp = _last_logits(m, "the nurse said that").log_softmax(-1)
    assert first_token == pytest.approx(float(lp[m.to_single_token(" she")] - lp[m.to_single_token(" he")]), abs=1e-5)
    with pytest.raises(InvalidSpec, match="unknown score 'sentense'; did you mean 'sentence'"):
        PairLogRatio(second, score="sentense")
    with pytest.raises(InvalidInput, match="mismatched other texts: 1 other texts for 2 prompts"):
        score(m, first, PairLogRatio(second[:1]))
    from attnlab.testing import tiny_model

    with pytest.raises(InvalidInput, match="PairLogRatio scores texts left to right, so it needs a causal LM"):
        score(tiny_model("bert-mlm"), first, PairLogRatio(second))


def test_perplexity_pools_tokens(tiny_gemma):
    from attnlab.measure import perplexity

    texts = ["the cat sat on the mat .", "a dog ran", "she gave him the book at night ."]
    nll = []
    for t in texts:
        ids = _ids(tiny_gemma, t)
        with torch.no_grad(), tiny_gemma.intervene(*ABLATE):
            logp = tiny_gemma(ids)[0].float().log_softmax(-1)
        nll += [-float(logp[i - 1, ids[0, i]]) for i in range(1, ids.shape[1])]
    ppl, low, high = perplexity(tiny_gemma, texts, ABLATE, n_boot=200)
    assert ppl == pytest.approx(float(np.exp(np.mean(nll))), rel=1e-5)
    assert low < ppl < high
    assert perplexity(tiny_gemma, texts, ABLATE, batch_size=1, n_boot=200) == pytest.approx((ppl, low, high), rel=1e-5)
    assert np.isnan(perplexity(tiny_gemma, texts, n_boot=0)[1])
    with pytest.raises(InvalidInput, match="text 1 is empty"):
        perplexity(tiny_gemma, ["a b", " "])


def test_per_prompt_patch_sources_follow_their_prompts(tiny_llama):
    """A Patch with one source text per prompt gives the same numbers in chunks as in one batch, and as alone."""
    from attnlab.interventions import Patch

    prompts = ["the nurse said that", "the man said that", "a dog ran to the house"]
    sources = ["the doctor said that", "the woman said that", "a cat sat on the mat"]
    specs = [Patch(1, 2, site="pattern", source=sources), Patch(0, None, site="pattern", source=sources)]
    for metric in (LogitDiff(" she", " he"), LogitDiff(" she said", " he")):  # one and two rows per prompt
        chunked = effect(tiny_llama, prompts, metric, specs, batch_size=2, progress=False).per_prompt.intervened
        whole = effect(tiny_llama, prompts, metric, specs, batch_size=64, progress=False).per_prompt.intervened
        assert np.allclose(chunked, whole, atol=1e-5)
        for i in range(3):
            alone = [Patch(s.layer, s.heads, site="pattern", source=sources[i]) for s in specs]
            one = effect(tiny_llama, prompts[i : i + 1], metric, alone, progress=False).per_prompt.intervened[0]
            assert chunked[i] == pytest.approx(one, abs=1e-5)
    with pytest.raises(InvalidInput, match="mismatched prompt pair 2: .* has 7 tokens but counterfactual .* has 4"):
        effect(tiny_llama, prompts, KL(), [Patch(1, 2, site="pattern", source=sources[:2] + ["a cat sat"])],
               progress=False)


def test_a_single_patch_source_text_is_shared_by_every_prompt(tiny_llama):
    """One source text for several prompts equals that text repeated once per prompt; with a multi-token metric
    (rows prompt + continuation, longer than the source alone) it failed with a ShapeMismatch."""
    from attnlab.interventions import Patch

    prompts, source = ["the nurse said that", "the doctor said that", "the man said that"], "the woman said that"
    for metric in (LogitDiff(" she", " he"), LogitDiff(" she said", " he")):
        for batch_size in (1, 64):
            shared = effect(tiny_llama, prompts, metric, [Patch(1, None, site="z", source=source)],
                            batch_size=batch_size, progress=False, n_boot=0).per_prompt.effect
            repeated = effect(tiny_llama, prompts, metric, [Patch(1, None, site="z", source=[source] * 3)],
                              batch_size=batch_size, progress=False, n_boot=0).per_prompt.effect
            assert np.allclose(shared, repeated, atol=1e-6) and np.abs(shared).max() > 1e-4


def test_score_pairs_text_patch_sources_with_the_prompts_as_effect_does(tiny_llama):
    """score() with a text-sourced Patch equals effect()'s intervened values; with a multi-token metric it failed
    with a ShapeMismatch even for one source per prompt (the sources were run alone, not as metric rows)."""
    from attnlab.interventions import Patch
    from attnlab.measure import score

    prompts, source = ["the nurse said that", "the doctor said that", "the man said that"], "the woman said that"
    for metric in (LogitDiff(" she", " he"), LogitDiff(" she said", " he")):
        for spec in (Patch(1, None, site="z", source=source), Patch(1, None, site="z", source=[source] * 3)):
            want = effect(tiny_llama, prompts, metric, [spec], progress=False, n_boot=0).per_prompt.intervened
            clean = score(tiny_llama, prompts, metric)
            for batch_size in (1, 64):
                got = score(tiny_llama, prompts, metric, [spec], batch_size=batch_size)
                assert np.allclose(got, want, atol=1e-6) and np.abs(got - clean).max() > 1e-4


def test_score_with_text_sources_runs_one_edited_pass_and_takes_vector_metrics(tiny_llama):
    """score() with a text-sourced Patch: the source pass and the edited pass per chunk, no unused clean pass; a
    metric with several numbers per prompt (LogProbs) gives what the same spec gives as an outer edit."""
    from attnlab.interventions import Patch
    from attnlab.measure import LogProbs, score

    prompts, source = ["the nurse said that", "the doctor said that"], "the woman said that"
    spec = Patch(1, None, site="z", source=source)
    calls = []
    handle = tiny_llama.layout.blocks[0].layer.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        score(tiny_llama, prompts, LogitDiff(" she", " he"), [spec], batch_size=64)
    finally:
        handle.remove()
    assert len(calls) == 2  # the source rows, then the prompts with the patch
    metric = LogProbs([" she", " he"])
    got = score(tiny_llama, prompts, metric, [spec])
    with tiny_llama.intervene(Patch(1, None, site="z", source=[source] * 2)):
        want = score(tiny_llama, prompts, metric, batch_size=64)
    assert got.shape == (2, 2) and np.allclose(got, want, atol=1e-6)
    assert np.abs(got - score(tiny_llama, prompts, metric)).max() > 1e-4


def test_rows_of_a_per_prompt_patch_are_rows_of_the_prompt_list(tiny_llama):
    """``rows=[0]`` on a Patch with one source per prompt edits prompt 0 only, whatever batch_size (it edited
    row 0 of every chunk: prompt 2 too at batch_size=2)."""
    from attnlab.interventions import Patch
    from attnlab.measure import sweep_interventions

    prompts = ["the nurse said that", "a man", "the doctor said that", "a dog"]
    cf = ["the man said that", "a cat", "the woman said that", "a boy"]
    metric = LogitDiff(" she", " he")
    alone = effect(tiny_llama, prompts[:1], metric, [Patch(1, None, site="z", source=cf[:1])], progress=False,
                   n_boot=0).per_prompt.effect[0]
    assert abs(alone) > 1e-4
    for rows, prompt in (([0], 0), ([3], 3)):
        want = np.zeros(4)
        want[prompt] = effect(tiny_llama, prompts[prompt : prompt + 1], metric,
                              [Patch(1, None, site="z", source=cf[prompt : prompt + 1])], progress=False,
                              n_boot=0).per_prompt.effect[0]
        spec = Patch(1, None, site="z", source=cf, rows=rows)
        for batch_size in (1, 2, 3, 4):
            got = effect(tiny_llama, prompts, metric, [spec], batch_size=batch_size, progress=False, n_boot=0)
            assert np.allclose(got.per_prompt.effect, want, atol=1e-6)
            swept = sweep_interventions(tiny_llama, prompts, metric, {"p": [spec]}, batch_size=batch_size,
                                        progress=False, n_boot=0)
            assert np.allclose(swept.per_prompt.effect, want, atol=1e-6)
    with pytest.raises(InvalidLocation, match="row 4 out of range: these prompts have batch rows 0..3"):
        effect(tiny_llama, prompts, metric, [Patch(1, None, site="z", source=cf, rows=[4])], progress=False)


def test_logit_diff_of_the_same_tokens_is_refused():
    """target == foil (or two spellings of one token) gave 0 for every prompt and every intervention, silently."""
    from attnlab.errors import InvalidInput
    from attnlab.measure import LogitDiff, sweep_heads
    from attnlab.testing import tiny_model

    model = tiny_model("gpt2")
    assert model.to_tokens(" she", prepend_bos=False).tolist() == model.to_tokens("she", prepend_bos=False).tolist()
    with pytest.raises(InvalidInput, match=r"^target ' she' and foil 'she' are the same tokens \[18\] for tiny-gpt2: "
                                           r"log p\(target\) - log p\(foil\) would be 0 whatever the model does"):
        LogitDiff(" she", "she").rows(model, ["the nurse said that"])
    with pytest.raises(InvalidInput, match=r"target ' he' and foil ' he' are the same tokens \[17\] for tiny-gpt2 "
                                           r"for prompt #1: "):
        LogitDiff([" she", " he"], [" he", " he"]).rows(model, ["a b", "c d"])
    with pytest.raises(InvalidInput, match="while sweeping heads .* are the same tokens"):
        sweep_heads(model, ["the nurse said that"], LogitDiff(" she", " she"), "zero", progress=False)
    assert model.count_hooks() == 0
    assert LogitDiff(" she", " he").rows(model, ["a b"]).data["candidates"].tolist() == [[18, 17]]
