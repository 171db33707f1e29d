"""``load()``: what it accepts, what it refuses (typed errors), precision and device maps."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import attnlab
from attnlab.errors import DataFormatError, InvalidInput, UnsupportedModel
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


def test_tokenize_pads_on_the_right_even_if_the_tokenizer_pads_left():
    tok = tiny_tokenizer()
    tok.padding_side = "left"  # like Gemma's tokenizer
    model = attnlab.load(tiny_hf_model("gpt2"), tokenizer=tok)
    enc = model.tokenize(["the nurse said that she was happy", "he ran"])
    assert enc["attention_mask"][1].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert model.to_str_tokens(enc["input_ids"][1])[:3] == ["[BOS]", "he", "ran"]


# -- safetensors only ------------------------------------------------------------------------------


class _Trap:
    """Unpickling this creates a folder: proof that a pickle was read."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.mkdir, (self.marker,))


def _saved_tiny_gpt2(folder):
    hf = tiny_hf_model("gpt2")
    hf.config.architectures = ["GPT2LMHeadModel"]
    hf.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def test_a_pickle_only_folder_is_refused_unread_with_the_way_to_convert_it(tmp_path):
    import pickle

    folder = _saved_tiny_gpt2(tmp_path / "model")
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "unpickled"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Trap(marker)))
    with pytest.raises(
        UnsupportedModel,
        match=r"model holds its weights only as a pickle \(pytorch_model\.bin\); attnlab reads safetensors only.*"
        r"torch\.load\(weights_only=True\).*save_pretrained\(path, safe_serialization=True\)",
    ):
        attnlab.load(str(folder))
    assert not marker.exists()


def test_folders_that_are_not_models_get_typed_errors(tmp_path):
    folder = _saved_tiny_gpt2(tmp_path / "model")
    with pytest.raises(InvalidInput, match="use_safetensors=False is not supported"):
        attnlab.load(str(folder), use_safetensors=False)
    (folder / "model.safetensors").unlink()
    with pytest.raises(InvalidInput, match=r"model has no model\.safetensors \(files: config\.json"):
        attnlab.load(str(folder))
    (folder / "config.json").unlink()
    with pytest.raises(InvalidInput, match=r"model has no config\.json, so it is not a transformers model folder"):
        attnlab.load(str(folder))
    with pytest.raises(InvalidInput, match=r"tokenizer\.json is a file; load\(\) takes a model folder"):
        attnlab.load(str(folder / "tokenizer.json"))
    with pytest.raises(InvalidInput, match=r"no such model folder: \./no/such/folder"):
        attnlab.load("./no/such/folder")
    (folder / "weights.gguf").write_bytes(b"GGUF")
    with pytest.raises(InvalidInput, match=r"weights\.gguf is a file; .*for a GGUF file, load it with transformers "
                                           r"\(AutoModelForCausalLM\.from_pretrained\(its folder, gguf_file=its name\)"):
        attnlab.load(folder / "weights.gguf")
    for empty in ("", "  "):  # "" was read as the current folder
        with pytest.raises(InvalidInput, match=r"load\(\) got an empty model name '\s*'; give an embedded model"):
            attnlab.load(empty)


@pytest.mark.parametrize("damage", ["truncated", "pickle renamed"])
def test_a_damaged_safetensors_file_is_refused_by_name_before_transformers_reads_it(tmp_path, monkeypatch, damage):
    import pickle

    from attnlab.engine import _pretrained

    folder = _saved_tiny_gpt2(tmp_path / "model")
    weights = folder / "model.safetensors"
    marker = tmp_path / "unpickled"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:5000])
    else:
        weights.write_bytes(pickle.dumps(_Trap(marker)))
    real = _pretrained._from_pretrained

    def refuse(*args, **kwargs):
        raise AssertionError("transformers was asked to read a damaged folder")

    monkeypatch.setattr(_pretrained, "_from_pretrained", refuse)
    message = r"model/model\.safetensors: not a readable safetensors file \(Error while deserializing header: .*\); " \
              r"the file is truncated or corrupted"
    with pytest.raises(DataFormatError, match=message):
        attnlab.load(str(folder))
    # a file found in the HF cache is checked by transformers' own read: the same typed error, naming the source
    monkeypatch.setattr(_pretrained, "_from_pretrained", real)
    with pytest.raises(DataFormatError, match=r"cannot load '.*model': a model\.safetensors file is not readable"):
        _pretrained._load_or_explain(str(folder), None, None, None)
    assert not marker.exists()


def _pickle_shard_folder(folder, index="model.safetensors.index.json", shard="pytorch_model-00001-of-00001.bin"):
    """A saved tiny GPT-2 whose weights are a real torch.save pickle that a safetensors index names.

    A variant's index (``model.safetensors.index.fp16.json``) is read instead of model.safetensors
    when ``variant="fp16"`` is asked for, so model.safetensors stays beside it."""
    folder = _saved_tiny_gpt2(folder)
    state = tiny_hf_model("gpt2").state_dict()
    if index == "model.safetensors.index.json":
        (folder / "model.safetensors").unlink()
    torch.save(state, folder / shard)
    (folder / index).write_text(json.dumps({"metadata": {}, "weight_map": dict.fromkeys(state, shard)}))
    return folder


@pytest.fixture
def no_unpickling(monkeypatch):
    """Fail the test if anything is unpickled (transformers reads a .bin shard with torch.load)."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"torch.load was called on {args[:1]}")

    monkeypatch.setattr(torch, "load", refuse)


@pytest.mark.parametrize("index", ["model.safetensors.index.json", "model.safetensors.index.fp16.json"])
def test_a_safetensors_index_naming_a_pickle_shard_is_refused_unread(tmp_path, no_unpickling, index):
    folder = _pickle_shard_folder(tmp_path / "model", index=index)
    message = rf"model/{re.escape(index)}: weight_map names pytorch_model-00001-of-00001\.bin, which is not a " \
              r"\.safetensors file; attnlab reads safetensors only"
    with pytest.raises(UnsupportedModel, match=message):
        attnlab.load(str(folder), variant="fp16" if "fp16" in index else None)


def test_config_transformers_weights_naming_a_pickle_is_refused_unread(tmp_path, no_unpickling):
    folder = _saved_tiny_gpt2(tmp_path / "model")  # model.safetensors is there, but transformers would read the .bin
    torch.save(tiny_hf_model("gpt2").state_dict(), folder / "adapter_model.bin")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "transformers_weights": "adapter_model.bin"}))
    with pytest.raises(UnsupportedModel, match=r"config\.json: transformers_weights names adapter_model\.bin, which is not"):
        attnlab.load(str(folder))


def test_a_pickle_index_in_the_subfolder_asked_for_is_refused_unread(tmp_path, no_unpickling):
    folder = _saved_tiny_gpt2(tmp_path / "model")  # a harmless model at the top, the pickle one below
    _pickle_shard_folder(folder / "sub")
    with pytest.raises(UnsupportedModel, match=r"sub/model\.safetensors\.index\.json: weight_map names pytorch_model"):
        attnlab.load(str(folder), subfolder="sub")


@pytest.mark.parametrize("shard, error, message", [
    ("../outside.safetensors", DataFormatError, r"weight_map names \.\./outside\.safetensors, which lies outside the model folder"),
    ("ABSOLUTE", DataFormatError, r"weight_map names /.*outside\.safetensors, which lies outside the model folder"),
    ("model-00001-of-00002.safetensors", DataFormatError,
     r"index\.json names model-00001-of-00002\.safetensors, which is not a file in .*model"),
    (7, DataFormatError, r"weight_map names 7, not a file name"),
])
def test_index_shards_outside_the_folder_or_missing_are_refused(tmp_path, shard, error, message):
    from safetensors.torch import save_file

    folder = _saved_tiny_gpt2(tmp_path / "model")
    state = {k: v.contiguous() for k, v in tiny_hf_model("gpt2").state_dict().items() if k != "lm_head.weight"}
    save_file(state, str(tmp_path / "outside.safetensors"))  # real weights: the old check loaded them
    (folder / "model.safetensors").unlink()
    shard = str(tmp_path / "outside.safetensors") if shard == "ABSOLUTE" else shard
    index = {"metadata": {}, "weight_map": dict.fromkeys(state, shard)}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(error, match=message):
        attnlab.load(str(folder))


def test_an_index_without_a_weight_map_is_a_data_format_error(tmp_path):
    folder = _saved_tiny_gpt2(tmp_path / "model")
    (folder / "model.safetensors.index.json").write_text('{"metadata": {}}')
    with pytest.raises(DataFormatError, match=r"index\.json: a safetensors index needs a non-empty \"weight_map\""):
        attnlab.load(str(folder))


# -- HF ids without the hub ----------------------------------------------------------------------


@pytest.fixture
def hub_calls(monkeypatch):
    """Records every transformers load; any that would go online fails instead of touching the network."""
    from attnlab.engine import _pretrained

    calls = []
    real = _pretrained._from_pretrained

    def guarded(source, *args, **kwargs):
        calls.append((source, bool(kwargs.get("local_files_only"))))
        if not kwargs.get("local_files_only") and not Path(source).exists():
            raise OSError(f"{source} is not a valid model identifier listed on 'https://huggingface.co/models'")
        return real(source, *args, **kwargs)

    monkeypatch.setattr(_pretrained, "_from_pretrained", guarded)
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return calls


def _never_probe():
    raise AssertionError("the hub must not be probed here")


def test_hf_id_with_hub_offline_fails_at_once_naming_the_embedded_models(hub_calls, monkeypatch, tmp_path):
    from attnlab.engine import _pretrained

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(_pretrained, "hub_reachable", _never_probe)
    with pytest.raises(
        InvalidInput,
        match=r"cannot load 'gpt2': it is not a local folder, it is not in the Hugging Face cache, and HF_HUB_OFFLINE.*"
        r"forbids the hub\. Use an embedded model \('minilm' or 'gemma-3-270m'\).*unset HF_HUB_OFFLINE",
    ):
        attnlab.load("gpt2", cache_dir=str(tmp_path))
    assert hub_calls == [("gpt2", True)]  # only the local cache was asked


def test_hf_id_with_an_unreachable_hub_fails_after_one_probe(hub_calls, monkeypatch, tmp_path):
    from attnlab.engine import _pretrained

    probes = []
    monkeypatch.setattr(_pretrained, "hub_reachable", lambda: probes.append(1) or False)
    unreachable = r"cannot load 'openai/gpt2'.*the hub \(huggingface\.co\) cannot be reached.*'minilm'.*connect to the network"
    with pytest.raises(InvalidInput, match=unreachable):
        attnlab.load("openai/gpt2", cache_dir=str(tmp_path))
    assert probes == [1] and hub_calls == [("openai/gpt2", True)]


def test_hf_id_with_a_reachable_hub_is_loaded_from_the_hub(hub_calls, monkeypatch, tmp_path):
    from attnlab.engine import _pretrained

    monkeypatch.setattr(_pretrained, "hub_reachable", lambda: True)
    with pytest.raises(InvalidInput, match=r"cannot load 'someone/no-such-model': .*not a valid model identifier"):
        attnlab.load("someone/no-such-model", cache_dir=str(tmp_path))
    assert hub_calls == [("someone/no-such-model", True), ("someone/no-such-model", False)]


def _offline_hf_cache(monkeypatch, tmp_path, name: str, fill) -> None:
    """An HF cache under ``tmp_path/hub`` holding ``attnlab-test/NAME`` (``fill(folder)`` writes its files), hub off."""
    from attnlab.engine import _pretrained

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / f"models--attnlab-test--{name}"
    fill(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(_pretrained, "hub_reachable", _never_probe)


def test_hf_id_in_the_local_hf_cache_loads_without_the_hub(hub_calls, monkeypatch, tmp_path):
    _offline_hf_cache(monkeypatch, tmp_path, "tiny-gpt2", _saved_tiny_gpt2)
    model = attnlab.load("attnlab-test/tiny-gpt2", cache_dir=str(tmp_path / "hub"))
    assert model.cfg.name == "attnlab-test/tiny-gpt2" and hub_calls == [("attnlab-test/tiny-gpt2", True)]
    with torch.no_grad():
        assert torch.equal(model(TEXT), tiny_hf_model("gpt2")(input_ids=model.to_tokens(TEXT)).logits)

    monkeypatch.delenv("HF_HUB_OFFLINE")  # local_files_only=True alone keeps it off the hub too
    assert attnlab.load("attnlab-test/tiny-gpt2", cache_dir=str(tmp_path / "hub"), local_files_only=True)
    with pytest.raises(InvalidInput, match=r"'attnlab-test/other'.*local_files_only=True\) forbids the hub"):
        attnlab.load("attnlab-test/other", cache_dir=str(tmp_path / "hub"), local_files_only=True)


def test_an_hf_id_whose_cached_index_names_a_pickle_is_refused_unread(hub_calls, monkeypatch, tmp_path, no_unpickling):
    _offline_hf_cache(monkeypatch, tmp_path, "pickled", _pickle_shard_folder)
    with pytest.raises(UnsupportedModel, match=r"index\.json: weight_map names pytorch_model-00001-of-00001\.bin"):
        attnlab.load("attnlab-test/pickled", cache_dir=str(tmp_path / "hub"))


def test_hub_probe_opens_a_connection_or_gives_up_quickly(monkeypatch):
    import socket

    from attnlab.engine._pretrained import hub_reachable

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        assert hub_reachable(timeout=2.0)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")  # closed now: refused
    assert not hub_reachable(timeout=2.0)
    monkeypatch.setenv("HF_ENDPOINT", "https://host.invalid")
    assert not hub_reachable(timeout=2.0)


# -- a failed load hands the model back as it came ---------------------------------------------------


def _state(hf):
    """Everything load() may change on an HF model: weights (bits, dtype, device), modes, attention, attnlab attributes."""
    return (
        {k: (v.dtype, v.device, v.detach().clone()) for k, v in hf.state_dict().items()},
        [m.training for m in hf.modules()],
        hf.config._attn_implementation,
        sorted(f"{type(m).__name__}.{k}" for m in hf.modules() for k in vars(m) if k.startswith("_attnlab")),
    )


def _assert_same(before, after):
    assert after[1:] == before[1:]
    assert before[0].keys() == after[0].keys()
    for key, (dtype, device, value) in before[0].items():
        assert after[0][key][:2] == (dtype, device) and torch.equal(after[0][key][2], value), key


@pytest.mark.parametrize("tokenizer, got", [("gpt2", r"got str; to use the tokenizer saved as 'gpt2', pass "
                                                      r"AutoTokenizer\.from_pretrained\('gpt2'\)"),
                                            (Path("tok"), r"got PosixPath"),
                                            (42, r"got int$")])
def test_a_tokenizer_that_is_not_one_is_refused_before_the_model_is_touched(tokenizer, got):
    hf = tiny_hf_model("gpt2").train()
    before = _state(hf)
    message = r"tokenizer= takes a loaded transformers tokenizer \(a PreTrainedTokenizerBase.*\) or None, " + got
    with pytest.raises(InvalidInput, match=message):
        attnlab.load(hf, tokenizer=tokenizer, dtype=torch.float64)
    _assert_same(before, _state(hf))
    with pytest.raises(InvalidInput, match=message):
        attnlab.load("./no/such/folder", tokenizer=tokenizer)  # refused before any loading too


@pytest.mark.parametrize("options, message", [
    ({"dtype": "float16"}, r"dtype= takes a floating-point torch\.dtype .*got 'float16'"),
    ({"dtype": torch.int64}, r"dtype= takes a floating-point torch\.dtype .*got torch\.int64"),
    ({"device": "gpu:0"}, r"device= takes a torch device .*got 'gpu:0'"),
])
def test_a_bad_dtype_or_device_is_refused_before_the_model_is_touched(options, message):
    hf = tiny_hf_model("gpt2").train()
    before = _state(hf)
    with pytest.raises(InvalidInput, match=message):
        attnlab.load(hf, tokenizer=tiny_tokenizer(), **options)
    _assert_same(before, _state(hf))


def test_a_model_refused_after_wrapping_comes_back_unconverted_in_train_mode(monkeypatch):
    from attnlab.engine.model import HookedModel

    def unreached(self):
        raise UnsupportedModel("layers [1] do not route attention through transformers' AttentionInterface")

    hf = tiny_hf_model("gpt2").train()
    hf.transformer.h[0].eval()  # mixed modes come back module by module
    tok = tiny_tokenizer()
    tok.pad_token = None
    before = _state(hf)
    monkeypatch.setattr(HookedModel, "_check_every_layer_is_reached", unreached)
    with pytest.raises(UnsupportedModel, match="layers \\[1\\] do not route attention"):
        attnlab.load(hf, tokenizer=tok, dtype=torch.float64, device="cpu")
    _assert_same(before, _state(hf))
    assert tok.pad_token is None  # the tokenizer is left alone too
    monkeypatch.undo()
    model = attnlab.load(hf, tokenizer=tok, dtype=torch.float64)  # and it still loads
    assert model.hf_model.transformer.wte.weight.dtype == torch.float64 and not hf.training


def test_a_conversion_that_fails_half_way_is_undone():
    hf = tiny_hf_model("gpt2").train()
    before = _state(hf)

    def out_of_memory(fn, *args, **kwargs):  # the transformer's tensors are converted by then, the head's not
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    hf.lm_head._apply = out_of_memory
    with pytest.raises(torch.OutOfMemoryError, match="simulated"):
        attnlab.load(hf, tokenizer=tiny_tokenizer(), dtype=torch.float64)
    del hf.lm_head._apply
    _assert_same(before, _state(hf))


@pytest.mark.parametrize("options, named", [({"device_map": "auto"}, "device_map"),
                                            ({"revision": "main", "trust_remote_code": False}, "revision, trust_remote_code")])
def test_loading_options_with_a_loaded_model_are_refused_not_ignored(options, named):
    hf = tiny_hf_model("gpt2")
    before = _state(hf)
    with pytest.raises(InvalidInput, match=rf"load\(\) got {named} with a model that is loaded already \(GPT2LMHeadModel\)"):
        attnlab.load(hf, tokenizer=tiny_tokenizer(), **options)
    _assert_same(before, _state(hf))
    wrapped = attnlab.load(hf, tokenizer=tiny_tokenizer())
    assert attnlab.load(wrapped) is wrapped
    with pytest.raises(InvalidInput, match=r"got dtype with a model that is loaded already \(HookedModel\)"):
        attnlab.load(wrapped, dtype=torch.float64)  # returned as it was, float32, before


def _with_model_code(folder, marker: Path):
    """A saved tiny GPT-2 whose config maps its classes to a Python file that leaves ``marker`` when run."""
    _saved_tiny_gpt2(folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "custom.CustomConfig", "AutoModelForCausalLM": "custom.CustomModel"}
    config["model_type"] = "custom_gpt2"
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "custom.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import GPT2Config as CustomConfig, GPT2LMHeadModel as CustomModel\n")
    return folder


def test_a_folder_with_its_own_model_code_is_refused_unrun_without_a_prompt(tmp_path, monkeypatch):
    """transformers would ask on stdin (a script blocks) or raise a bare ValueError; the code must not run."""
    import io

    marker = tmp_path / "ran"
    folder = _with_model_code(tmp_path / "model", marker)
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))  # a prompt would read this "yes"
    with pytest.raises(UnsupportedModel, match=r"config\.json maps its classes to Python code shipped with the model "
                                               r"\(custom\.CustomConfig, custom\.CustomModel\).*trust_remote_code=True"):
        attnlab.load(str(folder))
    with pytest.raises(InvalidInput, match="trust_remote_code must be True or False, not 'yes'"):
        attnlab.load(str(folder), trust_remote_code="yes")
    assert not marker.exists()


def test_an_hf_id_with_its_own_model_code_is_refused_unrun(hub_calls, monkeypatch, tmp_path):
    import io

    marker = tmp_path / "ran"
    _offline_hf_cache(monkeypatch, tmp_path, "custom", lambda folder: _with_model_code(folder, marker))
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    with pytest.raises(UnsupportedModel, match=r"'attnlab-test/custom' ships its own Python code.*trust_remote_code=True"):
        attnlab.load("attnlab-test/custom", cache_dir=str(tmp_path / "hub"))
    assert not marker.exists()
