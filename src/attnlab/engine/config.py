"""What attnlab needs to know about a model's attention, read once from its HF config."""

from __future__ import annotations

from dataclasses import asdict, dataclass

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

    def to_dict(self) -> dict:
        return asdict(self)

    def layer_range(self) -> str:
        return f"layers 0..{self.n_layers - 1}"

    def head_range(self) -> str:
        return f"heads 0..{self.n_heads - 1}"


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
