import numpy as np
import pytest
import torch

from attnlab.analysis.neurons import decay_neurons, neuron_data, unit_dims, unit_scores
from attnlab.engine.locations import hook_name
from attnlab.errors import InvalidInput, InvalidLocation

TEXT = "the nurse said that she left the house because the doctor was not happy ."


def _model_attention(model, text, layer):
    pattern, scores = hook_name(layer, "pattern"), hook_name(layer, "attn_scores")
    _, cache = model.run_with_cache(text, names_filter=[pattern, scores])
    return cache[pattern][0], cache[scores][0]


def test_neuron_view_softmax_is_the_models_pattern(any_tiny):
    layer, head, query = 1, 2, 6
    v = neuron_data(any_tiny, TEXT, layer=layer, head=head, query=query)
    pattern, scores = _model_attention(any_tiny, TEXT, layer)
    assert torch.allclose(v.pattern, pattern[head, query], atol=1e-6)
    assert torch.allclose(v.qk, v.q[None] * v.k)
    vis = v.visible
    assert torch.allclose(v.scores[vis], scores[head, query][vis], atol=1e-5)
    assert torch.allclose(v.scores[vis], v.qk.sum(-1)[vis] * v.scale, atol=1e-6)
    if any_tiny.cfg.is_causal:
        assert not vis[query + 1 :].any() and torch.isinf(v.scores[query + 1 :]).all()
    top = v.top_dims(0, n=3)
    assert len(top) == 3 and top["contribution"].abs().is_monotonic_decreasing


def test_neuron_data_soft_caps_the_scores_as_the_model_does():
    """On a soft-capped model (Gemma 2) the scores were scale * q.k and their softmax was not the model's pattern."""
    from tests._softcapped import tiny_softcapped

    model = tiny_softcapped(0.5)
    layer, head, query = 1, 0, 6
    v = neuron_data(model, TEXT, layer=layer, head=head, query=query)
    pattern, scores = _model_attention(model, TEXT, layer)
    vis = v.visible
    raw = v.qk.sum(-1)[vis] * v.scale
    assert (raw - scores[head, query][vis]).abs().max() > 0.05  # the cap bends these scores
    assert torch.allclose(v.scores[vis], 0.5 * torch.tanh(raw / 0.5), atol=1e-6)
    assert torch.allclose(v.scores[vis], scores[head, query][vis], atol=1e-5)
    assert torch.allclose(v.pattern, pattern[head, query], atol=1e-6)
    assert model.count_hooks() == 0


def test_unit_contributions_sum_to_the_scores(any_tiny):
    us = unit_scores(any_tiny, TEXT, layer=1, head=3)
    _, scores = _model_attention(any_tiny, TEXT, 1)
    vis = scores[3] > -1e30
    assert us.shape[0] == (any_tiny.cfg.d_head // 2 if any_tiny.cfg.rotary else any_tiny.cfg.d_head)
    assert torch.allclose(us.sum(0)[vis], scores[3][vis], atol=1e-5)


def test_rotary_pairs_follow_rotate_half(tiny_llama):
    """HF's rotation mixes dim u only with u + d_head/2: a vector living on that pair stays on it."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    rope = tiny_llama.hf_model.model.rotary_emb
    d = tiny_llama.cfg.d_head
    x = torch.zeros(1, 1, 5, d)
    dims = unit_dims(tiny_llama, 1)
    assert dims == [1, 1 + d // 2]
    x[..., dims] = torch.tensor([0.3, -1.2])
    cos, sin = rope(x.reshape(1, 5, d), torch.arange(5)[None])
    rotated, _ = apply_rotary_pos_emb(x, x, cos, sin)
    others = [i for i in range(d) if i not in dims]
    assert rotated[..., others].abs().max() == 0
    assert not torch.allclose(rotated[0, 0, 3, dims], x[0, 0, 3, dims])  # it did rotate
    assert torch.allclose(rotated[..., dims].norm(dim=-1), x[..., dims].norm(dim=-1))
    assert not __import__("attnlab.testing", fromlist=["tiny_model"]).tiny_model("gpt2").cfg.rotary


def test_decay_profile_is_the_mean_of_unit_scores_by_distance(tiny_gemma):
    prof = decay_neurons(tiny_gemma, [TEXT], ignore_first=False, progress=False)
    n = len(tiny_gemma.to_tokens(TEXT)[0])
    L, H, U, D = prof.mean.shape
    assert (L, H, U, D) == (3, 4, 4, n)
    for layer in (0, 2):  # sliding (window 4) and global layers
        us = unit_scores(tiny_gemma, TEXT, layer=layer, head=1)
        _, scores = _model_attention(tiny_gemma, TEXT, layer)
        vis = scores[1] > -1e30
        for dist in (0, 2, 3, 7):
            diag_vis = torch.diagonal(vis, offset=-dist)
            if not diag_vis.any():
                assert np.isnan(prof.mean[layer, 1, :, dist]).all()  # beyond the sliding window
                continue
            expected = torch.diagonal(us, offset=-dist, dim1=-2, dim2=-1)[:, diag_vis].mean(-1)
            assert np.allclose(prof.mean[layer, 1, :, dist], expected.numpy(), atol=1e-5)
            assert prof.counts[layer, 1, dist] == diag_vis.sum().item()


def test_ranking_finds_a_planted_decay_neuron(tiny_gpt2):
    """Make q[dim 3] = 1 and k[dim 3] = -position at layer 0 head 1: its contribution falls linearly with distance."""
    d = tiny_gpt2.cfg.d_head
    scale = d ** -0.5

    def set_q(x, hook):
        x = x.clone()
        x[:, :, 1, 3] = 1.0
        return x

    # contribution(query i, key j) = scale * q * k = scale * j; at distance t the keys are j = 0..n-1-t, so the
    # mean is scale * (n - 1 - t) / 2: a clean planted decay with slope -scale / 2.
    def set_k_decay(x, hook):
        x = x.clone()
        x[:, :, 1, 3] = torch.arange(x.shape[1], dtype=x.dtype)
        return x

    with tiny_gpt2.hooks(fwd_hooks=[(hook_name(0, "q"), set_q), (hook_name(0, "k"), set_k_decay)]):
        prof = decay_neurons(tiny_gpt2, [TEXT], ignore_first=False, progress=False)
    r = prof.table
    assert (r.loc[0, "layer"], r.loc[0, "head"], r.loc[0, "unit"]) == (0, 1, 3)
    assert r.loc[0, "spearman"] == pytest.approx(-1.0)
    assert r.loc[0, "slope"] == pytest.approx(-scale / 2, rel=1e-4)
    assert r.loc[0, "dims"] == "3"
    assert prof.curve(0, 1, 3)["contribution"].iloc[0] == pytest.approx(scale * (len(tiny_gpt2.to_tokens(TEXT)[0]) - 1) / 2, rel=1e-4)
    assert len(prof.plot(units=[(0, 1, 3)]).axes) == 1


def test_texts_too_short_to_rank_are_refused(tiny_llama):
    """["the nurse"] gave an empty table, and plot() / save() a raw pandas 'No objects to concatenate'."""
    message = r"need at least 3 ranked distances \(1\.\.\d+, each with >= 1 query-key pairs\) .* give longer texts"
    with pytest.raises(InvalidInput, match=message):
        decay_neurons(tiny_llama, ["the nurse"], progress=False)
    # a max_distance too small for a ranking said "give longer texts" of texts that were long enough
    with pytest.raises(InvalidInput, match=r"holds distances up to 1 \(the texts' length or decay_neurons\(max_distance=\.\.\.\) "
                                           r"sets that\); give longer texts or a larger max_distance"):
        decay_neurons(tiny_llama, [TEXT], max_distance=1, progress=False)
    prof = decay_neurons(tiny_llama, [TEXT], progress=False).ranked(min_count=10 ** 6)  # no distance has that many
    assert prof.table.empty
    with pytest.raises(InvalidInput, match=r"need at least 3 ranked distances \(1\.\.\d+, each with >= 1000000 "):
        prof.plot()


def test_bad_locations(tiny_llama):
    with pytest.raises(InvalidLocation, match=r"head 4 out of range: tiny-llama has heads 0\.\.3"):
        neuron_data(tiny_llama, TEXT, layer=0, head=4, query=0)
    with pytest.raises(InvalidLocation, match=r"layer 5 out of range"):
        neuron_data(tiny_llama, TEXT, layer=5, head=0, query=0)
    with pytest.raises(InvalidLocation, match=r"query position 99 out of range: this text has positions 0\.\.15"):
        neuron_data(tiny_llama, TEXT, layer=0, head=0, query=99)
    with pytest.raises(InvalidLocation, match=r"unit 4 out of range: tiny-llama has pairs 0\.\.3"):
        unit_dims(tiny_llama, 4)
    with pytest.raises(InvalidInput, match="non-empty string"):
        unit_scores(tiny_llama, "", layer=0, head=0)
    with pytest.raises(InvalidInput, match="empty corpus"):
        decay_neurons(tiny_llama, [], progress=False)
    prof = decay_neurons(tiny_llama, [TEXT], progress=False)
    with pytest.raises(InvalidInput, match="unknown ranking 'steep'"):
        prof.ranked(by="steep")
    with pytest.raises(InvalidInput, match="min_distance < max_distance"):
        prof.ranked(min_distance=5, max_distance=3)
    with pytest.raises(InvalidLocation, match="key 40 out of range"):
        neuron_data(tiny_llama, TEXT, layer=0, head=0, query=2).top_dims(40)


def test_decay_on_a_sliding_window_layer_spans_only_the_distances_it_sees(tiny_gemma):
    """Layer 0 of tiny Gemma-3 sees distances 0..3 (window 4): its fall is its slope over 1..3, not over 1..n-1
    (a line stretched past the window ranked such heads first: decay 3.47 = 14 x slope on a 16-token text)."""
    prof = decay_neurons(tiny_gemma, [TEXT], progress=False)
    n = len(tiny_gemma.to_tokens(TEXT)[0])
    table = prof.table.set_index(["layer", "head", "unit"])
    for (layer, head, unit), row in table.iterrows():
        curve = prof.curve(layer, head, unit).dropna()
        seen = curve[curve.distance >= 1]
        assert row["span"] == seen.distance.max() - seen.distance.min()
        slope = np.polyfit(seen.distance, seen.contribution, 1)[0]
        assert row["slope"] == pytest.approx(slope, rel=1e-4, abs=1e-7)
        assert row["decay"] == pytest.approx(-slope * row["span"], rel=1e-4, abs=1e-7)
        assert row["far"] == pytest.approx(seen.contribution.iloc[-1], rel=1e-5)
    assert table.loc[0, "span"].max() == 2 and table.loc[2, "span"].max() == n - 3  # key 0 (the sink) left out
