"""Every spec survives to_dict -> JSON -> from_dict, and the copy has the same effect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from attnlab.errors import DataFormatError, InvalidInput, InvalidSpec
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


def test_numpy_numbers_build_the_same_specs(tiny_gpt2):
    """numpy integers and reals (a layer read back from a result table is numpy.int64) give the spec that Python
    numbers give, with the same JSON and the same effect; they were refused as 'must be an int'."""
    import numpy as np

    from attnlab.interventions import EditMLPNeuron

    pairs = [
        (AblateHead(np.int64(1), np.int32(2), positions=np.array([1, 2]), rows=[np.int64(0)]),
         AblateHead(1, 2, positions=[1, 2], rows=[0])),
        (AblateHead(np.int64(0), [np.int64(0), 3], method="resample", reference=[OTHER], seed=np.uint8(3)),
         AblateHead(0, [0, 3], method="resample", reference=[OTHER], seed=3)),
        (EditMLPNeuron(np.int64(0), np.int64(1), scale=np.float32(0.5)), EditMLPNeuron(0, 1, scale=0.5)),
        (EditNeuron(1, 0, site="q", dim=np.int16(2), value=np.float64(-2.0)), EditNeuron(1, 0, site="q", dim=2, value=-2.0)),
    ]
    for built, plain in pairs:
        assert json.dumps(built.to_dict()) == json.dumps(plain.to_dict())
        assert type(built.layer) is int and all(type(h) is int for h in built.heads or ())
        with torch.no_grad():
            with tiny_gpt2.intervene(built):
                a = tiny_gpt2(TEXT)
            with tiny_gpt2.intervene(plain):
                b = tiny_gpt2(TEXT)
        assert torch.equal(a, b)
    with pytest.raises(InvalidSpec, match="layer must be an int, got np.True_|layer must be an int, got True"):
        AblateHead(np.bool_(True))
    with pytest.raises(InvalidSpec, match="scale must be a finite number"):
        EditMLPNeuron(0, 1, scale=np.float32("nan"))


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


# -- the JSON boundary: hostile files and dicts become typed errors naming the file/kind/field ------


@pytest.mark.parametrize(
    "content, pattern",
    [
        (b"[" * 100_000 + b"]" * 100_000, r"hostile.json: JSON nested too deeply"),
        ('[{"kind": "ablate_head", "layer": 0, "head": "caf\u00e9"}]'.encode("latin-1"), r"hostile.json:1: not UTF-8 text"),
        ('[{"kind": "ablate_head", "layer": 0}]'.encode("utf-16"), r"hostile.json:1: this is UTF-16 text"),
        (b'[{"kind": "ablate_head", "layer": 0, "seed": ' + b"7" * 5000 + b"}]", r"hostile.json: not usable JSON \(Exceeds the limit"),
        (b'[{"kind": "edit_scores", "layer": 0,\n "distance_penalty": Infinity}]', r"hostile.json:2: Infinity is not standard JSON"),
        (b'[{"kind": "edit_neuron", "layer": 0, "site": "k", "dim": 0, "scale": NaN}]', r"hostile.json:1: NaN is not standard JSON"),
        (b'{"kind": "set_pattern", "layer": 0,\n\n "pattern": [[-Infinity]]}', r"hostile.json:3: -Infinity is not standard JSON"),
        (b"42", r"hostile.json: expected a JSON list of intervention objects, got int"),
        (b"null", r"hostile.json: expected a JSON list of intervention objects, got NoneType"),
        (b"", r"hostile.json: not valid JSON \(line 1: Expecting value"),
        (b'[[{"kind": "ablate_head", "layer": 0}]]', r"hostile.json: intervention #0: an intervention must be a JSON object"),
        (b'[{"kind": "ablate_head", "layer": 0, "seed": "x"}]', r"#0: ablate_head: seed must be an integer, got 'x'"),
        (b'[{"kind": "ablate_head", "layer": -1}]', r"#0: layer must be >= 0, got -1"),
        (b'[{"kind": "ablate_head", "layer": 0, "head": 2, "layer": 1}]',
         r"hostile.json: key 'layer' appears twice in one object; give each field once"),
        (b'[{"kind": "ablate_head", "layer": 0}, {"kind": "patch", "layer": 0, "site": "z", "source": "\\ud800 nurse"}]',
         r"hostile.json: intervention #1: patch: source must be a string or a list of strings of text without lone "
         r"surrogates .*got '\\ud800 nurse'"),
        (b'[{"kind": "patch", "layer": 0, "site": "z", "source": ["ok", "a\\udfff"]}]',
         r"#0: patch: source must be .* without lone surrogates"),
        (b'[{"kind": "ablate_head", "layer": 0, "method": "mean", "reference": ["\\ud83d"]}]',
         r"#0: ablate_head: reference must be a list of strings of text without lone surrogates"),
        (b'[{"kind": "patch", "layer": 0, "site": "\\udc00", "source": "a"}]',
         r"#0: patch: site must be a string of text without lone surrogates"),
    ],
    ids=["deep", "latin-1", "utf-16", "5000-digit", "Infinity", "NaN", "-Infinity", "number", "null", "empty",
         "nested list", "bad seed", "negative layer", "duplicate key", "lone surrogate", "surrogate in a list",
         "surrogate in reference", "surrogate in site"],
)
def test_load_specs_turns_every_bad_file_into_a_data_format_error(tmp_path, content, pattern):
    path = tmp_path / "hostile.json"
    path.write_bytes(content)
    with pytest.raises(DataFormatError, match=pattern):
        load_specs(path)


def test_a_surrogate_pair_is_one_character_and_loads(tmp_path):
    path = tmp_path / "emoji.json"
    path.write_text('[{"kind": "patch", "layer": 0, "head": 0, "site": "z", "source": "the \\ud83d\\ude00 nurse"}]')
    (spec,) = load_specs(path)
    assert spec.source == ["the \U0001f600 nurse"]  # the pair is one character, not refused


def test_load_specs_paths_that_cannot_be_read_are_invalid_input(tmp_path, monkeypatch):
    with pytest.raises(InvalidInput, match=r"spec file .*nope.json: no such file"):
        load_specs(tmp_path / "nope.json")
    with pytest.raises(InvalidInput, match=r"spec file .*: is a folder, not a file"):
        load_specs(tmp_path)
    locked = tmp_path / "locked.json"
    locked.write_text("[]")

    def refuse(self, *args, **kwargs):  # chmod 000 does not stop root, so refuse the open itself
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", refuse)
    with pytest.raises(InvalidInput, match=r"spec file .*locked.json: permission denied"):
        load_specs(locked)


def test_load_specs_accepts_a_utf8_byte_order_mark(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps([AblateHead(1, 2).to_dict()]).encode())
    assert load_specs(path) == [AblateHead(1, 2)]


def test_save_specs_refuses_a_folder(tmp_path):
    with pytest.raises(InvalidInput, match="cannot write spec file"):
        save_specs(tmp_path, [AblateHead(0, 0)])


@pytest.mark.parametrize(
    "data, pattern",
    [
        ([1, 2], r"an intervention must be a JSON object with a 'kind' key, got list"),
        ("ablate_head", r"an intervention must be a JSON object .* got str"),
        ({"layer": 0}, r"needs a 'kind' key \(one of ablate_head"),
        ({"kind": 3, "layer": 0}, r"unknown intervention kind 3 \(valid: ablate_head"),
        ({"kind": ["ablate_head"], "layer": 0}, r"unknown intervention kind \['ablate_head'\]"),
        ({"kind": "ablate_head", "layer": 0, 7: 1}, r"ablate_head: field names must be strings, got 7"),
        ({"kind": "ablate_head", "layer": 0, "sed": 1}, r"ablate_head: unknown field 'sed'; did you mean 'seed'\?"),
        ({"kind": "ablate_head"}, r"ablate_head: missing field 'layer'"),
        ({"kind": "ablate_head", "layer": "0"}, r"ablate_head: layer must be an integer, got '0'"),
        ({"kind": "ablate_head", "layer": True}, r"ablate_head: layer must be an integer, got True"),
        ({"kind": "ablate_head", "layer": 0, "seed": float("nan")}, r"ablate_head: seed must be an integer, got nan"),
        ({"kind": "ablate_head", "layer": 0, "seed": float("inf")}, r"ablate_head: seed must be an integer, got inf"),
        ({"kind": "ablate_head", "layer": 0, "seed": 2**70}, r"seed must be an integer that fits in 64 bits"),
        ({"kind": "ablate_head", "layer": 0, "head": 2**70}, r"head must be null, an integer or a list of integers"),
        ({"kind": "ablate_head", "layer": 0, "method": "mean", "reference": "the cat"}, r"reference must be null or a list of strings"),
        ({"kind": "ablate_head", "layer": 0, "method": "mean", "mean": [[1.0], [1.0, 2.0]]}, r"mean must be a rectangular nested list"),
        ({"kind": "ablate_head", "layer": 0, "method": "mean", "mean": [[1e39]]}, r"mean must be numbers within \+-3.403e\+38"),
        ({"kind": "ablate_head", "layer": 0, "method": "mean", "mean": [[[[[0.0]]]]]}, r"mean must be .* at most 4 levels deep"),
        ({"kind": "block_keys", "layer": 0, "keys": [0], "renormalize": "no"}, r"renormalize must be true or false, got 'no'"),
        ({"kind": "edit_neuron", "layer": 0, "site": "k", "dim": 0, "scale": 2**2000}, r"scale must be a finite number"),
        ({"kind": "edit_neuron", "layer": 0, "site": "k", "dim": 0, "value": float("-inf")}, r"value must be a finite number"),
        ({"kind": "edit_scores", "layer": 0, "distance_penalty": 10**400}, r"distance_penalty must be a finite number"),
        ({"kind": "edit_scores", "layer": 0, "add": [[0.0, float("nan")]]}, r"add must be finite numbers \(no NaN\)"),
        ({"kind": "set_pattern", "layer": 0, "pattern": [[True]]}, r"pattern must be a number or nested lists of numbers, not one holding True"),
        ({"kind": "set_pattern", "layer": 0, "fn": "lambda p: p"}, r"fn must be null: a Python function cannot be given as data"),
        ({"kind": "patch", "layer": 0, "site": "z", "source": {"blocks.0.attn.hook_z": [1.0]}}, r"source must be a string, a list of strings or a tensor"),
        ({"kind": "patch", "layer": 0, "site": "z", "source": [["a"]]}, r"source must be a string, a list of strings or a tensor"),
        ({"kind": "patch", "layer": 0, "site": ["z"], "source": "a"}, r"patch: site must be a string, got \['z'\]"),
    ],
)
def test_from_dict_raises_invalid_spec_naming_kind_and_field(data, pattern):
    with pytest.raises(InvalidSpec, match=pattern):
        from_dict(data)


def test_raw_constructor_errors_become_invalid_spec_naming_the_field(monkeypatch):
    """A field the JSON boundary has no form for (a future spec's) still never leaks a raw error."""
    from attnlab.interventions._base import REGISTRY, Intervention

    class Widen(Intervention):
        kind = "widen"
        fields = ("width", "label")

        def __init__(self, layer, head=None, *, width=1, label="", positions=None, rows=None):
            super().__init__(layer, head, positions=positions, rows=rows)
            self.width = int(width)  # int("wide") -> ValueError
            self.label = label.upper()  # 3 .upper() -> AttributeError

    monkeypatch.setitem(REGISTRY, "widen", Widen)
    assert from_dict({"kind": "widen", "layer": 0, "width": "3"}).width == 3
    with pytest.raises(InvalidSpec, match=r"widen: field 'width' = 'wide' is not valid \(ValueError: invalid literal") as err:
        from_dict({"kind": "widen", "layer": 0, "label": "x", "width": "wide"})
    assert isinstance(err.value.__cause__, ValueError)
    with pytest.raises(InvalidSpec, match=r"widen: field 'label' = 3 is not valid \(AttributeError"):
        from_dict({"kind": "widen", "layer": 0, "width": 2, "label": 3})


@pytest.mark.parametrize("fields, message", [
    ({"mean": [[0.5] * 8] * 4}, r"zero ablation does not use mean= \(only method='mean' does\)"),
    ({"reference": ["the cat sat"]}, r"zero ablation does not use reference= \(only method='mean' or method='resample' does\)"),
    ({"method": "resample", "reference": ["the cat sat"], "mean": [[0.5] * 8] * 4},
     r"resample ablation does not use mean= \(only method='mean' does\)"),
])
def test_an_ablation_field_its_method_ignores_is_refused_not_a_silent_zero_ablation(tmp_path, fields, message):
    """A hand-written mean ablation without "method": "mean" used to run as a zero ablation, silently."""
    with pytest.raises(InvalidSpec, match=message):
        AblateHead(0, 1, **fields)
    path = tmp_path / "specs.json"
    path.write_text(json.dumps([{"kind": "ablate_head", "layer": 0, "head": 1, **fields}]))
    with pytest.raises(DataFormatError, match=rf"^{path}: intervention #0: {message}.*leave \w+= out$"):
        load_specs(path)


def test_a_mean_ablation_may_keep_the_references_its_mean_came_from():
    spec = AblateHead(0, 1, method="mean", reference=["the cat sat"], mean=torch.ones(4, 8))
    assert from_dict(spec.to_dict()) == spec
