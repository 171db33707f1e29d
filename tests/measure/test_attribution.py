"""Attribution patching equals the exact sweeps where the metric is linear in the unit, and its
corrections (QK fix, GradDrop) compute what the AtP* paper defines."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from attnlab.engine.locations import hook_name
from attnlab.engine.model import HookedModel
from attnlab.errors import InvalidInput, InvalidLocation, InvalidSpec, UnsupportedModel
from attnlab.interventions import AblateHead
from attnlab.interventions.ablation import head_means
from attnlab.measure import (
    KL,
    AttributionResult,
    HiddenShift,
    LogitDiff,
    Loss,
    TokenProb,
    TopKChange,
    attribute,
    score,
    sweep_heads,
    sweep_neurons,
)
from attnlab.testing import tiny_hf_model, tiny_model, tiny_tokenizer

PROMPTS = ["the nurse said that", "the doctor told the man that he", "a cat sat"]
COUNTER = ["the doctor said that", "the nurse told the man that she", "a dog ran"]
METRIC = LogitDiff(" she", " he")


def linear_tail(arch: str = "llama", *, keep_last_mlp: bool = False, n_layers: int = 2) -> HookedModel:
    """A tiny model whose logits are linear in everything the last attention layer writes.

    The final norm is an identity and (unless ``keep_last_mlp``) the last MLP writes 0, so
    the last layer's z, result, v and pattern reach the logit difference through linear maps
    only; with ``keep_last_mlp`` the last MLP's neurons do.
    """
    hf = tiny_hf_model(arch, n_layers=n_layers)
    body = hf.transformer if arch == "gpt2" else hf.model
    if arch == "gpt2":
        body.ln_f = nn.Identity()
    else:
        body.norm = nn.Identity()
    if not keep_last_mlp:
        with torch.no_grad():
            if arch == "gpt2":
                body.h[-1].mlp.c_proj.weight.zero_()
                body.h[-1].mlp.c_proj.bias.zero_()
            else:
                body.layers[-1].mlp.down_proj.weight.zero_()
    return HookedModel(hf, tiny_tokenizer(), name=f"linear-tail-{arch}")


def _run(model, **options):
    return attribute(model, PROMPTS, options.pop("metric", METRIC), progress=False, n_boot=10, **options)


# -- exact where linear ---------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("method", ["zero", "mean"])
def test_heads_of_the_last_layer_equal_the_exact_sweep(arch, method):
    """z patching (which sweep_heads does not do) is checked against its exact spec with verify() below."""
    model = linear_tail(arch)
    exact = sweep_heads(model, PROMPTS, METRIC, method, layers=[1], progress=False, n_boot=10)
    for site in ("z", "result"):
        est = _run(model, site=site, method=method, layers=[1])
        assert list(est.table["head"]) == list(exact.table["head"])
        assert np.abs(est.table.effect.to_numpy() - exact.table.effect.to_numpy()).max() < 1e-5
        per_prompt = est.per_prompt.effect.to_numpy() - exact.per_prompt.effect.to_numpy()
        assert np.abs(per_prompt).max() < 1e-5
    assert np.abs(exact.table.effect).max() > 0.01  # the heads do something


def test_pattern_patching_of_the_last_layer_equals_the_exact_sweep():
    model = linear_tail("llama")
    exact = sweep_heads(model, PROMPTS, METRIC, "patch", counterfactuals=COUNTER, layers=[1], progress=False, n_boot=10)
    est = _run(model, site="pattern", method="patch", counterfactuals=COUNTER, layers=[1])
    assert np.abs(est.per_prompt.effect.to_numpy() - exact.per_prompt.effect.to_numpy()).max() < 1e-5
    assert np.abs(exact.table.effect).max() > 1e-3


@pytest.mark.parametrize("site,method", [("z", "patch"), ("pattern", "patch"), ("v", "zero"), ("v", "mean"), ("v", "patch"), ("result", "mean")])
def test_verify_matches_estimates_on_linear_tail(site, method):
    model = linear_tail("llama")
    extra = {"counterfactuals": COUNTER} if method == "patch" else {}
    est = _run(model, site=site, method=method, layers=[1], **extra)
    checked = est.verify(k=6)
    assert np.abs(checked.table.error).max() < 1e-5
    assert np.abs(checked.per_prompt.estimate - checked.per_prompt.effect).max() < 1e-5
    assert np.abs(checked.table.effect).max() > 1e-3


@pytest.mark.parametrize("site", ["q", "k"])
def test_pre_rotary_dims_sum_over_a_rotary_pair_to_the_post_rotary_estimate(site):
    """Zeroing a whole rotary pair is the same edit before and after the rotation, and (a' - a) . dM/da is
    unchanged by the rotation: the pair sums of the two estimates agree; single dims do not."""
    model = tiny_model("llama")
    half = model.cfg.d_head // 2
    pre = _run(model, site=f"{site}_pre_rotary", method="zero", layers=[1]).table
    post = _run(model, site=site, method="zero", layers=[1]).table
    assert list(pre.dim) == list(post.dim) and set(pre.site) == {f"{site}_pre_rotary"}

    def pair_sums(table):
        return table.assign(pair=table.dim % half).groupby(["head", "pair"]).effect.sum().to_numpy()

    assert np.abs(pair_sums(pre) - pair_sums(post)).max() < 1e-6
    assert np.abs(pre.effect.to_numpy() - post.effect.to_numpy()).max() > 1e-4
    verified = _run(model, site=f"{site}_pre_rotary", method="zero", layers=[1]).verify(k=3)
    assert set(verified.table.site) == {f"{site}_pre_rotary"} and np.isfinite(verified.table.effect).all()


def test_per_position_units_equal_the_exact_interventions():
    model = linear_tail("gpt2")
    est = _run(model, site="z", layers=[1], per_position=True)
    width = max(len(r) for r in model.token_rows(PROMPTS))
    assert len(est.table) == model.cfg.n_heads * width
    assert set(est.table.position) == set(range(width))
    checked = est.verify(k=8)
    assert np.abs(checked.table.error).max() < 1e-5
    # positions only the longest prompt has: a batch of shorter prompts alone must not make verify() fail
    small = est.verify(k=len(est.table), batch_size=1)
    assert (small.table.position >= min(len(r) for r in model.token_rows(PROMPTS))).any()
    assert np.abs(small.per_prompt.estimate - small.per_prompt.effect).max() < 1e-5
    assert np.abs(small.table.effect).max() > 1e-3
    # the per-position estimates of a head add up to the head's estimate (linear in every position)
    whole = _run(model, site="z", layers=[1]).table.set_index("head").effect
    summed = est.table.groupby("head").effect.sum()
    assert np.allclose(summed.loc[whole.index], whole, atol=1e-6)


@pytest.mark.parametrize("method", ["zero", "mean", "patch"])
def test_mlp_neurons_of_the_last_layer_equal_a_hook_loop(method):
    model = linear_tail("llama", keep_last_mlp=True)
    extra = {"counterfactuals": COUNTER} if method == "patch" else {}
    est = _run(model, site="post", method=method, layers=[1], neurons=[0, 5, 17, 40], **extra)
    name = hook_name(1, "post")
    clean = score(model, PROMPTS, METRIC)
    rows = METRIC.rows(model, PROMPTS)
    if method == "mean":
        ref = model.run(PROMPTS, logits=None, read=[name], padding_side="right")
        value = ref.cache[name][ref.tokens.mask.bool()].mean(dim=0)
    elif method == "patch":
        value = model.run(model.pad(model.token_rows(COUNTER), padding_side="right"), logits=None, read=[name]).cache[name]
    for i, neuron in enumerate([0, 5, 17, 40]):
        def edit(x, hook, neuron=neuron):  # the exact intervention, written by hand
            x = x.clone()
            x[..., neuron] = 0.0 if method == "zero" else value[..., neuron] if method == "mean" else value[:, : x.shape[1], neuron]
            return x

        with model.hooks(fwd_hooks=[(name, edit)]):
            edited = score(model, PROMPTS, METRIC, batch_size=rows.n_rows)
        assert np.allclose(est.table.effect.iloc[i], (edited - clean).mean(), atol=1e-5)
    assert np.abs(est.verify(k=4).table.error).max() < 1e-5


# -- the QK fix -----------------------------------------------------------------------------


QK_SITES = ["q", "k", "q_pre_rotary", "k_pre_rotary"]  # before the rotation, a dim's change is rotated by its angles


@pytest.mark.parametrize("site", QK_SITES)
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_qk_fix_is_exact_where_only_the_softmax_is_nonlinear(site, arch):
    """Zeroing one q/k dimension of the last layer: only that head's softmax lies between the unit and the metric."""
    model = linear_tail(arch)
    exact = sweep_neurons(model, PROMPTS, METRIC, 1, site=site, progress=False, n_boot=10)
    fixed = _run(model, site=site, layers=[1], correction="qk")
    plain = _run(model, site=site, layers=[1])
    assert list(zip(fixed.table["head"], fixed.table.dim)) == list(zip(exact.table["head"], exact.table.dim))
    assert np.abs(fixed.per_prompt.effect.to_numpy() - exact.per_prompt.effect.to_numpy()).max() < 1e-5
    # linearising through the softmax is visibly off on the same units
    assert np.abs(plain.per_prompt.effect.to_numpy() - exact.per_prompt.effect.to_numpy()).max() > 1e-4


@pytest.mark.parametrize("site", QK_SITES)
def test_qk_fix_per_position_and_mean_are_exact(site):
    model = linear_tail("llama")
    for options in ({"per_position": True}, {"method": "mean"}, {"method": "patch", "counterfactuals": COUNTER}):
        est = _run(model, site=site, layers=[1], heads=[0, 3], dims=[0, 1, 4, 7], correction="qk", **options)
        assert np.abs(est.verify(k=6).table.error).max() < 1e-5, options


@pytest.mark.parametrize("site", ["q", "k"])
def test_the_qk_fix_before_the_rotary_embedding_is_not_the_fix_after_it(site):
    """A pre-rotary dimension moves two rotated dims (cos and sin of its position); on a rotary model the two
    sites' fixed estimates differ, so reading the pre-rotary change as post-rotary would be visibly off."""
    model = linear_tail("llama")
    pre = _run(model, site=f"{site}_pre_rotary", layers=[1], correction="qk").per_prompt.effect.to_numpy()
    post = _run(model, site=site, layers=[1], correction="qk").per_prompt.effect.to_numpy()
    assert np.abs(pre - post).max() > 1e-4


def test_qk_fix_recovers_a_saturated_softmax():
    """A head that attends almost only to one key: the gradient through its softmax is ~0, the real effect is not."""
    model = linear_tail("llama")
    # sharpen layer 1's scores so its softmax saturates
    with torch.no_grad():
        model.layout.blocks[1].attention.q_proj.weight.mul_(8.0)
    exact = sweep_neurons(model, PROMPTS, METRIC, 1, site="k", progress=False, n_boot=10).table.effect.to_numpy()
    fixed = _run(model, site="k", layers=[1], correction="qk").table.effect.to_numpy()
    plain = _run(model, site="k", layers=[1]).table.effect.to_numpy()
    assert np.abs(fixed - exact).max() < 1e-5
    assert np.abs(plain - exact).max() > 10 * np.abs(fixed - exact).max() + 1e-3


# -- GradDrop -------------------------------------------------------------------------------


def _detach(x, hook):
    return x.detach()


@pytest.mark.parametrize("arch,kl", [("llama", False), ("gemma3", False), ("bert-mlm", False), ("llama", True)])
def test_graddrop_is_the_mean_absolute_estimate_over_dropped_layers(arch, kl):
    """Recomputed independently: one attribution per layer l with l's residual writes detached (forward unchanged).

    Pre-norm (llama) and sandwich (gemma3) blocks take the residual-shortcut route, post-norm
    (BERT) blocks the gradient-hook route; both must give the definition's numbers.
    """
    model = tiny_model(arch, n_layers=3)
    prompts, metric = PROMPTS, METRIC
    if arch == "bert-mlm":
        prompts = ["the nurse said [MASK] was late", "the doctor told the man that [MASK] left", "[MASK] sat"]
        metric = LogitDiff(" she", " he", read_at="mask")
    if kl:  # second order: the same probes (same seed) in every run
        metric = KL()

    def run(**options):
        return attribute(model, prompts, metric, site="z", progress=False, n_boot=10, **options)

    got = run(correction="graddrop")
    n_layers, n = model.cfg.n_layers, len(prompts)
    total = np.zeros((len(got.table), n))
    for layer in range(n_layers):
        cut = [(hook_name(layer, "attn_out"), _detach), (hook_name(layer, "mlp_out"), _detach)]
        with model.hooks(fwd_hooks=cut):
            dropped = run()
        total += np.abs(dropped.per_prompt.effect.to_numpy().reshape(-1, n))
    expected = total / (n_layers - 1)
    assert np.allclose(got.per_prompt.graddrop.to_numpy().reshape(-1, n), expected, atol=1e-6)
    assert np.allclose(got.table.graddrop, expected.mean(1), atol=1e-6)
    assert not np.allclose(got.table.graddrop, got.table.effect.abs(), atol=1e-3)  # the passes changed something
    # the signed estimate is plain AtP; the own-layer pass contributes nothing
    plain = run()
    assert np.allclose(got.table.effect, plain.table.effect, atol=1e-7)
    # a unit of the last layer: every pass but its own leaves its gradient alone, so its score is |AtP| per prompt
    last = (got.table.layer == n_layers - 1).to_numpy()
    per_prompt_abs = np.abs(plain.per_prompt.effect.to_numpy().reshape(-1, n)).mean(1)
    assert np.allclose(got.table.graddrop[last], per_prompt_abs[last], atol=1e-6)


def test_graddrop_exposes_a_direct_effect_cancelled_by_a_later_layer():
    """Layer 1 writes minus layer 0's attention output: heads of layer 0 then change nothing, and AtP says 0.

    GradDrop's pass with layer 1 dropped sees the direct path alone, so it ranks those heads
    by their (cancelled) direct effect: a false positive here, the price of catching
    cancellations that are only partial in real models.
    """
    model = linear_tail("llama")
    with torch.no_grad():  # layer 0 writes only through attention, layer 1 only through the hook below
        model.layout.blocks[0].mlp_down.weight.zero_()
        model.layout.blocks[1].out_proj.weight.zero_()
    seen = {}

    def keep(x, hook):
        seen["attn0"] = x

    def cancel(x, hook):
        return x - seen["attn0"]

    hooks = [(hook_name(0, "attn_out"), keep), (hook_name(1, "mlp_out"), cancel)]
    with model.hooks(fwd_hooks=hooks):
        got = _run(model, site="z", layers=[0], correction="graddrop")
        exact = sweep_heads(model, PROMPTS, METRIC, "zero", layers=[0], progress=False, n_boot=10)
    direct = _run(model, site="z", layers=[0])  # without the cancelling hook: the direct path only
    assert np.abs(exact.table.effect).max() < 1e-5
    assert np.abs(got.table.effect).max() < 1e-5
    assert np.allclose(got.per_prompt.graddrop, np.abs(direct.per_prompt.effect), atol=1e-6)
    assert got.table.graddrop.max() > 0.01


# -- other metrics --------------------------------------------------------------------------


@pytest.mark.parametrize("metric", [Loss(), TokenProb(" she", log=True), LogitDiff(" she was", " he is")],
                         ids=["loss", "logprob", "multi-token"])
def test_nonlinear_metrics_match_a_finite_difference(metric):
    """Scaling a head by (1 -+ eps) moves the metric by -+ eps times its zero-ablation estimate, to first order."""
    model = tiny_model("gemma3")
    est = attribute(model, PROMPTS, metric, site="z", layers=[1], progress=False, n_boot=10)
    eps = 1e-2

    def scored(head, factor):
        def scale(z, hook):
            z = z.clone()
            z[:, :, head] *= factor
            return z

        with model.hooks(fwd_hooks=[(hook_name(1, "z"), scale)]):
            return score(model, PROMPTS, metric)

    for head in range(model.cfg.n_heads):
        slope = (scored(head, 1 - eps) - scored(head, 1 + eps)) / (2 * eps)  # central difference: error O(eps^2)
        assert np.allclose(slope, est.per_prompt.effect.to_numpy()[head * 3 : head * 3 + 3], rtol=1e-3, atol=1e-4)


def test_kl_is_estimated_to_second_order():
    """KL(clean || edited) ~= 1/2 Var_p(dlogits); on a linear tail dlogits is exact, so only the probes' noise remains."""
    model = linear_tail("llama")
    est = attribute(model, PROMPTS, KL(), site="z", layers=[1], probes=400, progress=False, n_boot=10)
    assert np.allclose(est.table.clean, 0.0)
    rows = KL().rows(model, PROMPTS)
    clean = model.run(rows.tokens, logits="last").logits.float()
    p = clean.softmax(-1)
    for head in range(model.cfg.n_heads):
        def zero(z, hook, head=head):
            z = z.clone()
            z[:, :, head] = 0.0
            return z

        with model.hooks(fwd_hooks=[(hook_name(1, "z"), zero)]):
            moved = model.run(rows.tokens, logits="last").logits.float() - clean
        centred = moved - (p * moved).sum(-1, keepdim=True)
        second = 0.5 * (p * centred**2).sum(-1).numpy()
        got = est.per_prompt.effect.to_numpy()[head * 3 : head * 3 + 3]
        assert np.allclose(got, second, rtol=0.25), (head, got, second)


# -- shapes, labels, bookkeeping ------------------------------------------------------------


def test_result_shape_labels_and_ranking(tiny_gemma):
    res = attribute(tiny_gemma, PROMPTS, METRIC, site="k", layers=[2], heads=[1, 3], dims=[0, 5], correction="atp*",
                    progress=False, n_boot=10)
    assert isinstance(res, AttributionResult) and res.estimate and res.method == "zero" and res.correction == "atp*"
    assert list(res.table.columns[:5]) == ["layer", "head", "site", "dim", "unit"]
    assert list(res.table.unit) == ["L2H1 k0", "L2H1 k5", "L2H3 k0", "L2H3 k5"]
    assert {"effect", "ci_low", "ci_high", "clean", "intervened", "graddrop"} <= set(res.table.columns)
    assert len(res.per_prompt) == 4 * len(PROMPTS)
    assert list(res.top(4).unit) == list(res.table.sort_values("graddrop", ascending=False).unit)
    assert res.matrix().shape == (2, 2)
    assert "AttributionResult(" in repr(res) and "atp*" in repr(res)
    checked = res.verify(k=2)
    assert list(checked.table.variant) == list(res.top(2).unit)
    assert {"effect", "estimate", "graddrop", "error"} <= set(checked.table.columns)
    assert checked.matrix().shape == (1, 2)
    neurons = attribute(tiny_gemma, PROMPTS, METRIC, site="post", layers=[0, 2], neurons=[3, 1], progress=False, n_boot=10)
    assert list(neurons.table.unit) == ["L0N1", "L0N3", "L2N1", "L2N3"]


def test_mean_is_the_mean_ablation_mean(tiny_llama):
    ref = ["the cat sat on the mat", "a dog ran"]
    res = attribute(tiny_llama, PROMPTS, METRIC, method="mean", reference=ref, progress=False, n_boot=10)
    for layer in range(tiny_llama.cfg.n_layers):
        assert torch.allclose(res._context["means"][("z", layer)], head_means(tiny_llama, layer, ref), atol=1e-6)


def _reference_passes(model) -> int:
    return sum(1 for key in model._prepared if key[0] == "reference_means")


@pytest.mark.parametrize("precision", [None, "bfloat16"])
@pytest.mark.parametrize("site", ["z", "q", "post"])
def test_mean_over_the_prompts_takes_its_means_from_its_own_forward(tiny_llama, site, precision):
    """With the prompts as reference, the grad-enabled forward is a reference pass: no second pass, same estimates
    (in bfloat16 too: a reduced-precision estimate takes its means in its precision, whichever way)."""
    tiny_llama._prepared.clear()
    own = attribute(tiny_llama, PROMPTS, METRIC, site=site, method="mean", progress=False, n_boot=10, precision=precision)
    assert _reference_passes(tiny_llama) == 0
    passed = attribute(tiny_llama, PROMPTS, METRIC, site=site, method="mean", reference=list(PROMPTS), progress=False,
                       n_boot=10, precision=precision)
    assert _reference_passes(tiny_llama) == 1
    assert np.abs(own.per_prompt.effect.to_numpy() - passed.per_prompt.effect.to_numpy()).max() < 1e-6
    assert np.abs(passed.table.effect).max() > 1e-3


def test_mean_under_an_edit_or_in_chunks_averages_the_unedited_model(tiny_llama):
    """Inside an intervene() block the forward is edited and with several chunks it sees only a part: a reference pass."""
    with tiny_llama.intervene(AblateHead(0, None)):  # changes every later layer's z
        edited = attribute(tiny_llama, PROMPTS, METRIC, method="mean", progress=False, n_boot=10)
        explicit = attribute(tiny_llama, PROMPTS, METRIC, method="mean", reference=list(PROMPTS), progress=False, n_boot=10)
        assert np.abs(edited.per_prompt.effect.to_numpy() - explicit.per_prompt.effect.to_numpy()).max() < 1e-6
    whole = attribute(tiny_llama, PROMPTS, METRIC, method="mean", progress=False, n_boot=10)
    tiny_llama._prepared.clear()
    chunked = attribute(tiny_llama, PROMPTS, METRIC, method="mean", batch_size=1, progress=False, n_boot=10)
    assert _reference_passes(tiny_llama) == 1
    assert np.abs(whole.per_prompt.effect.to_numpy() - chunked.per_prompt.effect.to_numpy()).max() < 1e-5


@pytest.mark.parametrize("precision", [None, "bfloat16"])
@pytest.mark.parametrize("reference", [None, PROMPTS[::-1]])
def test_verify_after_own_forward_means_ablates_with_the_reference_means(tiny_llama, precision, reference):
    """verify() measures mean ablation as sweep_heads does: full-precision means, whatever the estimate used."""
    est = attribute(tiny_llama, PROMPTS, METRIC, method="mean", progress=False, n_boot=10, precision=precision,
                    reference=reference)
    checked = est.verify(3)
    exact = sweep_heads(tiny_llama, PROMPTS, METRIC, "mean", progress=False, n_boot=10,
                        reference=reference).table.set_index(["layer", "head"])
    picked = list(zip(checked.table["layer"], checked.table["head"]))
    assert np.allclose(checked.table.effect.to_numpy(), exact.loc[picked, "effect"].to_numpy(), atol=1e-6)


def test_verify_refuses_a_model_whose_weights_changed(tiny_llama):
    est = attribute(tiny_llama, PROMPTS, METRIC, progress=False, n_boot=10)
    with torch.no_grad():
        tiny_llama.hf_model.model.layers[0].self_attn.v_proj.weight.mul_(2.0)
    with pytest.raises(InvalidInput, match="its weights changed since"):
        est.verify(2)
    assert tiny_llama.count_hooks() == 0


def test_result_site_gives_the_same_estimates_as_z(tiny_gpt2):
    z = attribute(tiny_gpt2, PROMPTS, METRIC, site="z", progress=False, n_boot=10)
    result = attribute(tiny_gpt2, PROMPTS, METRIC, site="result", progress=False, n_boot=10)
    assert np.allclose(z.per_prompt.effect, result.per_prompt.effect, atol=1e-5)


def test_model_is_left_as_it_was(tiny_llama):
    before = tiny_llama.next_token_logits(PROMPTS)
    attribute(tiny_llama, PROMPTS, METRIC, site="q", correction="atp*", progress=False, n_boot=10)
    assert tiny_llama.count_hooks() == 0
    assert all(p.grad is None for p in tiny_llama.hf_model.parameters())
    assert torch.equal(tiny_llama.next_token_logits(PROMPTS), before)


def test_frozen_weights_and_batches_give_the_same_estimates(tiny_llama):
    whole = attribute(tiny_llama, PROMPTS, METRIC, batch_size=32, progress=False, n_boot=10)
    tiny_llama.hf_model.requires_grad_(False)
    try:
        chunked = attribute(tiny_llama, PROMPTS, METRIC, batch_size=2, progress=False, n_boot=10)
    finally:
        tiny_llama.hf_model.requires_grad_(True)
    assert np.allclose(whole.per_prompt.effect, chunked.per_prompt.effect, atol=1e-5)


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options,error,match",
    [
        ({"site": "patern"}, InvalidSpec, "unknown site 'patern'; did you mean 'pattern'"),
        ({"method": "zeros"}, InvalidSpec, "unknown method 'zeros'; did you mean 'zero'"),
        ({"correction": "atp"}, InvalidSpec, "unknown correction 'atp'"),
        ({"site": "pattern"}, InvalidSpec, "pattern units support method='patch' only"),
        ({"correction": "qk"}, InvalidSpec, "the QK fix applies to q and k units"),
        ({"method": "patch"}, InvalidInput, "method='patch' needs counterfactuals"),
        ({"counterfactuals": COUNTER}, InvalidInput, "counterfactuals= is only used by method='patch'"),
        ({"reference": PROMPTS}, InvalidInput, "reference= is only used by method='mean'"),
        ({"method": "patch", "counterfactuals": ["a b", "c", "d"]}, InvalidInput, "mismatched prompt pair 0"),
        ({"method": "patch", "counterfactuals": COUNTER[:2]}, InvalidInput, "3 prompts but 2 counterfactuals"),
        ({"layers": [5]}, InvalidLocation, r"layer 5 out of range: valid layers are 0..1"),
        ({"heads": [-1]}, InvalidLocation, r"head -1 out of range: valid heads are 0..3"),
        ({"site": "q", "dims": [8]}, InvalidLocation, r"dim 8 out of range: valid dims are 0..7"),
        ({"site": "post", "neurons": [64]}, InvalidLocation, r"neuron 64 out of range: valid neurons are 0..63"),
        ({"dims": [0]}, InvalidInput, "dims= picks q/k/v dimensions; site 'z' has none"),
        ({"site": "post", "heads": [0]}, InvalidInput, "heads= does not apply to MLP neurons"),
        ({"layers": []}, InvalidInput, "layers must be None"),
        ({"per_position": 1}, InvalidSpec, "per_position must be True or False"),
        ({"probes": 0}, InvalidSpec, "probes must be a positive integer"),
        ({"probes": 8}, InvalidInput, r"probes= sets the random directions of KL's .*logit_diff is first order"),
        ({"batch_size": 0}, InvalidInput, "batch_size must be a positive integer"),
        ({"heads": [1.0]}, InvalidInput, r"heads must be integers, got 1.0 \(float\): valid heads are 0..3"),
        ({"layers": ["1"]}, InvalidInput, r"layers must be integers, got '1' \(str\): valid layers are 0..1"),
        ({"seed": "a"}, InvalidInput, r"seed must be an integer in 0..2\*\*63-1, got 'a'"),
    ],
)
def test_bad_options_raise_typed_errors(tiny_llama, options, error, match):
    with pytest.raises(error, match=match):
        attribute(tiny_llama, PROMPTS, METRIC, progress=False, **options)
    assert tiny_llama.count_hooks() == 0


@pytest.mark.parametrize("metric", [TopKChange(), HiddenShift()])
def test_non_differentiable_metrics_are_refused(tiny_llama, metric):
    with pytest.raises(InvalidInput, match="not a differentiable metric attribution can use"):
        attribute(tiny_llama, PROMPTS, metric, progress=False)


def test_graddrop_needs_two_layers():
    model = tiny_model("llama", n_layers=1)
    with pytest.raises(InvalidSpec, match="GradDrop drops one layer's gradient at a time and needs >= 2 layers"):
        attribute(model, PROMPTS, METRIC, correction="graddrop", progress=False)


def test_verify_checks_k(tiny_llama):
    res = attribute(tiny_llama, PROMPTS, METRIC, progress=False, n_boot=10)
    for k in (0, -1, True, 2.0):
        with pytest.raises(InvalidInput, match=f"k must be a positive integer, got {k!r}"):
            res.verify(k=k)
    assert tiny_llama.count_hooks() == 0


def test_verify_with_k_beyond_the_units_checks_them_all_and_says_so(tiny_llama):
    res = attribute(tiny_llama, PROMPTS, METRIC, layers=[1], heads=[0, 2], progress=False, n_boot=10)
    every = res.verify(k=100)
    both = res.verify(k=2)
    assert len(every.table) == 2 and np.allclose(every.table.effect, both.table.effect, atol=1e-7)
    assert every.meta["what"] == "exact check of the top 2 attributed units (all there are; k=100 asked)"
    assert both.meta["what"] == "exact check of the top 2 attributed units"


def test_numpy_integers_pick_the_same_units_as_ints(tiny_llama):
    plain = attribute(tiny_llama, PROMPTS, METRIC, site="q", layers=1, heads=[0, 2], dims=[3], progress=False, n_boot=10)
    numpy = attribute(tiny_llama, PROMPTS, METRIC, site="q", layers=np.int64(1), heads=list(np.array([0, 2])),
                      dims=[np.int32(3)], progress=False, n_boot=10)
    assert list(numpy.table.unit) == list(plain.table.unit) == ["L1H0 q3", "L1H2 q3"]
    assert np.allclose(numpy.per_prompt.effect, plain.per_prompt.effect, atol=0)
    assert numpy.table["head"].tolist() == [0, 2] and numpy.table["layer"].tolist() == [1, 1]


def test_grad_mode_of_the_caller_does_not_matter(tiny_llama):
    """Called under torch.no_grad() or torch.inference_mode() (as in many notebooks), the same numbers."""
    options = {"site": "k", "layers": [1], "correction": "atp*", "progress": False, "n_boot": 10}
    plain = attribute(tiny_llama, PROMPTS, METRIC, **options)
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            got = attribute(tiny_llama, PROMPTS, METRIC, **options)
            checked = got.verify(k=3)
        assert torch.is_grad_enabled()
        assert np.allclose(got.per_prompt.effect, plain.per_prompt.effect, atol=0)
        assert np.allclose(got.per_prompt.graddrop, plain.per_prompt.graddrop, atol=0)
        assert np.allclose(checked.table.estimate, plain.top(3).effect, atol=0)
    assert tiny_llama.count_hooks() == 0


def test_inside_intervene_the_edited_model_is_estimated_and_verified():
    """In a model.intervene(...) block the estimate is of the edited model; verify() must run in that same block."""
    model = linear_tail("llama")
    outside = _run(model, site="z", layers=[1])
    with model.intervene(AblateHead(0, None)):  # every head of layer 0 removed: layer 1 sees other inputs
        inside = _run(model, site="z", layers=[1])
        exact = sweep_heads(model, PROMPTS, METRIC, "zero", layers=[1], progress=False, n_boot=10)
        checked = inside.verify(k=4)
        with pytest.raises(InvalidInput, match=r"verify\(\) runs where attribute\(\) ran"):
            outside.verify(k=4)  # estimated on the unedited model
        with model.intervene(AblateHead(0, 1)), pytest.raises(InvalidInput, match="a different set of blocks"):
            inside.verify(k=4)
    assert np.abs(inside.per_prompt.effect.to_numpy() - exact.per_prompt.effect.to_numpy()).max() < 1e-5
    assert np.abs(inside.per_prompt.effect.to_numpy() - outside.per_prompt.effect.to_numpy()).max() > 1e-3
    assert np.abs(checked.table.error).max() < 1e-5
    with pytest.raises(InvalidInput, match="estimate was made with 1 hook"):
        inside.verify(k=4)  # outside the block: the exact sweep would measure the unedited model
    assert model.count_hooks() == 0
    assert np.abs(outside.verify(k=4).table.error).max() < 1e-5


def test_a_bare_encoder_is_refused_with_what_to_do_instead(tiny_bert):
    with pytest.raises(UnsupportedModel, match=r"tiny-bert has no LM head .*BertForMaskedLM.*HiddenShift"):
        attribute(tiny_bert, ["the nurse said [MASK] was late"], LogitDiff(" she", " he", read_at="mask"), progress=False)
    assert tiny_bert.count_hooks() == 0


# -- the real model -------------------------------------------------------------------------


@pytest.mark.slow
def test_gemma_estimates_track_the_exact_sweeps(gemma):
    """Gemma-3-270m: pattern patching ranks like the exact sweep; the QK fix beats plain AtP on the last layer's keys."""
    from scipy.stats import spearmanr

    prompts = ["The nurse said that", "The mechanic told the customer that", "The secretary said that", "The carpenter said that"]
    counter = ["The man said that", "The woman told the customer that", "The man said that", "The woman said that"]
    metric = LogitDiff(" she", " he")
    exact = sweep_heads(gemma, prompts, metric, "patch", counterfactuals=counter, progress=False, n_boot=10).table.effect
    est = attribute(gemma, prompts, metric, site="pattern", method="patch", counterfactuals=counter, progress=False,
                    n_boot=10).table.effect
    assert spearmanr(exact, est).correlation > 0.9
    assert np.abs(exact - est).max() < 0.3 * np.abs(exact).max()
    dims = list(range(0, 256, 8))
    exact_k = sweep_neurons(gemma, prompts, metric, 17, site="k", dims=dims, progress=False, n_boot=10).table.effect.to_numpy()
    fixed = attribute(gemma, prompts, metric, site="k", layers=[17], dims=dims, correction="qk", progress=False, n_boot=10)
    plain = attribute(gemma, prompts, metric, site="k", layers=[17], dims=dims, progress=False, n_boot=10)
    fixed_error = np.abs(fixed.table.effect.to_numpy() - exact_k).max()
    assert fixed_error < np.abs(plain.table.effect.to_numpy() - exact_k).max()
    assert fixed_error < 0.05 * np.abs(exact_k).max()


# -- reduced precision ----------------------------------------------------------------------


@pytest.mark.parametrize(("site", "options"), [
    ("z", {}),
    ("pattern", {"method": "patch", "counterfactuals": COUNTER}),
    ("q", {"correction": "qk"}),
    ("post", {"method": "mean"}),
    ("z", {"correction": "graddrop"}),
])
def test_bfloat16_estimates_stay_close_to_full_precision(tiny_llama, site, options):
    """precision='bfloat16' moves the estimates by rounding only, far less than the estimates themselves."""
    full = _run(tiny_llama, site=site, **options)
    low = _run(tiny_llama, site=site, precision="bfloat16", **options)
    a, b = full.table.effect.to_numpy(), low.table.effect.to_numpy()
    assert np.abs(a - b).max() > 0  # the products were rounded
    assert np.abs(a - b).max() < 0.03 * np.abs(a).max()
    assert low.meta["precision"] == "bfloat16" and full.meta["precision"] is None
    assert "estimated in bfloat16" in low.meta["what"]
    if "graddrop" in full.table.columns:
        assert np.abs(full.table.graddrop - low.table.graddrop).max() < 0.03 * full.table.graddrop.abs().max()
    assert tiny_llama.count_hooks() == 0


def test_verify_of_a_bfloat16_estimate_is_exact(tiny_llama):
    low = _run(tiny_llama, precision="bf16")
    checked = low.verify(4)
    exact = sweep_heads(tiny_llama, PROMPTS, METRIC, "zero", progress=False, n_boot=10).table.set_index(["layer", "head"])
    for _, row in checked.table.iterrows():
        assert row["effect"] == pytest.approx(exact.loc[(row["layer"], row["head"]), "effect"], abs=1e-6)


def test_bad_precision_is_refused_before_any_pass(tiny_llama):
    with pytest.raises(InvalidInput, match=r"precision must be None, torch.bfloat16.*'int8'"):
        _run(tiny_llama, precision="int8")
    assert tiny_llama.count_hooks() == 0


def test_a_pickled_result_keeps_its_tables_and_a_deep_copy_still_verifies(tiny_llama):
    import copy
    import pickle

    import pandas as pd

    result = attribute(tiny_llama, ["the nurse said that", "a cat sat"], LogitDiff(" she", " he"), progress=False, n_boot=10)
    back = pickle.loads(pickle.dumps(result))
    pd.testing.assert_frame_equal(back.table, result.table)
    pd.testing.assert_frame_equal(back.per_prompt, result.per_prompt)
    with pytest.raises(InvalidInput, match="keeps its tables, not the model"):
        back.verify(2)
    twin = copy.deepcopy(result)
    assert twin.table is not result.table and twin.table.equals(result.table)
    pd.testing.assert_frame_equal(twin.verify(2).table, result.verify(2).table)


def test_kl_probes_depend_on_the_prompt_not_on_the_batch(tiny_llama):
    """Each prompt's random directions come from (seed, probe, its tokens): batch size and company do not matter."""
    prompts = ["the nurse said that", "the doctor told the man that he", "a cat sat", "he said"]
    run = lambda p, **o: attribute(tiny_llama, p, KL(), site="z", layers=[1], progress=False, n_boot=0, **o)  # noqa: E731
    together, one_by_one = run(prompts, batch_size=4), run(prompts, batch_size=1)
    np.testing.assert_allclose(together.per_prompt.effect, one_by_one.per_prompt.effect, rtol=1e-5, atol=1e-9)
    alone = run(prompts[2:3])
    np.testing.assert_allclose(alone.per_prompt.effect, together.per_prompt[together.per_prompt.prompt == prompts[2]].effect,
                               rtol=1e-5, atol=1e-9)
    other_seed = run(prompts[2:3], seed=1)
    assert np.abs(other_seed.per_prompt.effect.to_numpy() - alone.per_prompt.effect.to_numpy()).max() > 1e-4


def test_rotary_coefficients_say_how_one_pre_rotary_dim_moves_the_rotated_vector():
    """Against the engine's own rotation, with a partial rotary embedding (4 of 8 dims rotated, scaled)."""
    from attnlab.engine.attention import _rotate
    from attnlab.measure._attribution_qk import rotary_coefficients

    gen = torch.Generator().manual_seed(0)
    angles = torch.rand(1, 5, 2, generator=gen) * 6
    cos, sin = (1.3 * torch.cat([f(angles)] * 2, dim=-1) for f in (torch.cos, torch.sin))  # [1, pos, 4]
    own, partner_coef, partner = rotary_coefficients(cos, sin, 8)
    x = torch.randn(1, 1, 5, 8, generator=gen)  # [batch, head, pos, d_head]
    for e in range(8):
        moved = x.clone()
        moved[..., e] += 1.0
        change = (_rotate(moved, cos, sin) - _rotate(x, cos, sin))[0, 0]  # [pos, d_head]
        expected = torch.zeros(5, 8)
        expected[:, e] += own[0, :, e]
        expected[:, int(partner[e])] += partner_coef[0, :, e]
        assert torch.allclose(change, expected, atol=1e-5), e
    assert partner.tolist() == [2, 3, 0, 1, 4, 5, 6, 7]


@pytest.mark.parametrize("site, head", [("q_pre_norm", 2), ("k_pre_norm", 0)])
def test_dims_before_the_q_k_norm_are_attributed_as_minus_a_times_the_gradient(site, head):
    """Zeroing one dimension before Gemma's q/k norm: the estimate is -a . dM/da, computed here by hand per prompt
    (k there is per kv head: the units' heads are the kv heads)."""
    model = tiny_model("gemma3")
    dims = [0, 3, 5]
    est = _run(model, site=site, layers=[1], dims=dims)
    assert sorted(set(est.table["head"])) == list(range(4 if site == "q_pre_norm" else 1))
    she, he = (int(model.to_tokens(w, prepend_bos=False)[0, 0]) for w in (" she", " he"))
    name = f"blocks.1.attn.hook_{site}"
    per_prompt = est.per_prompt[est.per_prompt["head"] == head]
    for i, text in enumerate(PROMPTS):
        box = {}

        def keep(x, hook):
            box["a"] = x.detach().requires_grad_(True)
            return box["a"]

        with model.hooks(fwd_hooks=[(name, keep)]):
            logits = model(model.to_tokens(text))
        (logits[0, -1, she] - logits[0, -1, he]).backward()
        a, g = box["a"].detach()[0, :, head], box["a"].grad[0, :, head]  # [pos, d_head]
        for j, d in enumerate(dims):
            assert per_prompt.effect.iloc[j * len(PROMPTS) + i] == pytest.approx(float(-(a[:, d] * g[:, d]).sum()), abs=1e-6)
    assert np.isfinite(est.verify(k=3).table.effect).all()
    with pytest.raises(InvalidSpec, match=rf"before the model's q/k norm \('{site}'\) that change passes through the norm"):
        _run(model, site=site, layers=[1], correction="qk")
    with pytest.raises(InvalidLocation, match=r"tiny-llama has no hook point 'blocks\.1\.attn\.hook_q_pre_norm' \(only models "
                                              r"that normalise q and k"):
        _run(tiny_model("llama"), site="q_pre_norm", layers=[1])
    assert model.count_hooks() == 0
