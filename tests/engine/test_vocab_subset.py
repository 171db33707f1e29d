"""``run(vocab=ids)``: only those vocabulary entries, equal to the full logits indexed.

Where the LM head is a plain linear layer of a causal LM the head computes only those rows
(checked: its own call sees no positions); elsewhere (BERT's MLM head) the full logits are
indexed. Both must give the full logits' numbers, with soft-capping, gradients,
interventions and prefix resumes.
"""

from __future__ import annotations

import pytest
import torch

from attnlab.engine import forward as fw
from attnlab.engine.forward import Resume, run
from attnlab.engine.model import HookedModel
from attnlab.errors import InvalidInput
from attnlab.interventions import AblateHead
from attnlab.testing import VOCAB, tiny_hf_model, tiny_model, tiny_tokenizer

DECODERS = ("gpt2", "llama", "gemma3")
TEXTS = ["the nurse said that she was happy", "he ran to the house", "the doctor said"]
IDS = torch.tensor([18, 17, 40, 3, 18])  # duplicates and any order are allowed
TOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")


def _softcapped(arch: str, cap: float) -> HookedModel:
    """A tiny Gemma 2 (soft-capping by default) or Gemma 3 with ``final_logit_softcapping`` set."""
    if arch == "gemma3":
        hf = tiny_hf_model("gemma3")
        hf.config.final_logit_softcapping = cap
    else:
        import transformers as tf

        torch.manual_seed(0)
        cfg = tf.Gemma2Config(
            vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=8, intermediate_size=64, max_position_embeddings=128, sliding_window=4, query_pre_attn_scalar=8,
            final_logit_softcapping=cap, bos_token_id=2, eos_token_id=3, pad_token_id=0, attn_implementation="eager",
        )
        hf = tf.Gemma2ForCausalLM(cfg).eval()
        with torch.no_grad():
            hf.lm_head.weight.mul_(20.0)  # logits well beyond the cap (Gemma 2 ties it to the embedding)
    return HookedModel(hf, tiny_tokenizer(), name=f"tiny-{arch}-softcap")


class HeadRows:
    """Counts the vocabulary rows the head's own call computes (registered before the engine's hooks)."""

    def __init__(self, model):
        self.shapes: list[tuple[int, ...]] = []
        self.handle = model.layout.unembed.register_forward_hook(lambda m, a, out: self.shapes.append(tuple(out.shape)))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _where(tokens) -> list:
    positions = torch.stack([torch.zeros_like(tokens.lengths), tokens.lengths - 1], dim=1)
    return ["last", positions, "all"]


@pytest.mark.parametrize("arch", DECODERS)
@pytest.mark.parametrize("side", ["right", "left"])
def test_subset_equals_full_logits_indexed(arch, side):
    model = tiny_model(arch)
    tokens = model.tokens(TEXTS, padding_side=side)
    assert fw._subset_head(model)
    for at in _where(tokens):
        full = run(model, tokens, logits=at).logits
        with HeadRows(model) as head:
            sub = run(model, tokens, logits=at, vocab=IDS).logits
        assert sub.shape == (*full.shape[:-1], len(IDS))
        assert (sub - full[..., IDS]).abs().max() <= TOL
        assert head.shapes and all(s[-2] == 0 for s in head.shapes)  # the full head computed no position


@pytest.mark.parametrize("arch", ["gemma2", "gemma3"])
def test_subset_applies_final_logit_softcapping(arch):
    cap = 0.1
    model = _softcapped(arch, cap)
    tokens = model.tokens(TEXTS, padding_side="right")
    assert fw._subset_head(model)
    full = run(model, tokens, logits="last").logits
    with torch.no_grad():
        hidden = run(model, tokens, logits=None, hidden=True).hidden
        raw = model.layout.unembed(hidden[torch.arange(len(TEXTS)), tokens.last])
    assert raw.abs().max() > 2 * cap  # the cap changes the numbers, so the test sees it
    assert full.abs().max() <= cap
    sub = run(model, tokens, logits="last", vocab=IDS).logits
    assert (sub - full[:, IDS]).abs().max() <= TOL


@pytest.mark.parametrize("arch", DECODERS)
def test_gradients_equal_the_full_head(arch):
    model = tiny_model(arch)
    tokens = model.tokens(TEXTS, padding_side="right")
    name = "blocks.0.hook_resid_post"
    grads = []
    for vocab in (None, torch.tensor([18, 17])):
        out = run(model, tokens, logits="last", vocab=vocab, read=[name], grad=True)
        picked = out.logits if vocab is not None else out.logits[:, [18, 17]]
        diff = picked[:, 0] - picked[:, 1]
        grads.append(torch.autograd.grad(diff.sum(), out.cache[name])[0])
    assert grads[0].abs().max() > 0
    assert (grads[0] - grads[1]).abs().max() <= TOL


@pytest.mark.parametrize("arch", DECODERS)
def test_under_an_intervention_and_hooks(arch):
    model = tiny_model(arch)
    tokens = model.tokens(TEXTS, padding_side="right")
    spec = AblateHead(1, 2)
    clean = run(model, tokens, logits="last", vocab=IDS).logits
    full = run(model, tokens, logits="last", interventions=[spec]).logits
    sub = run(model, tokens, logits="last", vocab=IDS, interventions=[spec]).logits
    assert (full[:, IDS] - clean).abs().max() > 1e-4  # the ablation moves these logits
    assert (sub - full[:, IDS]).abs().max() <= TOL

    def double(x, hook):
        return 2 * x

    hooks = [("blocks.1.hook_resid_pre", double)]
    full = run(model, tokens, logits="last", hooks=hooks).logits
    sub = run(model, tokens, logits="last", vocab=IDS, hooks=hooks).logits
    assert (sub - full[:, IDS]).abs().max() <= TOL


@pytest.mark.parametrize("arch", DECODERS)
def test_resumed_from_a_prefix(arch):
    model = tiny_model(arch)
    tokens = model.tokens(TEXTS, padding_side="right")
    start = model.cfg.n_layers - 1
    kept = run(model, tokens, logits="last", vocab=IDS, keep_layers={start - 1})
    spec = AblateHead(start, 0)
    full = run(model, tokens.repeat(2), logits="last", interventions=[spec]).logits
    sub = run(model, tokens.repeat(2), logits="last", vocab=IDS, interventions=[spec],
              resume=Resume(kept.prefix, start, 2)).logits
    assert (sub - full[:, IDS]).abs().max() <= TOL


def test_masked_lm_falls_back_to_the_full_head():
    model = tiny_model("bert-mlm")
    tokens = model.tokens(["the nurse said that [MASK] was happy", "he ran to the [MASK]"], padding_side="right")
    assert not fw._subset_head(model)
    for at in _where(tokens):
        full = run(model, tokens, logits=at).logits
        with HeadRows(model) as head:
            sub = run(model, tokens, logits=at, vocab=IDS).logits
        assert head.shapes[0][-1] == model.cfg.d_vocab
        assert torch.equal(sub, full[..., IDS])


@pytest.mark.parametrize("arch", DECODERS)
def test_switched_off_gives_the_same_numbers(arch, monkeypatch):
    model = tiny_model(arch)
    tokens = model.tokens(TEXTS, padding_side="right")
    fast = run(model, tokens, logits="last", vocab=IDS).logits
    monkeypatch.setattr(fw, "SUBSET_HEAD", False)
    with HeadRows(model) as head:
        slow = run(model, tokens, logits="last", vocab=IDS).logits
    assert head.shapes[0][-1] == model.cfg.d_vocab
    assert (fast - slow).abs().max() <= TOL


@pytest.mark.parametrize(
    "vocab, logits",
    [(torch.tensor([[1, 2]]), "last"), (torch.tensor([0.5]), "last"), (torch.tensor([], dtype=torch.long), "last"),
     (torch.tensor([len(VOCAB)]), "last"), (torch.tensor([-1]), "last"), (torch.tensor([1]), None)],
)
def test_bad_vocab_is_refused(vocab, logits):
    model = tiny_model("gpt2")
    with pytest.raises(InvalidInput):
        run(model, model.tokens(TEXTS), logits=logits, vocab=vocab)
