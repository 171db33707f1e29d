"""The views rendered by a real headless browser: element counts match the data, no script errors."""

from __future__ import annotations

import re

import numpy as np
import pytest

from attnlab.interventions import AblateHead, BlockKeys
from attnlab.viz import diff_view, head_view, model_view, neuron_view

pytestmark = pytest.mark.browser

TEXT = "the nurse said that she was happy"
PAIR = ("the nurse said that", "she was happy")


def lines_above(att: np.ndarray, threshold: float, left=None, right=None) -> int:
    """Lines the page should draw: weights >= threshold over heads x (left, right) token pairs."""
    att = np.asarray(att, dtype=float)
    if left is not None:
        att = att[:, left][:, :, right]
    return int((att >= threshold).sum())


def ok(page) -> dict:
    root = page.root
    assert root.get("data-status") == "ok", root.get("data-error")
    assert page.console == [], page.console
    return root


def test_head_view_draws_one_line_per_weight_above_threshold(render, tiny_gpt2):
    view = head_view(tiny_gpt2, TEXT, threshold=0.05)
    page = render(view.html)
    root = ok(page)
    att = np.asarray(view.data["attention"])  # [layer, head, query, key]
    assert int(root["data-lines"]) == lines_above(att[0], 0.05)
    assert page.count(r'<line [^>]*class="al-line"') == lines_above(att[0], 0.05)
    assert page.count(r'class="al-head[" ]') == tiny_gpt2.cfg.n_heads
    test = page.selftest
    assert test["hoverLeft0"] == lines_above(att[0][:, :1], 0.05)  # token 0's lines only
    assert test["layer1"] == lines_above(att[1], 0.05)
    assert test["withoutHead0"] == lines_above(att[0][1:], 0.05)
    assert test["onlyHead0"] == lines_above(att[0][:1], 0.05)


def test_head_view_sentence_pair_filters(render, tiny_bert):
    view = head_view(tiny_bert, PAIR, layers=[1], threshold=0.02)
    page = render(view.html)
    ok(page)
    att = np.asarray(view.data["attention"])[0]
    seg = np.asarray(view.data["segments"])
    a, b = np.flatnonzero(seg == 0), np.flatnonzero(seg == 1)
    expected = {
        "all": lines_above(att, 0.02),
        "AA": lines_above(att, 0.02, a, a),
        "BB": lines_above(att, 0.02, b, b),
        "AB": lines_above(att, 0.02, a, b),
        "BA": lines_above(att, 0.02, b, a),
    }
    assert page.selftest["filters"] == expected
    assert expected["AB"] + expected["BA"] + expected["AA"] + expected["BB"] == expected["all"]


def test_model_view_grid_has_layers_x_heads_cells(render, tiny_gemma):
    view = model_view(tiny_gemma, TEXT, threshold=0.05)
    page = render(view.html)
    root = ok(page)
    n_layers, n_heads = tiny_gemma.cfg.n_layers, tiny_gemma.cfg.n_heads
    assert int(root["data-cells"]) == n_layers * n_heads
    assert page.count(r'<canvas [^>]*class="al-cellbox') == n_layers * n_heads
    test = page.selftest
    assert test["opened"] == f"{n_layers - 1}.{n_heads - 1}"
    assert test["detailLines"] == lines_above(np.asarray(view.data["attention"])[-1, -1:], 0.05)
    assert test["closed"] is True


def test_model_view_restricted(render, tiny_llama):
    page = render(model_view(tiny_llama, TEXT, layers=[1], heads=[0, 3]).html)
    assert int(ok(page)["data-cells"]) == 2


def test_neuron_view_has_one_row_per_visible_key(render, tiny_llama, tiny_bert):
    view = neuron_view(tiny_llama, TEXT, layers=[0, 1], heads=[1])
    page = render(view.html)
    root = ok(page)
    n = len(view.data["tokens"])
    assert int(root["data-rows"]) == n  # last token of a decoder sees every key
    assert page.count(r'<tr class="al-key-row"') == n
    # the query row and 3 strips per key row (k, q*k) -> 1 + 2 n canvases
    assert page.count(r'<canvas [^>]*class="al-strip"') == 1 + 2 * n
    test = page.selftest
    assert test["query0"] == 1 and test["last"] == n
    pair = neuron_view(tiny_bert, PAIR, layers=0, heads=0)
    seg = pair.data["segments"]
    test = render(pair.html).selftest
    assert test["initial"] == len(seg)
    assert test["filters"] == {"all": len(seg), "AA": seg.count(0), "BB": seg.count(1), "AB": seg.count(1), "BA": seg.count(0)}


def test_diff_view_grid_and_difference_heatmap(render, tiny_gpt2):
    view = diff_view(tiny_gpt2, TEXT, [AblateHead(0, 1), BlockKeys(1, 0, keys=[0])], threshold=0.05)
    page = render(view.html)
    root = ok(page)
    n = len(view.data["tokens"])
    assert int(root["data-cells"]) == tiny_gpt2.cfg.n_layers * tiny_gpt2.cfg.n_heads
    assert root["data-open"] == "1.0"  # blocking head 1.0's first key is the largest change
    assert int(root["data-diff-cells"]) == n * n
    clean = np.asarray([[np.nan if v is None else v for v in row] for row in view.data["clean"][1][0]])
    edited = np.asarray([[np.nan if v is None else v for v in row] for row in view.data["intervened"][1][0]])
    assert int(root["data-clean-lines"]) == int((np.nan_to_num(clean) >= 0.05).sum())
    assert int(root["data-intervened-lines"]) == int((np.nan_to_num(edited) >= 0.05).sum())
    test = page.selftest
    assert test["cells"] == 8 and test["clicked"] == "0.0" and test["diffCells"] == n * n


def test_two_fragments_share_a_page(render, tiny_gpt2, tiny_bert):
    page = "<!DOCTYPE html><html><body>" + head_view(tiny_gpt2, TEXT).fragment() + model_view(tiny_bert, PAIR).fragment() + "</body></html>"
    rendered = render(page, selftest=False)
    assert [r["data-status"] for r in rendered.roots] == ["ok", "ok"]
    assert [r["data-kind"] for r in rendered.roots] == ["head", "model"]
    assert rendered.console == []


def test_a_broken_page_reports_its_error(render, tiny_gpt2):
    view = head_view(tiny_gpt2, TEXT)
    view.data["attention"] = []  # the script cannot draw this
    root = render(view.html).root
    assert root["data-status"] == "error" and "TypeError" in root["data-error"]


def test_jupyter_iframe_renders_the_view(render, tiny_gpt2):
    """``_repr_html_`` (an iframe srcdoc) draws the view, and the iframe grows to fit it."""
    frame = head_view(tiny_gpt2, TEXT)._repr_html_()
    probe = (
        "<script>window.addEventListener('load', function () {"
        " var f = document.querySelector('iframe'); var r = f.contentDocument.querySelector('.attnlab-view');"
        " var out = document.getElementById('probe');"
        " out.setAttribute('data-inner-status', r.getAttribute('data-status'));"
        " out.setAttribute('data-inner-lines', r.getAttribute('data-lines'));"
        " out.setAttribute('data-height', String(f.getBoundingClientRect().height)); });</script>"
    )
    page = f'<!DOCTYPE html><html><body><div id="probe"></div>{frame}{probe}</body></html>'
    rendered = render(page, selftest=False)
    probe_tag = re.search(r'<div id="probe"([^>]*)>', rendered.dom).group(1)
    probe_attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', probe_tag))
    assert probe_attrs["data-inner-status"] == "ok"
    assert int(probe_attrs["data-inner-lines"]) > 0
    assert float(probe_attrs["data-height"]) != 620  # resized to the page's own height
