"""What attnlab needs to know about a model's attention, read once from its HF config."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

from attnlab.errors import NotSupported

__all__ = ["ModelConfig", "config_from_hf"]


@dataclass(frozen=True)
class ModelConfig:
    """Attention geometry of a wrapped model (the names follow TransformerLens)."""

    name: str  # short name used in messages, e.g. "gemma-3-270m"
    architecture: str  # HF model_type: "bert", "gpt2", "llama", "gemma3_text", ...
    n_layers: int  # attention layers, indexed 0..n_layers-1
    n_heads: int  # query heads per layer
    n_kv_heads: int  # key/value heads per layer (< n_heads under grouped-query attention)
    d_head: int  # width of one head's q/k/v vectors
    d_model: int  # residual stream width
    is_causal: bool  # decoder (True) or bidirectional encoder (False)
    n_ctx: int | None  # longest sequence the model was trained for, if the config says
    has_lm_head: bool  # calling the model returns vocabulary logits (else hidden states)
    d_vocab: int | None = None  # vocabulary size (rows of the token embedding)
    positional_embedding_type: str = "standard"  # "rotary" (q, k rotated per position) or "standard" (learned/none)
    attn_scale: float | None = None  # scores = q.k / attn_scale (TransformerLens' meaning; sqrt(d_head) by default)
    d_mlp: int | None = None  # MLP hidden width (neurons per layer: mlp.hook_pre/hook_post)
    act_fn: str | None = None  # MLP activation as the HF config names it ("gelu_new", "silu", "gelu_pytorch_tanh", ...)
    normalization_type: str | None = None  # "LN" (LayerNorm) or "RMS" (RMSNorm); None if neither or mixed
    norm_weight_offset: float = 0.0  # norms multiply by (norm_weight_offset + w): 1.0 on Gemma, whose weights store w - 1

    @property
    def rotary(self) -> bool:
        """q and k are rotated per position: q/k dimensions d and d + d_head/2 form a pair."""
        return self.positional_embedding_type == "rotary"

    @property
    def scaling(self) -> float:
        """The factor q.k is multiplied by (``1 / attn_scale``)."""
        return 1.0 / (self.attn_scale if self.attn_scale is not None else self.d_head**0.5)

    # TransformerLens' spellings of fields attnlab names otherwise
    model_name = property(lambda self: self.name, doc="TransformerLens' name for ``name``")
    original_architecture = property(lambda self: self.architecture, doc="TransformerLens' name for ``architecture``")
    n_key_value_heads = property(lambda self: self.n_kv_heads, doc="TransformerLens' name for ``n_kv_heads``")
    d_vocab_out = property(lambda self: self.d_vocab if self.has_lm_head else None, doc="logits' width (None: no LM head)")

    def __getattr__(self, name: str):
        if name == "device":  # TransformerLens' cfg.device, read from the wrapped model (it follows .to())
            model_of = self.__dict__.get("_model_of")
            model = model_of() if model_of is not None else None
            if model is not None:
                return model.device
        hint = _TL_CONFIG_HINTS.get(name)
        if hint is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        raise NotSupported(f"attnlab's ModelConfig has no {name!r} (a TransformerLens field): {hint}")

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_model_of"}  # a pickled config travels without its model

    def __copy__(self) -> ModelConfig:  # a copy in this process still knows its model (cfg.device)
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def __deepcopy__(self, memo: dict) -> ModelConfig:
        new = object.__new__(type(self))
        new.__dict__.update({k: v if k == "_model_of" else copy.deepcopy(v, memo) for k, v in self.__dict__.items()})
        return new

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def to_dict(self) -> dict:
        return asdict(self)

    def layer_range(self) -> str:
        return f"layers 0..{self.n_layers - 1}"

    def head_range(self) -> str:
        return f"heads 0..{self.n_heads - 1}"


#: TransformerLens config fields attnlab does not keep, and what to use instead
_TL_CONFIG_HINTS = {
    "device": "use model.device (this config belongs to no wrapped model)",
    "dtype": "use model.hf_model.dtype",
    "tokenizer_name": "use model.tokenizer.name_or_path",
    "default_prepend_bos": "attnlab adds the tokenizer's special tokens; pass prepend_bos= to to_tokens/run",
    "use_attn_result": "blocks.L.attn.hook_result is always available (computed only when hooked or cached)",
    "use_split_qkv_input": "blocks.L.hook_q_input / hook_k_input / hook_v_input are always available (copies made only when hooked)",
    "use_hook_mlp_in": "blocks.L.hook_mlp_in is always available",
    "use_attn_in": "attnlab has no hook_attn_in; hook blocks.L.hook_q_input, hook_k_input and hook_v_input",
    "attn_only": "attnlab wraps models with MLPs; cfg.d_mlp is their width",
    "parallel_attn_mlp": "model.layout.kind says how the blocks are arranged",
    "final_rms": "cfg.normalization_type is the norms' kind",
    "n_params": "use sum(p.numel() for p in model.hf_model.parameters())",
}


def _first(cfg, *names, default=None):
    for name in names:
        value = getattr(cfg, name, None)
        if value is not None:
            return value
    return default


def config_from_hf(hf_config, *, name: str, n_layers: int, is_causal: bool, has_lm_head: bool,
                   rotary: bool = False, scaling: float | None = None) -> ModelConfig:
    """Read head counts and widths from an HF config (text sub-config where there is one).

    ``rotary`` and ``scaling`` come from the model's modules (a rotary-embedding module; the
    attention modules' ``scaling`` attribute), which say what the model really does.
    """
    cfg = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    d_model = int(_first(cfg, "hidden_size", "n_embd", "d_model"))
    n_heads = int(_first(cfg, "num_attention_heads", "n_head", "num_heads"))
    n_kv_heads = int(_first(cfg, "num_key_value_heads", default=n_heads))
    d_head = int(_first(cfg, "head_dim", default=d_model // n_heads))
    n_ctx = _first(cfg, "max_position_embeddings", "n_positions", "n_ctx")
    return ModelConfig(
        name=name,
        architecture=str(getattr(cfg, "model_type", type(cfg).__name__)),
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        d_head=d_head,
        d_model=d_model,
        is_causal=is_causal,
        n_ctx=int(n_ctx) if n_ctx is not None else None,
        has_lm_head=has_lm_head,
        d_vocab=int(_first(cfg, "vocab_size")) if _first(cfg, "vocab_size") is not None else None,
        positional_embedding_type="rotary" if rotary else "standard",
        attn_scale=(1.0 / scaling) if scaling else float(d_head) ** 0.5,
    )
