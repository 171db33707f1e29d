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
