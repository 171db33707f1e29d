"""The real Gemma-3-270m shows the documented gender bias (slow: loads the real model)."""

from __future__ import annotations

import pytest

from attnlab.bias import MediationPair, pronoun_bias, total_effect

pytestmark = pytest.mark.slow

OCC = ["nurse", "receptionist", "secretary", "librarian", "carpenter", "mechanic", "plumber", "electrician"]


def test_pronoun_bias_follows_share_of_women(gemma):
    res = pronoun_bias(gemma, occupations=OCC, templates=["The {occupation} said that"], n_boot=200)
    lr = res.per_occupation.set_index("occupation").log_ratio
    assert lr["nurse"] > 0 > lr["mechanic"]  # p(she|nurse) > p(he|nurse), the reverse for mechanic
    assert res.per_prompt.set_index("occupation").logp_female["nurse"] > res.per_prompt.set_index("occupation").logp_female["mechanic"]
    assert res.value("pearson_r") > 0.6
    assert res.summary.set_index("metric").loc["pearson_r", "low"] > 0


def test_total_effect_of_man_for_nurse_is_positive(gemma):
    te = total_effect(gemma, [MediationPair("The nurse said that", "The man said that", " she", " he")])
    assert te.te[0] > 1.0  # "man" multiplies the odds of "he" over "she" by more than 2


def test_documented_mediation_numbers(gemma):
    """docs/bias.md, the demo's 8 pairs: TE, the top three heads and head 12.2's three NIE readouts."""
    import pandas as pd

    from attnlab.bias import causal_mediation, mediation_pairs, occupations

    occ = occupations().sort_values("share_women")
    chosen = pd.concat([occ.head(4), occ.tail(4)])
    pairs, skipped = mediation_pairs(gemma, occupations=chosen, templates=["The {occupation} said that"])
    assert len(pairs) == 8 and skipped.empty
    res = causal_mediation(gemma, pairs, levels=("head",), effects=("nie",))
    assert res.top_heads(3) == [(12, 2), (7, 0), (7, 2)]
    head = res.table.set_index(["layer", "head"]).loc[(12, 2)]
    assert [head.nie, head.nie_low, head.nie_high] == pytest.approx([0.3076, 0.1771, 0.4704], abs=2e-4)
    assert [head.nie_log, head.nie_median] == pytest.approx([0.2550, 0.2647], abs=2e-4)
    assert res.te[0] == pytest.approx(99.33, abs=0.01)
