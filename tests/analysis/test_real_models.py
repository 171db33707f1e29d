"""A few cheap checks on the real embedded models (marked slow)."""

import pytest
import torch

from attnlab.analysis import head_stats, prepare
from attnlab.analysis.conllu import parse_conllu
from attnlab.analysis.neurons import decay_neurons, neuron_data
from attnlab.analysis.syntax import relation_accuracy
from attnlab.engine.locations import hook_name

pytestmark = pytest.mark.slow

CORPUS = [
    "The nurse said that she would leave early because the shift was long.",
    "Dogs bark at night, and the cats sit quietly on the old mat.",
    "He gave his sister the book that their father had bought in Paris.",
]


def test_minilm_heads_sink_into_special_tokens(minilm):
    stats = head_stats(minilm, CORPUS, progress=False)
    # BERT-style encoders park much attention on [CLS]/[SEP] in middle layers (Clark et al. section 3)
    assert stats.table["special"].max() > 0.5
    assert stats.table["cls"].notna().all() and stats.table["sep"].notna().all()
    # some head is a clear previous- or next-token head
    assert max(stats.table["prev"].max(), stats.table["next"].max()) > 0.5


def test_minilm_has_a_determiner_head_better_than_the_baseline(minilm):
    rows = "\n".join(
        "\t".join([str(i), w, "_", "_", "_", "_", str(h), r, "_", "_"])
        for i, (w, h, r) in enumerate([("The", 2, "det"), ("old", 3, "amod"), ("dog", 4, "nsubj"), ("slept", 0, "root"),
                                       ("near", 7, "case"), ("the", 7, "det"), ("door", 4, "obl")], start=1)
    )
    res = relation_accuracy(minilm, parse_conllu(rows + "\n"), progress=False)
    det = res.table.set_index("relation").loc["det"]
    assert det["accuracy"] == 1.0


def test_gemma_neuron_view_and_decay(gemma):
    text = CORPUS[0] + " " + CORPUS[1]
    v = neuron_data(gemma, text, layer=3, head=1, query=20)
    seen = []
    with gemma.hooks(fwd_hooks=[(hook_name(3, "pattern"), lambda x, hook: seen.append(x.detach()))]):
        gemma(text, return_type="hidden")
    assert torch.allclose(v.pattern, seen[0][0, 1, 20].float(), atol=1e-5)
    assert v.rotary and v.q.shape == (256,)
    prof = decay_neurons(gemma, [text], layers=[1], progress=False)
    top = prof.ranked(max_distance=20).table.iloc[0]
    assert top["layer"] == 1 and top["spearman"] < -0.9 and top["decay"] > 0


def test_gemma_punctuation_tokens_serve_every_word_they_span(gemma):
    """gemma has single tokens for '...', '."', '?!', '--' and ').': each serves all the marks it spans."""
    texts = ["Wait... what?", 'He said "no."', "Really?!", "a -- b", "(see above)."]
    spans = []
    for s in prepare(gemma, texts):  # each sentence was refused: "words [...] produced no tokens"
        assert sorted(w for w in s.word_index if w is not None) == list(range(len(s.words)))
        spans.append([[s.word_index[u] for u in units] for units in s.units_of if len(units) > 1])
    assert spans == [[[1, 2, 3]], [[4, 5]], [[1, 2]], [[1, 2]], [[3, 4]]]
