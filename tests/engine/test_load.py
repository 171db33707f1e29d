"""``load()``: what it accepts, what it refuses (typed errors), precision and device maps."""

from __future__ import annotations

import json

import pytest
import torch

import attnlab
from attnlab.engine.loading import _MANIFEST, _cache_is_valid, _sha256
from attnlab.errors import InvalidInput, UnsupportedModel
from attnlab.interventions import AblateHead
from attnlab.testing import tiny_hf_model, tiny_model, tiny_tokenizer

TEXT = "the nurse said that she was happy"


def test_unknown_embedded_name_suggests_the_right_one():
    with pytest.raises(InvalidInput, match=r"unknown model 'gemma-3-270'; did you mean 'gemma-3-270m'\?"):
        attnlab.load("gemma-3-270")
    with pytest.raises(InvalidInput, match=r"did you mean 'minilm'\?.*embedded models: minilm, gemma-3-270m"):
        attnlab.load("minilmm")


def test_load_rejects_things_that_are_not_models():
    with pytest.raises(InvalidInput, match="load\\(\\) takes a model name, path, transformers model or TransformerBridge, got int"):
        attnlab.load(42)
    with pytest.raises(UnsupportedModel, match="Linear is not a transformers model"):
        attnlab.load(torch.nn.Linear(2, 2))


def test_state_space_model_is_unsupported():
    import transformers as tf

    cfg = tf.MambaConfig(vocab_size=50, hidden_size=16, state_size=4, num_hidden_layers=2, expand=2, conv_kernel=2)
    mamba = tf.MambaForCausalLM(cfg)
    with pytest.raises(UnsupportedModel, match="MambaForCausalLM has no self-attention layers that attnlab can reach"):
        attnlab.load(mamba, tokenizer=tiny_tokenizer())


def test_plain_torch_attention_module_is_unsupported():
    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("Cfg", (), {"_attn_implementation": "eager"})()
            self.attn = torch.nn.MultiheadAttention(8, 2)

    with pytest.raises(UnsupportedModel, match="has no self-attention layers"):
        attnlab.load(Toy())


def test_loaded_hf_model_plus_tokenizer():
    hf = tiny_hf_model("llama")
    model = attnlab.load(hf, tokenizer=tiny_tokenizer(), name="my-llama")
    assert attnlab.load(model) is model
    cfg = model.cfg
    assert (cfg.name, cfg.architecture, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_model) == (
        "my-llama", "llama", 2, 4, 2, 8, 32,
    )
    assert cfg.is_causal and cfg.has_lm_head
    assert repr(model).startswith("HookedModel('my-llama': llama, 2 layers x 4 heads (2 kv)")
    assert model.to_str_tokens("the nurse")[:3] == ["[BOS]", "the", "nurse"]
    assert model.to_single_token("she") == tiny_tokenizer().convert_tokens_to_ids("she")
    with torch.no_grad():
        assert torch.equal(model(TEXT), tiny_hf_model("llama")(input_ids=model.to_tokens(TEXT)).logits)


def test_saved_directory_loads_like_an_hf_id(tmp_path):
    hf = tiny_hf_model("gpt2")
    hf.config.architectures = ["GPT2LMHeadModel"]
    hf.save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    model = attnlab.load(str(tmp_path))
    assert model.cfg.architecture == "gpt2" and model.cfg.has_lm_head
    with torch.no_grad():
        expected = tiny_hf_model("gpt2")(input_ids=model.to_tokens(TEXT)).logits
        assert torch.equal(model(TEXT), expected)
    pytest.importorskip("accelerate", reason="device_map needs accelerate")
    mapped = attnlab.load(str(tmp_path), device_map={"": "cpu"})
    with torch.no_grad():
        assert torch.equal(mapped(TEXT), expected)
        with mapped.intervene(AblateHead(1, 0)), model.intervene(AblateHead(1, 0)):
            assert torch.equal(mapped(TEXT), model(TEXT))


def test_bad_inputs_to_a_loaded_model(tiny_gpt2):
    with pytest.raises(InvalidInput, match=r"token ids must lie in 0\.\.\d+ for tiny-gpt2"):
        tiny_gpt2(torch.tensor([[1, 10_000]]))
    with pytest.raises(InvalidInput, match="token ids must be an integer tensor"):
        tiny_gpt2(torch.tensor([[1.0, 2.0]]))
    with pytest.raises(InvalidInput, match="no text given"):
        tiny_gpt2([])
    with pytest.raises(InvalidInput, match="unknown return_type 'probs'"):
        tiny_gpt2(TEXT, return_type="probs")
    with pytest.raises(InvalidInput, match=r"input has 20\d tokens but tiny-gpt2 handles at most 128"):
        tiny_gpt2(" ".join(["the"] * 200))
    with pytest.raises(InvalidInput, match=r"'the nurse' is 2 tokens for tiny-gpt2, not one"):
        tiny_gpt2.to_single_token("the nurse")


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3"])
def test_bfloat16_identity_hook_matches_unhooked_bf16_eager(arch):
    model = attnlab.load(tiny_hf_model(arch), tokenizer=tiny_tokenizer(), dtype=torch.bfloat16)
    eager = tiny_hf_model(arch, attn_implementation="eager").to(torch.bfloat16)
    ids = model.to_tokens(TEXT)
    with torch.no_grad():
        reference = eager(input_ids=ids).logits
        hooked = model.run_with_hooks(ids, fwd_hooks=[(lambda n: n.endswith("hook_pattern"), lambda x, hook: x)])
        plain = model(ids)
        _, cache = model.run_with_cache(ids, names_filter="blocks.0.attn.hook_z")
        with model.intervene(AblateHead(0, 1)):
            ablated = model(ids)
    assert hooked.dtype == torch.bfloat16 and cache["blocks.0.attn.hook_z"].dtype == torch.bfloat16
    assert torch.equal(hooked, reference)  # same arithmetic as HF eager in bf16
    assert (plain.float() - reference.float()).abs().max() <= 0.1  # fused path, bf16 rounding
    assert (ablated.float() - plain.float()).abs().max() > 0.1


def test_device_map_dispatched_model_behaves_the_same():
    pytest.importorskip("accelerate", reason="device_map dispatch needs accelerate")
    from accelerate import dispatch_model

    layer_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu",
                 "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    dispatched = dispatch_model(tiny_hf_model("llama"), device_map=layer_map)
    model = attnlab.load(dispatched, tokenizer=tiny_tokenizer())
    reference = tiny_model("llama")
    with torch.no_grad():
        assert torch.equal(model(TEXT), reference(TEXT))
        with model.intervene(AblateHead(1, 2)), reference.intervene(AblateHead(1, 2)):
            assert torch.equal(model(TEXT), reference(TEXT))


# -- the Gemma cache checksum (building the real cache takes ~50 s, so test the validator) --------


def _fake_cache(folder):
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"\x00" * 4096 + b"weights")
    (folder / "config.json").write_text(json.dumps({"model_type": "gemma3_text"}))
    files = {p.name: _sha256(p) for p in sorted(folder.iterdir())}
    (folder / _MANIFEST).write_text(json.dumps({"files": files}))
    return folder


def test_cache_validator_accepts_an_intact_cache(tmp_path):
    assert _cache_is_valid(_fake_cache(tmp_path / "c"))


def test_cache_validator_detects_truncation_corruption_and_missing_parts(tmp_path):
    folder = _fake_cache(tmp_path / "c")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:100])  # truncated (an interrupted copy)
    assert not _cache_is_valid(folder)
    weights.write_bytes(data[:-1] + b"X")  # same size, one byte flipped
    assert not _cache_is_valid(folder)
    weights.write_bytes(data)
    assert _cache_is_valid(folder)
    (folder / "config.json").unlink()  # a missing file
    assert not _cache_is_valid(folder)
    (folder / _MANIFEST).write_text("{not json")  # a broken manifest
    assert not _cache_is_valid(folder)
    (folder / _MANIFEST).unlink()  # no manifest: a partial build
    assert not _cache_is_valid(folder)
    assert not _cache_is_valid(tmp_path / "nowhere")


def test_corrupt_gemma_cache_is_rebuilt_not_used(tmp_path, monkeypatch):
    """``load`` rebuilds a cache that fails its checksum (the rebuild itself is stubbed out)."""
    from attnlab.engine import loading

    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path))
    folder = loading.gemma_cache_path()
    _fake_cache(folder)
    (folder / "model.safetensors").write_bytes(b"garbage")
    rebuilt = []

    def fake_build(target):
        rebuilt.append(target)
        raise RuntimeError("stop after deciding to rebuild")

    monkeypatch.setattr(loading, "_build_gemma_cache", fake_build)
    with pytest.warns(UserWarning, match="corrupt or partial; rebuilding"), pytest.raises(RuntimeError, match="stop after"):
        attnlab.load("gemma-3-270m")
    assert rebuilt == [folder]


def test_tokenize_pads_on_the_right_even_if_the_tokenizer_pads_left():
    tok = tiny_tokenizer()
    tok.padding_side = "left"  # like Gemma's tokenizer
    model = attnlab.load(tiny_hf_model("gpt2"), tokenizer=tok)
    enc = model.tokenize(["the nurse said that she was happy", "he ran"])
    assert enc["attention_mask"][1].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert model.to_str_tokens(enc["input_ids"][1])[:3] == ["[BOS]", "he", "ran"]
