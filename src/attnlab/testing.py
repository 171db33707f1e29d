"""Tiny random-weight models built locally, for tests, docs examples and quick experiments.

Each has 2-3 layers and a word-level tokenizer over a small English vocabulary, builds in
well under a second and needs no download. Architectures: ``"gpt2"``, ``"bert"``
(encoder), ``"bert-mlm"`` (encoder with a masked-LM head), ``"llama"`` (grouped-query
attention, rotary) and ``"gemma3"`` (GQA, rotary, sliding-window and global layers).

>>> from attnlab.testing import tiny_model
>>> model = tiny_model("llama")
>>> model.cfg.n_heads, model.cfg.n_kv_heads
(4, 2)
"""

from __future__ import annotations

import torch

from attnlab.engine.model import HookedModel

__all__ = ["tiny_model", "tiny_hf_model", "tiny_tokenizer"]

TINY_ARCHITECTURES = ("gpt2", "bert", "bert-mlm", "llama", "gemma3")

_SPECIAL = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "[CLS]", "[SEP]", "[MASK]"]
_WORDS = """
the a an of to and in that is was he she his her him it they them their said says told
nurse doctor engineer teacher secretary mechanic carpenter librarian receptionist lawyer
chef baker farmer pilot dancer cashier clerk manager surgeon janitor man woman boy girl
because when then who which asked went came left arrived house car book door city day
night morning dog cat ran sat saw gave took made new old big small good bad happy sad
patient customer client student child friend mother father sister brother king queen
will would could should can may might must not no yes very more most some all any each
on at by for with from into over under after before about up down out
. , ! ? ; : ' "
""".split()
VOCAB: list[str] = _SPECIAL + list(dict.fromkeys(_WORDS))


def tiny_tokenizer(kind: str = "decoder"):
    """A word-level fast tokenizer; decoders prepend ``[BOS]``, encoders wrap in ``[CLS] ... [SEP]``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if kind == "encoder":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 4), ("[SEP]", 5)]
        )
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
            sep_token="[SEP]", mask_token="[MASK]",
        )
    else:
        tok.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", 2)])
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]"
        )
    fast.padding_side = "right"
    return fast


def tiny_hf_model(arch: str, *, seed: int = 0, attn_implementation: str = "sdpa", n_layers: int = 2):
    """The bare random-weight ``transformers`` model (not wrapped), in eval mode."""
    import transformers as tf

    torch.manual_seed(seed)
    v = len(VOCAB)
    common = dict(vocab_size=v, attn_implementation=attn_implementation)
    if arch == "gpt2":
        cfg = tf.GPT2Config(n_embd=32, n_layer=n_layers, n_head=4, n_positions=128, bos_token_id=2, eos_token_id=3, **common)
        model = tf.GPT2LMHeadModel(cfg)
    elif arch in ("bert", "bert-mlm"):
        cfg = tf.BertConfig(
            hidden_size=32, num_hidden_layers=n_layers, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=128, pad_token_id=0, **common,
        )
        model = tf.BertForMaskedLM(cfg) if arch == "bert-mlm" else tf.BertModel(cfg)
    elif arch == "llama":
        cfg = tf.LlamaConfig(
            hidden_size=32, num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=64, max_position_embeddings=128, bos_token_id=2, eos_token_id=3, pad_token_id=0,
            **common,
        )
        model = tf.LlamaForCausalLM(cfg)
    elif arch == "gemma3":
        cfg = tf.Gemma3TextConfig(
            hidden_size=32, num_hidden_layers=max(n_layers, 3), num_attention_heads=4, num_key_value_heads=1,
            head_dim=8, intermediate_size=64, max_position_embeddings=128, sliding_window=4,
            layer_types=(["sliding_attention", "sliding_attention", "full_attention"] * n_layers)[: max(n_layers, 3)],
            query_pre_attn_scalar=8, bos_token_id=2, eos_token_id=3, pad_token_id=0, **common,
        )
        model = tf.Gemma3ForCausalLM(cfg)
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}; valid: {', '.join(TINY_ARCHITECTURES)}")
    # Random init keeps attention near-uniform; sharper weights make edits visible in tests.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and "embed" not in name and "wte" not in name and "wpe" not in name:
                p.mul_(6.0)
    return model.eval()


def tiny_model(arch: str = "gpt2", *, seed: int = 0, n_layers: int = 2) -> HookedModel:
    """A wrapped tiny random model with its tokenizer."""
    kind = "encoder" if arch.startswith("bert") else "decoder"
    return HookedModel(tiny_hf_model(arch, seed=seed, n_layers=n_layers), tiny_tokenizer(kind), name=f"tiny-{arch}")
