"""TransformerLens' split inputs: ``hook_q_input`` / ``hook_k_input`` / ``hook_v_input`` and ``hook_mlp_in``.

Each head's query, key and value can be fed its own copy of ``resid_pre`` (path patching into
one head's q, k or v), and the MLP its own copy of ``resid_mid``. Checked numerically: a
patched copy gives exactly the source's q (k, v) for that head and nothing else, the edits
give TransformerLens' bridge's logits, and the gradients of the copies add up to the stream's.
"""

from __future__ import annotations

import pytest
import torch

from attnlab.errors import InvalidInput
from attnlab.utils import get_act_name

from ._tl import ARCHS, TEXT, boot_bridge, maxdiff, perturbed

OTHER = "the doctor said that he was sad"  # same length as TEXT in every tiny tokenizer
SPLIT = ("q_input", "k_input", "v_input")


@pytest.fixture(params=[a for a in ARCHS if a != "bert-mlm"])
def model(request):
    return perturbed(request.param)


def _leftover_hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.hf_model.modules())


def test_copies_hold_the_stream_per_head_and_kv_head(model):
    c = model.run_with_cache(TEXT, names_filter=lambda n: n.endswith(("_input", "mlp_in", "resid_pre", "resid_mid",
                                                                       "ln1.hook_normalized")))[1]
    cfg = model.cfg
    for L in range(cfg.n_layers):
        pre = c["resid_pre", L]
        assert c["q_input", L].shape == (*pre.shape[:2], cfg.n_heads, cfg.d_model)
        for site in ("k_input", "v_input"):
            assert c[site, L].shape == (*pre.shape[:2], cfg.n_kv_heads, cfg.d_model)
        for site in SPLIT:
            assert torch.equal(c[site, L], pre.unsqueeze(2).expand_as(c[site, L]))
        # what the MLP reads before its norm: resid_mid (pre-norm); BERT's MLP reads the LayerNorm's output
        mlp_reads = c[f"blocks.{L}.ln1.hook_normalized"] if model.layout.kind == "post_norm" else c["resid_mid", L]
        assert torch.equal(c["mlp_in", L], mlp_reads)
    assert get_act_name("q_input", 1) == "blocks.1.hook_q_input" and get_act_name("mlp_in", 0) == "blocks.0.hook_mlp_in"


def test_unedited_copies_change_nothing_and_leave_no_hook(model):
    with torch.no_grad():
        clean = model(TEXT)
        touched = model.run_with_hooks(TEXT, fwd_hooks=[(lambda n: n.endswith(("_input", "mlp_in")), lambda x, hook: x.clone())])
    assert torch.equal(touched, clean)
    assert model.count_hooks() == 0 and _leftover_hooks(model) == 0


@pytest.mark.parametrize("site", SPLIT)
def test_a_patched_copy_moves_only_its_heads(model, site):
    """Head 1's copy from OTHER: its q (k, v) become OTHER's, every other head and the other two stay clean."""
    L, which = 1, site[0]
    watched = [f"blocks.{L}.attn.hook_{s}" for s in "qkv"]
    with torch.no_grad():
        _, source = model.run_with_cache(OTHER, names_filter=[f"blocks.{L}.hook_resid_pre", *watched])
        _, clean = model.run_with_cache(TEXT, names_filter=watched)
    group = model.cfg.n_heads // model.cfg.n_kv_heads if which in "kv" else 1
    copy = min(1, model.cfg.n_heads // group - 1)  # kv head 1, or 0 where there is only one
    moved = [h for h in range(model.cfg.n_heads) if h // group == copy]

    def patch(x, hook):
        x[:, :, copy] = source["resid_pre", L]  # in place: the copy is the hook's to edit
        return x

    with torch.no_grad(), model.hooks(fwd_hooks=[(f"blocks.{L}.hook_{site}", patch)]):
        _, edited = model.run_with_cache(TEXT, names_filter=watched)
    for s in "qkv":
        got, was, src = edited[s, L], clean[s, L], source[s, L]
        if s == which:
            assert maxdiff(got[:, :, moved], src[:, :, moved]) <= 1e-5
            still = [h for h in range(model.cfg.n_heads) if h not in moved]
            assert torch.equal(got[:, :, still], was[:, :, still])
            assert maxdiff(was[:, :, moved], src[:, :, moved]) > 1e-3  # the two texts differ there
        else:
            assert torch.equal(got, was)
    assert model.count_hooks() == 0 and _leftover_hooks(model) == 0


def test_mlp_in_feeds_only_the_mlp(model):
    """An edit of hook_mlp_in changes what the MLP adds, not the stream it is added to."""
    L = 0
    delta = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(3))
    names = [f"blocks.{L}.hook_{s}" for s in ("resid_mid", "mlp_out", "resid_post")]
    with torch.no_grad():
        _, clean = model.run_with_cache(TEXT, names_filter=names)
        with model.hooks(fwd_hooks=[(f"blocks.{L}.hook_mlp_in", lambda x, hook: x + delta)]):
            _, edited = model.run_with_cache(TEXT, names_filter=names)
    assert maxdiff(edited["mlp_out", L], clean["mlp_out", L]) > 1e-3
    if model.layout.kind == "post_norm":  # BERT: resid_post = LN1(resid_mid) + mlp_out
        assert maxdiff(edited["resid_post", L] - edited["mlp_out", L], clean["resid_post", L] - clean["mlp_out", L]) <= 1e-5
    else:
        assert torch.equal(edited["resid_mid", L], clean["resid_mid", L])
        assert maxdiff(edited["resid_post", L], clean["resid_mid", L] + edited["mlp_out", L]) <= 1e-5


def test_gradients_of_the_copies_add_up_to_the_stream(model):
    """resid_pre feeds the residual sum and every copy: its gradient is resid_mid's plus all the copies'."""
    L = 1
    grads = {}

    def keep(g, hook):
        grads[hook.name.split(".")[-1].removeprefix("hook_")] = g.detach().clone()

    names = [f"blocks.{L}.hook_{s}" for s in ("resid_pre", "resid_mid", *SPLIT)]
    with model.hooks(bwd_hooks=[(n, keep) for n in names]):
        out = model(TEXT)
        (out.float() ** 2).mean().backward()
    model.hf_model.zero_grad(set_to_none=True)
    split_sum = sum(grads[s].sum(dim=2) for s in SPLIT)
    assert float(split_sum.abs().max()) > 1e-6  # the copies do carry gradient
    assert maxdiff(grads["resid_pre"], grads["resid_mid"] + split_sum) <= 1e-6 * max(1.0, float(grads["resid_pre"].abs().max()))


def test_run_with_cache_adds_the_copies_only_when_switched_on(model):
    with torch.no_grad():
        _, default = model.run_with_cache(TEXT)
    assert not any(k.endswith(("q_input", "k_input", "v_input")) for k in default.keys())
    assert "blocks.0.hook_mlp_in" in default.keys()
    model.set_use_split_qkv_input(True)
    with torch.no_grad():
        _, every = model.run_with_cache(TEXT)
    assert sum(k.endswith(("q_input", "k_input", "v_input")) for k in every.keys()) == 3 * model.cfg.n_layers
    with pytest.raises(InvalidInput, match="True or False"):
        model.set_use_split_qkv_input(1)
    model.set_use_hook_mlp_in(True)  # accepted: hook_mlp_in needs no switch


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3"])
@pytest.mark.parametrize("name, head", [("blocks.1.hook_q_input", 2), ("blocks.0.hook_k_input", 1),
                                        ("blocks.1.hook_v_input", 0), ("blocks.0.hook_mlp_in", None)])
def test_edits_match_transformerlens_bridge(arch, name, head):
    pytest.importorskip("transformer_lens.model_bridge")
    model = perturbed(arch)
    bridge, _, _ = boot_bridge(arch)
    bridge.set_use_split_qkv_input(True)
    bridge.set_use_hook_mlp_in(True)
    noise = torch.randn(model.to_tokens(TEXT).shape[1], model.cfg.d_model, generator=torch.Generator().manual_seed(1))

    def edit(x, hook):
        x = x.clone()
        if head is None:
            x[0] += noise
        else:
            x[0, :, min(head, x.shape[2] - 1)] += noise
        return x

    with torch.no_grad():
        ours = model.run_with_hooks(TEXT, fwd_hooks=[(name, edit)])
        theirs = bridge.run_with_hooks(TEXT, fwd_hooks=[(name, edit)])
        clean = model(TEXT)
    assert maxdiff(ours, clean) > 1e-3
    assert maxdiff(ours, theirs) <= 2e-6


def test_an_in_place_edit_of_a_single_kv_head_stays_in_its_copy():
    """Gemma-3 has one kv head: the copy must still be a copy (TL 4.3's bridge writes such an edit into the stream)."""
    model = perturbed("gemma3")
    assert model.cfg.n_kv_heads == 1
    names = [f"blocks.1.hook_{s}" for s in ("resid_pre", "attn_out", "resid_mid")]

    def shift(x, hook):
        x += 1.0
        return x

    with torch.no_grad():
        _, clean = model.run_with_cache(TEXT, names_filter=names)
        with model.hooks(fwd_hooks=[("blocks.1.hook_k_input", shift), ("blocks.1.hook_v_input", shift)]):
            _, edited = model.run_with_cache(TEXT, names_filter=names)
    assert maxdiff(edited["attn_out", 1], clean["attn_out", 1]) > 1e-3  # the edit reached k and v
    assert torch.equal(edited["resid_pre", 1], clean["resid_pre", 1])
    assert maxdiff(edited["resid_mid", 1] - edited["attn_out", 1], clean["resid_pre", 1]) <= 1e-5


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3"])
def test_watching_a_copy_keeps_gradients_through_edited_norms(arch):
    """With ln1 edited (a doubled output, a frozen scale), a gradient hook on the copies changes no gradient."""
    model = perturbed(arch)

    def resid_pre_grad(fwd_hooks, watch: bool):
        grads = {}

        def keep(g, hook):
            grads[hook.name] = g.detach().clone()

        bwd = [("blocks.1.hook_resid_pre", keep)] + ([("blocks.1.hook_q_input", lambda g, hook: None)] if watch else [])
        with model.hooks(fwd_hooks=fwd_hooks, bwd_hooks=bwd):
            out = model(TEXT)
            (out.float() ** 2).mean().backward()
        model.hf_model.zero_grad(set_to_none=True)
        return grads["blocks.1.hook_resid_pre"]

    for edit in ([("blocks.1.ln1.hook_normalized", lambda x, hook: 2 * x)],
                 [("blocks.1.ln1.hook_scale", lambda x, hook: 1.5 * x.detach())]):
        plain = resid_pre_grad(edit, watch=False)
        assert maxdiff(resid_pre_grad(edit, watch=True), plain) <= 1e-7 * max(1.0, float(plain.abs().max()))


def test_cached_gradients_keep_the_norms_when_the_copies_are_cached_too():
    model = perturbed("llama")
    _, off = model.run_with_cache(TEXT, return_type="loss", incl_bwd=True)
    model.set_use_split_qkv_input(True)
    _, on = model.run_with_cache(TEXT, return_type="loss", incl_bwd=True)
    model.hf_model.zero_grad(set_to_none=True)
    for name in ("blocks.1.ln1.hook_normalized_grad", "blocks.1.hook_resid_pre_grad", "blocks.0.hook_resid_pre_grad"):
        assert maxdiff(on[name], off[name]) <= 1e-6
    # the copies' gradients (through the unedited norm) and the residual path still add up to the stream's
    L = 1
    split = sum(on[f"blocks.{L}.hook_{s}_input_grad"].sum(dim=2) for s in "qkv")
    assert maxdiff(on[f"blocks.{L}.hook_resid_pre_grad"],
                   on[f"blocks.{L}.hook_resid_mid_grad"] + split) <= 1e-6


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3"])
@pytest.mark.parametrize("ln1_hooked", [False, True])
def test_watching_a_copy_leaves_every_weight_gradient(arch, ln1_hooked):
    """A no-op hook on hook_q_input changes no parameter's gradient (with ln1's points hooked, q_proj's gradient
    used to come twice: through the model's path and the copies')."""
    model = perturbed(arch)

    def grads(watch: bool) -> dict:
        fwd = [("blocks.1.ln1.hook_normalized", lambda x, hook: None)] if ln1_hooked else []
        fwd += [("blocks.1.hook_q_input", lambda x, hook: None)] if watch else []
        with model.hooks(fwd_hooks=fwd):
            (model(TEXT).float() ** 2).mean().backward()
        out = {n: p.grad.clone() for n, p in model.hf_model.named_parameters() if p.grad is not None}
        model.hf_model.zero_grad(set_to_none=True)
        return out

    plain, watched = grads(False), grads(True)
    assert plain.keys() == watched.keys()
    for name, g in plain.items():
        assert maxdiff(watched[name], g) <= 1e-5 * max(1.0, float(g.abs().max())), name


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3"])
def test_a_scale_gradient_hook_fires_and_changes_no_other_gradient(arch):
    """A gradient hook on an unedited hook_scale sees d(loss)/d(scale) (it never fired) and moves nothing else."""
    model = perturbed(arch)
    name = "blocks.1.ln1.hook_scale"
    seen = {}

    def backward(fwd, bwd):
        with model.hooks(fwd_hooks=fwd, bwd_hooks=bwd):
            (model(TEXT).float() ** 2).mean().backward()
        grads = {n: p.grad.clone() for n, p in model.hf_model.named_parameters() if p.grad is not None}
        model.hf_model.zero_grad(set_to_none=True)
        return grads

    plain = backward([], [])
    watched = backward([], [(name, lambda g, hook: seen.setdefault("grad", g.detach().clone()))])
    assert "grad" in seen and float(seen["grad"].abs().max()) > 0
    for n, g in plain.items():
        assert maxdiff(watched[n], g) <= 1e-6 * max(1.0, float(g.abs().max())), n
    leaf = {}

    def as_leaf(scale, hook):  # the same value as a leaf: autograd's own d(loss)/d(scale)
        leaf["s"] = scale.detach().clone().requires_grad_()
        return leaf["s"]

    backward([(name, as_leaf)], [])
    assert maxdiff(seen["grad"], leaf["s"].grad) <= 1e-6 * max(1.0, float(leaf["s"].grad.abs().max()))


def _embeddings_grad(model, fwd, loss_of=None):
    """d(loss)/d(input embeddings) with ``fwd`` hooks; ``loss_of(logits, kept)`` defaults to the mean square."""
    x = model.hf_model.get_input_embeddings()(model.to_tokens(TEXT)).detach().requires_grad_()
    kept = {}
    with model.hooks(fwd_hooks=[(n, (lambda f: lambda t, hook: f(t, hook, kept))(f)) for n, f in fwd]):
        out = model.hf_model(inputs_embeds=x).logits
        loss = loss_of(out, kept) if loss_of else out.float().pow(2).mean()
    return torch.autograd.grad(loss, x)[0]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_copies_pass_on_gradients_from_other_consumers_and_detaching_cuts_them(arch):
    """A loss on an unedited copy reaches the stream (it was cut); a copy returned detached cuts its head's path."""
    model = perturbed(arch)

    def keep(t, hook, kept):
        kept[hook.name] = t

    probe_copy = _embeddings_grad(model, [("blocks.1.hook_q_input", keep)],
                                  lambda out, kept: kept["blocks.1.hook_q_input"][:, :, 0].pow(2).sum())
    probe_stream = _embeddings_grad(model, [("blocks.1.hook_resid_pre", keep)],
                                    lambda out, kept: kept["blocks.1.hook_resid_pre"].pow(2).sum())
    assert float(probe_stream.abs().max()) > 1e-3 and maxdiff(probe_copy, probe_stream) <= 1e-5 * float(probe_stream.abs().max())
    cut = _embeddings_grad(model, [("blocks.1.hook_q_input", lambda t, hook, kept: t.detach())])
    want = _embeddings_grad(model, [("blocks.1.attn.hook_q", lambda t, hook, kept: t.detach())])
    plain = _embeddings_grad(model, [])
    assert maxdiff(want, plain) > 1e-6 and maxdiff(cut, want) <= 1e-6 * max(1.0, float(want.abs().max()))


def test_the_scale_gradient_reads_leave_other_consumers_alone():
    """retain_grad() at hook_scale works, and a gradient hook there does not cut a loss that uses the scale."""
    model = perturbed("gpt2")
    name = "blocks.1.ln1.hook_scale"

    def keep(t, hook, kept):
        t.retain_grad()
        kept["scale"] = t

    def on_scale(out, kept):
        return out.float().pow(2).mean() + kept["scale"].sum()

    plain = _embeddings_grad(model, [(name, keep)], on_scale)
    with model.hooks(bwd_hooks=[(name, lambda g, hook: None)]):
        watched = _embeddings_grad(model, [(name, keep)], on_scale)
    assert maxdiff(watched, plain) <= 1e-6 * max(1.0, float(plain.abs().max()))
    seen = {}
    x = model.hf_model.get_input_embeddings()(model.to_tokens(TEXT)).detach()
    with model.hooks(fwd_hooks=[(name, lambda t, hook: keep(t, hook, seen))],
                     bwd_hooks=[(name, lambda g, hook: seen.setdefault("hooked", g.detach().clone()))]):
        model.hf_model(inputs_embeds=x).logits.float().pow(2).mean().backward()
    model.hf_model.zero_grad(set_to_none=True)
    assert seen["scale"].grad is not None and maxdiff(seen["scale"].grad, seen["hooked"]) <= 1e-9


def test_float64_copy_gradients_are_float64_exact():
    model = perturbed("gpt2")
    model.hf_model.double()
    grads = {}

    def keep(g, hook):
        grads[hook.name.split(".")[-1]] = g.detach().clone()

    names = [f"blocks.1.hook_{s}" for s in ("resid_pre", "resid_mid", *SPLIT)]
    with model.hooks(bwd_hooks=[(n, keep) for n in names]):
        model(TEXT).pow(2).mean().backward()
    model.hf_model.zero_grad(set_to_none=True)
    split = sum(grads[f"hook_{s}"].sum(dim=2) for s in SPLIT)
    assert grads["hook_resid_pre"].dtype == torch.float64
    assert maxdiff(grads["hook_resid_pre"], grads["hook_resid_mid"] + split) <= 1e-12 * float(grads["hook_resid_pre"].abs().max())
