"""Hostile or malformed input to the views, the report and the plots: typed errors that name the
problem, raised before any forward pass, with the model left as it was."""

from __future__ import annotations

import pytest
import torch

from attnlab.errors import InvalidInput
from attnlab.interventions import AblateHead
from attnlab.viz import diff_view, head_view, model_view, neuron_view
from tests._softcapped import tiny_softcapped

TEXT = "the nurse said that she was happy"


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.hf_model.state_dict().items()}


def _untouched(model, before) -> bool:
    after = model.hf_model.state_dict()
    return model.count_hooks() == 0 and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("bad, shown", [
    ("abc", "got str: 'abc'"),
    (42, "got int: 42"),
    ([None], "got NoneType: None"),
    ([AblateHead(0, 0), "ablate"], "got str: 'ablate'"),
])
def test_interventions_that_are_not_specs_are_refused_before_any_forward_pass(tiny_gpt2, bad, shown):
    # the diff view called spec.validate on each item: AttributeError for a str or None, TypeError for an int
    before = _weights(tiny_gpt2)
    for make in (lambda: diff_view(tiny_gpt2, TEXT, bad), lambda: head_view(tiny_gpt2, TEXT, interventions=bad),
                 lambda: neuron_view(tiny_gpt2, TEXT, interventions=bad)):
        with pytest.raises(InvalidInput, match=r"^interventions must be .*" + shown.replace("(", r"\(")
                           .replace(")", r"\)").replace("[", r"\[") + "$"):
            make()
    assert _untouched(tiny_gpt2, before)


def test_a_sentence_pair_with_a_lone_surrogate_is_refused_naming_the_sentence(tiny_bert):
    # the pair goes to the tokenizer directly, past the engine's text check: it failed with
    # "TypeError: TextInputSequence must be str"
    before = _weights(tiny_bert)
    with pytest.raises(InvalidInput, match=r"^sentence_b holds '\\udc80' at character 4, which is not a Unicode"):
        head_view(tiny_bert, ("the nurse", "she \udc80 was"))
    with pytest.raises(InvalidInput, match=r"^sentence_a holds '\\ud800' at character 0"):
        model_view(tiny_bert, ("\ud800", "she"))
    assert _untouched(tiny_bert, before)


@pytest.mark.parametrize("noun", ["layers", "heads"])
def test_a_string_of_digits_is_not_a_list_of_layers_or_heads(tiny_gpt2, noun):
    # "12" was iterated letter by letter and refused as "head '1' out of range", naming a valid head
    with pytest.raises(InvalidInput, match=rf"^{noun} must be an int, a list of ints or None \(all\), got '01'$"):
        head_view(tiny_gpt2, TEXT, **{noun: "01"})
    assert head_view(tiny_gpt2, TEXT, **{noun: [0, 1]}).data[noun] == [0, 1]


def test_view_and_report_save_refuse_a_folder_or_a_file_on_the_way_by_name(tiny_gpt2, tmp_path):
    from attnlab.viz.report import Report

    view, report = head_view(tiny_gpt2, "the nurse"), Report("r").text("x")
    (tmp_path / "notes.txt").write_text("keep me")
    for obj, what, example in ((view, "the view", "view.html"), (report, "the report", "report.html")):
        # Report.save raised a bare "[Errno 21] Is a directory"; both raised "[Errno 17] File exists: '.../notes.txt'"
        with pytest.raises(InvalidInput, match=rf"^cannot write {what} to .*: it is a folder; give a file name such as "
                                               rf".*{example}$"):
            obj.save(tmp_path)
        with pytest.raises(InvalidInput, match=rf"^cannot write {what} to .*notes.txt/sub/page.html: .*notes.txt is a "
                                               "file, not a folder"):
            obj.save(tmp_path / "notes.txt" / "sub" / "page.html")
        with pytest.raises(InvalidInput, match=rf"^cannot write {what} to 42: give a file name"):
            obj.save(42)
        assert (tmp_path / "notes.txt").read_text() == "keep me"
        written = obj.save(str(tmp_path / "new" / "deeper" / example))  # missing folders are made
        assert written == tmp_path / "new" / "deeper" / example
        assert written.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert (tmp_path / "new" / "deeper" / "report.html").read_text(encoding="utf-8") == report.html


@pytest.mark.parametrize("column, values, shown", [
    ("layer", [0.0, 0.5], "0.5"),  # cut to 0 by to_numpy(int): the second cell overwrote the first, silently
    ("layer", [0, float("nan")], "nan"),  # IndexError: index -9223372036854775808 is out of bounds
    ("head", [0, float("inf")], "inf"),  # OverflowError: cannot convert float infinity to integer
])
def test_head_heatmap_refuses_grid_indices_that_are_not_whole_numbers(column, values, shown):
    import pandas as pd

    from attnlab.viz.plots import head_heatmap

    df = pd.DataFrame({"layer": [0, 0], "head": [0, 1], "effect": [1.0, 2.0]}).assign(**{column: values})
    with pytest.raises(InvalidInput, match=rf"^head_heatmap: column '{column}' must hold whole numbers \(it indexes "
                                           rf"the grid\), got {shown}$"):
        head_heatmap(df)


@pytest.mark.parametrize("option, value", [("n_layers", 2.7), ("n_heads", True), ("n_layers", "3"), ("n_heads", 0)])
def test_head_heatmap_grid_size_must_be_a_positive_integer(option, value):
    import numpy as np
    import pandas as pd

    from attnlab.viz.plots import head_heatmap

    df = pd.DataFrame({"layer": [0, 1], "head": [0, 0], "effect": [1.0, -2.0]})
    with pytest.raises(InvalidInput, match=rf"^head_heatmap: {option} must be a positive integer .*got {value!r}$"):
        head_heatmap(df, **{option: value})
    grid = head_heatmap(df, n_layers=np.int64(3), n_heads=2).axes[0].images[0].get_array()
    assert grid.shape == (3, 2) and grid[1, 0] == -2.0 and grid.mask[2].all() and grid.mask[:, 1].all()


def test_numpy_thresholds_are_numbers_and_reach_the_page_as_floats(tiny_gpt2):
    import numpy as np

    from tests.viz.test_view_data import embedded_data

    # np.float32 (a float read back from an array) was refused as "not a number"; np.float64 passed only as a float subclass
    for threshold in (np.float32(0.25), np.int64(0)):
        for make in (lambda: head_view(tiny_gpt2, TEXT, threshold=threshold),
                     lambda: diff_view(tiny_gpt2, TEXT, AblateHead(0, 1), threshold=threshold)):
            view = make()
            assert type(view.data["threshold"]) is float and view.data["threshold"] == float(threshold)
            assert embedded_data(view)["threshold"] == float(threshold)
    with pytest.raises(InvalidInput, match=r"^threshold must be a number in \[0, 1\), got np.float32\(1.5\)$"):
        head_view(tiny_gpt2, TEXT, threshold=np.float32(1.5))


def test_report_refuses_what_it_cannot_write_when_it_is_given_and_keeps_its_sections(tiny_gpt2):
    import pandas as pd

    from attnlab.viz.report import Report

    # each failed later, at .html/.save(), or at once with a bare AttributeError ('float' object has no attribute 'replace')
    with pytest.raises(InvalidInput, match=r"^Report: title must be a string, got int: 3$"):
        Report(3)
    report = Report("r").heading("h")
    before = report.html
    cases = [
        (lambda: report.numbers([("bias", 0.5)]), r"^Report: the value of 'bias' must be a string, got float: 0.5$"),
        (lambda: report.numbers([("bias",)]), r"^Report.numbers takes \(label, value\) pairs of strings, got \('bias',\)$"),
        (lambda: report.heading(None), r"^Report: a heading must be a string, got NoneType: None$"),
        (lambda: report.text(7), r"^Report: a text must be a string, got int: 7$"),
        (lambda: report.table(pd.DataFrame({"v": [1.0]}).to_numpy()), r"^Report.table takes a pandas DataFrame, got ndarray$"),
        (lambda: report.figure("fig.png"), r"^Report.figure takes a matplotlib Figure, got str$"),
        (lambda: report.views(head_view(tiny_gpt2, "the nurse"), "view.html"),
         r"^Report.views takes views \(head_view\(...\) and the like\), got str$"),
    ]
    for call, message in cases:
        with pytest.raises(InvalidInput, match=message):
            call()
    assert report.html == before  # nothing half-added
    assert report.numbers([("bias", "0.50")]).html.count('<div class="num">bias<b>0.50</b></div>') == 1


def test_a_model_name_with_a_lone_surrogate_does_not_truncate_the_page(tmp_path):
    import json
    import re

    from attnlab.engine.model import HookedModel
    from attnlab.testing import tiny_hf_model, tiny_tokenizer

    # a folder name decoded with surrogateescape ends up in the page's <title>: write_text raised
    # UnicodeEncodeError after opening the file, so the page written before was left empty
    model = HookedModel(tiny_hf_model("gpt2"), tiny_tokenizer("decoder"), name="caf\udce9")
    path = tmp_path / "view.html"
    path.write_text("the page from before", encoding="utf-8")
    view = head_view(model, "the nurse")
    view.save(path)
    page = path.read_text(encoding="utf-8")  # valid UTF-8
    assert "<title>Head view: caf\\udce9</title>" in page
    data = json.loads(re.search(r'<script type="application/json" id="[^"]+">(.*?)</script>', page, re.S).group(1))
    assert data["model"] == "caf\udce9" and data["tokens"] == ["[BOS]", "the", "nurse"]
    assert model.count_hooks() == 0


def test_neuron_view_names_the_soft_cap_its_scores_went_through(tiny_gemma):
    import numpy as np

    # the page said "q.k = (sum q x k) x scale" while the scores it showed were cap * tanh(that / cap)
    model = tiny_softcapped(0.5)
    view = neuron_view(model, TEXT, layers=[0, 1], heads=[0])
    assert view.data["softcaps"] == [0.5, 0.5]
    q, k = np.asarray(view.data["q"][1][0]), np.asarray(view.data["k"][1][0])  # [pos, d_head]
    n = len(view.data["tokens"])
    raw = (q[n - 1] * k).sum(-1) * view.data["scales"][1]
    shown = np.asarray(view.data["scores"][1][0][n - 1], dtype=float)
    assert np.abs(shown - raw).max() > 0.05  # the cap really bends these scores
    np.testing.assert_allclose(0.5 * np.tanh(raw / 0.5), shown, atol=2e-3)
    # a model without a cap says so, and its scores are scale * q.k
    assert neuron_view(tiny_gemma, TEXT, layers=[0, 2], heads=[0]).data["softcaps"] == [None, None]
    assert model.count_hooks() == 0


@pytest.mark.browser
def test_neuron_view_page_shows_the_soft_cap(render, tiny_llama):
    import html
    import re

    model = tiny_softcapped(0.5)
    page = render(neuron_view(model, TEXT, layers=[1], heads=[0]).html, selftest=False)
    assert page.root["data-status"] == "ok", page.root.get("data-error")
    hint = html.unescape(re.search(r'<span class="al-hint">(click a query token[^<]*)</span>', page.dom).group(1))
    assert hint.endswith("q\u00b7k = 0.5000 \u00b7 tanh((\u03a3 q\u00d7k) \u00d7 0.3536 / 0.5000)")
    plain = render(neuron_view(tiny_llama, TEXT, layers=[1], heads=[0]).html, selftest=False)
    hint = html.unescape(re.search(r'<span class="al-hint">(click a query token[^<]*)</span>', plain.dom).group(1))
    assert hint.endswith("q\u00b7k = (\u03a3 q\u00d7k) \u00d7 0.3536")


HOSTILE_TOKENS = [
    "</script><script>document.title='PWNED'</script>", "<img src=x onerror=\"document.title='PWNED'\">",
    "\"'`\\", "a\u2028b\u2029c", "nul\x00l", "\u202eRTL\u200f", "<!--", "\U0001F600" * 8, "\U0001F600" * 20,
]


def _label(token: str) -> str:
    """common.js tokenText: at most 14 characters (code points), else 13 and an ellipsis."""
    return token if len(token) <= 14 else token[:13] + "\u2026"


@pytest.mark.browser
@pytest.mark.parametrize("kind", ["head", "diff"])
def test_hostile_token_strings_are_shown_as_text_and_long_emoji_tokens_are_cut_whole(render, tiny_gpt2, kind):
    import html
    import re

    ids = torch.arange(10, 10 + len(HOSTILE_TOKENS))
    view = head_view(tiny_gpt2, ids) if kind == "head" else diff_view(tiny_gpt2, ids, AblateHead(0, 1))
    view.data["tokens"] = list(HOSTILE_TOKENS)
    view.data["interventions"] = ["</script><img src=x onerror=\"document.title='PWNED'\">"]
    # a token of 8+ emoji was cut after 13 UTF-16 units, half an emoji: a lone surrogate in the page
    # (chromium's --dump-dom died on it with SIGILL, so render() failed)
    page = render(view.html, selftest=False)
    assert page.root["data-status"] == "ok", page.root.get("data-error")
    assert re.search(r"<title>(.*?)</title>", page.dom).group(1).startswith(f"{kind.capitalize()} view: ")
    body = page.dom.split("<body>", 1)[1]
    assert "<img" not in body and body.count("<script") == 3  # the page's own three scripts, nothing added
    labels = [html.unescape(t) for t in re.findall(r'<text [^>]*text-anchor="start"[^>]*>([^<]*)</text>', page.dom)]
    expected = [_label(t) for t in HOSTILE_TOKENS]
    assert labels[1:1 + len(HOSTILE_TOKENS)] == expected  # the key column of the first lines panel, after "key"


def test_diff_view_marks_keys_outside_a_sliding_window_masked_not_zero(tiny_gemma):
    from attnlab.interventions import SetPattern
    from tests.viz.test_view_data import expected_keys

    # the view hid a fixed causal triangle: keys outside Gemma's sliding window showed as weight 0.0
    view = diff_view(tiny_gemma, TEXT, AblateHead(0, 0))
    n = len(view.data["tokens"])
    assert n > 5  # longer than the tiny model's window of 4
    for a, layer in enumerate(view.data["layers"]):
        for panel in ("clean", "intervened"):
            for h in range(len(view.data["heads"])):
                for i in range(n):
                    shown = [j for j in range(n) if view.data[panel][a][h][i][j] is not None]
                    assert shown == expected_keys(tiny_gemma, layer, i, n), (panel, layer, h, i)
    # an edit that puts weight on a masked key shows it (clean: 0), rather than hiding it
    uniform = torch.full((n, n), 1.0 / n)
    edited = diff_view(tiny_gemma, TEXT, SetPattern(0, 1, pattern=uniform))
    assert edited.data["intervened"][0][1][2] == [pytest.approx(1.0 / n, abs=1e-4)] * n
    assert edited.data["clean"][0][1][2][:3] != [None] * 3 and edited.data["clean"][0][1][2][3:] == [0.0] * (n - 3)
    assert tiny_gemma.count_hooks() == 0


@pytest.mark.parametrize("heads, shown", [([0, float("nan")], "nan"), ([float("nan")] * 2, "nan"), ([0, 1.5], "1.5")])
def test_head_statistics_refuses_heads_that_are_not_whole_numbers(heads, shown):
    import pandas as pd

    from attnlab.viz.plots import head_statistics

    # a NaN head's dot went to x = NaN (silently not drawn); all NaN raised "cannot convert float NaN to integer"
    df = pd.DataFrame({"layer": [0, 1], "head": heads, "entropy": [1.0, 2.0]})
    with pytest.raises(InvalidInput, match=rf"^head_statistics: column 'head' must hold whole numbers \(they place "
                                           rf"the dots\), got {shown}$"):
        head_statistics(df)
    dots = head_statistics(df.assign(head=[0, 1])).axes[0].collections[0].get_offsets()
    assert dots.shape == (2, 2) and list(dots[:, 1]) == [1.0, 2.0]


def test_bias_by_occupation_fits_the_rows_that_have_both_numbers():
    import numpy as np
    import pandas as pd

    from attnlab.viz.plots import bias_by_occupation

    # one occupation without a share of women made np.ptp NaN: the fit line and its legend vanished silently
    df = pd.DataFrame({"occupation": ["mechanic", "lawyer", "baker", "teacher", "nurse"],
                       "share_women": [0.1, 0.3, np.nan, 0.7, 0.9], "log_ratio": [-0.8, -0.4, 5.0, 0.4, 0.8]})
    ax = bias_by_occupation(df).axes[0]
    fits = [line for line in ax.lines if "fit" in line.get_label()]
    assert len(fits) == 1 and "slope 2.00, r = 1.00" in fits[0].get_label()
    np.testing.assert_allclose(fits[0].get_ydata(), 2 * fits[0].get_xdata() - 1, atol=1e-9)
    assert fits[0].get_xdata().min() == 0.1 and fits[0].get_xdata().max() == 0.9


@pytest.mark.parametrize("kind", ["head", "model", "neuron", "diff"])
def test_a_model_that_is_not_wrapped_is_named(kind):
    from attnlab.testing import tiny_hf_model
    from attnlab.viz import VIEWS

    hf = tiny_hf_model("gpt2")
    args = (AblateHead(0, 0),) if kind == "diff" else ()
    extra = {"layer": 1} if kind == "head" else {}  # layer= was checked on the model first
    # a bare transformers model failed with "'GPT2LMHeadModel' object has no attribute 'cfg'"
    for model, shown in ((hf, "GPT2LMHeadModel"), ("gpt2", "str")):
        with pytest.raises(InvalidInput, match=rf"^the {kind} view takes a model wrapped by attnlab.load\(...\) .*, "
                                               rf"got {shown}$"):
            VIEWS[kind](model, TEXT, *args, **extra)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in hf.modules())


def test_rows_without_a_group_label_are_drawn_not_dropped():
    import numpy as np
    import pandas as pd

    from attnlab.viz.plots import bias_by_occupation, context_window_curves

    # groupby dropped the rows whose label is missing: their curve / points vanished without a word
    df = pd.DataFrame({"distance": [0, 1, 0, 1], "mass": [0.5, 0.4, 0.3, 0.2], "label": ["a", "a", None, None]})
    lines = context_window_curves(df).axes[0].lines
    assert [line.get_label() for line in lines] == ["a", "nan"]
    np.testing.assert_allclose(lines[1].get_ydata(), [0.3, 0.2])
    df = pd.DataFrame({"share_women": [0.1, 0.2, 0.3, 0.4], "log_ratio": [1.0, 2.0, 3.0, 4.0],
                       "occupation": list("abcd"), "run": ["x", "x", None, None]})
    ax = bias_by_occupation(df, group="run").axes[0]
    assert sum(len(c.get_offsets()) for c in ax.collections) == 4


def test_a_bad_ylim_or_float_format_is_named_when_given():
    """grouped_bars(ylim=3) raised matplotlib's bare TypeError; Report.table(float_format='{:d}') pandas' ValueError."""
    import pandas as pd

    from attnlab.viz.plots import grouped_bars
    from attnlab.viz.report import Report

    df = pd.DataFrame({"relation": ["det", "nsubj"], "uas": [0.5, 0.7]})
    for ylim in (3, (0,), ("0", "1"), (0, True)):
        with pytest.raises(InvalidInput, match=r"grouped_bars: ylim must be \(low, high\), two numbers"):
            grouped_bars(df, "uas", x="relation", ylim=ylim)
    assert grouped_bars(df, "uas", x="relation", ylim=(0, 1)).axes[0].get_ylim() == (0, 1)
    report = Report("t")
    for fmt in ("{:d}", "{0} {1}", "{x}", 3):
        with pytest.raises(InvalidInput, match=r"float_format must be a format string for one number"):
            report.table(df, float_format=fmt)
    assert "0.70" in report.table(df, float_format="{:.2f}").html


def test_head_heatmap_refuses_a_grid_too_large_to_draw_before_building_it():
    """A stray layer of 10**7 built a 10M x 4 grid (and its image) before anything was said."""
    import pandas as pd

    from attnlab.viz.plots import head_heatmap

    df = pd.DataFrame({"layer": [0, 10**7], "head": [0, 3], "effect": [1.0, 2.0]})
    with pytest.raises(InvalidInput, match=r"^head_heatmap: a 10000001 x 4 grid \(layers 0\.\.10000000, heads 0\.\.3\) is too "
                                           r"large to draw \(at most 4,000,000 cells\)"):
        head_heatmap(df)
    grid = head_heatmap(df.assign(layer=[0, 999])).axes[0].images[0].get_array()
    assert grid.shape == (1000, 4) and grid[999, 3] == 2.0
