"""Find the attention layers of any HF model and switch them onto attnlab's attention function.

No per-architecture tables: every transformers 5 model that routes attention through
``AttentionInterface`` has attention modules carrying a ``layer_idx``. We collect those,
switch the implementation name, and (in :mod:`attnlab.engine.model`) prove with one tiny
forward pass that every layer really reaches our function.
"""

from __future__ import annotations

from torch import nn

from attnlab.engine.attention import IMPLEMENTATIONS, register_attention
from attnlab.errors import UnsupportedModel

__all__ = ["find_attention_modules", "switch_implementation", "restore_implementation", "is_causal_model"]


def _is_self_attention(module: nn.Module) -> bool:
    cls = type(module).__name__
    if not cls.endswith("Attention") or "Cross" in cls:
        return False
    if getattr(module, "is_cross_attention", False):
        return False
    return getattr(module, "layer_idx", None) is not None


def find_attention_modules(hf_model: nn.Module) -> list[nn.Module]:
    """One self-attention module per layer, in layer order.

    Raises :class:`UnsupportedModel` when the model has none (state-space models, RNNs) or
    its layer indices are not 0..n-1.
    """
    found: dict[int, nn.Module] = {}
    for module in hf_model.modules():
        if _is_self_attention(module):
            found.setdefault(int(module.layer_idx), module)
    if not found:
        raise UnsupportedModel(
            f"{type(hf_model).__name__} has no self-attention layers that attnlab can reach: it needs a transformers "
            "model whose attention goes through AttentionInterface (BERT, GPT-2, Llama, Gemma, ...)"
        )
    layers = sorted(found)
    if layers != list(range(len(layers))):
        raise UnsupportedModel(f"{type(hf_model).__name__}: attention layer indices {layers} are not 0..{len(layers) - 1}")
    return [found[i] for i in layers]


def is_causal_model(hf_model: nn.Module, attention_modules: list[nn.Module]) -> bool:
    flag = getattr(attention_modules[0], "is_causal", None)
    if flag is not None:
        return bool(flag)
    return not bool(getattr(hf_model.config, "is_encoder_decoder", False)) and bool(
        getattr(hf_model.config, "is_decoder", True)
    )


def _configs(hf_model: nn.Module):
    """Every config object whose ``_attn_implementation`` the model's layers read."""
    seen, configs = set(), []
    for module in hf_model.modules():
        cfg = getattr(module, "config", None)
        if cfg is not None and id(cfg) not in seen:
            seen.add(id(cfg))
            configs.append(cfg)
    return configs


def switch_implementation(hf_model: nn.Module) -> str:
    """Point the model at attnlab's attention function; return the implementation it had."""
    register_attention()
    original = hf_model.config._attn_implementation or "eager"
    if original.startswith("attnlab_"):
        return original.removeprefix("attnlab_")
    if not getattr(hf_model, "_supports_attention_backend", True):
        raise UnsupportedModel(
            f"{type(hf_model).__name__} does not route attention through transformers' AttentionInterface, "
            "so attnlab cannot read or edit its attention"
        )
    target = IMPLEMENTATIONS.get(original, "attnlab_sdpa")
    for cfg in _configs(hf_model):
        cfg._attn_implementation = target
    return original


def attention_configs(hf_model: nn.Module) -> list:
    """The config objects whose ``_attn_implementation`` the layers read (kept to check them at every pass)."""
    return _configs(hf_model)


def reroute(configs: list) -> str | None:
    """Point configs that something switched away from attnlab's attention function back to it.

    ``hf_model.set_attn_implementation("eager")`` (transformers asks for it when a plain call wants
    ``output_attentions``) or a TransformerLens bridge booted on the same model switch the layers to
    another function: every hook at an attention site then stopped acting, without a word. Returns
    the implementation they were switched to (its attnlab twin now runs: the same math), or None.
    """
    switched = None
    for cfg in configs:
        current = cfg._attn_implementation or "eager"
        if not current.startswith("attnlab_"):
            cfg._attn_implementation = IMPLEMENTATIONS.get(current, "attnlab_sdpa")
            switched = current
    return switched


def restore_implementation(hf_model: nn.Module, original: str) -> None:
    for cfg in _configs(hf_model):
        cfg._attn_implementation = original
