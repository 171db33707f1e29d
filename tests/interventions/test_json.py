"""Every spec survives to_dict -> JSON -> from_dict, and the copy has the same effect."""

from __future__ import annotations

import json

import pytest
import torch

from attnlab.errors import DataFormatError, InvalidSpec
from attnlab.interventions import (
    AblateHead,
    BlockKeys,
    EditNeuron,
    EditScores,
    Patch,
    SetPattern,
    from_dict,
    load_specs,
    per_row,
    save_specs,
)

from .conftest import OTHER, TEXT

N = 8  # tokens in TEXT for the tiny decoder tokenizer ([BOS] + 7 words)


def _pattern(n=N):
    torch.manual_seed(0)
    return torch.randn(n, n).masked_fill(~torch.ones(n, n).tril().bool(), float("-inf")).softmax(-1)


SPECS = [
    AblateHead(1, 2),
    AblateHead(0, [0, 3], positions=[1, 2], rows=[0]),
    AblateHead(1, 1, method="mean", mean=torch.arange(32.0).reshape(4, 8) / 32),
    AblateHead(1, 1, method="mean", reference=["the cat sat", "a dog ran"]),
    AblateHead(0, 2, method="resample", reference=["the cat sat", "a dog ran to the car"], seed=5),
    SetPattern(1, 0, pattern=_pattern()),
    SetPattern(1, 0, pattern=_pattern() * 2, renormalize=True),
    BlockKeys(0, None, keys=[0, 3]),
    BlockKeys(1, 2, keys=[1], renormalize=False),
    EditScores(1, 3, distance_penalty=0.25),
    EditScores(0, 1, add=torch.linspace(0, 2, N).repeat(N, 1)),  # a constant would be softmax-invariant
    EditScores(0, 1, replace=torch.zeros(N, N)),
    EditNeuron(0, 1, site="q", dim=3, scale=0.0),
    EditNeuron(1, None, site="v", dim=[0, 5], value=2.5, positions=[4]),
    Patch(1, 2, site="pattern", source=[OTHER]),
    Patch(0, 1, site="z", source=torch.ones(1, N, 4, 8)),
]


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_json_round_trip_is_equal_and_has_the_same_effect(spec, tiny_gpt2):
    text = json.dumps(spec.to_dict())
    copy = from_dict(json.loads(text))
    assert type(copy) is type(spec)
    assert copy == spec
    assert repr(copy) == repr(spec)
    model = tiny_gpt2
    with torch.no_grad():
        clean = model([TEXT, TEXT])
        with model.intervene(spec):
            original = model([TEXT, TEXT])
        with model.intervene(copy):
            copied = model([TEXT, TEXT])
    assert torch.equal(copied, original)
    assert (original - clean).abs().max() > 1e-5


def test_repr_is_readable():
    assert repr(AblateHead(3, 5)) == "AblateHead(layer=3, head=5)"
    assert repr(EditNeuron(2, 1, site="k", dim=7, scale=0.0)) == "EditNeuron(layer=2, head=1, site='k', dim=7, scale=0.0)"
    assert repr(SetPattern(1, 0, pattern=_pattern())) == f"SetPattern(layer=1, head=0, pattern=tensor({N}, {N}))"
    assert repr(BlockKeys(0, keys=[1, 2])) == "BlockKeys(layer=0, keys=[1, 2])"


def test_to_dict_is_plain_json_data():
    data = AblateHead(0, [0, 3], positions=[1, 2], rows=[0]).to_dict()
    assert data == {"kind": "ablate_head", "layer": 0, "head": [0, 3], "positions": [1, 2], "rows": [0]}
    assert EditScores(1, 3, distance_penalty=0.25).to_dict() == {
        "kind": "edit_scores", "layer": 1, "head": 3, "distance_penalty": 0.25,
    }


def test_save_and_load_specs(tmp_path, tiny_gpt2):
    path = tmp_path / "specs.json"
    save_specs(path, SPECS)
    loaded = load_specs(path)
    assert loaded == SPECS
    single = tmp_path / "one.json"
    single.write_text(json.dumps(AblateHead(1, 2).to_dict()))  # a lone object is a list of one
    assert load_specs(single) == [AblateHead(1, 2)]
    with torch.no_grad(), tiny_gpt2.intervene(*loaded[:3]):
        a = tiny_gpt2(TEXT)
    with torch.no_grad(), tiny_gpt2.intervene(*SPECS[:3]):
        b = tiny_gpt2(TEXT)
    assert torch.equal(a, b)


def test_malformed_json_file_reports_the_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n {"kind": "ablate_head", "layer": 1},\n {"kind": "ablate_head" "layer": 2}\n]\n')
    with pytest.raises(DataFormatError, match=r"bad.json: not valid JSON \(line 3: Expecting ','"):
        load_specs(path)


def test_bad_entries_in_a_json_file_name_the_entry(tmp_path):
    path = tmp_path / "specs.json"
    path.write_text(json.dumps([AblateHead(1, 2).to_dict(), {"kind": "ablate_heads", "layer": 0}]))
    with pytest.raises(DataFormatError, match=r"intervention #1: unknown intervention kind 'ablate_heads'; did you mean 'ablate_head'\?"):
        load_specs(path)
    path.write_text(json.dumps({"kind": "edit_neuron", "layer": 0, "site": "k", "dim": 1, "scael": 2.0}))
    with pytest.raises(DataFormatError, match=r"#0: edit_neuron: unknown field 'scael'; did you mean 'scale'\?"):
        load_specs(path)
    path.write_text(json.dumps("ablate_head"))
    with pytest.raises(DataFormatError, match="expected a JSON list of intervention objects"):
        load_specs(path)


def test_specs_holding_functions_refuse_to_serialise():
    spec = SetPattern(0, 0, fn=lambda p: p)
    with pytest.raises(InvalidSpec, match="field 'fn' holds a Python function, which cannot be saved as JSON"):
        spec.to_dict()
    with pytest.raises(InvalidSpec, match="per_row: .* holds a function; set rows= on it directly"):
        per_row([spec])


def test_per_row_round_trips_too():
    specs = per_row([AblateHead(0, 1), None, [EditScores(1, 0, distance_penalty=1.0), BlockKeys(0, keys=[0])]])
    assert [s.rows for s in specs] == [(0,), (2,), (2,)]
    assert [from_dict(json.loads(json.dumps(s.to_dict()))) for s in specs] == specs
