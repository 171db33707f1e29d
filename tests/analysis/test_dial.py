"""The context-window dial: it reaches targets, its edits reproduce what it reports, it says when it cannot."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from attnlab.analysis.context import attention_by_distance, loss_by_position
from attnlab.analysis.dial import (
    DialResult,
    WindowNotReached,
    _measure_rows,
    _row_multipliers,
    decay_units,
    pooled_window,
    set_context_window,
)
from attnlab.engine.forward import run
from attnlab.engine.locations import hook_name
from attnlab.errors import InvalidInput, InvalidLocation, InvalidSpec, UnsupportedModel
from attnlab.interventions import AblateHead, EditNeuron
from attnlab.testing import VOCAB, tiny_model, tiny_tokenizer
from tests.engine.test_cleanup_everywhere import _untouched, _weights

ROOT = Path(__file__).resolve().parents[2]
TEXT = " ".join(
    ["the nurse said that she left the house because the doctor was not happy with the new car ."
     " then the teacher asked the student about the old book and the city ."] * 3
)  # 100 tokens with [BOS]
DECAY_PAIR = 2  # rotary pair (dims 2 and 6 of d_head 8), frequency 0.01 rad/token: cos falls over the whole text


def decay_llama(strength: float = 8.0):
    """A tiny Llama whose every head has one pure distance-decay pair.

    q and k get a constant bias in dimension 2 of each head and no weights into dims 2
    and 6, so after rotary that pair contributes ``scale * strength**2 * cos(0.01 (i - j))``
    to every score: a clean decay a scale can sharpen or flatten.
    """
    import transformers as tf

    from attnlab.engine.model import HookedModel

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(
        vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=128, bos_token_id=2, eos_token_id=3, pad_token_id=0,
        attention_bias=True, attn_implementation="sdpa",
    )
    hf = tf.LlamaForCausalLM(cfg).eval()
    d_head = 8
    with torch.no_grad():
        for layer in hf.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                weight = proj.weight.view(-1, d_head, cfg.hidden_size)  # [head, d_head, d_model]
                weight[:, DECAY_PAIR] = 0.0
                weight[:, DECAY_PAIR + d_head // 2] = 0.0
                proj.bias.zero_()
                proj.bias.view(-1, d_head)[:, DECAY_PAIR] = strength
    return HookedModel(hf, tiny_tokenizer(), name="tiny-llama-decay")


def test_pooled_window_averages_normalised_head_profiles():
    mass = np.zeros((1, 2, 11))  # [layer, head, distance]
    mass[0, 0, 1] = 0.2  # head 0: everything one token back (its small total does not matter)
    mass[0, 1, 1:] = 3.0  # head 1: spread evenly over distances 1..10
    # pooled share by distance: 0.55 at d=1, then 0.05 per distance -> 0.9 is first reached at d=8
    assert pooled_window(mass, 0.9) == 8
    assert pooled_window(mass, 0.55) == 1
    assert np.isnan(pooled_window(np.zeros((1, 2, 5)), 0.9))  # no non-sink mass at all
    sunk = np.concatenate([mass, np.zeros((1, 3, 11))], axis=1)  # 3 more heads attend only to the sink
    assert pooled_window(sunk, 0.9) == 8  # they have no profile: the window of the others (was NaN)
    far = mass[..., ::-1]  # head 0 all at distance 9, head 1 spread over 0..9: 0.9 first reached at d=9
    assert pooled_window(np.stack([mass, far]), 0.9).tolist() == [8, 9]  # leading axes are rows


def test_the_dial_and_the_distance_profile_share_one_window(decay_model):
    prof = attention_by_distance(decay_model, [TEXT])
    assert prof.model_window(0.9) == pooled_window(prof.mass, 0.9)
    sunk = np.concatenate([prof.mass, np.zeros_like(prof.mass[:, :1])], axis=1)  # one head per layer only on the sink
    assert pooled_window(sunk, 0.9) == prof.model_window(0.9)


@pytest.fixture(scope="module")
def decay_model():
    return decay_llama()


@pytest.fixture(scope="module")
def units(decay_model):
    return decay_units(decay_model, TEXT)


def test_decay_units_find_the_planted_pair(units):
    assert len(units) == 8  # 2 layers x 4 heads
    assert set(units["unit"]) == {DECAY_PAIR}
    assert (units["spearman"] <= -0.99).all() and (units["near"] > 0).all()


def test_dial_reaches_a_target_inside_a_bracket(decay_model, units):
    res = set_context_window(decay_model, 25, TEXT, units=units, progress=False)
    assert isinstance(res, DialResult)
    assert res.clean_window == 30  # the planted decay's clean window, narrower after scaling up
    assert res.reached and abs(res.window - 25) <= 2.5
    assert 1.0 < res.scale < 2.0 and res.steps >= 1  # found between the grid's 1.0 (30) and 2.0 (22)
    s = res.summary.iloc[0]
    assert s["target"] == 25 and s["window"] == res.window and bool(s["reached"])
    assert s["loss_cost"] == pytest.approx(s["edited_loss"] - s["clean_loss"])
    clean = res.table[res.table["scale"] == 1.0].iloc[0]
    assert clean["loss_cost"] == 0.0 and clean["window"] == 30
    assert res.table["chosen"].sum() == 1 and res["window"].is_monotonic_decreasing  # window falls as the scale grows
    assert [(e.layer, e.heads, e.dim, e.scale) for e in res.interventions] == [
        (layer, (head,), [2, 6], res.scale) for layer in range(2) for head in range(4)
    ]


def test_interventions_reproduce_window_and_loss(decay_model, units):
    res = set_context_window(decay_model, 12, TEXT, units=units, progress=False)
    assert res.reached
    with decay_model.intervene(*res.interventions):
        profile = attention_by_distance(decay_model, [TEXT], progress=False)
        edited = loss_by_position(decay_model, [TEXT], progress=False)
    assert profile.model_window(0.9) == res.window
    late = edited[edited["position"] >= res.late_from]
    assert late["loss"].mean() == pytest.approx(res.summary["edited_loss"].iloc[0], abs=1e-5)
    assert np.allclose(late["loss"].to_numpy(), res.per_prompt["edited_loss"].to_numpy(), atol=1e-5)
    clean = loss_by_position(decay_model, [TEXT], progress=False)
    assert clean.loc[clean["position"] >= res.late_from, "loss"].mean() == pytest.approx(
        res.summary["clean_loss"].iloc[0], abs=1e-5)
    assert attention_by_distance(decay_model, [TEXT], progress=False).model_window(0.9) == res.clean_window


def test_dial_goes_beyond_the_grid_while_the_window_still_moves(decay_model, units):
    res = set_context_window(decay_model, 10, TEXT, units=units, progress=False)
    assert res.reached and res.scale > 4.0  # the grid stops at 4.0, whose window is 16


@pytest.mark.parametrize("site", ["q", "k"])
def test_batched_rows_equal_one_pass_per_scale(site):
    """Several scales in one batch (compiled multipliers) = each scale alone through model.intervene."""
    model = tiny_model("gemma3")
    dial_units = pd.DataFrame({"layer": [0, 2, 2], "head": [1, 0, 3], "unit": [1, 3, 2]})
    from attnlab.analysis.dial import _edits

    scales = [1.0, 0.0, 3.0, -2.0]
    variants = [[] if s == 1.0 else _edits(model, dial_units, s, site) for s in scales]
    tokens = model.tokens(TEXT)
    batched = _measure_rows(model, tokens, variants, level=0.9, late_from=49)
    for specs, got in zip(variants, batched):
        alone = attention_by_distance(model, [TEXT], interventions=specs, progress=False).model_window(0.9)
        loss = loss_by_position(model, [TEXT], interventions=specs, progress=False)
        assert got.window == alone
        assert got.late_loss == pytest.approx(loss.loc[loss["position"] >= 49, "loss"].mean(), abs=1e-5)
    assert len({m.late_loss for m in batched}) == len(scales)  # the edits do change the model


def test_compiled_multipliers_equal_the_per_row_specs():
    """One multiply per hook point gives what the engine gives for EditNeuron specs with rows=(g,)."""
    model = tiny_model("gemma3")
    variants = [
        [],
        [EditNeuron(2, 1, site="q", dim=[1, 5], scale=3.0), EditNeuron(0, [0, 2], site="k", dim=3, scale=0.0)],
        [EditNeuron(2, 1, site="q", dim=[1, 5], scale=-1.5), EditNeuron(2, 1, site="q", dim=1, scale=2.0)],
    ]
    tokens = model.tokens(TEXT)
    fast = _measure_rows(model, tokens, variants, level=0.9, late_from=49)
    slow = _measure_rows(model, tokens, variants, level=0.9, late_from=49, compiled=False)
    for a, b in zip(fast, slow):
        assert a.window == b.window
        np.testing.assert_allclose(a.loss_by_position, b.loss_by_position, atol=1e-5)
    batch = tokens.repeat(len(variants))
    names = [hook_name(layer, "pattern") for layer in range(model.cfg.n_layers)]
    per_row = [EditNeuron.from_dict({**spec.to_dict(), "rows": [g]}) for g, specs in enumerate(variants) for spec in specs]
    expected = run(model, batch, logits=None, read=names, interventions=per_row).cache
    hooks = [(name, lambda x, hook, m=mult: x * m[:, None].to(x.dtype)) for name, mult in _row_multipliers(model, variants).items()]
    got = run(model, batch, logits=None, read=names, hooks=hooks).cache
    for name in names:
        torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=1e-5)
    with pytest.raises(InvalidSpec, match="the dial compiles only scale edits"):
        _row_multipliers(model, [[EditNeuron(0, 0, site="q", dim=1, value=0.0)]])


def test_unreachable_target_is_reported():
    model = tiny_model("llama")  # random weights: no pair decays enough to move the window far
    with pytest.warns(WindowNotReached, match=r"target window 10 tokens .* not reached .* closest"):
        res = set_context_window(model, 10, TEXT, progress=False)
    assert not res.reached
    assert "not reached" in res.message and "closest" in res.message
    gap = (res.table["window"] - 10).abs()
    assert abs(res.window - 10) == gap.min() > 1.0  # the closest window measured, and not within 10%
    assert bool(res.summary["reached"].iloc[0]) is False
    assert "NOT reached" in repr(res)
    # among equally close windows the smallest edit wins: here every scale leaves the window where it was,
    # so the answer is the clean model (scale 1.0, no interventions), not an arbitrary edit with a lucky loss
    closest = res.table[gap == gap.min()]
    assert res.scale == closest["scale"].iloc[(closest["scale"] - 1.0).abs().argmin()]
    if 1.0 in set(closest["scale"]):
        assert res.scale == 1.0 and res.interventions == [] and res.loss_cost == 0.0


def test_unreachable_within_limits(decay_model, units):
    with pytest.warns(WindowNotReached, match="between -1 and 4"):
        res = set_context_window(decay_model, 5, TEXT, units=units, limits=(-1.0, 4.0), progress=False)
    assert not res.reached and res.window == 16 == res.table["window"].min()
    # the window stops moving before the limit: the smallest edit that gives the closest window is the answer
    assert res.scale == res.table.loc[res.table["window"] == 16, "scale"].min() < 4.0


def test_clean_model_already_fits(decay_model, units):
    res = set_context_window(decay_model, 30, TEXT, units=units, progress=False)
    assert res.reached and res.scale == 1.0 and res.interventions == [] and res.loss_cost == 0.0


def test_start_from_reuses_measured_scales(decay_model, units):
    first = set_context_window(decay_model, 25, TEXT, units=units, progress=False)
    again = set_context_window(decay_model, 25, TEXT, units=units, progress=False, start_from=first)
    assert again.forward_rows == 0 and again.scale == first.scale and again.window == first.window
    other = set_context_window(decay_model, 40, TEXT, progress=False, start_from=first)  # units come from first
    assert other.reached and (other.table["step"] == -1).sum() == len(first.table)
    with pytest.raises(InvalidInput, match="start_from was measured with another text"):
        set_context_window(decay_model, 25, TEXT + " the dog ran .", units=units, progress=False, start_from=first)
    with pytest.raises(InvalidInput, match="start_from was measured with another site"):
        set_context_window(decay_model, 25, TEXT, units=units, site="k", progress=False, start_from=first)


def test_start_from_another_model_is_refused(decay_model, units):
    first = set_context_window(decay_model, 25, TEXT, units=units, progress=False)
    other = tiny_model("llama")  # same text, same units: its windows are not decay_model's
    with pytest.raises(InvalidInput, match=r"start_from was measured with another model "
                                           r"\(tiny-llama-decay, now tiny-llama\)"):
        set_context_window(other, 25, TEXT, units=units, progress=False, start_from=first)


def test_start_from_the_same_name_but_other_weights_or_hooks_is_refused(units):
    """The windows measured depend on the model object, its weights and the edits acting, not only its name."""
    model = decay_llama()  # its own copy: its weights are edited below
    first = set_context_window(model, 25, TEXT, units=units, progress=False)
    with model.intervene(AblateHead(0, 0)), pytest.raises(InvalidInput, match="another set of acting hooks"):
        set_context_window(model, 25, TEXT, units=units, progress=False, start_from=first)
    with model.intervene(AblateHead(0, 0)):  # a result made inside one block is not reused in another of as many hooks
        inside = set_context_window(model, 25, TEXT, units=units, progress=False)
        assert set_context_window(model, 25, TEXT, units=units, progress=False, start_from=inside).forward_rows == 0
    with model.intervene(AblateHead(0, None)), pytest.raises(InvalidInput, match="another set of acting hooks"):
        set_context_window(model, 25, TEXT, units=units, progress=False, start_from=inside)
    twin = decay_llama()  # same name, same weights, another object
    with pytest.raises(InvalidInput, match="another model .*another object"):
        set_context_window(twin, 25, TEXT, units=units, progress=False, start_from=first)
    with torch.no_grad():
        model.hf_model.model.layers[1].self_attn.q_proj.weight.mul_(1.5)
    with pytest.raises(InvalidInput, match=r"another weights \(edited since\)"):
        set_context_window(model, 25, TEXT, units=units, progress=False, start_from=first)
    assert model.count_hooks() == 0


def test_numpy_numbers_are_accepted_and_give_the_same_search(decay_model, units):
    plain = set_context_window(decay_model, 25, TEXT, units=units, scales=[0.5, 2.0, 3.0], per_step=2, progress=False)
    numpy = set_context_window(decay_model, np.int64(25), TEXT, units=units, scales=np.array([0.5, 2.0, 3.0]),
                               per_step=np.int64(2), tolerance=np.float32(0.1), max_steps=np.int64(6),
                               limits=np.array([1 / 64, 64.0]), progress=False)
    pd.testing.assert_frame_equal(plain.table, numpy.table)
    assert numpy.scale == plain.scale and numpy.window == plain.window


def test_plot_and_save(decay_model, units, tmp_path):
    from matplotlib.figure import Figure

    res = set_context_window(decay_model, 25, TEXT, units=units, progress=False)
    fig = res.plot()
    assert isinstance(fig, Figure) and len(fig.axes) == 2  # window and its twin axis for the loss
    ax = Figure().add_subplot()
    assert res.plot(ax=ax) is ax.figure
    written = res.save(tmp_path, stem="dial")
    assert {p.name for p in written} == {"dial_table.csv", "dial_per_prompt.csv", "dial_summary.csv", "dial.png"}
    assert pd.read_csv(tmp_path / "dial_table.csv")["scale"].tolist() == res["scale"].tolist()


def _logits(model):
    return run(model, model.tokens(TEXT)).logits


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(target=0), InvalidInput, r"target must be a window of at least 1 token .*valid for this 100-token text: 1 to 50\), got 0$"),
    (dict(target=-3), InvalidInput, r"target must be a window of at least 1 token .*got -3$"),
    (dict(target=0.5), InvalidInput, r"target must be a window of at least 1 token .*1 to 50\), got 0.5$"),
    (dict(target=float("inf")), InvalidInput, r"target must be a finite number, got inf"),
    (dict(target="16"), InvalidInput, r"target must be a finite number, got '16'"),
    (dict(target=float("nan")), InvalidInput, r"target must be a finite number"),
    (dict(target=60), InvalidInput, r"text has 100 tokens; measuring a window of 60 tokens needs at least 120"),
    (dict(target=60), InvalidInput, r"valid targets: 1 to 50"),
    (dict(text=""), InvalidInput, r"text must be one non-empty string"),
    (dict(text=["the nurse"]), InvalidInput, r"text must be one non-empty string \(join paragraphs yourself\)"),
    (dict(level=1.5), InvalidInput, r"level must be in \(0, 1\], got 1.5"),
    (dict(tolerance=0), InvalidInput, r"tolerance must be in \(0, 1\)"),
    (dict(site="v"), InvalidSpec, r"site must be 'q' or 'k' \(the units' score contribution is scaled"),
    (dict(per_step=0), InvalidInput, r"per_step must be a positive integer, got 0"),
    (dict(scales=[]), InvalidInput, r"scales must be a non-empty list of numbers"),
    (dict(scales=[0.0, 8.0], limits=(-1.0, 4.0)), InvalidInput, r"limits \(-1.0, 4.0\) must contain every scale"),
    (dict(units=pd.DataFrame({"layer": [0]})), InvalidInput, r"units lacks column\(s\) head, unit"),
    # two 'unit' columns: units['unit'] was a table, and the message a multi-line Series "in row 'unit'"
    (dict(units=pd.DataFrame([[0, 0, 2, 1]], columns=["layer", "head", "unit", "unit"])), InvalidInput,
     r"^while setting the context window of .*: units: column 'unit' appears 2 times in the header \(columns 3, 4\); "
     r"give each column once$"),
    (dict(units=pd.DataFrame(columns=["layer", "head", "unit"])), InvalidInput, r"no distance-decay units to scale"),
    (dict(units=pd.DataFrame({"layer": [0.7], "head": [0], "unit": [2]})), InvalidInput,
     r"units\['layer'\] must hold whole numbers \(a layer index\), got 0.7 in row 0"),
    (dict(units=pd.DataFrame({"layer": [0], "head": [0], "unit": [2.5]})), InvalidInput, r"units\['unit'\] .*got 2.5"),
    (dict(units=pd.DataFrame({"layer": [float("nan")], "head": [0], "unit": [2]})), InvalidInput, r"units\['layer'\] .*got nan"),
    (dict(units=pd.DataFrame({"layer": [None], "head": [0], "unit": [2]})), InvalidInput, r"units\['layer'\] .*got None"),
    (dict(units=pd.DataFrame({"layer": [0], "head": ["x"], "unit": [2]})), InvalidInput, r"units\['head'\] .*got 'x'"),
    (dict(units=pd.DataFrame({"layer": [5], "head": [0], "unit": [0]})), IndexError, r"layer 5 out of range"),
    (dict(units=pd.DataFrame({"layer": [0], "head": [0], "unit": [4]})), IndexError, r"unit 4 out of range"),
    # whole floats past int64 once wrapped in astype(int) and were reported as -9223372036854775808
    (dict(units=pd.DataFrame({"layer": [1e20], "head": [0], "unit": [0]})), InvalidLocation,
     r"units\['layer'\] holds 1e\+20 in row 0: layer 100000000000000000000 out of range: .* has layers 0\.\.\d+$"),
    (dict(units=pd.DataFrame({"layer": [0], "head": [-1e19], "unit": [0]}, index=[7])), InvalidLocation,
     r"units\['head'\] holds -1e\+19 in row 7: .* has heads 0\.\.\d+$"),
    (dict(units=pd.DataFrame({"layer": [0], "head": [0], "unit": [2.0**64]})), InvalidLocation,
     r"units\['unit'\] holds 1.8446744073709552e\+19 in row 0: .* has pairs 0\.\.\d+$"),
])
def test_bad_input_is_a_typed_error_and_leaves_the_model_alone(decay_model, units, kwargs, error, match):
    before, weights = _logits(decay_model), _weights(decay_model)
    call = dict(target=16, text=TEXT, units=units) | kwargs
    with pytest.raises(error, match=match):
        set_context_window(decay_model, call.pop("target"), call.pop("text"), progress=False, **call)
    assert _untouched(decay_model, weights)  # no hook, patched forward or edited weight left
    torch.testing.assert_close(_logits(decay_model), before, atol=0, rtol=0)


def test_a_search_leaves_the_model_as_it_was(decay_model, units):
    weights = _weights(decay_model)
    set_context_window(decay_model, 12, TEXT, units=units, progress=False)
    with pytest.warns(WindowNotReached):
        set_context_window(decay_model, 5, TEXT, units=units, limits=(-1.0, 4.0), progress=False)
    assert _untouched(decay_model, weights)


def test_models_without_rotary_qk_are_refused():
    with pytest.raises(UnsupportedModel, match=r"tiny-gpt2 has no rotary q/k: the context-window dial scales rotary q/k pairs"):
        set_context_window(tiny_model("gpt2"), 16, TEXT, progress=False)
    with pytest.raises(UnsupportedModel, match=r"has no rotary q/k.*EditScores"):
        decay_units(tiny_model("bert"), TEXT)


@pytest.mark.slow
def test_example_runs_on_gemma(tmp_path):
    """The example on Gemma-3-270m with a small budget: one target, a two-scale grid, at most one step."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "context_window_dial.py"), "--out", str(tmp_path), "--quiet",
         "--targets", "128", "--scales", "0.5", "2", "--per-step", "2", "--max-steps", "1", "--no-check"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    table = pd.read_csv(tmp_path / "dial.csv")
    row = table.iloc[0]
    assert row["target"] == 128 and row["clean_window"] > 100
    assert bool(row["reached"]) == (abs(row["window"] - 128) <= 12.8)
    assert row["window"] != row["clean_window"]  # the dial moved the window
    for name in ("dial.png", "target_128.png", "target_128_table.csv", "units.csv"):
        assert (tmp_path / name).stat().st_size > 100
    assert "target 128:" in out.stdout


def test_a_target_no_whole_window_can_reach_is_refused_before_any_pass(monkeypatch):
    """Windows are whole numbers of tokens: target 2.5 ± 10% (2.25..2.75) measured every scale of the search and
    ended in WindowNotReached."""
    import attnlab.analysis.dial as dial

    def no_pass(*args, **kwargs):
        raise AssertionError("a forward pass ran before the target was checked")

    monkeypatch.setattr(dial, "_measure_rows", no_pass)
    monkeypatch.setattr(dial, "decay_units", no_pass)
    with pytest.raises(InvalidInput, match=r"no whole number of tokens lies within ±10% of target 2\.5 \(2\.25\.\.2\.75\)"
                                           r".*pass a whole target \(2 or 3\) or a larger tolerance$"):
        set_context_window(tiny_model("llama"), 2.5, TEXT, progress=False)
