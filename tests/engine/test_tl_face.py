"""The model face a TransformerLens user expects: return types, padding side, token helpers, generate(fwd_hooks=)."""

from __future__ import annotations

import pytest
import torch

from attnlab.errors import InvalidInput
from attnlab.testing import tiny_model

TEXTS = ["the nurse said that she was very happy", "he ran"]
TEXT = TEXTS[0]
DECODERS = ("gpt2", "llama", "gemma3")


@pytest.fixture(params=DECODERS)
def decoder(request):
    return tiny_model(request.param)


def _hand_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of one unpadded row."""
    logp = logits[0, :-1].log_softmax(-1)
    return -logp.gather(-1, ids[0, 1:, None]).mean()


# -- return_type ---------------------------------------------------------------------------


def test_loss_equals_a_hand_computation_and_hf_labels(decoder):
    ids = decoder.to_tokens(TEXT)
    with torch.no_grad():
        loss = decoder(TEXT, return_type="loss")
        logits = decoder(TEXT)
        hf_loss = decoder.hf_model(input_ids=ids, labels=ids).loss
    assert loss.ndim == 0
    assert abs(float(loss) - float(_hand_loss(logits, ids))) <= 1e-5
    assert abs(float(loss) - float(hf_loss)) <= 1e-5


def test_both_and_none(decoder):
    seen = []
    with torch.no_grad():
        logits, loss = decoder(TEXT, return_type="both")
        assert torch.equal(logits, decoder(TEXT))
        assert torch.equal(loss, decoder(TEXT, return_type="loss"))
        out = decoder.run_with_hooks(TEXT, return_type=None, fwd_hooks=[("blocks.1.hook_resid_post", lambda x, hook: seen.append(x.shape))])
    assert out is None
    assert seen == [torch.Size([1, 9, decoder.cfg.d_model])]  # the blocks ran ([BOS] + 8 words)


def test_batch_loss_counts_real_tokens_only(tiny_llama):
    """On a padded batch the loss is the mean over real next-token predictions, either padding side."""
    model = tiny_llama
    with torch.no_grad():
        per_row = [(model(t, return_type="loss"), len(model.to_str_tokens(t)) - 1) for t in TEXTS]
        expected = sum(float(loss) * n for loss, n in per_row) / sum(n for _, n in per_row)
        for side in ("right", "left"):
            assert abs(float(model(TEXTS, return_type="loss", padding_side=side)) - expected) <= 1e-5
        per_token = model(TEXTS, return_type="loss", loss_per_token=True)
    assert per_token.shape == (2, 8)
    assert abs(float(per_token[1, :2].mean()) - float(per_row[1][0])) <= 1e-5
    assert float(per_token[1, 2:].abs().max()) == 0.0  # padding predicts nothing


def test_loss_needs_a_causal_lm(tiny_bert):
    with pytest.raises(InvalidInput, match="needs an LM head"):
        tiny_bert(TEXT, return_type="loss")
    with pytest.raises(InvalidInput, match="unknown return_type 'logit'"):
        tiny_bert(TEXT, return_type="logit")


# -- padding -----------------------------------------------------------------------------------


def test_the_padding_trap_and_its_two_fixes(decoder):
    with torch.no_grad():
        alone = torch.stack([decoder(t)[0, -1] for t in TEXTS])
        right = decoder(TEXTS)[:, -1]  # the short row's last column is padding
        left = decoder(TEXTS, padding_side="left")[:, -1]
        safe = decoder.next_token_logits(TEXTS)
    assert (right[1] - alone[1]).abs().max() > 1e-2  # the trap: wrong for the short row
    assert (right[0] - alone[0]).abs().max() <= 1e-5  # and right for the longest one
    assert (left - alone).abs().max() <= 1e-5  # fix 1: left padding
    assert (safe - alone).abs().max() <= 1e-5  # fix 2: next_token_logits, whatever the padding


def test_model_level_padding_side(tiny_gemma):
    model = tiny_gemma
    assert model.padding_side == "right"
    right = model.to_tokens(TEXTS)
    model.padding_side = "left"
    left = model.to_tokens(TEXTS)
    assert left[1, 0] == model.pad_token_id and right[1, -1] == model.pad_token_id
    assert torch.equal(model.to_tokens(TEXTS, padding_side="right"), right)  # a call's option wins
    with torch.no_grad():
        assert (model(TEXTS)[:, -1] - model.next_token_logits(TEXTS)).abs().max() <= 1e-5
    with pytest.raises(InvalidInput, match="padding_side must be 'right' or 'left', got 'middle'"):
        model(TEXTS, padding_side="middle")


# -- tokens ------------------------------------------------------------------------------------


def test_to_tokens_prepend_bos(tiny_llama):
    model = tiny_llama
    bos = model.tokenizer.bos_token_id
    with_bos, without = model.to_tokens(TEXT, prepend_bos=True), model.to_tokens(TEXT, prepend_bos=False)
    assert with_bos[0, 0] == bos and without[0, 0] != bos
    assert torch.equal(with_bos[0, 1:], without[0])
    assert torch.equal(model.to_tokens(TEXT), with_bos)  # the tokenizer's default adds it


def test_to_str_tokens_on_lists(tiny_gpt2):
    model = tiny_gpt2
    rows = model.to_str_tokens(TEXTS)
    assert rows == [model.to_str_tokens(t) for t in TEXTS]
    assert rows[1] == ["[BOS]", "he", "ran"]
    assert model.to_str_tokens(model.to_tokens(TEXTS)) == [rows[0], rows[1] + ["[PAD]"] * 6]
    assert model.to_str_tokens(TEXT, prepend_bos=False)[0] == "the"


def test_to_string(tiny_gpt2):
    model = tiny_gpt2
    ids = model.to_tokens(TEXT, prepend_bos=False)
    assert model.to_string(ids[0]) == TEXT
    assert model.to_string(ids[0].tolist()) == TEXT
    assert model.to_string(model.to_tokens(TEXTS, prepend_bos=False))[1].startswith("he ran")


# -- generation with hooks -----------------------------------------------------------------------


def test_generate_runs_fwd_hooks_at_every_step(decoder):
    calls = []

    def count(x, hook):
        calls.append(x.shape[1])

    decoder.generate("the nurse said", max_new_tokens=4, fwd_hooks=[("blocks.0.hook_resid_pre", count)])
    assert calls == [4, 1, 1, 1]  # the prompt once, then one new position per step (KV cache)
    assert decoder.count_hooks() == 0


def test_generate_with_an_editing_hook_equals_full_forwards(decoder):
    """Doubling layer 0's attention output while generating gives what a loop of full passes gives."""
    hook = [("blocks.0.hook_attn_out", lambda x, hook: x * 3)]
    prompt = "the nurse said that"
    generated = decoder.generate(prompt, max_new_tokens=5, fwd_hooks=hook, return_type="tokens")[0]
    clean = decoder.generate(prompt, max_new_tokens=5, return_type="tokens")[0]
    ids = decoder.to_tokens(prompt)[0]
    with torch.no_grad():
        for _ in range(5):
            logits = decoder.run_with_hooks(ids[None], fwd_hooks=hook)
            ids = torch.cat([ids, logits[0, -1].argmax()[None]])
    assert generated.tolist() == ids[-5:].tolist()
    assert generated.tolist() != clean.tolist()
