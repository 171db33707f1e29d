"""Block-edge hook points hold what docs/concepts.md says, on every architecture, read and written.

Every identity is checked numerically on tiny models whose norm weights and biases are
random (so ``w`` vs ``1 + w`` or a dropped bias would show), with TransformerLens' weight
names as the hand computation.
"""

from __future__ import annotations

import pytest
import torch

import attnlab

from ._tl import ARCHS, BRIDGED, TEXT, boot_bridge, maxdiff, perturbed

TOL = 1e-5


def _cache(model, text=TEXT, **kwargs):
    with torch.no_grad():
        return model.run_with_cache(text, **kwargs)


def _norm(model, path):
    """The :class:`attnlab.engine.norms.Norm` at a TransformerLens path (``blocks.0.ln1``, ``ln_final``)."""
    return model.tree.norms[path]


@pytest.fixture(params=ARCHS)
def model(request):
    return perturbed(request.param)


def test_residual_stream_identities(model):
    _, c = _cache(model)
    n, kind = model.cfg.n_layers, model.layout.kind
    for L in range(n):
        pre, mid, post = c["resid_pre", L], c["resid_mid", L], c["resid_post", L]
        assert maxdiff(mid, pre + c["attn_out", L]) <= TOL
        if kind == "post_norm":  # BERT: mid and post are the sums *before* each LayerNorm
            ln1 = _norm(model, f"blocks.{L}.ln1")
            assert maxdiff(post, ln1.output_with_scale(mid, c[f"blocks.{L}.ln1.hook_scale"]) + c["mlp_out", L]) <= TOL
            ln2 = _norm(model, f"blocks.{L}.ln2")
            normalized = ln2.output_with_scale(post, c[f"blocks.{L}.ln2.hook_scale"])
            assert maxdiff(c["normalized_resid_post", L], normalized) <= TOL
            if L + 1 < n:
                assert torch.equal(c["normalized_resid_post", L], c["resid_pre", L + 1])
        else:
            assert maxdiff(post, mid + c["mlp_out", L]) <= TOL
            if L + 1 < n:
                assert torch.equal(post, c["resid_pre", L + 1])
            assert "blocks.0.hook_normalized_resid_post" not in model.hook_dict


def test_embeddings_sum_to_the_first_residual(model):
    _, c = _cache(model)
    embeds = c["hook_embed"]
    if "hook_pos_embed" in c:
        embeds = embeds + c["hook_pos_embed"]
    if "hook_token_type_embed" in c:
        embeds = embeds + c["hook_token_type_embed"]
    if model.layout.embed_ln is not None:  # BERT: LayerNorm over the summed embeddings
        embeds = _norm(model, "embed_ln").output_with_scale(embeds, c["embed_ln.hook_scale"])
    assert maxdiff(c["resid_pre", 0], embeds) <= TOL
    arch = model.cfg.architecture
    assert ("hook_pos_embed" in c) == (arch in ("gpt2", "bert"))
    if arch == "gemma3_text":  # Gemma's embedding module multiplies by sqrt(d_model)
        ids = model.to_tokens(TEXT)
        assert maxdiff(c["hook_embed"], model.W_E[ids] * model.cfg.d_model**0.5) <= 1e-4


def test_final_norm_output_and_scale(model):
    if model.layout.final_norm is None:
        assert "ln_final.hook_normalized" not in model.hook_dict
        return
    _, c = _cache(model)
    last = c["resid_post", model.cfg.n_layers - 1]
    norm = _norm(model, "ln_final")
    assert maxdiff(c["ln_final.hook_scale"], norm.scale(last)) <= TOL
    w = model.tree.ln_final.w + model.cfg.norm_weight_offset
    centred = last - last.mean(-1, keepdim=True) if model.cfg.normalization_type == "LN" else last
    expected = centred / c["ln_final.hook_scale"] * w
    if model.tree.ln_final.b is not None:
        expected = expected + model.tree.ln_final.b
    assert maxdiff(c["ln_final.hook_normalized"], expected) <= TOL


def test_head_results_sum_to_the_attention_output(model):
    _, c = _cache(model)
    for L in range(model.cfg.n_layers):
        attn = model.blocks[L].attn
        result = c["result", L]
        assert result.shape[2:] == (model.cfg.n_heads, model.cfg.d_model)
        by_hand = torch.einsum("bphd,hdm->bphm", c["z", L], attn.W_O)
        assert maxdiff(result, by_hand) <= TOL
        total = result.sum(dim=2) + attn.b_O  # the output projection's output
        if model.layout.kind == "sandwich":  # Gemma: the post-attention norm comes before the residual add
            post = _norm(model, f"blocks.{L}.ln1_post")
            assert maxdiff(c[f"blocks.{L}.ln1_post.hook_scale"], post.scale(total)) <= TOL
            total = post.output_with_scale(total, c[f"blocks.{L}.ln1_post.hook_scale"])
        assert maxdiff(total, c["attn_out", L]) <= TOL


def test_mlp_neurons_feed_the_down_projection(model):
    _, c = _cache(model)
    for L in range(model.cfg.n_layers):
        mlp = model.blocks[L].mlp
        post = c["post", L]
        assert post.shape[-1] == model.cfg.d_mlp
        out = post @ mlp.W_out + mlp.b_out
        if model.layout.kind == "sandwich":
            out = _norm(model, f"blocks.{L}.ln2_post").output_with_scale(out, c[f"blocks.{L}.ln2_post.hook_scale"])
        assert maxdiff(out, c["mlp_out", L]) <= TOL


def _reader_input(model, c, L, mlp: bool):
    """What layer L's attention (mlp=False) or MLP (mlp=True) reads, from the cache and TL weights."""
    kind = model.layout.kind
    if kind == "post_norm":
        if not mlp:
            return c["resid_pre", L]
        return _norm(model, f"blocks.{L}.ln1").output_with_scale(c["resid_mid", L], c[f"blocks.{L}.ln1.hook_scale"])
    site, ln = ("resid_mid", "ln2") if mlp else ("resid_pre", "ln1")
    return _norm(model, f"blocks.{L}.{ln}").output_with_scale(c[site, L], c[f"blocks.{L}.{ln}.hook_scale"])


def test_projections_by_tl_weights_equal_the_hooks(model):
    _, c = _cache(model)
    for L in range(model.cfg.n_layers):
        attn, mlp = model.blocks[L].attn, model.blocks[L].mlp
        x = _reader_input(model, c, L, mlp=False)
        v = torch.einsum("bpm,hmd->bphd", x, attn.W_V) + attn.b_V  # one per query head under GQA
        assert maxdiff(v, c["v", L]) <= TOL
        if not model.cfg.rotary and model.cfg.architecture != "gemma3_text":  # q before rotary (and Gemma's q-norm)
            q = torch.einsum("bpm,hmd->bphd", x, attn.W_Q) + attn.b_Q
            k = torch.einsum("bpm,hmd->bphd", x, attn.W_K) + attn.b_K
            assert maxdiff(q, c["q", L]) <= TOL
            assert maxdiff(k, c["k", L]) <= TOL
        h = _reader_input(model, c, L, mlp=True)
        if model.layout.blocks[L].gated:
            assert maxdiff(h @ mlp.W_gate + mlp.b_gate, c["pre", L]) <= TOL
            assert maxdiff(h @ mlp.W_in + mlp.b_in, c["pre_linear", L]) <= TOL
        else:
            assert maxdiff(h @ mlp.W_in + mlp.b_in, c["pre", L]) <= TOL


# -- writes ----------------------------------------------------------------------------------


def _run(model, hooks, text=TEXT):
    with torch.no_grad():
        return model.run_with_hooks(text, fwd_hooks=hooks, return_type="hidden")


def test_zeroing_attn_out_equals_zeroing_every_head_and_the_bias(model):
    L = model.cfg.n_layers - 1
    clean = _run(model, [])
    zero_out = _run(model, [(f"blocks.{L}.hook_attn_out", lambda x, hook: torch.zeros_like(x))])
    b_O = model.blocks[L].attn.b_O

    def cancel(result, hook):  # heads sum to -b_O, so the projection's output is 0
        new = torch.zeros_like(result)
        new[:, :, 0] = -b_O
        return new

    zero_heads = _run(model, [(f"blocks.{L}.attn.hook_result", cancel)])
    assert maxdiff(zero_out, clean) > 1e-2  # the edit does something
    assert maxdiff(zero_heads, zero_out) <= TOL


def test_adding_to_resid_mid_equals_adding_to_attn_out(model):
    L = 0
    delta = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(3))
    shifted_mid = _run(model, [(f"blocks.{L}.hook_resid_mid", lambda x, hook: x + delta)])
    shifted_out = _run(model, [(f"blocks.{L}.hook_attn_out", lambda x, hook: x + delta)])
    assert maxdiff(shifted_mid, _run(model, [])) > 1e-2
    assert maxdiff(shifted_mid, shifted_out) <= TOL


def test_a_written_resid_mid_is_what_the_rest_of_the_block_sees(model):
    L = 0
    _, clean = _cache(model)
    new_mid = torch.randn(clean["resid_mid", L].shape, generator=torch.Generator().manual_seed(4))
    with torch.no_grad(), model.hooks(fwd_hooks=[(f"blocks.{L}.hook_resid_mid", lambda x, hook: new_mid)]):
        _, c = model.run_with_cache(TEXT)
    assert maxdiff(c["resid_mid", L], new_mid) <= TOL  # read after the write
    assert maxdiff(c["resid_pre", L], clean["resid_pre", L]) == 0  # upstream untouched
    if model.layout.kind == "post_norm":
        ln1 = _norm(model, f"blocks.{L}.ln1")
        assert maxdiff(c["resid_post", L], ln1.output_with_scale(new_mid, ln1.scale(new_mid)) + c["mlp_out", L]) <= TOL
    else:
        assert maxdiff(c["resid_post", L], new_mid + c["mlp_out", L]) <= TOL


def test_writing_resid_pre_equals_writing_the_previous_output(model):
    delta = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(5))
    before = "normalized_resid_post" if model.layout.kind == "post_norm" else "resid_post"
    a = _run(model, [("blocks.1.hook_resid_pre", lambda x, hook: x + delta)])
    b = _run(model, [(f"blocks.0.hook_{before}", lambda x, hook: x + delta)])
    assert maxdiff(a, _run(model, [])) > 1e-2
    assert maxdiff(a, b) <= TOL


def test_zeroing_a_neuron_removes_its_output_row(model):
    L, neuron = 0, 5
    W_out = model.blocks[L].mlp.W_out

    def kill(x, hook):
        x = x.clone()
        x[..., neuron] = 0
        return x

    _, clean = _cache(model)
    with torch.no_grad(), model.hooks(fwd_hooks=[(f"blocks.{L}.mlp.hook_post", kill)]):
        _, c = model.run_with_cache(TEXT)
    assert c["post", L][..., neuron].abs().max() == 0
    down = clean["post", L] @ W_out + model.blocks[L].mlp.b_out - clean["post", L][..., neuron, None] * W_out[neuron]
    if model.layout.kind == "sandwich":
        post_norm = _norm(model, f"blocks.{L}.ln2_post")
        down = post_norm.output_with_scale(down, post_norm.scale(down))
    assert maxdiff(c["mlp_out", L], down) <= TOL
    assert maxdiff(c["mlp_out", L], clean["mlp_out", L]) > 1e-3


def test_zeroing_a_pre_activation_zeroes_the_neuron(model):
    L, neuron = 1, 7

    def kill(x, hook):
        x = x.clone()
        x[..., neuron] = 0
        return x

    with torch.no_grad(), model.hooks(fwd_hooks=[(f"blocks.{L}.mlp.hook_pre", kill)]):
        _, c = model.run_with_cache(TEXT, names_filter=f"blocks.{L}.mlp.hook_post")
    assert c["post", L][..., neuron].abs().max() <= 1e-7  # gelu(0) = silu(0) = 0


def test_writing_a_scale_recomputes_the_norm(model):
    path = "ln_final" if model.layout.final_norm is not None else f"blocks.{model.cfg.n_layers - 1}.ln2"
    norm = _norm(model, path)
    _, clean = _cache(model)
    doubled = _run(model, [(f"{path}.hook_scale", lambda s, hook: s * 2)])
    assert maxdiff(doubled, _run(model, [(f"{path}.hook_scale", lambda s, hook: s.clone())])) > 1e-2
    last = clean["resid_post", model.cfg.n_layers - 1]
    expected = norm.output_with_scale(last, norm.scale(last) * 2)
    if path != "ln_final":  # BERT: the block's output LayerNorm gives the final hidden state
        assert maxdiff(doubled, expected) <= TOL
    else:  # the reader's block opens first, so its dispatcher is registered first on the same module
        seen = {}
        with torch.no_grad(), model.hooks(fwd_hooks=[("ln_final.hook_normalized", lambda x, hook: seen.update(x=x))]):
            _run(model, [(f"{path}.hook_scale", lambda s, hook: s * 2)])
        assert maxdiff(seen["x"], expected) <= TOL  # the edge dispatcher sees the recomputed output


def test_identity_write_on_every_edge_changes_nothing(model):
    with torch.no_grad():
        clean = model(TEXT, return_type="hidden")
        same = model.run_with_hooks(TEXT, fwd_hooks=[(lambda n: ".attn.hook_" not in n, lambda x, hook: x.clone())],
                                    return_type="hidden")
    assert maxdiff(same, clean) <= TOL


def test_gemma_post_norm_scale_write(tiny_gemma):
    """Doubling the post-attention norm's scale halves what attention adds (RMSNorm, no bias)."""
    _, clean = _cache(tiny_gemma)
    with torch.no_grad(), tiny_gemma.hooks(fwd_hooks=[("blocks.1.ln1_post.hook_scale", lambda s, hook: s * 2)]):
        _, c = tiny_gemma.run_with_cache(TEXT)
    assert maxdiff(c["attn_out", 1], clean["attn_out", 1] / 2) <= TOL
    assert maxdiff(c["blocks.1.ln1_post.hook_scale"], clean["blocks.1.ln1_post.hook_scale"] * 2) <= TOL


# -- through a TransformerLens bridge ------------------------------------------------------------

EDGE_NAMES = ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "mlp.hook_pre", "mlp.hook_post", "hook_mlp_out",
              "hook_resid_post", "ln1.hook_scale", "ln2.hook_scale")


@pytest.mark.parametrize("arch", list(BRIDGED))
def test_edges_through_load_bridge(arch):
    pytest.importorskip("transformer_lens.model_bridge")
    bridge, _, tok = boot_bridge(arch)
    model = attnlab.load(bridge)
    plain = perturbed(arch)  # the same weights, never bridged
    ids = tok([TEXT], return_tensors="pt")["input_ids"]
    _, ours = _cache(model, ids)
    _, reference = _cache(plain, ids)
    assert set(ours.keys()) == set(reference.keys())
    for name in ours.keys():
        assert maxdiff(ours[name], reference[name]) <= TOL, name
    zero = [("blocks.1.hook_attn_out", lambda x, hook: torch.zeros_like(x))]
    edited = _run(model, zero, ids)
    assert maxdiff(edited, _run(model, [], ids)) > 1e-2
    assert maxdiff(edited, _run(plain, zero, ids)) <= TOL


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3"])
def test_decoder_edges_equal_the_bridges_hooks(arch):
    """On decoders TL 4.3's bridge and attnlab name the same tensors (BERT differs: see docs/comparison.md)."""
    pytest.importorskip("transformer_lens.model_bridge")
    bridge, _, tok = boot_bridge(arch)
    plain = perturbed(arch)
    ids = tok([TEXT], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        _, theirs = bridge.run_with_cache(ids)
    _, ours = _cache(plain, ids)
    names = ["hook_embed", "ln_final.hook_scale"]
    names += [f"blocks.{L}.{e}" for L in range(plain.cfg.n_layers) for e in EDGE_NAMES]
    if arch == "gemma3":
        names += [f"blocks.{L}.{p}.hook_scale" for L in range(plain.cfg.n_layers) for p in ("ln1_post", "ln2_post")]
    for name in names:
        assert maxdiff(ours[name], theirs[name]) <= 1e-5, name
    # attnlab's ln_final.hook_normalized is the norm's output (what W_U reads); the bridge's is before the weight
    assert maxdiff(ours["ln_final.hook_normalized"], theirs["ln_final.hook_out"]) <= 1e-5
    assert maxdiff(ours["ln_final.hook_normalized"], theirs["ln_final.hook_normalized"]) > 1e-2
    for name in [f"blocks.{L}.{ln}" for L in range(plain.cfg.n_layers) for ln in ("ln1", "ln2")]:  # the same for block norms
        assert maxdiff(ours[f"{name}.hook_normalized"], theirs[f"{name}.hook_out"]) <= 1e-5, name


def _norm_input(model, c, path):
    """What the norm at ``path`` normalises, from the cache (BERT's block norms: the sums before them)."""
    if path == "embed_ln":
        return None
    L, ln = int(path.split(".")[1]), path.split(".")[2]
    post_norm = model.layout.kind == "post_norm"
    return {"ln1": c["resid_mid", L] if post_norm else c["resid_pre", L],
            "ln2": c["resid_post", L] if post_norm else c["resid_mid", L]}[ln]


def test_block_norm_outputs_are_what_the_next_layer_reads(model):
    """``blocks.L.ln1/ln2.hook_normalized``: the norm's output (weight and bias applied), read by attention / MLP."""
    _, c = _cache(model)
    paths = [p for p in model.tree.norms if f"{p}.hook_normalized" in model.hook_dict and p != "ln_final"]
    assert {f"blocks.0.{ln}" for ln in ("ln1", "ln2")} <= set(paths)
    for path in paths:
        out = c[f"{path}.hook_normalized"]
        x = _norm_input(model, c, path)
        if x is None:  # BERT's embedding LayerNorm gives the first block's input
            assert torch.equal(out, c["resid_pre", 0])
            continue
        assert maxdiff(out, _norm(model, path).output_with_scale(x, c[f"{path}.hook_scale"])) <= TOL, path
    for L in range(model.cfg.n_layers):
        reads_mlp = "ln1" if model.layout.kind == "post_norm" else "ln2"
        assert maxdiff(c[f"blocks.{L}.{reads_mlp}.hook_normalized"], _reader_input(model, c, L, mlp=True)) <= TOL
        if model.layout.kind != "post_norm":
            assert maxdiff(c["normalized", L, "ln1"], _reader_input(model, c, L, mlp=False)) <= TOL
        else:  # BERT: the output LayerNorm gives the block's output
            assert torch.equal(c["normalized", L, "ln2"], c["normalized_resid_post", L])
    assert "blocks.0.ln1_post.hook_normalized" not in model.hook_dict  # Gemma: that output is hook_attn_out


def test_writing_a_block_norm_output_feeds_the_next_layer(model):
    """The MLP input is affine in the norm's output: pre(2x) - 2 pre(x) + pre(0) = 0 once the write lands."""
    L = model.cfg.n_layers - 1
    name = f"blocks.{L}.{'ln1' if model.layout.kind == 'post_norm' else 'ln2'}.hook_normalized"
    pres = []
    for factor in (1.0, 2.0, 0.0):
        with torch.no_grad(), model.hooks(fwd_hooks=[(name, lambda x, hook, f=factor: x * f)]):
            _, c = model.run_with_cache(TEXT, names_filter=[hook_name_of("pre", L)])
        pres.append(c["pre", L])
    assert maxdiff(pres[1] - 2 * pres[0] + pres[2], torch.zeros_like(pres[0])) <= 1e-4
    assert maxdiff(pres[1], pres[0]) > 1e-2  # the write reached the MLP
    assert not any(p._forward_hooks for p in model.hook_dict.values())


@pytest.mark.parametrize("point_first", [True, False])
def test_block_norm_output_sees_a_scale_edit(model, point_first):
    """A scale write recomputes the norm's output, and hook_normalized sees it whichever hook was added first."""
    path = f"blocks.0.{'ln1' if model.layout.kind != 'post_norm' else 'ln2'}"
    _, clean = _cache(model)
    seen = {}
    hooks = [(f"{path}.hook_normalized", lambda x, hook: seen.update(x=x)), (f"{path}.hook_scale", lambda s, hook: s * 2)]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks if point_first else hooks[::-1]):
        model(TEXT, return_type=None)
    x = _norm_input(model, clean, path)
    expected = _norm(model, path).output_with_scale(x, clean[f"{path}.hook_scale"] * 2)
    assert maxdiff(seen["x"], expected) <= TOL
    assert maxdiff(seen["x"], clean[f"{path}.hook_normalized"]) > 1e-2


def hook_name_of(site, layer):
    from attnlab.engine.locations import hook_name

    return hook_name(layer, site)


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
@pytest.mark.parametrize("texts, side", [(["the nurse said that she was happy", "he ran"], "right"),
                                         (["the nurse said", "the doctor said"], "right"),
                                         (["the nurse said that she was happy", "he ran"], "left")])
def test_pos_embed_has_one_row_per_prompt_and_an_edit_stays_in_its_row(arch, texts, side):
    """HF's default position ids are [1, pos]: hook_pos_embed was [1, pos, d] and an edit of row 0 changed row 1."""
    from attnlab.testing import tiny_model

    model = tiny_model(arch)
    out = "hidden" if arch == "bert" else "logits"
    _, cache = _cache(model, texts, padding_side=side, names_filter=["hook_pos_embed"])
    pos = cache["hook_pos_embed"]
    assert pos.shape[:2] == model.to_tokens(texts, padding_side=side).shape
    table = model.layout.pos_embed.weight
    lengths = [len(model.to_tokens(t)[0]) for t in texts]
    for row, n in enumerate(lengths):  # each real token holds the embedding of its position
        cols = range(n) if side == "right" else range(pos.shape[1] - n, pos.shape[1])
        torch.testing.assert_close(pos[row, list(cols)], table[:n], rtol=0, atol=0)

    def zero_row0(x, hook):
        x = x.clone()
        x[0] = 0
        return x

    with torch.no_grad():
        clean = model(texts, padding_side=side, return_type=out)
        edited = model.run_with_hooks(texts, padding_side=side, return_type=out, fwd_hooks=[("hook_pos_embed", zero_row0)])
    torch.testing.assert_close(edited[1], clean[1], rtol=0, atol=0)
    assert (edited[0] - clean[0]).abs().max() > 1e-3
    cache.apply_slice_to_batch_dim(1)  # raised IndexError with a batch of one


def test_roberta_keeps_its_own_position_ids_and_pos_embed_is_per_row():
    """RoBERTa counts positions from padding_idx + 1: passing ids 0..n-1 (a first fix of the [1, pos] pos_embed) broke it."""
    import transformers

    from attnlab.engine.model import HookedModel
    from attnlab.testing import tiny_tokenizer

    torch.manual_seed(0)
    tok = tiny_tokenizer("encoder")
    cfg = transformers.RobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=130, pad_token_id=tok.pad_token_id or 0,
                                     attn_implementation="sdpa")
    hf = transformers.RobertaForMaskedLM(cfg).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [5, 9, 8, 7, 6, 10]])
    with torch.no_grad():
        expected = hf(input_ids=ids).logits
    model = HookedModel(hf, tok, name="tiny-roberta")
    with torch.no_grad():
        torch.testing.assert_close(model(ids), expected, rtol=0, atol=0)
        _, cache = model.run_with_cache(ids, names_filter=["hook_pos_embed"])
    assert cache["hook_pos_embed"].shape == (2, 6, 32)
