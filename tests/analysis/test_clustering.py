import inspect
import math

import numpy as np
import pytest
import torch

from attnlab.analysis import behaviour, head_distances, head_stats, js_divergence_matrix
from attnlab.errors import InvalidInput
from attnlab.interventions import SetPattern

TEXT = "the nurse said that she left the house ."


def test_js_of_identical_heads_is_zero_and_disjoint_is_log2():
    torch.manual_seed(0)
    a = torch.softmax(torch.randn(5, 5), -1)
    eye = torch.eye(5)
    shifted = torch.roll(eye, 1, dims=-1)
    js = js_divergence_matrix(torch.stack([a, a, eye, shifted]))
    assert js[0, 1].item() == pytest.approx(0.0, abs=1e-12)
    assert js[2, 3].item() == pytest.approx(math.log(2))
    assert torch.allclose(js, js.T) and (js >= 0).all()
    # against a direct computation for one pair
    m = (a + eye) / 2
    kl = lambda p, q: (torch.special.xlogy(p, p) - torch.special.xlogy(p, q)).sum(-1)
    direct = (0.5 * kl(a.double(), m.double()) + 0.5 * kl(eye.double(), m.double())).mean()
    assert js[0, 2].item() == pytest.approx(direct.item(), rel=1e-9)


def test_planted_twins_have_distance_zero_and_labels(tiny_gpt2):
    n = len(tiny_gpt2.to_tokens(TEXT)[0])
    prev = torch.zeros(n, n)
    prev[0, 0] = 1
    prev[torch.arange(1, n), torch.arange(n - 1)] = 1
    first = torch.zeros(n, n)
    first[:, 0] = 1
    specs = [SetPattern(0, 1, pattern=prev), SetPattern(1, 3, pattern=prev), SetPattern(1, 0, pattern=first)]
    with tiny_gpt2.intervene(*specs):
        hm = head_distances(tiny_gpt2, [TEXT], progress=False)
    assert hm.distances.shape == (8, 8)
    assert hm.distance((0, 1), (1, 3)) == pytest.approx(0.0, abs=1e-9)
    assert hm.distance((0, 1), (1, 0)) > 0.5  # previous-token vs first-token head: nearly disjoint
    labels = hm.table.set_index(["layer", "head"])["behaviour"]
    assert labels[(0, 1)] == labels[(1, 3)] == "previous"
    assert labels[(1, 0)] == "special"
    # MDS puts the twins on the same point
    xy = hm.table[["x", "y"]].to_numpy()
    assert np.linalg.norm(xy[1] - xy[7]) < 1e-3 * (np.ptp(xy) + 1e-9) + 1e-6
    assert len(hm.plot().axes) >= 2


def test_distances_pool_every_query_token(tiny_bert):
    """Clark et al. sum JS over every token of the data; averaging per sentence first let a 3-token
    sentence weigh as much as a 25-token one (40% off on this corpus)."""
    corpus = ["he", "the king and the queen went to the city because it was a new day and the dog ran to the house ."]
    n = np.array([len(tiny_bert.to_tokens(t)[0]) for t in corpus])
    alone = np.stack([head_distances(tiny_bert, [t], progress=False).distances for t in corpus])
    pooled = head_distances(tiny_bert, corpus, progress=False).distances
    np.testing.assert_allclose(pooled, (alone * n[:, None, None]).sum(0) / n.sum(), rtol=0, atol=1e-7)  # float32 attention
    assert np.abs(pooled - alone.mean(0)).max() > 0.1 * pooled.max()  # the per-sentence mean is another number


def test_mds_is_deterministic(tiny_bert):
    a = head_distances(tiny_bert, [TEXT, "a dog ran ."], progress=False, seed=3)
    b = head_distances(tiny_bert, [TEXT, "a dog ran ."], progress=False, seed=3)
    assert np.array_equal(a.table[["x", "y"]].to_numpy(), b.table[["x", "y"]].to_numpy())


def test_behaviour_thresholds(tiny_llama):
    stats = head_stats(tiny_llama, [TEXT], progress=False)
    df = stats.table.copy()
    df.loc[0, ["special", "prev", "next", "self"]] = [0.9, 0, 0, 0]
    df.loc[1, ["special", "prev", "next", "self"]] = [0.0, 0, 0.8, 0]
    labels = behaviour(df)
    assert labels[0] == "special" and labels[1] == "next"


def test_stats_of_another_model_rejected(tiny_gpt2, tiny_bert):
    stats = head_stats(tiny_gpt2, [TEXT], progress=False)
    stats.table = stats.table.iloc[:3]
    with pytest.raises(InvalidInput, match="stats has 3 heads but tiny-bert has 8"):
        head_distances(tiny_bert, [TEXT], stats=stats, progress=False)


def test_mds_runs_on_scikit_learn_before_1_8(tiny_bert, monkeypatch):
    """scikit-learn 1.4-1.7 spell MDS's options ``dissimilarity="precomputed"`` (``metric`` a bool, no
    ``init=``): head_distances raised TypeError there although pyproject allows scikit-learn>=1.4."""
    import sklearn.manifold

    real = sklearn.manifold.MDS
    new = head_distances(tiny_bert, [TEXT], progress=False, seed=1).table[["x", "y"]].to_numpy()
    if "init" not in inspect.signature(real).parameters:
        return  # an old scikit-learn is installed: the call above was the check
    seen = {}

    class MDS17:  # the 1.7 signature, running today's algorithm with the same options
        def __init__(self, n_components=2, *, metric=True, n_init="warn", max_iter=300, verbose=0, eps=1e-6,
                     n_jobs=None, random_state=None, dissimilarity="euclidean", normalized_stress="auto"):
            seen.update(metric=metric, dissimilarity=dissimilarity, n_init=n_init, eps=eps)
            self.mds = real(n_components, metric="precomputed", init="random", n_init=n_init, max_iter=max_iter,
                            eps=eps, random_state=random_state, normalized_stress=normalized_stress)

        def fit_transform(self, X):
            return self.mds.fit_transform(X)

    monkeypatch.setattr(sklearn.manifold, "MDS", MDS17)
    old = head_distances(tiny_bert, [TEXT], progress=False, seed=1).table[["x", "y"]].to_numpy()
    assert seen == {"metric": True, "dissimilarity": "precomputed", "n_init": 4, "eps": 1e-6}
    np.testing.assert_array_equal(old, new)


def test_a_generator_corpus_is_read_once(tiny_bert):
    """head_distances read the corpus again for head_stats: a generator was an empty corpus there."""
    corpus = [TEXT, "a dog ran ."]
    listed = head_distances(tiny_bert, corpus, progress=False)
    lazy = head_distances(tiny_bert, (t for t in corpus), progress=False)
    np.testing.assert_array_equal(lazy.distances, listed.distances)
    assert lazy.table.equals(listed.table)


def test_distance_checks_its_heads(tiny_gpt2):
    """(0, 5) on 4 heads read head (1, 1)'s row and negative indices wrapped around."""
    from attnlab.errors import InvalidLocation

    hm = head_distances(tiny_gpt2, [TEXT], progress=False)
    assert hm.distance((1, 1), (0, 2)) == hm.distances[5, 2] and hm.distance([0, 3], (np.int64(1), 0)) == hm.distances[3, 4]
    for bad in [(0, 4), (2, 0), (-1, 0), (0, -1)]:
        with pytest.raises(InvalidLocation, match=rf"head a = \({bad[0]}, {bad[1]}\) out of range: tiny-gpt2 has "
                                                  r"layers 0\.\.1 and heads 0\.\.3"):
            hm.distance(bad, (0, 0))
        with pytest.raises(InvalidLocation, match=rf"head b = \({bad[0]}, {bad[1]}\) out of range"):
            hm.distance((0, 0), bad)
    for bad in [(0,), (0, 1, 2), (0.0, 1), (True, 1), "01", 3]:
        with pytest.raises(InvalidLocation, match=r"head a must be a \(layer, head\) pair of integers"):
            hm.distance(bad, (0, 0))
