"""The HF model changed under a wrapped model: attention switched away, layers replaced, bridge weights processed.

Each of these made every attention-site read and edit silently miss (an ablation's effect became
exactly 0, a cache came back empty) or gave wrong numbers; now the pass re-routes or refuses.
"""

from __future__ import annotations

import logging
import warnings

import pytest
import torch

import attnlab
from attnlab.errors import NotSupported
from attnlab.interventions import AblateHead, EditScores
from attnlab.testing import tiny_model

TEXT = "the nurse said that she was happy"
SPECS = [AblateHead(1, 0), EditScores(1, None, distance_penalty=2.0)]


def _effect(model) -> float:
    with torch.no_grad():
        clean = model(TEXT)
        with model.intervene(*SPECS):
            edited = model(TEXT)
    return float((edited - clean).abs().max())


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("switch", ["set_attn_implementation", "config"])
def test_attention_switched_after_load_is_routed_back(arch, switch):
    """transformers asks for set_attn_implementation("eager") when a plain call wants output_attentions."""
    model = tiny_model(arch)
    before = _effect(model)
    assert before > 1e-3
    if switch == "config":
        model.hf_model.config._attn_implementation = "eager"
    else:
        model.hf_model.set_attn_implementation("eager")
    with pytest.warns(UserWarning, match="switched to 'eager' after attnlab wrapped it"):
        after = _effect(model)
    assert after == pytest.approx(before, abs=1e-5)
    assert model.hf_model.config._attn_implementation == "attnlab_eager"
    _, cache = model.run_with_cache(TEXT, names_filter="blocks.1.attn.hook_pattern")
    assert cache["pattern", 1].shape[-1] == model.to_tokens(TEXT).shape[1]
    switched = model.generate(TEXT, 3, interventions=SPECS, return_type="tokens")
    model.hf_model.set_attn_implementation("sdpa")
    with pytest.warns(UserWarning, match="switched to 'sdpa'"):
        assert torch.equal(model.generate(TEXT, 3, interventions=SPECS, return_type="tokens"), switched)
    assert model.count_hooks() == 0


def _boot(arch, hf):
    from ._tl import boot_bridge

    return boot_bridge(arch, hf=hf)[0]


@pytest.mark.parametrize("arch", ["gpt2", "gemma3"])
def test_a_bridge_booted_on_a_wrapped_model_is_refused_not_silently_missed(arch):
    """Booting a bridge rewrites the HF model's module tree in place: the attention bridges recompute attention."""
    pytest.importorskip("transformer_lens.model_bridge")
    from ._tl import perturbed

    model = perturbed(arch)
    assert _effect(model) > 1e-3
    _boot(arch, model.hf_model)
    for call in (lambda: model(TEXT), lambda: model.generate(TEXT, 2),
                 lambda: model.run_with_cache(TEXT, names_filter="blocks.1.attn.hook_pattern")):
        with pytest.raises(NotSupported, match=r"was replaced after attnlab wrapped it .*attnlab.load\(bridge\)"):
            call()
    assert model.count_hooks() == 0


def _quiet(fn):
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn()
    finally:
        logging.disable(logging.NOTSET)


def test_a_bridge_with_processed_weights_is_refused_at_load_and_after():
    """enable_compatibility_mode() folds and centres the shared HF weights (GPT-2's c_attn left unfolded):
    attnlab's log-probabilities were 0.08 off the model, head outputs 0.8."""
    pytest.importorskip("transformer_lens.model_bridge")
    from ._tl import boot_bridge

    bridge = boot_bridge("gpt2")[0]
    _quiet(lambda: bridge.enable_compatibility_mode(disable_warnings=True))
    with pytest.raises(NotSupported, match=r"processed by enable_compatibility_mode\(\)"):
        attnlab.load(bridge)

    bridge = boot_bridge("gpt2")[0]
    model = attnlab.load(bridge)
    ok = model(TEXT)
    _quiet(lambda: bridge.enable_compatibility_mode(disable_warnings=True))
    with pytest.raises(NotSupported, match="processed by enable_compatibility_mode"):
        model(TEXT)

    bridge = boot_bridge("gpt2")[0]  # no processing: the weights are the model's, and attnlab's numbers stand
    _quiet(lambda: bridge.enable_compatibility_mode(disable_warnings=True, no_processing=True))
    with torch.no_grad():
        assert (attnlab.load(bridge)(TEXT) - ok).abs().max() < 1e-5


_STEPS_OFF = dict(fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False,
                  refactor_factored_attn_matrices=False)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_bridge_in_compatibility_mode_with_every_step_off_is_accepted(arch):
    """TransformerLens marks such a bridge processed (_weights_processed) though its weights are the model's own."""
    pytest.importorskip("transformer_lens.model_bridge")
    from ._tl import boot_bridge, perturbed

    reference = perturbed(arch)
    want, want_effect = reference(TEXT).detach(), _effect(reference)
    bridge = boot_bridge(arch)[0]
    _quiet(lambda: bridge.enable_compatibility_mode(disable_warnings=True, **_STEPS_OFF))
    assert bridge._weights_processed
    model = attnlab.load(bridge)
    with torch.no_grad():
        assert (model(TEXT) - want).abs().max() < 1e-5
    assert _effect(model) == pytest.approx(want_effect, abs=1e-5)

    bridge = boot_bridge(arch)[0]  # turned on after attnlab wrapped it: the same
    model = attnlab.load(bridge)
    _quiet(lambda: bridge.enable_compatibility_mode(disable_warnings=True, **_STEPS_OFF))
    with torch.no_grad():
        assert (model(TEXT) - want).abs().max() < 1e-5
    assert model.count_hooks() == 0


@pytest.mark.parametrize("step, named", [
    ("fold_ln", "fold_ln"), ("center_writing_weights", "center_writing_weights"), ("center_unembed", "center_unembed"),
    ("fold_value_biases", "fold_value_biases"), ("refactor_factored_attn_matrices", "refactor_factored_attn_matrices"),
])
def test_each_processing_step_alone_is_still_refused(step, named):
    """Each step rewrites the shared HF weights (center_unembed shifts the logits; center_writing_weights the residual
    stream), so the HF modules attnlab runs no longer compute the model's own activations."""
    pytest.importorskip("transformer_lens.model_bridge")
    from ._tl import boot_bridge

    bridge = boot_bridge("gpt2")[0]
    _quiet(lambda: bridge.enable_compatibility_mode(disable_warnings=True, **{**_STEPS_OFF, step: True}))
    with pytest.raises(NotSupported, match=rf"processed by enable_compatibility_mode\(\) \(.*{named}.*no_processing=True"):
        attnlab.load(bridge)

    bridge = boot_bridge("gpt2")[0]
    model = attnlab.load(bridge)
    _quiet(lambda: bridge.enable_compatibility_mode(disable_warnings=True, **{**_STEPS_OFF, step: True}))
    with pytest.raises(NotSupported, match=named):
        model(TEXT)
    assert model.count_hooks() == 0


def _torch_hooks(model) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.hf_model.modules())


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("switch", ["set_attn_implementation", "config"])
def test_a_direct_hf_call_in_a_block_after_a_switch_is_routed_back(arch, switch):
    """A plain model.hf_model(...) call inside intervene()/hooks() bypasses attnlab's passes: after a switch to
    eager its edits and reads were lost until the next attnlab pass re-routed the layers."""
    model = tiny_model(arch)
    ids = model.to_tokens(TEXT)
    seen = []

    def direct():
        return model.hf_model(input_ids=ids).logits

    def read(x, hook):
        seen.append(x.clone())

    with torch.no_grad():
        clean = direct()
        with model.intervene(*SPECS):
            edited = direct()
        assert float((edited - clean).abs().max()) > 1e-3
        if switch == "config":
            model.hf_model.config._attn_implementation = "eager"
        else:
            model.hf_model.set_attn_implementation("eager")
        assert _torch_hooks(model) == 0  # outside any block the HF model carries no attnlab hook ...
        assert float((direct() - clean).abs().max()) < 1e-5
        assert model.hf_model.config._attn_implementation == "eager"  # ... and a plain call leaves it as it is
        with pytest.warns(UserWarning, match="switched to 'eager' after attnlab wrapped it") as record, \
                model.intervene(*SPECS):
            assert _torch_hooks(model) >= 1  # the pre-hook that re-routes a direct call
            after = direct()
        assert record[0].filename == __file__  # the warning points at the caller's line, not into torch
        assert float((after - edited).abs().max()) < 1e-5
        assert model.hf_model.config._attn_implementation == "attnlab_eager"
        model.hf_model.set_attn_implementation("sdpa")
        with pytest.warns(UserWarning, match="switched to 'sdpa'"), \
                model.hooks(fwd_hooks=[("blocks.1.attn.hook_pattern", read)]):
            direct()
        assert len(seen) == 1 and seen[0].shape[-1] == ids.shape[1]
    assert model.count_hooks() == 0 and _torch_hooks(model) == 0


def test_the_direct_call_guard_lives_as_long_as_a_persistent_hook():
    """add_hook outside a block persists until reset_hooks(); so does the pre-hook, and nothing after."""
    model = tiny_model("gpt2")
    ids = model.to_tokens(TEXT)
    seen = []
    model.add_hook("blocks.0.attn.hook_pattern", lambda x, hook: seen.append(1))
    model.hf_model.set_attn_implementation("eager")
    with torch.no_grad(), pytest.warns(UserWarning, match="switched to 'eager'"):
        model.hf_model(input_ids=ids)
    assert seen == [1]
    model.reset_hooks()
    assert _torch_hooks(model) == 0 and model.count_hooks() == 0


@pytest.mark.parametrize("target", ["model", "attention", "mlp"])
def test_a_compiled_model_is_refused_not_silently_unedited(target):
    """Module.compile() after wrapping: the compiled code never called attnlab's hooks (edits' effect exactly 0, an
    empty cache, with backend="eager" or "aot_eager" alike)."""
    model = tiny_model("gpt2")
    hf = model.hf_model
    module = {"model": hf, "attention": hf.transformer.h[1].attn, "mlp": hf.transformer.h[0].mlp}[target]
    module.compile(backend="eager")
    ids = model.to_tokens(TEXT)
    calls = [lambda: model(TEXT), lambda: model.generate(TEXT, 2), lambda: model(TEXT, return_type="outputs"),
             lambda: model.run_with_cache(TEXT, names_filter="blocks.1.attn.hook_pattern")]
    for call in calls:
        with pytest.raises(NotSupported, match=r"was compiled \(Module.compile\(\)\) after attnlab wrapped it.*"
                                               r"does not support compiled models"):
            call()
    with pytest.raises(NotSupported, match="compiled"), model.intervene(*SPECS):
        hf(input_ids=ids)  # never reached: the block refuses to open
    assert module.__dict__["_compiled_call_impl"] is not None  # left as it was
    assert model.count_hooks() == 0 and _torch_hooks(model) == 0


def test_a_model_compiled_before_wrapping_is_refused_and_handed_back():
    """The message says when: compiled before attnlab could wrap it (not "after"), and the model comes back as it was."""
    from attnlab.engine.model import HookedModel
    from attnlab.testing import tiny_hf_model, tiny_tokenizer

    hf = tiny_hf_model("gpt2")
    implementation = hf.config._attn_implementation
    hf.compile(backend="eager")
    with pytest.raises(NotSupported, match=r"compiled \(Module.compile\(\)\) before attnlab could wrap it"):
        HookedModel(hf, tiny_tokenizer("decoder"))
    assert hf.config._attn_implementation == implementation
    assert "_attnlab_tree" not in hf.__dict__ and not any(m._forward_hooks or m._forward_pre_hooks for m in hf.modules())
