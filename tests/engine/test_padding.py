"""A right-padded batch gives every example what it gives alone (with and without edits)."""

from __future__ import annotations

import pytest
import torch

from attnlab.interventions import AblateHead, BlockKeys, EditNeuron, EditScores, SetPattern
from attnlab.testing import tiny_model

from .conftest import ARCHS

TEXTS = ["the nurse said that she was very happy", "he ran", "a dog sat on the car"]


def _specs():
    return [
        None,
        AblateHead(0, 1),
        EditNeuron(1, 2, site="k", dim=3, scale=0.0),
        EditScores(0, None, distance_penalty=0.5),
        BlockKeys(1, 0, keys=[1]),
        SetPattern(1, 3, fn=lambda p: p.pow(2)),  # pattern-shaped; masked keys stay 0
    ]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("spec", _specs(), ids=lambda s: type(s).__name__)
def test_padded_batch_equals_single_runs(arch, spec):
    model = tiny_model(arch)
    specs = [] if spec is None else [spec]
    enc = model.tokenize(TEXTS)
    assert (enc["attention_mask"] == 0).any()  # the batch really is padded
    with torch.no_grad(), model.intervene(*specs):
        batch = model(enc["input_ids"], attention_mask=enc["attention_mask"])
        singles = [model(text) for text in TEXTS]
    if spec is not None:
        with torch.no_grad():
            clean = model(TEXTS[0])
        assert (singles[0] - clean).abs().max() > 1e-4  # the edit does something
    for row, single in enumerate(singles):
        n = single.shape[1]
        assert int(enc["attention_mask"][row].sum()) == n
        assert (batch[row, :n] - single[0]).abs().max() <= 1e-5, f"row {row}"


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("kind", ["pattern", "renormalized", "add", "replace"])
def test_tensor_edits_leave_padding_keys_alone(padding_side, kind):
    """A tensor edit by token position leaves padding keys (and padding queries) their own values, on either side: a
    renormalised row spreads over real keys only. Under right padding the tensor's mass landed on padding keys
    (0.72 of a row; the hidden state 0.42 off the prompt alone)."""
    model = tiny_model("bert")
    lengths = [model.to_tokens(t).shape[1] for t in TEXTS]
    n = max(lengths)
    torch.manual_seed(0)
    given = torch.rand(n, n) + 0.05
    given_n = given / given.sum(-1, keepdim=True)  # rows sum to 1 over the longest text; a shorter one reads a corner
    scores = torch.randn(n, n) * 4
    spec_of = {
        "pattern": lambda m: SetPattern(0, None, pattern=given_n[:m, :m], allow_unnormalized=m < n),
        "renormalized": lambda m: SetPattern(0, None, pattern=given[:m, :m], renormalize=True),
        "add": lambda m: EditScores(0, None, add=scores[:m, :m]),
        "replace": lambda m: EditScores(0, 1, replace=scores[:m, :m]),
    }[kind]
    name = "blocks.0.attn.hook_pattern"
    tokens = model.tokens(TEXTS, padding_side=padding_side)
    with torch.no_grad():
        out = model.run(tokens, logits=None, hidden=True, read=[name], interventions=[spec_of(n)])
        for row, (text, m) in enumerate(zip(TEXTS, lengths)):
            alone = model.run(text, logits=None, hidden=True, interventions=[spec_of(m)]).hidden[0]
            clean = model.run(text, logits=None, hidden=True).hidden[0]
            cols = slice(0, m) if padding_side == "right" else slice(n - m, n)
            real = tokens.mask[row].bool()
            assert (out.cache[name][row][:, :, ~real] == 0).all(), f"row {row}: pattern mass on padding keys"
            assert (out.hidden[row, cols] - alone).abs().max() <= 1e-5, f"row {row}"
            assert (alone - clean).abs().max() > 1e-3  # the edit does something
    assert model.count_hooks() == 0


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("site", ["q", "k", "v", "attn_scores", "pattern", "z"])
def test_patch_leaves_padding_alone(padding_side, site):
    """A Patch source as long as the longest text patches a shorter row at its own tokens only, as alone. Under right
    padding the source's later tokens landed on the row's padding keys, which then drew attention."""
    from attnlab.interventions import Patch

    model = tiny_model("bert")
    lengths = [model.to_tokens(t).shape[1] for t in TEXTS]
    n = max(lengths)
    other = "the man said that she was very sad"  # as long as the longest text
    assert model.to_tokens(other).shape[1] == n
    name = f"blocks.0.attn.hook_{site}"
    with torch.no_grad():
        source = model.run(other, logits=None, read=[name]).cache[name]

    def spec_of(m):  # alone, a row is patched with the source's first m tokens
        return Patch(0, None, site=site, source=source[:, :, :m, :m] if site in ("attn_scores", "pattern") else source[:, :m])

    tokens = model.tokens(TEXTS, padding_side=padding_side)
    with torch.no_grad():
        out = model.run(tokens, logits=None, hidden=True, interventions=[spec_of(n)])
        for row, (text, m) in enumerate(zip(TEXTS, lengths)):
            alone = model.run(text, logits=None, hidden=True, interventions=[spec_of(m)]).hidden[0]
            clean = model.run(text, logits=None, hidden=True).hidden[0]
            cols = slice(0, m) if padding_side == "right" else slice(n - m, n)
            assert (out.hidden[row, cols] - alone).abs().max() <= 1e-5, f"row {row}"
            assert (alone - clean).abs().max() > 1e-3  # the patch does something
    assert model.count_hooks() == 0


def test_positions_leave_a_short_rows_right_padding_alone():
    """``positions=`` past a short row's length edit nothing of that row: its right padding (columns a longer row
    has) is no token of its own and keeps its values, as with left padding and as in a chunk without the longer
    row. It was zeroed there."""
    model = tiny_model("bert")
    lengths = [model.to_tokens(t).shape[1] for t in TEXTS]
    short, long_ = lengths.index(min(lengths)), lengths.index(max(lengths))
    at = min(lengths) + 1
    name = "blocks.0.attn.hook_z"
    tokens = model.tokens(TEXTS, padding_side="right")
    with torch.no_grad():
        clean = model.run(tokens, logits=None, read=[name]).cache[name]
        edited = model.run(tokens, logits=None, read=[name], interventions=[AblateHead(0, 1, positions=[at])]).cache[name]
    assert (edited[long_, at, 1] == 0).all() and (clean[long_, at, 1] != 0).any()  # a row that has the position
    assert torch.equal(edited[short], clean[short])  # one that has not: untouched, padding included
    assert model.count_hooks() == 0
