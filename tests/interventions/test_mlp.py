"""EditMLPNeuron: scale or set MLP neurons (``blocks.L.mlp.hook_post``) by row, position and neuron."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from attnlab.errors import InvalidLocation, InvalidSpec, UnsupportedModel
from attnlab.interventions import EditMLPNeuron, from_dict, per_row
from attnlab.testing import tiny_model

TEXT = "the nurse said that she was happy"


def _post(model, layer, text=TEXT, specs=()):
    with torch.no_grad(), model.intervene(*specs):
        logits, cache = model.run_with_cache(text, names_filter=f"blocks.{layer}.mlp.hook_post")
    return logits, cache["post", layer]


def test_scale_zero_equals_zeroing_the_neuron_by_hand(any_tiny):
    model, layer, neuron = any_tiny, 1, 3

    def kill(post, hook):
        post = post.clone()
        post[..., neuron] = 0
        return post

    with torch.no_grad():
        clean = model(TEXT)
        by_hand = model.run_with_hooks(TEXT, fwd_hooks=[(f"blocks.{layer}.mlp.hook_post", kill)])
        with model.intervene(EditMLPNeuron(layer, neuron, scale=0.0)):
            edited = model(TEXT)
    assert (by_hand - clean).abs().max() > 1e-4
    assert torch.equal(edited, by_hand)
    assert model.count_hooks() == 0


def test_value_positions_and_neurons_are_exactly_the_ones_addressed(tiny_gemma):
    model = tiny_gemma
    _, clean = _post(model, 0)
    _, edited = _post(model, 0, specs=[EditMLPNeuron(0, [2, 9], value=1.5, positions=[1, 3])])
    addressed = torch.zeros_like(clean, dtype=torch.bool)
    for p in (1, 3):
        for n in (2, 9):
            addressed[:, p, n] = True
    assert torch.all(edited[addressed] == 1.5)
    assert torch.equal(edited[~addressed], clean[~addressed])


def test_scale_multiplies(tiny_llama):
    _, clean = _post(tiny_llama, 1)
    _, edited = _post(tiny_llama, 1, specs=[EditMLPNeuron(1, 5, scale=3.0)])
    assert torch.allclose(edited[..., 5], clean[..., 5] * 3)
    assert torch.equal(edited[..., 6], clean[..., 6])


def test_rows_and_padding(tiny_gpt2):
    """Positions are token positions of each row's own text, whatever the padding side."""
    model = tiny_gpt2
    texts = ["the nurse said that she was happy", "he ran"]
    spec = EditMLPNeuron(0, 4, value=-2.0, positions=[1], rows=[1])
    for side in ("right", "left"):
        with torch.no_grad(), model.intervene(spec):
            out = model.run(texts, padding_side=side, read=["blocks.0.mlp.hook_post"])
        post, tokens = out.cache["blocks.0.mlp.hook_post"], out.tokens
        column = int(tokens.columns(torch.tensor([[1], [1]]))[1, 0])
        assert post[1, column, 4] == -2.0
        assert int((post[..., 4] == -2.0).sum()) == 1  # nothing else in either row


def test_per_row_gives_each_row_its_own_edit(tiny_llama):
    model = tiny_llama
    specs = [None, EditMLPNeuron(1, 2, scale=0.0), EditMLPNeuron(1, 7, value=4.0)]
    with torch.no_grad():
        with model.intervene(*per_row(specs)):
            batch = model([TEXT] * 3)
        alone = [model(TEXT)] + [model.run_with_hooks(TEXT, fwd_hooks=s.hooks(model)) for s in specs[1:]]
    for row, expected in enumerate(alone):
        assert (batch[row] - expected[0]).abs().max() <= 1e-5


def test_generation_with_the_edit_equals_full_forwards(tiny_gemma):
    """Under the KV cache, a neuron edit at a position reached only while generating lands at that position."""
    model = tiny_gemma
    spec = EditMLPNeuron(1, list(range(16)), value=5.0, positions=[6])
    prompt = "the nurse said that"
    generated = model.generate(prompt, max_new_tokens=4, interventions=[spec], return_type="tokens")[0]
    ids = model.to_tokens(prompt)[0]  # 5 tokens: position 6 exists from the third new token on
    with torch.no_grad():
        for _ in range(4):
            with model.intervene(*([spec] if len(ids) > 6 else [])):
                ids = torch.cat([ids, model(ids[None])[0, -1].argmax()[None]])
        clean = model.generate(prompt, max_new_tokens=4, return_type="tokens")[0]
    assert generated.tolist() == ids[-4:].tolist()
    assert generated.tolist() != clean.tolist()  # the edit changed what was generated


def test_validation_names_the_range(tiny_llama):
    with pytest.raises(InvalidLocation, match=r"neuron 64 out of range: tiny-llama has d_mlp=64 \(neurons 0..63\)"):
        with tiny_llama.intervene(EditMLPNeuron(0, 64, scale=0.0)):
            pass
    with pytest.raises(InvalidLocation, match="layer 5 out of range"):
        EditMLPNeuron(5, 0, scale=0.0).validate(tiny_llama.cfg)
    with pytest.raises(InvalidSpec, match="exactly one of scale= or value="):
        EditMLPNeuron(0, 1)
    with pytest.raises(InvalidSpec, match="exactly one of scale= or value="):
        EditMLPNeuron(0, 1, scale=1.0, value=2.0)
    with pytest.raises(InvalidSpec, match="value must be a finite number"):
        EditMLPNeuron(0, 1, value=float("nan"))
    with pytest.raises(InvalidSpec, match="needs neuron="):
        EditMLPNeuron(0, scale=0.0)
    with pytest.raises(InvalidLocation, match="neuron must be >= 0"):
        EditMLPNeuron(0, -1, scale=0.0)
    assert tiny_llama.count_hooks() == 0


def test_position_past_the_end_is_a_typed_error(tiny_gpt2):
    with pytest.raises(InvalidLocation, match=r"position 40 out of range: this input has positions 0..7"):
        _post(tiny_gpt2, 0, specs=[EditMLPNeuron(0, 1, scale=0.0, positions=[40])])
    assert tiny_gpt2.count_hooks() == 0


def test_json_round_trip_and_immutability():
    spec = EditMLPNeuron(2, [10, 11], value=0.5, positions=[3], rows=[0])
    data = json.loads(json.dumps(spec.to_dict()))
    assert data == {"kind": "edit_mlp_neuron", "layer": 2, "positions": [3], "rows": [0], "neuron": [10, 11], "value": 0.5}
    assert from_dict(data) == spec
    assert repr(spec) == "EditMLPNeuron(layer=2, positions=[3], rows=[0], neuron=[10, 11], value=0.5)"
    with pytest.raises(AttributeError, match="immutable"):
        spec.neuron = 3
    with pytest.raises(InvalidSpec, match="unknown field 'neurons'; did you mean 'neuron'"):
        from_dict({"kind": "edit_mlp_neuron", "layer": 0, "neurons": 1, "scale": 0.0})
    assert spec.hook_name == "blocks.2.mlp.hook_post"
    with pytest.raises(InvalidSpec, match="edit_mlp_neuron: neuron must be null, an integer or a list of integers"):
        from_dict({"kind": "edit_mlp_neuron", "layer": 0, "neuron": "x", "scale": 0.0})


def test_bert_neurons(tiny_bert):
    _, clean = _post(tiny_bert, 0)
    _, edited = _post(tiny_bert, 0, specs=[EditMLPNeuron(0, 0, scale=0.0)])
    assert edited[..., 0].abs().max() == 0 and clean[..., 0].abs().max() > 0


def test_model_without_known_mlp_is_refused():
    cfg = dataclasses.replace(tiny_model("gpt2").cfg, d_mlp=None)
    with pytest.raises(UnsupportedModel, match="no neurons to edit"):
        EditMLPNeuron(0, 0, scale=0.0).validate(cfg)
