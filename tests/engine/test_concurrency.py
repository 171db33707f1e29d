"""Edits belong to the context that made them: two wrappers of one model, and threads sharing a model."""

from __future__ import annotations

import threading

import pytest
import torch

import attnlab
from attnlab.errors import InvalidLocation
from attnlab.interventions import AblateHead, EditScores
from attnlab.measure import KL, effect
from attnlab.testing import tiny_hf_model, tiny_model, tiny_tokenizer

TEXT = "the nurse said that she was happy"


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_wrapping_one_model_twice_keeps_both_wrappers_working(arch):
    hf, tok = tiny_hf_model(arch), tiny_tokenizer()
    m1 = attnlab.load(hf, tokenizer=tok)
    with torch.no_grad():
        clean = m1(TEXT)
    m2 = attnlab.load(hf, tokenizer=tok)
    for model in (m1, m2):
        with torch.no_grad(), model.intervene(AblateHead(0, None)):
            edited = model(TEXT)
        assert (edited - clean).abs().max() > 1e-3  # the edit acts through either wrapper
        _, cache = model.run_with_cache(TEXT, names_filter="blocks.0.attn.hook_pattern")
        assert cache["blocks.0.attn.hook_pattern"].shape[-1] == clean.shape[1]
    res = effect(m1, [TEXT], interventions=[AblateHead(0, None)], metric=KL(), progress=False, n_boot=0)
    assert res.mean > 1e-4
    del m2
    with torch.no_grad(), m1.intervene(AblateHead(0, None)):
        assert (m1(TEXT) - clean).abs().max() > 1e-3  # still working after the second wrapper is gone
    assert m1.count_hooks() == 0


def test_threads_see_only_their_own_edits():
    model = tiny_model("llama")
    a_spec, b_spec = AblateHead(0, None), EditScores(1, None, distance_penalty=1.0)
    with torch.no_grad():
        clean = model(TEXT)
        with model.intervene(a_spec):
            only_a = model(TEXT)
        with model.intervene(b_spec):
            only_b = model(TEXT)
    assert (only_a - clean).abs().max() > 1e-3 and (only_b - clean).abs().max() > 1e-3
    wrong: dict[str, int] = {"A": 0, "B": 0, "C": 0, "A after": 0}
    start = threading.Barrier(3)

    def run(name, spec, expected, n=60):
        start.wait()
        for _ in range(n):
            with torch.no_grad():
                if spec is None:
                    out = model(TEXT)
                else:
                    with model.intervene(spec):
                        out = model(TEXT)
                    if not torch.equal(model(TEXT), clean):
                        wrong[name + " after"] = wrong.get(name + " after", 0) + 1
            if not torch.allclose(out, expected, atol=1e-6):
                wrong[name] += 1

    threads = [
        threading.Thread(target=run, args=("A", a_spec, only_a)),
        threading.Thread(target=run, args=("B", b_spec, only_b)),
        threading.Thread(target=run, args=("C", None, clean)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(v == 0 for v in wrong.values()), wrong
    assert model.count_hooks() == 0


def test_another_threads_generation_does_not_loosen_position_checks():
    """Out-of-range positions must raise in a forward pass while another thread generates."""
    model = tiny_model("gpt2")
    stop = threading.Event()

    def generate_forever():
        while not stop.is_set():
            model.generate("the nurse said that", max_new_tokens=3)

    worker = threading.Thread(target=generate_forever)
    worker.start()
    try:
        for _ in range(30):
            with pytest.raises(InvalidLocation, match="position 50 out of range"):
                with torch.no_grad(), model.intervene(AblateHead(0, 0, positions=[50])):
                    model(TEXT)
    finally:
        stop.set()
        worker.join()
    assert model.count_hooks() == 0


def test_a_hook_seen_before_pytorch_marks_it_as_taking_keywords_does_not_act():
    """register_forward_hook(with_kwargs=True) inserts the hook, then marks it: a call in another thread in between
    passes (module, args, output). That used to raise TypeError (a missing argument) in the other thread."""
    model = tiny_model("llama")
    point = model.hook_dict["blocks.0.attn.hook_z"]
    seen = []
    model.add_hook("blocks.0.attn.hook_z", lambda x, hook: seen.append(hook.name))
    try:
        (hook,) = point._forward_hooks.values()
        x = torch.zeros(1, 2, 4, 8)
        assert hook(point, (x,), x) is None and seen == []  # the early three-argument call: no error, no action
        assert hook(point, (x,), {}, x) is None and seen == ["blocks.0.attn.hook_z"]  # the normal call acts
    finally:
        model.reset_hooks(including_permanent=True)
    assert model.count_hooks() == 0
