"""Numpy integers (what indexing an array or a DataFrame gives) are integers on every floor."""

from __future__ import annotations

import re

import numpy as np
import torch

from attnlab.analysis import neuron_data
from attnlab.analysis.neurons import unit_dims
from attnlab.interventions.reference_means import reference_means
from attnlab.testing import tiny_model
from attnlab.viz import model_view, neuron_view

TEXT = "the nurse said that she"


def test_numpy_integers_equal_python_integers_across_floors():
    model = tiny_model("llama")
    name = "blocks.1.attn.hook_z"
    assert torch.equal(reference_means(model, [name], [TEXT], batch_size=np.int64(1))[name],
                       reference_means(model, [name], [TEXT], batch_size=1)[name])
    assert unit_dims(model, np.int64(1)) == unit_dims(model, 1) and all(type(d) is int for d in unit_dims(model, np.int64(1)))
    a, b = neuron_data(model, TEXT, layer=1, head=0, query=np.int64(3)), neuron_data(model, TEXT, layer=1, head=0, query=3)
    assert a.table.equals(b.table)
    page = lambda view: re.sub(r"attnlab-[0-9a-f]+", "", view.html)  # noqa: E731  (each page has its own element id)
    assert page(neuron_view(model, TEXT, query=np.int64(2))) == page(neuron_view(model, TEXT, query=2))
    assert page(model_view(model, TEXT, thumbnail=np.int64(80))) == page(model_view(model, TEXT, thumbnail=80))
    assert model.to_single_str_token(np.int64(5)) == model.to_single_str_token(5)
    _, cache = model.run_with_cache(TEXT)
    torch.testing.assert_close(cache.accumulated_resid(np.int64(1)), cache.accumulated_resid(1), rtol=0, atol=0)


def test_numpy_integers_in_the_corpus_readers_and_the_probe(tmp_path):
    from attnlab.analysis import AttentionProbe, read_conllu

    path = tmp_path / "two.conllu"
    row = "1\tshe\t_\t_\t_\t_\t2\tnsubj\t_\t_\n2\tleft\t_\t_\t_\t_\t0\troot\t_\t_\n\n"
    path.write_text(row * 2)
    assert read_conllu(path, limit=np.int64(1)) == read_conllu(path, limit=1)
    probe = AttentionProbe(epochs=np.int64(2), batch_size=np.int32(4))
    assert (probe.epochs, probe.batch_size) == (2, 4) and type(probe.epochs) is int
