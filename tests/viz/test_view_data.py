"""The data each view embeds equals what the model computes; bad input fails with typed errors."""

from __future__ import annotations

import html
import json
import math
import re

import numpy as np
import pytest
import torch

from attnlab.engine.locations import hook_name
from attnlab.errors import InvalidInput, InvalidLocation
from attnlab.interventions import AblateHead, BlockKeys, EditNeuron
from attnlab.viz import diff_view, head_view, model_view, neuron_view
from attnlab.viz._html import json_for_script

TEXT = "the nurse said that she was happy"
PAIR = ("the nurse said that", "she was happy")


def embedded_data(view) -> dict:
    """The JSON the page itself carries (not view.data), to test what the browser receives."""
    match = re.search(r'<script type="application/json" id="[^"]+">(.*?)</script>', view.html, re.S)
    return json.loads(match.group(1))


def patterns(model, text_or_ids, **kwargs) -> np.ndarray:
    names = [hook_name(layer, "pattern") for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(text_or_ids, names_filter=names, **kwargs)
    return np.stack([cache[n][0].numpy() for n in names])  # [layer, head, query, key]


def test_head_view_embeds_the_models_patterns(any_tiny):
    view = head_view(any_tiny, TEXT)
    data = embedded_data(view)
    expected = patterns(any_tiny, TEXT)
    assert data["tokens"] == any_tiny.to_str_tokens(TEXT)
    assert np.asarray(data["attention"]).shape == expected.shape
    np.testing.assert_allclose(np.asarray(data["attention"]), expected, atol=6e-5)
    assert any_tiny.count_hooks() == 0


def test_layers_and_heads_restrict_the_data(tiny_llama):
    view = model_view(tiny_llama, TEXT, layers=[1], heads=[3, 0])
    full = patterns(tiny_llama, TEXT)
    got = np.asarray(view.data["attention"])
    assert got.shape == (1, 2, full.shape[2], full.shape[3])
    np.testing.assert_allclose(got[0], full[1][[3, 0]], atol=6e-5)
    assert view.data["layers"] == [1] and view.data["heads"] == [3, 0]


def test_token_cap_names_the_cap_and_the_option(tiny_gpt2):
    long_text = " ".join(["the nurse said that she was happy"] * 3)  # 22 tokens with [BOS]
    with pytest.raises(InvalidInput, match=r"22 tokens .* max_tokens=10 .* pass max_tokens=22"):
        head_view(tiny_gpt2, long_text, max_tokens=10)
    assert len(head_view(tiny_gpt2, long_text, max_tokens=22).data["tokens"]) == 22
    with pytest.raises(InvalidInput, match="max_tokens must be a positive integer"):
        head_view(tiny_gpt2, TEXT, max_tokens=0)


@pytest.mark.parametrize("make", [head_view, model_view, neuron_view])
def test_bad_locations_name_the_valid_range(tiny_gpt2, make):
    with pytest.raises(InvalidLocation, match=r"layer 5 out of range: tiny-gpt2 has layers 0..1"):
        make(tiny_gpt2, TEXT, layers=[0, 5])
    with pytest.raises(InvalidLocation, match=r"head -1 out of range: tiny-gpt2 has heads 0..3"):
        make(tiny_gpt2, TEXT, heads=-1)
    with pytest.raises(InvalidInput, match="layers is empty"):
        make(tiny_gpt2, TEXT, layers=[])
    assert tiny_gpt2.count_hooks() == 0


def test_bad_text_and_options(tiny_gpt2, tiny_bert):
    with pytest.raises(InvalidInput, match="text is empty"):
        head_view(tiny_gpt2, "   ")
    with pytest.raises(InvalidInput, match="sentence pairs are for encoders"):
        head_view(tiny_gpt2, PAIR)
    with pytest.raises(InvalidInput, match="a view takes one text"):
        head_view(tiny_gpt2, 42)
    with pytest.raises(InvalidInput, match=r"threshold must be a number in \[0, 1\)"):
        head_view(tiny_gpt2, TEXT, threshold=1.5)
    with pytest.raises(InvalidLocation, match=r"layer 1 is not among the layers shown \(\[0\]\)"):
        head_view(tiny_gpt2, TEXT, layers=[0], layer=1)
    with pytest.raises(InvalidInput, match=r"thumbnail must be .* 24..400"):
        model_view(tiny_bert, TEXT, thumbnail=5)


def test_token_ids_are_accepted(tiny_gpt2):
    ids = tiny_gpt2.to_tokens(TEXT)
    view = head_view(tiny_gpt2, ids[0])
    np.testing.assert_allclose(np.asarray(view.data["attention"]), patterns(tiny_gpt2, ids), atol=6e-5)
    with pytest.raises(InvalidInput, match="views show one input"):
        head_view(tiny_gpt2, torch.cat([ids, ids]))


def test_sentence_pair_segments_and_token_type_ids(tiny_bert):
    view = head_view(tiny_bert, PAIR)
    tokens, segments = view.data["tokens"], view.data["segments"]
    assert tokens == ["[CLS]", "the", "nurse", "said", "that", "[SEP]", "she", "was", "happy", "[SEP]"]
    assert segments == [0] * 6 + [1] * 4
    enc = tiny_bert.tokenizer(*PAIR, return_tensors="pt")
    types = torch.tensor([segments])  # sentence B runs with token type 1, as BERT's tokenizer would give
    expected = patterns(tiny_bert, enc["input_ids"], attention_mask=enc["attention_mask"], token_type_ids=types)
    np.testing.assert_allclose(np.asarray(view.data["attention"]), expected, atol=6e-5)
    without_types = patterns(tiny_bert, enc["input_ids"], attention_mask=enc["attention_mask"])
    assert np.abs(without_types - expected).max() > 1e-3  # so the segment ids really were passed
    assert head_view(tiny_bert, TEXT).data["segments"] is None


def test_interventions_show_in_the_head_view(tiny_gpt2):
    view = head_view(tiny_gpt2, TEXT, interventions=[BlockKeys(1, 2, keys=[1])])
    att = np.asarray(view.data["attention"])
    assert np.all(att[1, 2, 2:, 1] == 0)  # every query after the blocked key gives it nothing
    np.testing.assert_allclose(att[1, 2].sum(-1), 1, atol=1e-3)  # renormalised
    assert att[1, 1, 2:, 1].min() > 0  # other heads untouched
    assert view.data["interventions"] == [repr(BlockKeys(1, 2, keys=[1]))]
    assert tiny_gpt2.count_hooks() == 0


def test_diff_view_holds_clean_and_intervened_patterns(tiny_gpt2):
    spec = AblateHead(0, 1)
    view = diff_view(tiny_gpt2, TEXT, spec)
    clean = patterns(tiny_gpt2, TEXT)
    with tiny_gpt2.intervene(spec):
        edited = patterns(tiny_gpt2, TEXT)
    to_array = lambda x: np.asarray([[[[np.nan if v is None else v for v in row] for row in h] for h in lay] for lay in x])
    got_clean, got_edit = to_array(view.data["clean"]), to_array(view.data["intervened"])
    future = np.triu(np.ones(clean.shape[-2:], dtype=bool), 1)
    assert np.isnan(got_clean[..., future]).all()  # a decoder's future keys are masked, not zero
    np.testing.assert_allclose(got_clean[..., ~future], clean[..., ~future], atol=6e-5)
    np.testing.assert_allclose(got_edit[..., ~future], edited[..., ~future], atol=6e-5)
    change = np.asarray(view.data["change"])
    np.testing.assert_allclose(change, np.abs(edited - clean).max(axis=(2, 3)), atol=1e-4)
    # ablating a head's output leaves its own layer's patterns alone and changes the next layer's
    assert change[0].max() == 0 and change[1].min() > 1e-3
    assert view.data["start"] == [1, int(change[1].argmax())]
    assert view.data["max_change"] == pytest.approx(change.max())


def test_diff_view_errors(tiny_gpt2):
    with pytest.raises(InvalidInput, match="needs at least one intervention"):
        diff_view(tiny_gpt2, TEXT, [])
    with pytest.raises(InvalidLocation, match="layer 7 out of range"):
        diff_view(tiny_gpt2, TEXT, [AblateHead(7, 0)])
    with pytest.raises(InvalidLocation, match=r"start \(1, 0\) is not among the layers \[0\]"):
        diff_view(tiny_gpt2, TEXT, [AblateHead(0, 0)], layers=[0], start=(1, 0))
    assert tiny_gpt2.count_hooks() == 0


@pytest.mark.parametrize("layer, head", [(True, False), (1.0, 0.0)])
def test_start_indices_refuse_bools_and_floats_as_layers_and_heads_do(tiny_gpt2, layer, head):
    # ``True in [1]`` and ``1.0 in [1]`` hold, so head_view(layer=) and diff_view(start=) took them for layer 1
    kind = type(layer).__name__
    with pytest.raises(InvalidLocation, match=rf"^layer must be a whole number \(an int\), got {layer!r} \({kind}\); "
                                              r"tiny-gpt2 has layers 0..1$"):
        head_view(tiny_gpt2, TEXT, layer=layer)
    with pytest.raises(InvalidLocation, match=rf"^layer must be a whole number \(an int\), got {layer!r} "):
        diff_view(tiny_gpt2, TEXT, [AblateHead(0, 0)], start=(layer, 0))
    with pytest.raises(InvalidLocation, match=rf"^head must be a whole number \(an int\), got {head!r} \({kind}\); "
                                              r"tiny-gpt2 has heads 0..3$"):
        diff_view(tiny_gpt2, TEXT, [AblateHead(0, 0)], start=(1, head))
    assert tiny_gpt2.count_hooks() == 0


def test_numpy_integers_pick_layers_heads_and_the_start(tiny_gpt2):
    one, zero = np.int64(1), np.int64(0)
    assert head_view(tiny_gpt2, TEXT, layer=one).data["layer"] == 1
    assert diff_view(tiny_gpt2, TEXT, [AblateHead(0, 0)], start=(one, zero)).data["start"] == [1, 0]
    # a bare numpy integer for layers=/heads= was iterated and refused as "not an int"
    view = model_view(tiny_gpt2, TEXT, layers=one, heads=zero)
    assert view.data["layers"] == [1] and view.data["heads"] == [0]


def expected_keys(model, layer: int, i: int, n: int) -> list[int]:
    """Keys query i may see: all (encoder), earlier ones (decoder), within the window (sliding layers)."""
    if not model.cfg.is_causal:
        return list(range(n))
    hf = model.hf_model.config
    if getattr(hf, "layer_types", None) and hf.layer_types[layer] == "sliding_attention":
        return list(range(max(0, i - hf.sliding_window + 1), i + 1))
    return list(range(i + 1))


@pytest.mark.parametrize("arch_fixture", ["tiny_gpt2", "tiny_llama", "tiny_gemma", "tiny_bert"])
def test_neuron_view_products_add_up_to_the_scores(arch_fixture, request):
    model = request.getfixturevalue(arch_fixture)
    view = neuron_view(model, TEXT, layers=[1], heads=[0, 2])
    q, k = np.asarray(view.data["q"]), np.asarray(view.data["k"])  # [layer, head, pos, d_head]
    n, d = len(view.data["tokens"]), model.cfg.d_head
    assert q.shape == (1, 2, n, d)
    scale = view.data["scales"][0]
    assert scale == pytest.approx(1 / math.sqrt(d), rel=1e-3)  # all tiny configs use 1/sqrt(d_head)
    scores = view.data["scores"][0]
    pattern = np.asarray(view.data["attention"][0])
    for h in range(2):
        for i in range(n):
            visible = [j for j in range(n) if scores[h][i][j] is not None]
            assert visible == expected_keys(model, 1, i, n)
            s = np.asarray([scores[h][i][j] for j in visible])
            np.testing.assert_allclose((q[0, h, i] * k[0, h, visible]).sum(-1) * scale, s, atol=2e-3, rtol=1e-3)
            soft = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
            np.testing.assert_allclose(pattern[h, i, visible], soft, atol=2e-3)
    # the q the page shows is the one an EditNeuron changes
    edited = neuron_view(model, TEXT, layers=[1], heads=[0], interventions=[EditNeuron(1, 0, site="q", dim=3, value=5.0)])
    assert np.allclose(np.asarray(edited.data["q"])[0, 0, :, 3], 5.0)


def test_neuron_view_query_option(tiny_gpt2):
    assert neuron_view(tiny_gpt2, TEXT).data["query"] == len(tiny_gpt2.to_str_tokens(TEXT)) - 1
    assert neuron_view(tiny_gpt2, TEXT, query=2).data["query"] == 2
    with pytest.raises(InvalidLocation, match=r"query token 99 out of range: this input has tokens 0..7"):
        neuron_view(tiny_gpt2, TEXT, query=99)


def test_pages_are_self_contained_and_ids_unique(tiny_gpt2, tmp_path):
    view = head_view(tiny_gpt2, TEXT)
    page = view.html
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    # no fetches of any kind: the only URL is the SVG namespace name, which is never fetched
    assert set(re.findall(r"https?://[^\s\"'<>)]+", page)) == {"http://www.w3.org/2000/svg"}
    for fetch in ("src=", "href=", "@import", "url(", "<link", "fetch(", "XMLHttpRequest"):
        assert fetch not in page, fetch
    a, b = view.fragment(), view.fragment()
    id_a, id_b = (re.search(r'id="(attnlab-[0-9a-f]+)"', f).group(1) for f in (a, b))
    assert id_a != id_b and id_b not in a
    frame = view._repr_html_()
    assert frame.startswith("<iframe srcdoc=")
    srcdoc = html.unescape(re.search(r'srcdoc="([^"]*)"', frame).group(1))
    assert srcdoc.startswith("<!DOCTYPE html>") and "attnlab.run(" in srcdoc
    path = view.save(tmp_path / "sub" / "head.html")
    assert path.read_text(encoding="utf-8").count('class="attnlab-view"') == 1


def test_json_in_script_cannot_close_the_script():
    data = {"tokens": ["</script><script>alert(1)</script>", "<!--", "a&b"], "x": [0.5]}
    text = json_for_script(data)
    assert "</" not in text and "<!--" not in text
    assert json.loads(text) == data


def test_undefined_weights_become_null_not_invalid_json():
    from attnlab.viz._data import to_list

    out = to_list(np.array([[0.123456, np.nan], [-0.0, np.inf]]))
    assert out == [[0.1235, None], [0.0, None]]
    assert json.loads(json_for_script(out)) == out  # allow_nan=False would reject NaN


def test_views_tokenise_through_the_engine(tiny_bert, tiny_gpt2):
    from attnlab.engine.tokens import Tokens
    from attnlab.viz._data import view_input

    source = view_input(tiny_gpt2, TEXT)
    expected = tiny_gpt2.tokens(TEXT)
    assert isinstance(source.tokens, Tokens)
    assert torch.equal(source.tokens.ids, expected.ids) and torch.equal(source.tokens.mask, expected.mask)
    assert source.strings == tiny_gpt2.to_str_tokens(TEXT) and source.token_type_ids is None
    pair = view_input(tiny_bert, PAIR)
    assert pair.token_type_ids.tolist() == [pair.segments]  # BERT segments travel next to the engine's Tokens
    with pytest.raises(InvalidInput, match=r"token ids must lie in 0\.\.\d+ for tiny-gpt2"):
        head_view(tiny_gpt2, torch.tensor([0, 10**6]))  # the engine's vocabulary check applies to views too


def test_neuron_view_scale_is_the_models(any_tiny):
    view = neuron_view(any_tiny, TEXT, layers=[0, 1], heads=[0])
    assert view.data["scales"] == [any_tiny.cfg.scaling] * 2
    from attnlab.viz.neuron_view import effective_scale

    q, k = np.asarray(view.data["q"][0]).swapaxes(0, 1), np.asarray(view.data["k"][0]).swapaxes(0, 1)
    scores = np.asarray([[[np.nan if v is None else v for v in row] for row in h] for h in view.data["scores"][0]])
    with pytest.warns(DeprecationWarning, match=r"use model\.cfg\.scaling"):
        fitted = effective_scale(q, k, np.nan_to_num(scores), np.isnan(scores))
    assert fitted == pytest.approx(any_tiny.cfg.scaling, rel=1e-3)
