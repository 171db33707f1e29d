"""A float64 model computes in float64 wherever a hook or analysis recomputes something.

The engine computes some steps of a reduced-precision model in float32 (softmax, edited
scores, a norm's scale, log-probabilities); "float32 at least" must not mean "float32" for
a float64 model: its padding masks hold float64's minimum (-inf in float32, so a fully
masked row gave NaN), and its precision is what the user asked for.
"""

from __future__ import annotations

import pytest
import torch

from attnlab.engine.generate import _pick
from attnlab.engine.model import HookedModel
from attnlab.interventions import AblateHead
from attnlab.testing import tiny_hf_model, tiny_tokenizer

from ._tl import perturbed_hf, tokenizer_of

# the short row is far more than gemma3's sliding window (4) behind the long one
PROMPTS = ["the nurse said that she was happy to see the doctor", "a dog"]
DECODERS = ("gpt2", "llama", "gemma3")
TOL = 1e-12


def _f64(arch: str) -> HookedModel:
    return HookedModel(tiny_hf_model(arch).double(), tiny_tokenizer(), name=f"tiny-{arch}-f64")


def _attention_and_norm_hooks(model: HookedModel) -> list[str]:
    return [name for name in model.hook_dict if ".attn.hook_" in name or name.endswith("hook_scale")]


def _copies_change_nothing(model: HookedModel, name: str) -> bool:
    """Whether an unedited copy returned at ``name`` must leave the logits as they were.

    A scale returned as a new tensor counts as an edit: the norm's output is recomputed from
    it in the model's dtype. HF's Llama and Gemma RMSNorms compute in float32 whatever the
    model's dtype, so there the float64 recompute differs from the model's own (by ~1e-7).
    """
    return not name.endswith("hook_scale") or model.cfg.architecture == "gpt2"


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("arch", DECODERS)
def test_hooks_on_a_padded_float64_batch_change_nothing(arch, side):
    model = _f64(arch)
    real = model.tokens(PROMPTS, padding_side=side).mask.bool()  # logits at padding are not defined: not compared
    with torch.no_grad():
        clean = model(PROMPTS, padding_side=side)
        assert clean.dtype == torch.float64
        seen: dict[str, torch.dtype] = {}

        def record(x, hook):
            seen[hook.name] = x.dtype

        names = _attention_and_norm_hooks(model)
        recorded = model.run_with_hooks(PROMPTS, padding_side=side, fwd_hooks=[(n, record) for n in names])
        assert (recorded - clean)[real].abs().max().item() <= TOL
        assert set(seen) == set(names) and set(seen.values()) == {torch.float64}
        for name in names:  # each site alone, returning None or an unedited copy
            out = model.run_with_hooks(PROMPTS, padding_side=side, fwd_hooks=[(name, lambda x, hook: None)])
            assert (out - clean)[real].abs().max().item() <= TOL, name
            if _copies_change_nothing(model, name):
                out = model.run_with_hooks(PROMPTS, padding_side=side, fwd_hooks=[(name, lambda x, hook: x.clone())])
                assert (out - clean)[real].abs().max().item() <= TOL, name
    assert model.count_hooks() == 0


def test_run_with_cache_and_generate_on_a_left_padded_float64_batch():
    model = _f64("gpt2")
    with torch.no_grad():
        _, cache = model.run_with_cache(PROMPTS, padding_side="left", names_filter="blocks.0.attn.hook_pattern")
    pattern = cache["blocks.0.attn.hook_pattern"]
    assert pattern.dtype == torch.float64 and torch.isfinite(pattern).all()
    # each real query row sums to 1 in float64
    mask = model.tokens(PROMPTS, padding_side="left").mask.bool()
    sums = pattern.sum(-1).permute(0, 2, 1)[mask]  # [real query, head]
    assert (sums - 1).abs().max().item() <= TOL
    batched = model.generate(PROMPTS, max_new_tokens=3, interventions=[AblateHead(1, 0)], return_type="tokens")
    for row, prompt in zip(batched, PROMPTS):
        alone = model.generate([prompt], max_new_tokens=3, interventions=[AblateHead(1, 0)], return_type="tokens")
        assert torch.equal(row, alone[0])


# LayerNorm models: HF's Llama and Gemma RMSNorms compute in float32 whatever the model's dtype, so a
# decomposition through their frozen scales matches their float32 output only to ~1e-7
@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_float64_decompositions_sum_to_the_stream_in_float64(arch):
    model = HookedModel(perturbed_hf(arch).double(), tokenizer_of(arch), name=f"tiny-{arch}-f64")
    with torch.no_grad():
        _, cache = model.run_with_cache(PROMPTS[0])
    stack = cache.get_full_resid_decomposition()
    assert stack.dtype == torch.float64
    assert (stack.sum(0) - cache["resid_post", model.cfg.n_layers - 1]).abs().max().item() <= TOL


def test_float64_final_norm_recomputed_on_a_stack_is_the_models():
    model = HookedModel(perturbed_hf("gpt2").double(), tokenizer_of("gpt2"), name="tiny-gpt2-f64")
    with torch.no_grad():
        _, cache = model.run_with_cache(PROMPTS[0])
        last = cache["resid_post", model.cfg.n_layers - 1]
        normalized = cache.apply_ln_to_stack(last[None], model.cfg.n_layers, recompute_ln=True)[0]
        assert (normalized - model.hf_model.transformer.ln_f(last)).abs().max().item() <= TOL
        # the scale a hook sees is the float64 one
        _, scales = model.run_with_cache(PROMPTS[0], names_filter="ln_final.hook_scale")
    scale = scales["ln_final.hook_scale"]
    assert scale.dtype == torch.float64
    assert (scale - (last.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()).abs().max().item() <= TOL


def test_float64_loss_is_computed_in_float64():
    model = _f64("llama")
    with torch.no_grad():
        logits, loss = model(PROMPTS[0], return_type="both")
    ids = model.to_tokens(PROMPTS[0])
    reference = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:].to(logits.device))
    assert loss.dtype == torch.float64
    assert abs(loss.item() - reference.item()) <= TOL


def test_sampling_from_float64_logits_keeps_their_precision():
    # two logits 1e-12 apart: the larger wins in float64, a tie in float32 (top_k=1 would then keep both)
    logits = torch.tensor([[1.0, 1.0 + 1e-12, -5.0, -5.0]], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    picks = {int(_pick(logits, True, 1.0, 1, None, gen)) for _ in range(50)}
    assert picks == {1}
