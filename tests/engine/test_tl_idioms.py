"""TransformerLens idioms written from memory (logit lens, direct logit attribution, patching, patterns) run unchanged.

Each test checks numbers: the tensor an idiom returns is the one TransformerLens' semantics
name, compared with the canonical spelling or a hand computation.
"""

from __future__ import annotations

import pytest
import torch

from attnlab.errors import InvalidInput, InvalidLocation, NotSupported
from attnlab.utils import get_act_name

TEXT = "the nurse said that she was happy"


def _cache(model, **kwargs):
    with torch.no_grad():
        return model.run_with_cache(TEXT, **kwargs)


# -- cache keys ------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "gemma3"])
def test_negative_layers_in_cache_keys_count_from_the_end(arch, request):
    model = request.getfixturevalue({"gpt2": "tiny_gpt2", "gemma3": "tiny_gemma"}[arch])
    _, cache = _cache(model)
    n = model.cfg.n_layers
    assert torch.equal(cache["z", -1], cache[f"blocks.{n - 1}.attn.hook_z"])
    assert torch.equal(cache["resid_post", -1], cache[f"blocks.{n - 1}.hook_resid_post"])
    assert torch.equal(cache["pattern", -n], cache["blocks.0.attn.hook_pattern"])
    assert torch.equal(cache["scale", -1, "ln1"], cache[f"blocks.{n - 1}.ln1.hook_scale"])
    assert ("z", -1) in cache
    with pytest.raises(InvalidLocation, match=f"layer {-n - 1} out of range"):
        cache["z", -n - 1]


def test_string_shorthands_in_cache_keys(tiny_gpt2):
    _, cache = _cache(tiny_gpt2)
    assert torch.equal(cache["embed"], cache["hook_embed"])
    assert torch.equal(cache["pos_embed"], cache["hook_pos_embed"])
    assert torch.equal(cache["k1"], cache["blocks.1.attn.hook_k"])
    assert torch.equal(cache["resid_pre1"], cache["blocks.1.hook_resid_pre"])
    assert torch.equal(cache["scale"], cache["ln_final.hook_scale"])
    assert torch.equal(cache["scale0ln2"], cache["blocks.0.ln2.hook_scale"])
    assert torch.equal(cache["attn_logits", 0], cache["blocks.0.attn.hook_attn_scores"])
    assert "embed" in cache and "nonsense" not in cache
    with pytest.raises(InvalidLocation, match="'nonsense' is not in this cache"):
        cache["nonsense"]


def test_get_act_name_shorthand_and_aliases():
    assert get_act_name("k6") == "blocks.6.attn.hook_k"
    assert get_act_name("pre5") == "blocks.5.mlp.hook_pre"
    assert get_act_name("z0a") == "blocks.0.attn.hook_z"
    assert get_act_name("resid_pre5") == "blocks.5.hook_resid_pre"
    assert get_act_name("scale4ln1") == "blocks.4.ln1.hook_scale"
    assert get_act_name("scale") == "ln_final.hook_scale"
    assert get_act_name("query", 1) == "blocks.1.attn.hook_q"
    assert get_act_name("value", 1) == "blocks.1.attn.hook_v"
    assert get_act_name("attn_logits", 2) == "blocks.2.attn.hook_attn_scores"


def test_rot_q_is_attnlabs_rotated_q(tiny_llama):
    """TL's hook_rot_q is q after the rotary embedding: attnlab's hook_q (checked against q_proj + rotary by hand)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    model = tiny_llama
    _, cache = _cache(model)
    assert get_act_name("rot_q", 0) == "blocks.0.attn.hook_q"
    resid = cache["resid_pre", 0][0]
    x = model.hf_model.model.layers[0].input_layernorm(resid)
    q = torch.einsum("pm,hmd->hpd", x, model.blocks[0].attn.W_Q)[None]  # [1, head, pos, d_head]
    k = torch.einsum("pm,hmd->hpd", x, model.blocks[0].attn.W_K)[None]
    pos = torch.arange(resid.shape[0])[None]
    cos, sin = model.hf_model.model.rotary_emb(resid[None], pos)
    q_rot, _ = apply_rotary_pos_emb(q, k, cos, sin)
    assert (cache["rot_q", 0][0] - q_rot[0].transpose(0, 1)).abs().max() <= 1e-5
    assert torch.equal(cache["rot_k", 0], cache["k", 0])


def test_cache_to_accepts_move_model(tiny_gpt2):
    _, cache = _cache(tiny_gpt2)
    moved = cache.to("cpu", move_model=False)
    assert torch.equal(moved["pattern", 1], cache["pattern", 1])


# -- QK and OV circuits ----------------------------------------------------------------------


def test_ov_circuit_reproduces_each_heads_result(tiny_gpt2):
    """hook_result of head h = pattern @ (ln1(resid_pre) @ OV[L, h] + b_V[h] @ W_O[h]), by hand on GPT-2."""
    model = tiny_gpt2
    _, cache = _cache(model, remove_batch_dim=True)
    L = 1
    x = model.hf_model.transformer.h[L].ln_1(cache["resid_pre", L])  # [pos, d_model]
    for h in range(model.cfg.n_heads):
        ov = model.OV[L, h]
        assert tuple(ov.shape) == (model.cfg.d_model, model.cfg.d_model)
        assert torch.allclose(ov.AB, model.W_V[L, h] @ model.W_O[L, h])
        written = x @ ov.AB + model.b_V[L, h] @ model.W_O[L, h]  # [pos, d_model]
        expected = cache["pattern", L][h] @ written
        assert (expected - cache["result", L][:, h]).abs().max() <= 1e-4
    assert tuple(model.OV.shape) == (model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_model, model.cfg.d_model)
    assert torch.allclose(model.blocks[L].attn.OV.AB, model.OV[L].AB)


def test_qk_circuit_reproduces_the_scores(tiny_gpt2):
    """hook_attn_scores = ((x W_Q + b_Q)(x W_K + b_K)^T) / attn_scale, expanded through QK = W_Q W_K^T."""
    model = tiny_gpt2
    _, cache = _cache(model, remove_batch_dim=True)
    L, h = 0, 2
    x = model.hf_model.transformer.h[L].ln_1(cache["resid_pre", L])
    W_Q, W_K, b_Q, b_K = model.W_Q[L, h], model.W_K[L, h], model.b_Q[L, h], model.b_K[L, h]
    bilinear = x @ model.QK[L, h].AB @ x.T
    scores = (bilinear + (x @ W_Q @ b_K)[:, None] + (b_Q @ (x @ W_K).T)[None, :] + b_Q @ b_K) / model.cfg.attn_scale
    causal = torch.tril(torch.ones_like(scores, dtype=torch.bool))
    assert (scores[causal] - cache["attn_scores", L][h][causal]).abs().max() <= 1e-4


def test_factored_matrix_algebra_matches_the_dense_product(tiny_gemma):
    qk = tiny_gemma.QK[2, 1]  # GQA: W_K repeated per query head
    dense = qk.AB
    assert torch.allclose(qk.norm(), torch.linalg.norm(dense), rtol=1e-4)
    u, s, vh = qk.svd()
    assert torch.allclose(u @ torch.diag(s) @ vh, dense, atol=1e-4)
    top = torch.linalg.svdvals(dense)[: s.shape[0]]
    assert torch.allclose(s, top, rtol=1e-3, atol=1e-4)
    eig = qk.eigenvalues  # the d_head eigenvalues that can be non-zero
    dense_eig = torch.linalg.eigvals(dense)
    biggest = dense_eig[dense_eig.abs().argsort(descending=True)[: eig.shape[0]]]
    assert torch.allclose(eig.abs().sort().values, biggest.abs().sort().values, rtol=1e-3, atol=1e-3)
    assert torch.allclose(qk.T.AB, dense.T)
    x = torch.randn(3, tiny_gemma.cfg.d_model)
    assert torch.allclose((x @ qk).AB, x @ dense, atol=1e-4)
    assert torch.allclose(qk @ x[0], dense @ x[0], atol=1e-4)
    assert torch.allclose((qk @ tiny_gemma.OV[2, 1]).AB, dense @ tiny_gemma.OV[2, 1].AB, atol=1e-3)
    with pytest.raises(InvalidInput, match="index only the leading axes"):
        tiny_gemma.QK[0, 0, 3]


# -- the model's TransformerLens methods ---------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "gemma3"])
def test_logit_lens_with_ln_final_and_unembed(arch, request):
    """unembed(ln_final(resid_post[-1])) is the logits; ln_final(x) of an earlier layer equals the HF norm on it."""
    model = request.getfixturevalue({"gpt2": "tiny_gpt2", "gemma3": "tiny_gemma"}[arch])
    logits, cache = _cache(model)
    with torch.no_grad():
        assert (model.unembed(model.ln_final(cache["resid_post", -1])) - logits).abs().max() <= 1e-5
        hf_norm = model.hf_model.transformer.ln_f if arch == "gpt2" else model.hf_model.model.norm
        assert (model.ln_final(cache["resid_pre", 1]) - hf_norm(cache["resid_pre", 1])).abs().max() <= 1e-5
        ln1 = model.hf_model.transformer.h[1].ln_1 if arch == "gpt2" else model.hf_model.model.layers[1].input_layernorm
        assert (model.blocks[1].ln1(cache["resid_pre", 1]) - ln1(cache["resid_pre", 1])).abs().max() <= 1e-5
        lens = cache.accumulated_resid(layer=-1, apply_ln=True, pos_slice=-1)
        assert (model.unembed(lens[-1]) - logits[:, -1]).abs().max() <= 1e-5


def test_token_helpers(tiny_gpt2):
    model = tiny_gpt2
    she = model.to_single_token(" she")
    assert model.to_single_str_token(she) == "she"
    assert model.to_single_str_token(torch.tensor(she)) == "she"
    assert model.get_token_position(" she", TEXT) == 5  # [BOS] the nurse said that she
    assert model.get_token_position(she, model.to_tokens(TEXT)) == 5
    assert model.get_token_position("the", "the cat saw the dog", mode="last") == 4
    assert model.get_token_position("the", "the cat saw the dog", prepend_bos=False) == 0
    with pytest.raises(InvalidInput, match="does not occur"):
        model.get_token_position(" he", TEXT)
    assert model.all_head_labels()[:5] == ["L0H0", "L0H1", "L0H2", "L0H3", "L1H0"]
    assert len(model.all_head_labels()) == model.cfg.n_layers * model.cfg.n_heads


def test_tl_switches_and_missing_names_say_what_to_use(tiny_gpt2):
    model = tiny_gpt2
    model.set_use_attn_result(True)  # hook_result needs no switch
    _, cache = _cache(model, names_filter=lambda n: n.endswith("hook_result"))
    assert len(cache) == model.cfg.n_layers
    with pytest.raises(NotSupported, match="hook_q_input, hook_k_input and hook_v_input"):
        model.set_use_attn_in(True)
    with pytest.raises(InvalidInput, match="True or False"):
        model.set_use_split_qkv_input("yes")
    # every switch takes a bool: "False" was refused as set_use_attn_in(True), "no" and 1 accepted
    for switch in ("set_use_attn_result", "set_use_attn_in", "set_use_hook_mlp_in", "set_use_split_qkv_input"):
        for value in ("False", "no", 1, None):
            with pytest.raises(InvalidInput, match=rf"^{switch} takes True or False, got {value!r}$"):
                getattr(model, switch)(value)
    model.set_use_attn_in(False)
    model.set_use_hook_mlp_in(False)
    with pytest.raises(NotSupported, match="model.W_E"):
        model.embed
    with pytest.raises(NotSupported, match="nothing folded"):
        model.fold_layer_norm()
    with pytest.raises(AttributeError):  # NotSupported is an AttributeError: hasattr() keeps working
        model.cfg.use_attn_in
    assert not hasattr(model, "embed") and not hasattr(model, "no_such_thing")
    assert model.cfg.device == model.device  # TransformerLens' tools read cfg.device; a bare config has none
    with pytest.raises(NotSupported, match="model.device"):
        __import__("dataclasses").replace(model.cfg).device
    assert model.cfg.model_name == model.cfg.name and model.cfg.d_vocab_out == model.cfg.d_vocab
    assert model.cfg.n_key_value_heads == model.cfg.n_kv_heads
    with pytest.raises(NotSupported, match="no final norm"):
        __import__("attnlab.testing").testing.tiny_model("bert").ln_final


def test_missing_tl_hook_names_point_to_attnlabs(tiny_llama):
    model = tiny_llama
    with pytest.raises(InvalidLocation, match="no hook_attn_in; hook blocks.L.hook_q_input"):
        model.run_with_hooks(TEXT, fwd_hooks=[("blocks.0.hook_attn_in", lambda x, hook: None)])
    with pytest.raises(InvalidLocation, match=r"blocks.L.hook_k_input \(TransformerLens' name, on the block\)"):
        model.run_with_cache(TEXT, names_filter=["blocks.0.attn.hook_k_input"])
    with pytest.raises(InvalidLocation, match="already after the rotary embedding"):
        model.run_with_cache(TEXT, names_filter=["blocks.0.attn.hook_rot_q"])
    with pytest.raises(InvalidLocation, match=r"is blocks.L.ln2.hook_normalized in attnlab"):
        model.run_with_hooks(TEXT, fwd_hooks=[("blocks.1.ln2.hook_out", lambda x, hook: None)])
    with pytest.raises(InvalidLocation, match="post-attention norm's output is blocks.L.hook_attn_out"):
        __import__("attnlab.testing").testing.tiny_model("gemma3").run_with_cache(
            TEXT, names_filter=["blocks.0.ln1_post.hook_normalized"])


def test_hook_layer_outside_a_block_is_a_typed_error(tiny_gpt2):
    layers = []
    with torch.no_grad():
        tiny_gpt2.run_with_hooks(TEXT, fwd_hooks=[(lambda n: n.endswith("resid_pre"), lambda x, hook: layers.append(hook.layer()))])
        assert layers == [0, 1]
        with pytest.raises(InvalidLocation, match="hook_embed is not inside a block"):
            tiny_gpt2.run_with_hooks(TEXT, fwd_hooks=[("hook_embed", lambda x, hook: hook.layer())])


@pytest.mark.parametrize("name", ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z", "blocks.0.attn.hook_pattern",
                                  "blocks.0.ln1.hook_scale", "hook_embed"])
def test_a_gradient_hook_sees_the_final_value_whatever_the_order_of_blocks(tiny_llama, name):
    """A backward hook opened before a forward edit of the same point got the gradient of the unedited value (2x here)."""
    model, text = tiny_llama, "the nurse said that she was happy"
    got, keep = {}, {}

    def double(x, hook):
        return x * 2

    def grad_hook(grad, hook):
        got["order"] = got.get("order", []) + [grad.clone()]

    def double_keep(x, hook):
        y = x * 2
        y.retain_grad()
        keep["y"] = y
        return y

    with model.hooks(fwd_hooks=[(name, double_keep)]):
        model(text, return_type="loss").backward()
    expected = keep["y"].grad
    with model.hooks(fwd_hooks=[(name, double)], bwd_hooks=[(name, grad_hook)]):
        model(text, return_type="loss").backward()
    with model.hooks(bwd_hooks=[(name, grad_hook)]):  # the order the reviewer found wrong
        with model.hooks(fwd_hooks=[(name, double)]):
            model(text, return_type="loss").backward()
    first, second = got["order"]
    torch.testing.assert_close(first, expected, rtol=0, atol=0)
    torch.testing.assert_close(second, expected, rtol=0, atol=0)


def test_to_tokens_truncates_to_the_context_as_transformerlens(tiny_gpt2):
    long = " ".join(["word"] * 300)
    n_ctx = tiny_gpt2.cfg.n_ctx
    ids = tiny_gpt2.to_tokens(long)
    assert ids.shape == (1, n_ctx)
    full = tiny_gpt2.to_tokens(long, truncate=False)
    assert full.shape[1] > n_ctx and torch.equal(full[:, :n_ctx], ids)
    batch = tiny_gpt2.to_tokens([long, "a short one"])  # rows cut, then padded to the longest
    assert batch.shape == (2, n_ctx)
    with pytest.raises(InvalidInput, match="handles at most"):  # running it is still refused
        tiny_gpt2(full)
    with pytest.raises(InvalidInput, match="truncate must be True or False"):
        tiny_gpt2.to_tokens("x", truncate="yes")


def test_incl_bwd_gradients_move_to_the_cache_device(tiny_gpt2):
    _, cache = tiny_gpt2.run_with_cache("the nurse said", return_type="loss", incl_bwd=True, device="meta",
                                        names_filter=["blocks.0.attn.hook_z"])
    assert cache["blocks.0.attn.hook_z"].device.type == "meta"
    assert cache["blocks.0.attn.hook_z_grad"].device.type == "meta"


def test_hook_points_and_generate_return_type_of_transformerlens(tiny_gpt2):
    points = tiny_gpt2.hook_points()
    assert points == list(tiny_gpt2.hook_dict.values()) and len(points) > 10
    with pytest.raises(InvalidInput, match="never the prompt with them"):
        tiny_gpt2.generate("the nurse", max_new_tokens=2, return_type="input")


def test_to_tokens_takes_tokens_and_bert_truncation_keeps_its_final_sep(tiny_gpt2, tiny_bert):
    tokens = tiny_gpt2.tokens(["the nurse said", "a doctor"])
    assert torch.equal(tiny_gpt2.to_tokens(tokens), tokens.ids)
    long = " ".join(["word"] * 300)
    ids = tiny_bert.to_tokens(long)
    sep = tiny_bert.tokenizer.sep_token_id
    assert ids.shape[1] == tiny_bert.cfg.n_ctx and int(ids[0, -1]) == sep and int(ids[0, 0]) == tiny_bert.tokenizer.cls_token_id
