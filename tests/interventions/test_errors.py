"""Each kind of bad input gets its own typed error and message; the model is left untouched."""

from __future__ import annotations

import pytest
import torch

from attnlab.errors import AttnlabError, InvalidInput, InvalidLocation, InvalidSpec, ShapeMismatch
from attnlab.interventions import (
    AblateHead,
    BlockKeys,
    EditNeuron,
    EditScores,
    Patch,
    SetPattern,
    from_dict,
    hooks_for,
    load_specs,
    per_row,
    save_specs,
)

from .conftest import TEXT

N = 8


def _apply(model, *specs):
    with torch.no_grad(), model.intervene(*specs):
        return model(TEXT)


@pytest.fixture
def untouched(tiny_gemma):
    """The tiny Gemma model; afterwards checks no hook is left and the output is unchanged."""
    with torch.no_grad():
        clean = tiny_gemma(TEXT)
    yield tiny_gemma
    assert tiny_gemma.count_hooks() == 0
    with torch.no_grad():
        assert torch.equal(tiny_gemma(TEXT), clean)


def test_layer_out_of_range(untouched):
    with pytest.raises(InvalidLocation, match=r"^layer 18 out of range: tiny-gemma3 has layers 0\.\.2$"):
        _apply(untouched, AblateHead(18, 0))
    with pytest.raises(IndexError):  # InvalidLocation is also an IndexError
        _apply(untouched, EditScores(3, 0, distance_penalty=1.0))
    with pytest.raises(InvalidLocation, match=r"layer must be >= 0, got -1"):
        AblateHead(-1, 0)
    with pytest.raises(InvalidSpec, match=r"layer must be an int, got '2'"):
        AblateHead("2", 0)


def test_head_out_of_range(untouched):
    with pytest.raises(InvalidLocation, match=r"^head 4 out of range: tiny-gemma3 has heads 0\.\.3$"):
        _apply(untouched, AblateHead(0, [1, 4]))
    with pytest.raises(InvalidLocation, match=r"head must be >= 0, got -2"):
        SetPattern(0, -2, fn=lambda p: p)
    with pytest.raises(InvalidSpec, match=r"head must be an int, a non-empty list of ints or None \(all\), got \[\]"):
        AblateHead(0, [])
    with pytest.raises(InvalidSpec, match=r"head must be an int, a non-empty list of ints or None \(all\), got True"):
        AblateHead(0, True)


def test_dim_out_of_range(untouched):
    with pytest.raises(InvalidLocation, match=r"^dim 8 out of range: tiny-gemma3 has d_head=8 \(dims 0\.\.7\)$"):
        _apply(untouched, EditNeuron(0, 0, site="q", dim=8, scale=2.0))
    with pytest.raises(InvalidSpec, match="EditNeuron needs exactly one of scale= or value="):
        EditNeuron(0, 0, site="q", dim=1, scale=2.0, value=1.0)
    with pytest.raises(InvalidSpec, match="scale must be a finite number, got nan"):
        EditNeuron(0, 0, site="q", dim=1, scale=float("nan"))


def test_unknown_method(untouched):
    with pytest.raises(InvalidSpec, match=r"unknown ablation method 'mena'; did you mean 'mean'\? \(valid: zero, mean, resample\)"):
        AblateHead(0, 0, method="mena")
    with pytest.raises(InvalidSpec, match="mean ablation needs reference prompts"):
        AblateHead(0, 0, method="mean")
    with pytest.raises(InvalidSpec, match="resample ablation needs reference prompts"):
        AblateHead(0, 0, method="resample")
    with pytest.raises(ShapeMismatch, match=r"mean has shape \(2, 8\); tiny-gemma3 needs \[n_heads, d_head\] = \[4, 8\]"):
        _apply(untouched, AblateHead(0, 0, method="mean", mean=torch.zeros(2, 8)))


def test_unknown_site(untouched):
    with pytest.raises(InvalidSpec, match=r"EditNeuron: unknown site 'kk'; did you mean 'k'\? \(valid: q, k, v, q_pre_rotary, k_pre_rotary, q_pre_norm, k_pre_norm\)"):
        EditNeuron(0, 0, site="kk", dim=0, scale=0.0)
    with pytest.raises(InvalidSpec, match=r"^EditNeuron cannot act on site 'pattern' \(valid: q, k, v, q_pre_rotary, k_pre_rotary, q_pre_norm, k_pre_norm\)$"):
        EditNeuron(0, 0, site="pattern", dim=0, scale=0.0)
    with pytest.raises(InvalidSpec, match=r"Patch: unknown site 'patern'; did you mean 'pattern'\?"):
        Patch(0, 0, site="patern", source=[TEXT])


def test_nan_and_inf_in_a_pattern():
    bad = torch.eye(N)
    bad[2, 2] = float("nan")
    with pytest.raises(InvalidSpec, match="pattern contains NaN or inf values"):
        SetPattern(0, 0, pattern=bad)
    bad[2, 2] = float("inf")
    with pytest.raises(InvalidSpec, match="pattern contains NaN or inf values"):
        SetPattern(0, 0, pattern=bad)
    with pytest.raises(InvalidSpec, match="add contains NaN or inf"):
        EditScores(0, 0, add=torch.full((N, N), float("nan")))


def test_unnormalised_and_negative_patterns():
    with pytest.raises(InvalidSpec, match=r"pattern rows must sum to 1 over keys \(largest deviation 1\).*renormalize=True"):
        SetPattern(0, 0, pattern=torch.eye(N) * 2)
    assert SetPattern(0, 0, pattern=torch.eye(N) * 2, renormalize=True).renormalize
    assert SetPattern(0, 0, pattern=torch.eye(N) * 2, allow_unnormalized=True).allow_unnormalized
    with pytest.raises(InvalidSpec, match="pattern has negative entries"):
        SetPattern(0, 0, pattern=-torch.eye(N), allow_unnormalized=True)
    with pytest.raises(InvalidSpec, match="SetPattern needs exactly one of pattern= .* or fn="):
        SetPattern(0, 0)


def test_wrong_pattern_shape(untouched):
    with pytest.raises(ShapeMismatch, match=r"pattern must be \[query, key\], \[batch, query, key\] or \[batch, head, query, key\], got \(8,\)"):
        SetPattern(0, 0, pattern=torch.ones(N) / N)
    with pytest.raises(ShapeMismatch, match=r"pattern has shape \(3, 3\) but this input needs \[8, 8\] \(query x key"):
        _apply(untouched, SetPattern(0, 0, pattern=torch.eye(3)))
    with pytest.raises(ShapeMismatch, match=r"add has shape \(1, 4, 8, 5\) but this input needs \[1, 4, 8, 8\] "):
        _apply(untouched, EditScores(0, 0, add=torch.zeros(1, 4, 8, 5)))
    # larger than the longest prompt is a miscount too (its extra rows would never be read)
    with pytest.raises(ShapeMismatch, match=r"pattern has shape \(11, 11\) but this input needs \[8, 8\] \(query x key"):
        _apply(untouched, SetPattern(0, 0, pattern=torch.eye(11)))
    with pytest.raises(ShapeMismatch, match=r"replace has shape \(8, 9\) but this input needs \[8, 8\] "):
        _apply(untouched, EditScores(0, 0, replace=torch.zeros(8, 9)))
    with pytest.raises(ShapeMismatch, match=r"SetPattern fn must return a tensor of shape \(1, 4, 8, 8\), got \(1, 4, 8, 1\)"):
        _apply(untouched, SetPattern(0, 0, fn=lambda p: p[..., :1]))
    with pytest.raises(InvalidSpec, match="SetPattern fn returned NaN or inf values"):
        _apply(untouched, SetPattern(0, 0, fn=lambda p: p / 0))


def test_position_and_row_out_of_range(untouched):
    with pytest.raises(InvalidLocation, match=r"position 50 out of range: this input has positions 0\.\.7"):
        _apply(untouched, AblateHead(0, 0, positions=[1, 50]))
    with pytest.raises(InvalidLocation, match=r"row 3 out of range: this input has batch rows 0\.\.0"):
        _apply(untouched, AblateHead(0, 0, rows=[3]))


def test_block_keys_past_the_input_are_refused_like_positions(untouched):
    """A key no token has would block nothing: refused, as positions= past the input is."""
    with pytest.raises(InvalidLocation, match=r"^key position 8 out of range: this input has positions 0\.\.7$"):
        _apply(untouched, BlockKeys(1, 0, keys=[0, 8]))
    with pytest.raises(InvalidLocation, match=r"^key position 999 out of range: this input has positions 0\.\.7$"):
        _apply(untouched, BlockKeys(1, None, keys=999))
    # the last key is in range, and blocking it zeroes its column wherever a query may see it
    with untouched.intervene(BlockKeys(1, 0, keys=[N - 1])):
        out = untouched.run_with_cache(TEXT, names_filter="blocks.1.attn.hook_pattern")[1]
    pattern = out["blocks.1.attn.hook_pattern"][0, 0]
    assert torch.count_nonzero(pattern[:, N - 1]) == 0
    assert torch.allclose(pattern.sum(-1), torch.ones(N))


def test_patch_source_of_another_length(untouched):
    with pytest.raises(ShapeMismatch, match="source and input must tokenize to the same length"):
        _apply(untouched, Patch(1, 0, site="z", source=["the cat"]))
    with pytest.raises(InvalidSpec, match="Patch source cache has no 'blocks.1.attn.hook_z'; cache it with names_filter"):
        Patch(1, 0, site="z", source={"blocks.0.attn.hook_z": torch.zeros(1)})
    with pytest.raises(InvalidSpec, match="Patch source tensor contains NaN or inf"):
        Patch(1, 0, site="z", source=torch.full((1, N, 4, 8), float("nan")))


@pytest.mark.parametrize("site, shape, message", [
    ("z", (1, N, 4, 16), r"has shape \(1, 8, 4, 16\) but the input gives \(1, 8, 4, 8\): its \[head, d_head\] axes "
                         r"\(4, 16\) differ from this model's \(4, 8\) \(a source from another model\?\)$"),
    ("v", (1, N, 6, 8), r"its \[head, d_head\] axes \(6, 8\) differ from this model's \(4, 8\)"),
    ("pattern", (1, 2, N, N), r"has shape \(1, 2, 8, 8\) but the input gives \(1, 4, 8, 8\): its head axis \(2,\) differs from this model's \(4,\)"),
    ("z", (3, N, 4, 8), r"has shape \(3, 8, 4, 8\) but the input gives \(1, 8, 4, 8\): it has 3 rows but the batch has 1"),
])
def test_a_patch_source_that_differs_in_more_than_length_says_which_axes(untouched, site, shape, message):
    """A source cached from another model (other heads or d_head) was blamed on the prompts' token counts."""
    with pytest.raises(ShapeMismatch, match=message):
        _apply(untouched, Patch(1, 0, site=site, source=torch.zeros(shape)))


def test_generate_checks_the_prompt_against_a_patch_source(untouched):
    """generate()'s first step runs the whole prompt: a source of another length is refused there, as in a forward."""
    with pytest.raises(ShapeMismatch, match=r"has shape \(1, 3, 4, 8\) but the input gives \(1, 8, 4, 8\)"):
        untouched.generate(TEXT, max_new_tokens=1, interventions=[Patch(1, None, site="z", source="the doctor")])
    with pytest.raises(ShapeMismatch, match=r"has shape \(1, 4, 3, 3\) but the input gives \(1, 4, 8, 8\)"):
        untouched.generate(TEXT, max_new_tokens=2, interventions=[Patch(0, 1, site="pattern", source="the doctor")])
    # in a left-padded batch the source must have the longest prompt's length, as model(batch) requires
    batch = [TEXT, "he ran to the house"]
    short = Patch(1, 0, site="z", source="he ran to the house")
    with pytest.raises(ShapeMismatch, match=r"has shape \(1, 6, 4, 8\) but the input gives \(2, 8, 4, 8\)"):
        with torch.no_grad(), untouched.intervene(short):
            untouched(batch)
    with pytest.raises(ShapeMismatch, match=r"has shape \(1, 6, 4, 8\) but the input gives \(2, 8, 4, 8\)"):
        untouched.generate(batch, max_new_tokens=1, interventions=[short])


def test_bad_dicts():
    with pytest.raises(InvalidSpec, match=r"an intervention dict needs a 'kind' key"):
        from_dict({"layer": 1})
    with pytest.raises(InvalidSpec, match=r"unknown intervention kind 'set_patern'; did you mean 'set_pattern'\?"):
        from_dict({"kind": "set_patern", "layer": 0})
    with pytest.raises(InvalidSpec, match="block_keys: missing field 'layer'"):
        from_dict({"kind": "block_keys", "keys": [1]})
    with pytest.raises(InvalidSpec, match=r"ablate_head: unknown field 'heads'; did you mean 'head'\?"):
        from_dict({"kind": "ablate_head", "layer": 0, "heads": [1]})


def test_intervene_only_takes_specs(untouched):
    with pytest.raises(InvalidInput, match="intervene\\(\\) takes intervention specs, got str"):
        _apply(untouched, "ablate head 3")
    with pytest.raises(InvalidLocation, match=r"layer 9 out of range: tiny-gemma3 has layers 0\.\.2"):
        untouched.hook_point(9, "q")
    with pytest.raises(InvalidLocation, match=r"unknown site 'patern'; did you mean 'pattern'\?"):
        untouched.hook_point(0, "patern")


def test_every_error_is_an_attnlab_error():
    for cls in (InvalidLocation, InvalidSpec, ShapeMismatch, InvalidInput):
        assert issubclass(cls, AttnlabError)


def test_spec_lists_that_hold_something_else_are_named(untouched, tmp_path):
    """per_row, hooks_for and save_specs name the bad entry (they raised AttributeError / TypeError)."""
    for bad, shown in ((["abc"], r"str 'abc'"), ([3], r"int 3"), ([[AblateHead(0, 0), "x"]], r"list \[AblateHead")):
        with pytest.raises(InvalidInput, match=rf"^per_row: specs\[0\] \(row 0\) must be an intervention spec, a list of "
                                               rf"specs or None \(clean\), got {shown}"):
            per_row(bad)
    with pytest.raises(InvalidInput, match=r"^per_row: specs must be a list with one entry per batch row .*got AblateHead"):
        per_row(AblateHead(0, 0))
    assert per_row([[], None, AblateHead(0, 1)]) == [AblateHead(0, 1, rows=[2])]
    with pytest.raises(InvalidInput, match=r"^hooks_for: specs\[1\] must be an intervention spec \(AblateHead, Patch, \.\.\.\), got str 'abc'$"):
        hooks_for(untouched, [AblateHead(0, 0), "abc"])
    with pytest.raises(InvalidInput, match=r"^hooks_for: specs must be an intervention spec or a list of them, got int 5$"):
        hooks_for(untouched, 5)
    path = tmp_path / "specs.json"
    with pytest.raises(InvalidInput, match=r"^save_specs: specs\[0\] must be an intervention spec .*got str 'x'$"):
        save_specs(path, ["x"])
    assert not path.exists()
    # one spec is a list of one, as for effect() and generate()
    save_specs(path, AblateHead(0, 1))
    assert load_specs(path) == [AblateHead(0, 1)]
    with torch.no_grad():
        one = untouched.run_with_hooks(TEXT, fwd_hooks=hooks_for(untouched, AblateHead(0, 1)))
        listed = untouched.run_with_hooks(TEXT, fwd_hooks=hooks_for(untouched, [AblateHead(0, 1)]))
    assert torch.equal(one, listed) and not torch.equal(one, untouched(TEXT))
