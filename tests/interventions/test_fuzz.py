"""Property-based fuzzing: random bad (and good) specs raise only attnlab's typed errors.

Whatever hypothesis builds (layers, heads, dims, sites, methods, NaN or wrongly shaped or
unnormalised patterns, random JSON dicts), constructing it, applying it and running the
model either works or raises an ``AttnlabError``; never a raw PyTorch/Python error. After
each example the model has no hook left and computes exactly what it computed before.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnlab.errors import AttnlabError
from attnlab.interventions import AblateHead, BlockKeys, EditNeuron, EditScores, Patch, SetPattern, from_dict
from attnlab.testing import tiny_model

TEXT = "the nurse said that she was happy"
_MODELS: dict[str, tuple] = {}


def _model(arch: str):
    """One tiny model per architecture for the whole module, with its clean output."""
    if arch not in _MODELS:
        model = tiny_model(arch)
        with torch.no_grad():
            _MODELS[arch] = (model, model(TEXT))
    return _MODELS[arch]


FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ints = st.integers(min_value=-3, max_value=20)
index = st.one_of(st.none(), ints, st.lists(ints, max_size=4), st.booleans(), st.text(max_size=3), st.floats())
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5), st.none(), st.text(max_size=2))
sites = st.sampled_from(["q", "k", "v", "attn_scores", "pattern", "z", "kk", "patern", "Z", "", "hook_q"])
methods = st.sampled_from(["zero", "mean", "resample", "mena", "ZERO", ""])


@st.composite
def tensors(draw):
    """Tensors of random shape (including the right one) with NaN, inf, negative or unnormalised values."""
    shape = draw(st.lists(st.integers(0, 9), min_size=0, max_size=5))
    if draw(st.booleans()):
        shape = [8, 8]
    n = math.prod(shape)
    kind = draw(st.sampled_from(["softmax", "random", "nan", "inf", "negative", "zeros", "big"]))
    x = torch.rand(*shape) if shape else torch.rand(())
    if kind == "softmax" and shape:
        x = torch.randn(*shape).softmax(-1)
    elif kind == "nan" and n:
        x.view(-1)[draw(st.integers(0, n - 1))] = float("nan")
    elif kind == "inf" and n:
        x.view(-1)[0] = float("inf")
    elif kind == "negative":
        x = -x
    elif kind == "zeros":
        x = torch.zeros_like(x)
    elif kind == "big":
        x = x * 1e30
    return x if draw(st.booleans()) else x.tolist()


def _build(factory):
    """Construct a spec; a typed error here is a fine outcome."""
    try:
        return factory()
    except AttnlabError:
        return None


def _check(arch, spec):
    model, clean = _model(arch)
    if spec is not None:
        try:
            with torch.no_grad(), model.intervene(spec):
                out = model(TEXT)
            assert out.shape == clean.shape
        except AttnlabError:
            pass
    assert model.count_hooks() == 0
    with torch.no_grad():
        assert torch.equal(model(TEXT), clean)


archs = st.sampled_from(["gpt2", "bert", "llama", "gemma3"])


@FUZZ
@given(arch=archs, layer=ints, head=index, method=methods, positions=index, rows=index, mean=st.one_of(st.none(), tensors()))
def test_fuzz_ablate_head(arch, layer, head, method, positions, rows, mean):
    ref = ["the cat sat", "a dog ran"] if method in ("mean", "resample") and mean is None else None
    _check(arch, _build(lambda: AblateHead(layer, head, method=method, reference=ref, mean=mean, positions=positions, rows=rows)))


@FUZZ
@given(arch=archs, layer=ints, head=index, site=sites, dim=index, scale=numbers, value=numbers, positions=index)
def test_fuzz_edit_neuron(arch, layer, head, site, dim, scale, value, positions):
    _check(arch, _build(lambda: EditNeuron(layer, head, site=site, dim=dim, scale=scale, value=value, positions=positions)))


@FUZZ
@given(arch=archs, layer=ints, head=index, pattern=tensors(), renormalize=st.booleans(), allow=st.booleans())
def test_fuzz_set_pattern(arch, layer, head, pattern, renormalize, allow):
    _check(arch, _build(lambda: SetPattern(layer, head, pattern=pattern, renormalize=renormalize, allow_unnormalized=allow)))


@FUZZ
@given(
    arch=archs, layer=ints, head=index, keys=index, which=st.sampled_from(["add", "replace", "distance_penalty", "keys"]),
    value=st.one_of(tensors(), numbers),
)
def test_fuzz_scores_and_keys(arch, layer, head, keys, which, value):
    if which == "keys":
        _check(arch, _build(lambda: BlockKeys(layer, head, keys=keys)))
    else:
        _check(arch, _build(lambda: EditScores(layer, head, **{which: value})))


@FUZZ
@given(arch=archs, layer=ints, head=index, site=sites, source=st.one_of(tensors(), st.sampled_from([TEXT, "the cat", ""]), st.lists(st.text(max_size=5), max_size=2)))
def test_fuzz_patch(arch, layer, head, site, source):
    _check(arch, _build(lambda: Patch(layer, head, site=site, source=source)))


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 20), st.floats(), st.text(max_size=6)),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=6), children, max_size=3)),
    max_leaves=12,
)
field_names = st.sampled_from(
    ["layer", "head", "positions", "rows", "method", "mean", "reference", "seed", "pattern", "fn", "renormalize",
     "keys", "add", "replace", "distance_penalty", "site", "dim", "scale", "value", "source", "heads", "kind"]
)
kinds = st.sampled_from(["ablate_head", "set_pattern", "block_keys", "edit_scores", "edit_neuron", "patch", "ablate", 3, None])


@FUZZ
@given(arch=archs, kind=kinds, fields=st.dictionaries(field_names, json_values, max_size=6), junk=json_values)
def test_fuzz_from_dict(arch, kind, fields, junk):
    data = {**fields, "kind": kind} if kind is not None else fields
    _check(arch, _build(lambda: from_dict(data)))
    _build(lambda: from_dict(junk))  # any JSON value at all


@pytest.mark.parametrize("arch", ["gpt2", "gemma3"])
def test_fuzz_left_models_clean(arch):
    """Sanity check for the harness itself: a real edit does change the output."""
    model, clean = _model(arch)
    with torch.no_grad(), model.intervene(AblateHead(0, None)):
        assert not torch.equal(model(TEXT), clean)
