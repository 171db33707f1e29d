import pytest
import torch

from attnlab.analysis.conllu import DependencySentence
from attnlab.analysis.probe import AttentionProbe
from attnlab.errors import InvalidInput


def _random_tree(n, gen):
    """Heads of a random projective-ish tree: each word attaches to a random earlier word or the root."""
    root = int(torch.randint(1, n + 1, (1,), generator=gen))
    heads = []
    for i in range(1, n + 1):
        if i == root:
            heads.append(0)
        else:
            choices = [j for j in range(1, n + 1) if j != i and (j < i or j == root)]
            choices = choices or [root]
            heads.append(choices[int(torch.randint(len(choices), (1,), generator=gen))])
    return heads


def _synthetic(n_sent, seed, planted=True):
    """Sentences plus fake attention maps [2 layers, 3 heads, 1+n, 1+n]; head (1, 2) points at the gold head."""
    gen = torch.Generator().manual_seed(seed)
    sents, maps = [], []
    for _ in range(n_sent):
        n = int(torch.randint(3, 9, (1,), generator=gen))
        heads = _random_tree(n, gen)
        m = torch.softmax(torch.randn(2, 3, n + 1, n + 1, generator=gen), -1)
        if planted:
            m[1, 2] = 0
            for i, h in enumerate(heads, start=1):
                m[1, 2, i, h] = 1.0
        sents.append(DependencySentence([f"w{i}" for i in range(n)], heads, ["dep"] * n))
        maps.append(m)
    return sents, maps


def test_probe_learns_a_planted_head_and_beats_chance():
    train_s, train_m = _synthetic(60, 0)
    test_s, test_m = _synthetic(30, 1)
    probe = AttentionProbe(epochs=40, seed=0).fit(None, train_s, maps=train_m, progress=False)
    score = probe.evaluate(None, test_s, maps=test_m, progress=False)
    assert score.uas == 1.0
    assert probe.losses[-1] < probe.losses[0]
    # without the planted head the same probe is near chance (a word has ~5 candidates)
    noise_s, noise_m = _synthetic(30, 2, planted=False)
    assert probe.evaluate(None, noise_s, maps=noise_m, progress=False).uas < 0.6
    frame = score.table
    assert list(frame["parser"]) == ["attention probe", "head = next word", "head = previous word"]


def test_probe_is_deterministic_with_a_seed():
    s, m = _synthetic(40, 3)
    noisy = [x + 0.3 * torch.rand(x.shape, generator=torch.Generator().manual_seed(i)) for i, x in enumerate(m)]
    a = AttentionProbe(epochs=5, seed=7).fit(None, s, maps=noisy, progress=False)
    b = AttentionProbe(epochs=5, seed=7).fit(None, s, maps=noisy, progress=False)
    c = AttentionProbe(epochs=5, seed=8).fit(None, s, maps=noisy, progress=False)
    assert torch.equal(a.scorer.w, b.scorer.w) and a.losses == b.losses
    assert not torch.equal(a.scorer.w, c.scorer.w)  # another seed shuffles batches differently


def test_end_to_end_on_a_tiny_model(tiny_bert):
    from pathlib import Path

    from attnlab.analysis.conllu import read_conllu

    sents = read_conllu(Path(__file__).parent / "fixtures" / "good.conllu")
    probe = AttentionProbe(epochs=60, lr=0.1, seed=0).fit(tiny_bert, sents, progress=False)
    score = probe.evaluate(tiny_bert, sents, progress=False)
    assert score.n_words == 17 and score.uas >= score.right_branching  # fits its training data at least as well as a fixed rule
    assert tiny_bert.count_hooks() == 0


def test_bad_input():
    with pytest.raises(InvalidInput, match="epochs must be a positive integer"):
        AttentionProbe(epochs=0)
    with pytest.raises(InvalidInput, match="lr must be a finite number > 0"):
        AttentionProbe(lr=0)
    with pytest.raises(InvalidInput, match="not trained yet"):
        AttentionProbe().predict([torch.zeros(1, 1, 3, 3)])
    s, m = _synthetic(3, 4)
    with pytest.raises(InvalidInput, match="got 2 maps for 3 sentences"):
        AttentionProbe().fit(None, s, maps=m[:2], progress=False)
    with pytest.raises(InvalidInput, match=r"needs \[layer, head"):
        AttentionProbe().fit(None, s, maps=[m[1], m[0], m[2]] if m[0].shape != m[1].shape else [torch.zeros(2, 3, 2, 2)] * 3, progress=False)
    probe = AttentionProbe(epochs=1).fit(None, s, maps=m, progress=False)
    with pytest.raises(InvalidInput, match=r"trained on \(2, 3\)"):
        probe.predict([torch.zeros(1, 3, 4, 4)])


def test_evaluate_and_predict_check_their_maps():
    """evaluate scored 1 map of 2 sentences as UAS over 1 while reporting 2 sentences, and
    scored swapped maps; predict took a map of any shape."""
    s, m = _synthetic(3, 4)
    probe = AttentionProbe(epochs=2).fit(None, s, maps=m, progress=False)
    assert probe.evaluate(None, s, maps=m, progress=False).n_words == sum(len(x) for x in s)
    with pytest.raises(InvalidInput, match="got 2 maps for 3 sentences"):
        probe.evaluate(None, s, maps=m[:2], progress=False)
    sizes = [len(x) for x in s]
    j = next(j for j in range(1, 3) if sizes[j] != sizes[0])
    swapped = list(m)
    swapped[0], swapped[j] = m[j], m[0]
    with pytest.raises(InvalidInput, match=rf"map 0 has shape \(2, 3, {sizes[j] + 1}, {sizes[j] + 1}\); a sentence of "
                                           rf"{sizes[0]} words needs \[layer, head, {sizes[0] + 1}, {sizes[0] + 1}\]"):
        probe.evaluate(None, s, maps=swapped, progress=False)
    mixed = [m[0], m[1][:, :2], m[2]]
    with pytest.raises(InvalidInput, match=r"map 1 has \(2, 2\) layers x heads but map 0 has \(2, 3\)"):
        probe.evaluate(None, s, maps=mixed, progress=False)
    with pytest.raises(InvalidInput, match=r"map 1 has \(2, 2\) layers x heads but map 0 has \(2, 3\)"):
        AttentionProbe(epochs=1).fit(None, s, maps=mixed, progress=False)
    with pytest.raises(InvalidInput, match=r"map 0 has shape \(2, 3, 4, 5\); expected \[layer, head, 1 \+ n_words"):
        probe.predict([torch.zeros(2, 3, 4, 5)])
    with pytest.raises(InvalidInput, match=r"map 1 has shape \(2, 3, 1, 1\)"):
        probe.predict([m[0], torch.zeros(2, 3, 1, 1)])
    # maps from a generator, as fit() and evaluate() take them (predict() refused them)
    assert probe.predict(x for x in m) == probe.predict(list(m))
    with pytest.raises(InvalidInput, match=r"maps must be a list of word maps \(from word_maps\), got Tensor"):
        probe.predict(m[0])


@pytest.mark.parametrize("option, message", [
    ({"lr": float("inf")}, r"lr must be a finite number > 0, got inf"),
    ({"lr": True}, r"lr must be a finite number > 0, got True"),
    ({"lr": "0.1"}, r"lr must be a finite number > 0, got '0.1'"),
    ({"weight_decay": -1.0}, r"weight_decay must be a finite number >= 0, got -1.0"),
    ({"weight_decay": float("nan")}, r"weight_decay must be a finite number >= 0, got nan"),
    ({"seed": 1.5}, r"seed must be an integer in 0..2\*\*63-1, got 1.5"),
    ({"seed": "a"}, r"seed must be an integer in 0..2\*\*63-1, got 'a'"),
    ({"distance_features": "no"}, r"distance_features must be True or False, got 'no'"),
])
def test_options_are_checked_when_the_probe_is_made(option, message):
    """lr=inf trained to NaN weights and still reported a UAS; weight_decay=-1 and seed=1.5 failed only in fit()
    with torch's bare ValueError / RuntimeError; distance_features='no' switched the features on."""
    with pytest.raises(InvalidInput, match=f"^{message}$"):
        AttentionProbe(**option)


def test_a_huge_max_offset_stores_only_the_offsets_training_can_reach():
    """max_offset=10**9 allocated an 8 GB offset table (the process was killed); offsets past the longest
    training sentence never get a gradient, so the probe is the same with a table that stops there."""
    s, m = _synthetic(12, 5)
    longest = max(len(x) for x in s)
    huge = AttentionProbe(epochs=3, seed=0, max_offset=10**12).fit(None, s, maps=m, progress=False)
    exact = AttentionProbe(epochs=3, seed=0, max_offset=longest - 1).fit(None, s, maps=m, progress=False)
    assert huge.scorer.dist.numel() == 2 * (longest - 1) + 1
    assert huge.losses == exact.losses and torch.equal(huge.scorer.dist, exact.scorer.dist)
    assert huge.predict(m) == exact.predict(m)


@pytest.mark.parametrize("bad, message", [
    (lambda m: [m[0].numpy(), *m[1:]], r"map 0 is a ndarray; pass the torch tensors word_maps gives"),
    (lambda m: [m[0], torch.full_like(m[1], float("nan")), m[2]], r"map 1 holds NaN or infinite values"),
])
def test_maps_must_be_finite_tensors(bad, message):
    """A NaN map was scored like attention (evaluate reported UAS 0.8 on a 5-word corpus); a numpy map failed with a
    bare TypeError inside torch."""
    from attnlab.analysis.syntax import relation_accuracy
    from attnlab.testing import tiny_model

    s, m = _synthetic(3, 4)
    probe = AttentionProbe(epochs=1).fit(None, s, maps=m, progress=False)
    with pytest.raises(InvalidInput, match=message):
        probe.evaluate(None, s, maps=bad(m), progress=False)
    with pytest.raises(InvalidInput, match=message):
        probe.predict(bad(m))
    with pytest.raises(InvalidInput, match=message):
        AttentionProbe(epochs=1).fit(None, s, maps=bad(m), progress=False)
    model = tiny_model("gpt2")  # 2 layers x 4 heads: maps of that model's shape, for relation_accuracy
    maps = [torch.softmax(torch.randn(2, 4, len(x) + 1, len(x) + 1), -1) for x in s]
    with pytest.raises(InvalidInput, match=message.replace("map", "word map", 1)):
        relation_accuracy(model, s, maps=bad(maps), progress=False)
