from pathlib import Path

import pytest
import torch

from attnlab.analysis.conllu import parse_conllu, read_conllu
from attnlab.analysis.syntax import relation_accuracy, word_maps
from attnlab.errors import InvalidInput
from attnlab.interventions import SetPattern

FIX = Path(__file__).parent / "fixtures"


def _gold_pattern(sentence, n_tokens):
    """Token pattern of a tiny BERT ([CLS] w1..wn [SEP], one token per word): word i attends to its head."""
    p = torch.zeros(n_tokens, n_tokens)
    for i, h in enumerate(sentence.heads, start=1):
        p[i, h] = 1.0  # h == 0 is [CLS], the root
    p[0, 0] = p[-1, -1] = 1.0
    return p


def _reverse_pattern(sentence, n_tokens):
    """Head words attend to (one of) their dependents."""
    p = torch.eye(n_tokens)
    for i, h in enumerate(sentence.heads, start=1):
        if h:
            p[h] = 0
            p[h, i] = 1.0
    return p


def test_planted_head_is_a_perfect_parser(tiny_bert):
    sent = read_conllu(FIX / "good.conllu")[0]  # The nurse said that she left .
    n = len(sent) + 2
    spec = SetPattern(1, 2, pattern=_gold_pattern(sent, n))
    res = relation_accuracy(tiny_bert, [sent], interventions=[spec], progress=False)
    ph = res.per_head.set_index(["relation", "direction", "layer", "head"])["accuracy"]
    for rel in ("all", "nsubj", "det", "mark", "ccomp", "punct"):
        assert ph[(rel, "dep->head", 1, 2)] == 1.0
    assert res.head_matrix("all").shape == (2, 4)
    table = res.table
    assert (table.loc[table["relation"] == "all", ["layer", "head", "accuracy"]].values.tolist() == [[1, 2, 1.0]])
    assert tiny_bert.count_hooks() == 0


def test_head_to_dependent_direction(tiny_bert):
    sent = parse_conllu("1\tthe\t_\t_\t_\t_\t2\tdet\t_\t_\n2\tdog\t_\t_\t_\t_\t3\tnsubj\t_\t_\n3\tran\t_\t_\t_\t_\t0\troot\t_\t_\n")[0]
    spec = SetPattern(0, 0, pattern=_reverse_pattern(sent, len(sent) + 2))
    res = relation_accuracy(tiny_bert, [sent], interventions=[spec], progress=False)
    ph = res.per_head.set_index(["relation", "direction", "layer", "head"])["accuracy"]
    assert ph[("det", "head->dep", 0, 0)] == 1.0 and ph[("nsubj", "head->dep", 0, 0)] == 1.0
    assert ph[("nsubj", "dep->head", 0, 0)] == 0.0  # 'dog' attends to its dependent 'the', not to 'ran'


def test_offset_baseline_on_a_hand_tree(tiny_bert):
    sents = read_conllu(FIX / "good.conllu")
    res = relation_accuracy(tiny_bert, sents, progress=False)
    base = res.baselines.set_index("relation")
    # det: The->nurse (+1), the->car (+1): offset +1 always right
    assert base.loc["det", "offset"] == 1 and base.loc["det", "accuracy"] == 1.0
    # nsubj: nurse->said +1, she->left +1, She->like +3, dog->ran +1  => +1 in 3 of 4
    assert base.loc["nsubj", "offset"] == 1 and base.loc["nsubj", "accuracy"] == pytest.approx(0.75)
    assert base.loc["nsubj", "count"] == 4
    # punct: .->said (-4), .->like (-3): tie broken towards the smaller offset
    assert base.loc["punct", "offset"] == -3 and base.loc["punct", "accuracy"] == 0.5
    assert base.loc["all", "count"] == sum(len(s) - 1 for s in sents)


def test_word_maps_have_root_slot(tiny_llama):
    sents = read_conllu(FIX / "good.conllu")
    maps = word_maps(tiny_llama, sents, progress=False)
    assert [m.shape for m in maps] == [(2, 4, 8, 8), (2, 4, 8, 8), (2, 4, 4, 4)]
    # causal model: word 1 sees only BOS (slot 0) and itself, all mass accounted for
    assert torch.allclose(maps[0][..., 1, :2].sum(-1), torch.ones(2, 4), atol=1e-5)


def test_bad_input(tiny_bert):
    with pytest.raises(InvalidInput, match="no sentences given"):
        relation_accuracy(tiny_bert, [], progress=False)
    with pytest.raises(InvalidInput, match="pass DependencySentence objects"):
        relation_accuracy(tiny_bert, ["the dog ran"], progress=False)
    only_root = parse_conllu("1\tran\t_\t_\t_\t_\t0\troot\t_\t_\n")
    with pytest.raises(InvalidInput, match="no dependency arcs"):
        relation_accuracy(tiny_bert, only_root, progress=False)
    res = relation_accuracy(tiny_bert, read_conllu(FIX / "good.conllu"), progress=False)
    with pytest.raises(InvalidInput, match="unknown direction 'up'"):
        res.head_matrix("det", "up")
    with pytest.raises(InvalidInput, match="no arcs with relation 'dobj'"):
        res.head_matrix("dobj")


def test_maps_of_another_model_are_refused(tiny_bert):
    """Maps with other layers x heads gave a raw RuntimeError (or, with more heads, were read in part)."""
    from attnlab.testing import tiny_model

    sents = read_conllu(FIX / "good.conllu")
    deeper = word_maps(tiny_model("gpt2", n_layers=3), sents, progress=False)
    with pytest.raises(InvalidInput, match=r"word map 0 has shape \(3, 4, 8, 8\) but a sentence of 7 words on tiny-bert "
                                           r"needs \[layer, head, 1 \+ words, 1 \+ words\] = \(2, 4, 8, 8\)"):
        relation_accuracy(tiny_bert, sents, maps=deeper, progress=False)
    maps = word_maps(tiny_bert, sents, progress=False)
    for bad in (maps[2][:, :3], torch.cat([maps[2], maps[2]], 1), maps[2][0], maps[0]):
        with pytest.raises(InvalidInput, match=r"word map 2 has shape .* needs .* = \(2, 4, 4, 4\)"):
            relation_accuracy(tiny_bert, sents, maps=[maps[0], maps[1], bad], progress=False)


def test_accuracies_are_exact_fractions(tiny_bert):
    """Counts were summed in float32: 1/3 came out as 0.3333333432674408."""
    sent = parse_conllu("".join(f"{i}\tw{i}\t_\t_\t_\t_\t{h}\tdep\t_\t_\n" for i, h in enumerate([2, 0, 2, 3], start=1)))
    gen = torch.Generator().manual_seed(0)
    maps = [torch.rand(2, 4, 5, 5, generator=gen)]
    res = relation_accuracy(tiny_bert, sent, maps=maps, progress=False)  # 3 arcs
    acc = res.per_head["accuracy"]
    assert (acc == (acc * 3).round() / 3).all()  # exactly k / 3 in float64
    assert acc.isin([1 / 3, 2 / 3]).any()
    assert res.baselines["accuracy"].tolist() == [2 / 3, 2 / 3]  # "dep" and "all": offset -1 (words 3 and 4)


@pytest.mark.parametrize("words, heads, relations, message", [
    (["she", "left"], [0], ["root"], r"2 words but 1 heads and 1 relations"),
    (["she", "left"], [2, 0], ["nsubj"], r"2 words but 2 heads and 1 relations"),
    (["she", "left"], [5, 0], ["nsubj", "root"], r"word 1 \('she'\) has head 5, but the sentence has words 1\.\.2"),
    (["she", "left"], [-1, 0], ["nsubj", "root"], r"word 1 \('she'\) has head -1"),
    (["a", "b", "c"], [2, 3, 2], ["x", "y", "z"], r"sentence has no root"),
    (["a", "b", "c"], [0, 3, 2], ["root", "y", "z"], r"heads form a cycle 2 -> 3 -> 2"),
    (["she", "left"], ["2", 0], ["nsubj", "root"], r"head of word 1 is '2'; heads are integers"),
    (["she", "left"], [2, 0], [None, "root"], r"relation of word 1 is None; expected a relation name"),
])
def test_a_hand_made_sentence_must_be_a_tree(words, heads, relations, message):
    """DependencySentence made by hand skipped read_conllu's checks: heads [0] for two words made the probe score
    one word, a head out of range raised a bare IndexError and a cycle or head -1 was evaluated as arcs."""
    from attnlab.analysis.conllu import DependencySentence
    from attnlab.analysis.probe import AttentionProbe
    from attnlab.testing import tiny_model

    good = DependencySentence(["she", "left"], [2, 0], ["nsubj", "root"])
    bad = DependencySentence(words, heads, relations)
    model = tiny_model("bert")
    with pytest.raises(InvalidInput, match=rf"^sentence 1: {message}"):
        relation_accuracy(model, [good, bad], progress=False)
    with pytest.raises(InvalidInput, match=rf"^sentence 1: {message}"):
        AttentionProbe(epochs=1).fit(model, [good, bad], progress=False)
    assert model.count_hooks() == 0
