"""A spec whose value stays finite where it is written but overflows further on is refused, not returned as NaN.

The attention function refuses a non-finite head output; a mean, a v value or a patched z of
3e38 is finite there and turns into inf/NaN in the next norm. Every forward path (``run`` and
what calls it, ``generate``) now raises ``InvalidSpec`` naming the specs, when the unedited
model's output is finite, and leaves the model as it was.
"""

from __future__ import annotations

import pytest
import torch

from attnlab.errors import InvalidSpec
from attnlab.interventions import AblateHead, EditNeuron, Patch
from attnlab.measure import KL, effect

TEXT = "the nurse said that she was happy"


def huge_specs(model):
    n = model.to_tokens(TEXT).shape[1]
    c = model.cfg
    return [AblateHead(0, 0, method="mean", mean=torch.full((c.n_heads, c.d_head), 3e38)),
            EditNeuron(0, 0, site="v", dim=1, value=3e38),
            Patch(0, 0, site="z", source=torch.full((1, n, c.n_heads, c.d_head), 3e38))]


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_an_overflow_past_the_attention_output_is_refused(arch):
    from attnlab.testing import tiny_model

    model = tiny_model(arch)
    with torch.no_grad():
        before = model(TEXT, return_type="hidden" if arch == "bert" else "logits")
    for spec in huge_specs(model):
        with pytest.raises(InvalidSpec, match=r"inf or NaN"):  # here or at the next layer's attention output
            with model.intervene(spec):
                model(TEXT)
        with pytest.raises(InvalidSpec, match=r"inf or NaN"):
            with model.intervene(spec):
                model.run_with_cache(TEXT)
    assert _hooks(model) == 0
    with torch.no_grad():
        after = model(TEXT, return_type="hidden" if arch == "bert" else "logits")
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_measurements_and_generation_refuse_it_too(tiny_gpt2):
    model = tiny_gpt2
    spec = huge_specs(model)[0]
    with pytest.raises(InvalidSpec, match="inf or NaN"):
        effect(model, [TEXT], KL(), [spec], progress=False)
    with pytest.raises(InvalidSpec, match="inf or NaN"):
        model.next_token_logits(TEXT, interventions=[spec])
    for sample in (False, True):  # greedy read token 0 from NaN logits; sampling failed inside torch
        with pytest.raises(InvalidSpec, match="inf or NaN"):
            with model.intervene(spec):
                model.generate(TEXT, max_new_tokens=3, do_sample=sample, seed=0)
    assert _hooks(model) == 0


def test_a_model_that_overflows_by_itself_is_not_blamed_on_the_specs(tiny_gpt2):
    model = tiny_gpt2
    with torch.no_grad():
        model.hf_model.transformer.ln_f.weight.fill_(float("inf"))
    with model.intervene(AblateHead(0, 0)):
        logits = model(TEXT)  # the model's own NaN, as without the spec
    assert not torch.isfinite(logits).all()


def test_ordinary_large_edits_still_run(tiny_gpt2):
    with tiny_gpt2.intervene(EditNeuron(0, 0, site="v", dim=1, value=1e4)):
        assert torch.isfinite(tiny_gpt2(TEXT)).all()


def test_a_sweep_variant_that_overflows_is_refused(tiny_gpt2):
    from attnlab.measure import sweep_interventions

    spec = huge_specs(tiny_gpt2)[1]
    with pytest.raises(InvalidSpec, match="inf or NaN"):
        sweep_interventions(tiny_gpt2, [TEXT], KL(), {"huge": [spec]}, progress=False)
    assert _hooks(tiny_gpt2) == 0


def test_a_model_that_overflows_by_itself_is_checked_once_per_weights(tiny_gpt2, monkeypatch):
    """Gemma in float16 overflows by itself: one clean forward finds that, later passes do not repeat it."""

    model = tiny_gpt2
    with torch.no_grad():
        model.hf_model.transformer.ln_f.weight.fill_(float("inf"))
    calls = []
    real = model.hf_model.forward
    monkeypatch.setattr(model.hf_model, "forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    for _ in range(3):
        with model.intervene(AblateHead(0, 0)):
            model(TEXT)
    assert len(calls) == 4  # three passes, one clean check
    with torch.no_grad():
        model.hf_model.transformer.ln_f.weight.fill_(float("nan"))  # new weights: checked again
    with model.intervene(AblateHead(0, 0)):
        model(TEXT)
    assert len(calls) == 6


def test_an_input_the_model_overflows_on_does_not_excuse_another(tiny_gpt2):
    """Overflow depends on the input (a long text reaching a bad position): the mark is per weights *and* input."""
    from attnlab.interventions import EditMLPNeuron

    model = tiny_gpt2
    with torch.no_grad():
        model.hf_model.transformer.wpe.weight[8] = 3e38  # position 8 overflows by itself
    long, short = "the nurse said that she was very happy today", "a doctor"
    assert model.to_tokens(long).shape[1] > 8 and model.to_tokens(short).shape[1] <= 8
    spec = EditMLPNeuron(1, 3, value=3e38)
    with model.intervene(spec):
        model(long)  # the model's own overflow: returned as it is
        with pytest.raises(InvalidSpec, match="inf or NaN"):
            model(short)


@pytest.mark.parametrize("arch", ["gpt2", "gemma3"])
def test_a_model_whose_own_weights_hold_nan_is_read_not_blamed_on_edits(arch):
    """A NaN in the model's own weights gave non-finite attention output in every hooked layer, and the
    attention function raised "the edits at layer 1 ... an edit's values are too large" for a hook that only
    reads (every view, run_with_cache): now the model gives its own NaN, hooked or not."""
    from attnlab.testing import tiny_model

    model = tiny_model(arch)
    with torch.no_grad():  # one value weight of layer 1
        if arch == "gpt2":
            model.hf_model.transformer.h[1].attn.c_attn.weight[0, -1] = float("nan")
        else:
            model.hf_model.get_decoder().layers[1].self_attn.v_proj.weight[0, 0] = float("nan")
        plain = model(TEXT)
        logits, cache = model.run_with_cache(TEXT, names_filter=lambda n: n.endswith("hook_pattern"))
        with model.intervene(AblateHead(0, 0)):  # an edit upstream is not the cause either
            edited = model(TEXT)
    assert torch.isnan(plain).any()
    assert torch.equal(torch.isnan(logits), torch.isnan(plain)) and torch.equal(torch.isnan(edited), torch.isnan(plain))
    assert torch.isfinite(cache["blocks.0.attn.hook_pattern"]).all()
    assert _hooks(model) == 0
