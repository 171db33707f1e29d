"""attnlab against TransformerLens 4's TransformerBridge on the same tiny weights.

What is true with transformer-lens 4.3 (and tested here):
* readings of q, k, v, pattern and z agree with the bridge's on GPT-2, BERT, Llama and Gemma-3
  (the bridge's q/k after rotary are ``hook_rot_q``/``hook_rot_k``, and its k/v keep one entry per
  kv head under GQA, where attnlab expands them to one per query head);
* for BERT the bridge delegates to the HF attention module, so ``attnlab.load(bridge)`` works, and
  attnlab's pattern edits land whether you run attnlab, the bridge or the HF model, while an edit
  made through the bridge's own ``hook_pattern`` is discarded;
* for GPT-2, Llama and Gemma-3 the bridge recomputes attention itself; ``load(bridge)`` then hooks
  a view of the HF model the bridge wrapped (the same weights, nothing copied), so attnlab's
  edits land in attnlab's runs and the bridge itself keeps computing what it computed.
"""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from einops import repeat

import attnlab
from attnlab.errors import UnsupportedModel
from attnlab.interventions import SetPattern
from attnlab.testing import tiny_hf_model, tiny_model, tiny_tokenizer

bridge_mod = pytest.importorskip("transformer_lens.model_bridge")

# tiny architecture -> (a model name the bridge knows, the HF class name it dispatches on)
BRIDGED = {
    "gpt2": ("gpt2", "GPT2LMHeadModel"),
    "bert-mlm": ("google-bert/bert-base-uncased", "BertForMaskedLM"),
    "llama": ("meta-llama/Llama-3.2-1B", "LlamaForCausalLM"),
    "gemma3": ("google/gemma-3-270m", "Gemma3ForCausalLM"),
}
TEXT = "the nurse said that she was happy"


def boot(arch: str):
    """A bridge around a fresh tiny HF model; the bridge only needs the name to pick its adapter."""
    name, cls = BRIDGED[arch]
    hf = tiny_hf_model(arch)
    hf.config.architectures = [cls]
    tok = tiny_tokenizer("encoder" if arch.startswith("bert") else "decoder")
    # TL rebuilds tokenizers from their hub name unless told they already add BOS
    tok.init_kwargs.update(name_or_path="tiny", add_bos_token=True)
    logging.disable(logging.WARNING)
    try:
        bridge = bridge_mod.TransformerBridge.boot_transformers(name, hf_model=hf, tokenizer=tok)
    finally:
        logging.disable(logging.NOTSET)
    return bridge, hf, tok


def both_caches(arch: str):
    """The model, the bridge's cache and attnlab's, on the same tiny weights and tokens."""
    bridge, _, tok = boot(arch)
    model = tiny_model(arch)  # same seed: same weights, never touched by the bridge
    ids = tok([TEXT], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        _, theirs = bridge.run_with_cache(ids)
        _, ours = model.run_with_cache(ids)
    return model, theirs, ours


def per_query_head(model, reference: torch.Tensor) -> torch.Tensor:
    """The bridge keeps one k/v per kv head; attnlab expands them to query heads."""
    if reference.shape[2] == model.cfg.n_heads:
        return reference
    return repeat(reference, "b p kvh d -> b p (kvh g) d", g=model.cfg.n_heads // model.cfg.n_kv_heads)


@pytest.mark.parametrize("arch", list(BRIDGED))
def test_readings_equal_the_bridge(arch):
    model, theirs, ours = both_caches(arch)
    for layer in range(model.cfg.n_layers):
        for site in ("q", "k", "v", "pattern", "z"):
            name = f"blocks.{layer}.attn.hook_{site}"
            # on rotary models the bridge's hook_q/hook_k are pre-rotation; attnlab's are after it
            rotated = f"blocks.{layer}.attn.hook_rot_{site}"
            reference = theirs[rotated] if rotated in theirs.cache_dict else theirs[name]
            if site in ("k", "v"):
                reference = per_query_head(model, reference)
            assert ours[name].shape == reference.shape, name
            assert (ours[name] - reference).abs().max() <= 1e-5, name


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_pre_rotary_q_and_k_equal_the_bridges_hook_q_and_hook_k(arch):
    """attnlab's hook_q_pre_rotary / hook_k_pre_rotary are the bridge's hook_q / hook_k (Llama) and, on Gemma-3,
    its hook_q_normed / hook_k_normed (q and k after their norm, before the rotation)."""
    model, theirs, ours = both_caches(arch)
    for layer in range(model.cfg.n_layers):
        for site in ("q", "k"):
            normed = f"blocks.{layer}.attn.hook_{site}_normed"
            if normed in theirs.cache_dict:  # [batch, head, pos, d_head] there
                reference = theirs[normed].transpose(1, 2)
            else:
                reference = theirs[f"blocks.{layer}.attn.hook_{site}"]
            reference = per_query_head(model, reference)
            name = f"blocks.{layer}.attn.hook_{site}_pre_rotary"
            assert (ours[name] - reference).abs().max() <= 1e-5, name
            assert (ours[f"blocks.{layer}.attn.hook_{site}"] - reference)[:, 1:].abs().max() > 1e-3  # rotated


def test_pre_norm_q_and_k_equal_the_bridges_hook_q_and_hook_k_on_gemma3():
    """On a model that normalises q and k, the bridge's hook_q / hook_k are taken before that norm (attnlab's
    hook_q_pre_norm / hook_k_pre_norm; k per kv head in both)."""
    model, theirs, ours = both_caches("gemma3")
    for layer in range(model.cfg.n_layers):
        for site in ("q", "k"):
            assert f"blocks.{layer}.attn.hook_{site}_normed" in theirs.cache_dict
            reference = theirs[f"blocks.{layer}.attn.hook_{site}"]
            mine = ours[f"blocks.{layer}.attn.hook_{site}_pre_norm"]
            assert mine.shape == reference.shape
            assert (mine - reference).abs().max() <= 1e-5, (layer, site)
            assert (mine - ours[f"blocks.{layer}.attn.hook_{site}_pre_rotary"][:, :, : mine.shape[2]]).abs().max() > 1e-3


def test_bert_bridge_loads_and_pattern_edits_land_everywhere():
    bridge, hf, tok = boot("bert-mlm")
    ids = tok([TEXT], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        clean = bridge(ids)
    model = attnlab.load(bridge)
    assert model.bridge is bridge
    assert {id(p) for p in model.hf_model.parameters()} == {id(p) for p in hf.parameters()}  # no copy
    assert model.cfg.n_layers == 2 and not model.cfg.is_causal
    eye = torch.eye(ids.shape[1])  # every token attends only to itself
    resident = model.count_hooks()  # the bridge keeps some hooks of its own on its modules
    with torch.no_grad():
        assert torch.allclose(model(ids), clean, atol=1e-6)
        with model.intervene(SetPattern(1, 0, pattern=eye)):
            through_attnlab = model(ids)
            through_bridge = bridge(ids)
            through_hf = hf(input_ids=ids).logits
            _, cache = model.run_with_cache(ids, names_filter="blocks.1.attn.hook_pattern")
    assert (through_attnlab - clean).abs().max() > 1e-3  # the edit changed the output
    assert torch.equal(through_bridge, through_attnlab)
    assert torch.equal(through_hf, through_attnlab)
    assert torch.equal(cache["blocks.1.attn.hook_pattern"][0, 0], eye)
    assert model.count_hooks() == resident
    with torch.no_grad():
        assert torch.allclose(bridge(ids), clean, atol=1e-6)  # nothing left behind


def test_bert_bridge_discards_its_own_pattern_edits():
    """The documented gap attnlab fills: TL 4.3's BERT bridge reads patterns post hoc."""
    bridge, _, tok = boot("bert-mlm")
    ids = tok([TEXT], return_tensors="pt")["input_ids"]

    def to_identity(pattern, hook):
        pattern = pattern.clone()
        pattern[:, 0] = torch.eye(pattern.shape[-1])
        return pattern

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clean = bridge(ids)
        edited = bridge.run_with_hooks(ids, fwd_hooks=[("blocks.1.attn.hook_pattern", to_identity)])
    assert torch.equal(edited, clean)  # discarded by the bridge
    model = tiny_model("bert-mlm")
    with torch.no_grad(), model.intervene(SetPattern(1, 0, pattern=torch.eye(ids.shape[1]))):
        assert (model(ids) - clean).abs().max() > 1e-3  # lands in attnlab


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3"])
def test_bridge_that_recomputes_attention_gets_attnlab_edits(arch):
    bridge, hf, tok = boot(arch)
    ids = tok([TEXT], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        before = bridge(ids)
    model = attnlab.load(bridge)
    assert model.bridge is bridge
    assert {id(p) for p in model.hf_model.parameters()} <= {id(p) for p in hf.parameters()}  # shared weights
    eye = torch.eye(ids.shape[1])
    reference = tiny_model(arch)  # same seed, never bridged
    with torch.no_grad():
        assert torch.allclose(model(ids), before, atol=1e-5)
        with model.intervene(SetPattern(1, 0, pattern=eye)), reference.intervene(SetPattern(1, 0, pattern=eye)):
            edited, expected = model(ids), reference(ids)
    assert (edited - before).abs().max() > 1e-3  # the edit lands
    assert torch.allclose(edited, expected, atol=1e-5)  # and does exactly what it does on the plain model
    with torch.no_grad():
        assert torch.equal(bridge(ids), before)  # the bridge is left as it was


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3"])
def test_block_edge_edits_act_on_attnlab_runs_only(arch):
    """The view shares weights with the bridge but not hook dictionaries: the bridge's own run is untouched."""
    bridge, _, tok = boot(arch)
    ids = tok([TEXT], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        before = bridge(ids)
    model = attnlab.load(bridge)
    zero = lambda x, hook: torch.zeros_like(x)  # noqa: E731
    with torch.no_grad():
        clean = model(ids)
        for name in ("blocks.0.hook_attn_out", "blocks.0.hook_mlp_out", "blocks.1.hook_resid_mid"):
            with model.hooks(fwd_hooks=[(name, zero)]):
                assert (model(ids) - clean).abs().max() > 1e-3, name  # lands in attnlab's run
                assert torch.equal(bridge(ids), before), name  # the bridge computes what it computed


def test_a_bridge_backed_model_refuses_copies_and_says_what_to_copy():
    import copy

    from attnlab.errors import NotSupported

    bridge, hf, _ = boot("gpt2")
    model = attnlab.load(bridge)
    with pytest.raises(NotSupported, match=r"copy.deepcopy\(model.hf_model\)"):
        copy.deepcopy(model)
    copy.deepcopy(model.hf_model)  # what the message offers works
