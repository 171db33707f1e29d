"""Greedy generation with the KV cache equals a loop of full forwards under the same edits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnlab.errors import InvalidInput, UnsupportedModel
from attnlab.interventions import AblateHead, BlockKeys, EditNeuron, EditScores, SetPattern, from_dict

PROMPT = "the nurse said that"
N_NEW = 6


def _present(specs, length):
    """The specs as a full forward over ``length`` tokens sees them: future positions dropped."""
    out = []
    for spec in specs:
        if spec.positions is None:
            out.append(spec)
            continue
        kept = [p for p in spec.positions if p < length]
        if kept:
            out.append(from_dict({**spec.to_dict(), "positions": kept}))
    return out


def _recompute(model, prompt, n_new, specs):
    """Argmax of a full forward pass at every step (no KV cache)."""
    ids = model.to_tokens(prompt)
    with torch.no_grad():
        for _ in range(n_new):
            with model.intervene(*_present(specs, ids.shape[1])):
                next_id = model(ids)[0, -1].argmax()
            ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
    return ids[0, -n_new:].tolist()


def _generated_ids(model, prompt, n_new, specs):
    text = model.generate(prompt, max_new_tokens=n_new, interventions=specs)
    return model.tokenizer(text, add_special_tokens=False)["input_ids"]


CASES = {
    "clean": [],
    "ablate": [AblateHead(0, 1), AblateHead(1, 3)],
    "k-neuron": [EditNeuron(0, 2, site="k", dim=1, value=4.0)],
    "q-neuron-at-positions": [EditNeuron(1, None, site="q", dim=0, scale=-3.0, positions=[2, 6, 7])],
    "k-neuron-at-positions": [EditNeuron(0, 1, site="k", dim=3, value=5.0, positions=[1, 7])],
    "scores": [EditScores(1, 0, distance_penalty=1.5)],
    "block-bos": [BlockKeys(0, None, keys=[0])],
    "pattern-fn": [SetPattern(1, 2, fn=lambda p: p.pow(3), renormalize=True)],
    "ablate-late-positions": [AblateHead(0, None, positions=[5, 6, 8])],
}


# every case on GPT-2; the rotary / GQA / sliding-window models get a representative subset
MATRIX = [("gpt2", case) for case in CASES] + [
    (arch, case)
    for arch in ("llama", "gemma3")
    for case in ("clean", "ablate", "k-neuron-at-positions", "q-neuron-at-positions", "scores", "block-bos", "pattern-fn")
]


@pytest.mark.parametrize(("arch", "case"), MATRIX)
def test_generate_with_kv_cache_equals_full_recompute(arch, case):
    from attnlab.testing import tiny_model

    model = tiny_model(arch)
    specs = CASES[case]
    expected = _recompute(model, PROMPT, N_NEW, specs)
    got = _generated_ids(model, PROMPT, N_NEW, specs)
    assert got == expected
    assert model.count_hooks() == 0
    present = _present(specs, model.to_tokens(PROMPT).shape[1])
    if present:  # the interventions already act on the prompt
        with torch.no_grad():
            clean = model(PROMPT)
            with model.intervene(*present):
                edited = model(PROMPT)
        assert (edited - clean).abs().max() > 1e-4


def test_positional_edit_acts_only_once_its_position_is_generated(tiny_gpt2):
    """An edit at position 7 (the 3rd new token) leaves the first two new tokens as clean."""
    model = tiny_gpt2
    n_prompt = model.to_tokens(PROMPT).shape[1]
    spec = AblateHead(0, None, positions=[n_prompt + 2])
    clean = _recompute(model, PROMPT, N_NEW, [])
    edited = _recompute(model, PROMPT, N_NEW, [spec])
    assert edited[:3] == clean[:3]  # tokens produced before position n_prompt+2 is a query row
    assert _generated_ids(model, PROMPT, N_NEW, [spec]) == edited


def test_generate_refuses_encoders_and_bad_lengths(tiny_bert, tiny_gpt2):
    with pytest.raises(UnsupportedModel, match="not a causal language model"):
        tiny_bert.generate("the nurse", max_new_tokens=2)
    with pytest.raises(InvalidInput, match="max_new_tokens must be a positive integer, got 0"):
        tiny_gpt2.generate("the nurse", max_new_tokens=0)


def test_offsets_on_sliding_window_layers_during_generation(tiny_gemma):
    """Gemma-3's sliding layers (window 4 here) see only the last keys while decoding; the hook
    still knows the absolute position of its first query row and first key column."""
    model = tiny_gemma
    n_prompt = model.to_tokens(PROMPT).shape[1]
    seen = []

    def record(x, hook):
        seen.append((hook.layer_index, x.shape[2], x.shape[3], hook.query_offset, hook.key_offset))
        return x

    with model.hooks(fwd_hooks=[(lambda name: name.endswith("hook_attn_scores"), record)]):
        model.hf_model.generate(**model.tokenize(PROMPT), max_new_tokens=3, do_sample=False)
    steps = {}
    for layer, q_len, k_len, q_off, k_off in seen:
        steps.setdefault(layer, []).append((q_len, k_len, q_off, k_off))
    for layer, calls in steps.items():
        assert [q_off for _, _, q_off, _ in calls] == [0, n_prompt, n_prompt + 1]
        for q_len, k_len, q_off, k_off in calls:
            assert k_off + k_len == q_off + q_len  # the last key is the last query's own token
    sliding = steps[0]  # layer 0 is a sliding-window layer with window 4
    assert sliding[-1][1] < n_prompt + 2 and sliding[-1][3] > 0
    full = steps[2]
    assert all(k_off == 0 for *_, k_off in full)


PROMPTS = ["the nurse said that she", "a dog"]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_generate_takes_token_ids_as_model_does(arch):
    """An unpadded id tensor (what ``model(ids)`` reads) was refused as 'not left-padded'."""
    import attnlab.testing

    model = attnlab.testing.tiny_model(arch)
    want = model.generate(PROMPT, max_new_tokens=3, return_type="tokens")
    assert torch.equal(model.generate(model.to_tokens(PROMPT), max_new_tokens=3, return_type="tokens"), want)
    assert torch.equal(model.generate(model.to_tokens(PROMPT)[0], max_new_tokens=3, return_type="tokens"), want)
    # padded ids with their mask, and right-padded Tokens, are re-padded on the left: each row as alone
    alone = torch.cat([model.generate(p, max_new_tokens=3, return_type="tokens") for p in PROMPTS])
    right = model.tokens(PROMPTS)
    assert right.side == "right"
    assert torch.equal(model.generate(right.ids, attention_mask=right.mask, max_new_tokens=3, return_type="tokens"), alone)
    assert torch.equal(model.generate(right, max_new_tokens=3, return_type="tokens"), alone)
    left = model.tokens(PROMPTS, padding_side="left")
    assert torch.equal(model.generate(left.ids, attention_mask=left.mask, max_new_tokens=3, return_type="tokens"), alone)


def test_generate_stops_at_any_of_several_eos_ids(tiny_llama):
    model = tiny_llama
    greedy = model.generate(PROMPTS, max_new_tokens=4, stop_at_eos=False, return_type="tokens")
    row0, row1 = greedy[0].tolist(), greedy[1].tolist()
    stop0, stop1 = row0[1], row1[2]  # stop row 0 after its 2nd new token, row 1 after its 3rd
    unused = next(i for i in range(model.cfg.d_vocab) if i not in row0 + row1)
    k0, k1 = row0.index(stop0), row1.index(stop1)
    for eos in ([unused, stop0, stop1], (stop0, stop1), torch.tensor([stop1, stop0])):
        got = model.generate(PROMPTS, max_new_tokens=4, eos_token_id=eos, return_type="tokens")
        assert got.shape[1] == max(k0, k1) + 1
        assert got[0, : k0 + 1].tolist() == row0[: k0 + 1] and got[1, : k1 + 1].tolist() == row1[: k1 + 1]
        assert set(got[0, k0 + 1:].tolist()) <= {model.pad_token_id} and set(got[1, k1 + 1:].tolist()) <= {model.pad_token_id}
    alone = model.generate(PROMPTS[0], max_new_tokens=4, eos_token_id=np.int64(stop0), return_type="tokens")
    assert alone[0].tolist() == row0[: k0 + 1]


@pytest.mark.parametrize("eos, message", [
    (999, r"eos_token_id \[999\] out of range: token ids lie in 0\.\.139"),
    ([3, -1], r"eos_token_id \[-1\] out of range"),
    ([], "eos_token_id is empty; give at least one token id, or stop_at_eos=False"),
    (1.0, "eos_token_id must be a token id or a list, tuple or 1-D tensor of token ids, got 1.0"),
    (torch.tensor([[1]]), "eos_token_id must be a token id or a list"),
])
def test_bad_eos_ids_are_named(tiny_llama, eos, message):
    with pytest.raises(InvalidInput, match=message):
        tiny_llama.generate(PROMPT, max_new_tokens=2, eos_token_id=eos)
    assert tiny_llama.count_hooks() == 0


@pytest.mark.parametrize("options, message", [
    (dict(do_sample=True, top_k=True), "top_k must be a positive integer or None, got True"),
    (dict(do_sample=True, seed=1.5), r"seed must be an integer in -2\*\*63\.\.2\*\*64-1 or None, got 1.5"),
    (dict(do_sample=True, seed="a"), "seed must be an integer .* got 'a'"),
    (dict(temperature=True), "temperature must be a positive finite number, got True"),
])
def test_generate_options_are_checked(tiny_llama, options, message):
    with pytest.raises(InvalidInput, match=message):
        tiny_llama.generate(PROMPT, max_new_tokens=2, **options)
    assert tiny_llama.count_hooks() == 0


def test_generate_takes_numpy_integers(tiny_llama):
    model = tiny_llama
    assert model.generate(PROMPT, max_new_tokens=np.int64(2)) == model.generate(PROMPT, max_new_tokens=2)
    sampled = model.generate(PROMPT, max_new_tokens=3, do_sample=True, top_k=np.int32(5), seed=np.int64(7), return_type="tokens")
    assert torch.equal(sampled, model.generate(PROMPT, max_new_tokens=3, do_sample=True, top_k=5, seed=7, return_type="tokens"))


def test_patch_source_of_the_prompts_length_patches_the_prompt_and_leaves_new_tokens(tiny_llama):
    """The prompt's step patches every prompt position; the later steps, past the source, keep their own values."""
    from attnlab.interventions import Patch

    model, other = tiny_llama, "the doctor said that"
    name = "blocks.1.attn.hook_z"
    n = model.to_tokens(PROMPT).shape[1]
    assert model.to_tokens(other).shape[1] == n
    _, cache = model.run_with_cache(other, names_filter=name)
    source = cache[name]

    def by_hand(z, hook):  # the prompt's step sees n columns, a decoding step one
        return source.clone() if z.shape[1] == n else None

    want = model.generate(PROMPT, max_new_tokens=4, fwd_hooks=[(name, by_hand)], return_type="tokens")
    got = model.generate(PROMPT, max_new_tokens=4, interventions=[Patch(1, None, site="z", source=other)],
                         return_type="tokens")
    assert torch.equal(got, want)
    assert not torch.equal(got, model.generate(PROMPT, max_new_tokens=4, return_type="tokens"))
    assert model.count_hooks() == 0


def test_one_spec_is_taken_where_a_list_is(tiny_llama):
    """interventions= takes one spec, as effect() does (it was unpacked with * and raised a bare TypeError)."""
    model, spec = tiny_llama, AblateHead(1, 0)
    listed = model.generate(PROMPT, max_new_tokens=3, interventions=[spec], return_type="tokens")
    assert not torch.equal(listed, model.generate(PROMPT, max_new_tokens=3, return_type="tokens"))
    assert torch.equal(model.generate(PROMPT, max_new_tokens=3, interventions=spec, return_type="tokens"), listed)
    assert torch.equal(model.next_token_logits(PROMPT, interventions=spec), model.next_token_logits(PROMPT, interventions=[spec]))
    assert torch.equal(model.run(PROMPT, interventions=spec).logits, model.run(PROMPT, interventions=[spec]).logits)
    for bad, shown in ((3, "int: 3"), ("ablate", "str: 'ablate'")):
        with pytest.raises(InvalidInput, match=f"^interventions must be an intervention spec or a list of them, got {shown}$"):
            model.generate(PROMPT, max_new_tokens=1, interventions=bad)
    with pytest.raises(InvalidInput, match=r"intervene\(\) takes intervention specs, got str: 'x'"):
        model.generate(PROMPT, max_new_tokens=1, interventions=[spec, "x"])
    assert model.count_hooks() == 0


@pytest.mark.parametrize("kind", ["pattern", "add", "replace"])
def test_tensor_pattern_and_score_edits_cover_the_prompt_and_leave_new_tokens(tiny_llama, kind):
    """A [query, key] tensor edits the prompt's step and not the positions generated after it (it crashed on step 2)."""
    model = tiny_llama
    n = model.to_tokens(PROMPT).shape[1]
    torch.manual_seed(0)
    given = torch.rand(n, n).tril()
    given = given / given.sum(-1, keepdim=True)
    spec = {"pattern": SetPattern(1, 0, pattern=given), "add": EditScores(1, 0, add=given * 5),
            "replace": EditScores(1, 0, replace=given * 5)}[kind]
    name = f"blocks.1.attn.{'hook_pattern' if kind == 'pattern' else 'hook_attn_scores'}"

    def by_hand(x, hook):  # the prompt's step sees n query rows; a decoding step one, past the tensor
        if x.shape[2] != n:
            return None
        x = x.clone()
        edited = {"pattern": given, "add": x[:, 0] + given * 5, "replace": given * 5}[kind]
        x[:, 0] = torch.where(x[:, 0] <= torch.finfo(x.dtype).min, x[:, 0], edited) if kind != "pattern" else edited
        return x

    want = model.generate(PROMPT, max_new_tokens=4, fwd_hooks=[(name, by_hand)], return_type="tokens")
    got = model.generate(PROMPT, max_new_tokens=4, interventions=[spec], return_type="tokens")
    assert torch.equal(got, want)
    with torch.no_grad():
        assert (model.next_token_logits(PROMPT, interventions=spec) - model.next_token_logits(PROMPT)).abs().max() > 1e-3
    assert model.count_hooks() == 0


@pytest.mark.parametrize("kind", ["pattern", "add", "replace"])
def test_tensor_edits_stop_at_each_rows_own_prompt_in_a_batch(tiny_llama, kind):
    """A tensor sized for the longest prompt edits every row at its own prompt's tokens only, as alone: the shorter
    prompt's new tokens (positions the longest prompt still has) were edited with the tensor's meaningless entries."""
    model = tiny_llama
    prompts = ["the nurse said", "the doctor told the teacher that she was happy"]
    lengths = [model.to_tokens(p).shape[1] for p in prompts]
    n = max(lengths)
    assert min(lengths) + 2 < n  # the short prompt generates tokens at positions the tensor has
    torch.manual_seed(0)
    given = torch.rand(n, n).tril() + 0.05
    given = given / given.sum(-1, keepdim=True)
    scores = torch.randn(n, n) * 4

    def spec_of(m):
        return {"pattern": SetPattern(1, None, pattern=given[:m, :m], renormalize=True),
                "add": EditScores(1, None, add=scores[:m, :m]), "replace": EditScores(1, None, replace=scores[:m, :m])}[kind]

    def generate(prompt, m):
        seen = []  # blocks.1.attn.hook_z of every step: the head outputs under the edit
        new = model.generate(prompt, max_new_tokens=N_NEW, interventions=spec_of(m), return_type="tokens",
                             stop_at_eos=False, fwd_hooks=[("blocks.1.attn.hook_z", lambda z, hook: seen.append(z.clone()))])
        return new, seen

    batch, batch_z = generate(prompts, n)
    for row, (prompt, m) in enumerate(zip(prompts, lengths)):
        alone, alone_z = generate(prompt, m)
        assert batch[row].tolist() == alone[0].tolist(), f"row {row}"
        assert (batch_z[0][row, -m:] - alone_z[0][0]).abs().max() <= 1e-5  # the prompt's step (left-padded)
        for step, (b, a) in enumerate(zip(batch_z[1:], alone_z[1:]), 1):  # the new tokens' steps
            assert (b[row] - a[0]).abs().max() <= 1e-5, f"row {row}, step {step}"
    assert model.count_hooks() == 0


@pytest.mark.parametrize("site", ["z", "k", "pattern", "attn_scores"])
@pytest.mark.parametrize("given", ["tensor", "text"])
def test_patch_stops_at_each_rows_own_prompt_in_a_batch(tiny_llama, site, given):
    """A Patch source as long as the longest prompt patches every row at its own prompt's tokens only, as alone: the
    shorter prompt's new tokens (positions the source still has) were patched with the source's later tokens."""
    from attnlab.interventions import Patch

    model = tiny_llama
    prompts = ["the nurse said", "the doctor told the teacher that she was happy"]
    other = "a man told the doctor that he was sad"  # as long as the longer prompt
    lengths = [model.to_tokens(p).shape[1] for p in prompts]
    n = max(lengths)
    assert model.to_tokens(other).shape[1] == n and min(lengths) + 2 < n
    name = f"blocks.1.attn.hook_{site}"
    _, cache = model.run_with_cache(other, names_filter=name)
    source = cache[name]

    def spec_of(m):  # alone, a row is patched with the source's first m tokens
        if m == n:
            return Patch(1, None, site=site, source=other if given == "text" else source)
        return Patch(1, None, site=site, source=source[:, :, :m, :m] if site in ("pattern", "attn_scores") else source[:, :m])

    def generate(prompt, spec):
        seen = []  # blocks.1.attn.hook_z of every step: the head outputs under the patch
        new = model.generate(prompt, max_new_tokens=N_NEW, interventions=spec, return_type="tokens",
                             stop_at_eos=False, fwd_hooks=[("blocks.1.attn.hook_z", lambda z, hook: seen.append(z.clone()))])
        return new, seen

    batch, batch_z = generate(prompts, spec_of(n))
    for row, (prompt, m) in enumerate(zip(prompts, lengths)):
        alone, alone_z = generate(prompt, spec_of(m))
        assert (alone_z[0] - generate(prompt, [])[1][0]).abs().max() > 1e-3  # the patch does something
        assert batch[row].tolist() == alone[0].tolist(), f"row {row}"
        assert (batch_z[0][row, -m:] - alone_z[0][0]).abs().max() <= 1e-5  # the prompt's step (left-padded)
        for step, (b, a) in enumerate(zip(batch_z[1:], alone_z[1:]), 1):  # the new tokens' steps
            assert (b[row] - a[0]).abs().max() <= 1e-5, f"row {row}, step {step}"
    assert model.count_hooks() == 0
