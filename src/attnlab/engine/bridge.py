"""TransformerLens 4 ``TransformerBridge`` support: find the plain HF model inside a bridge.

Booting a bridge replaces the HF model's modules *in place* with bridge components (for
GPT-2, Llama and Gemma the attention bridges recompute attention themselves and never
call the HF attention function). Every component keeps the module it replaced as
``_original_component``, so we can rebuild a view of the untouched HF model: the same
module objects and the same weights (nothing is copied), just without the bridge layer.
attnlab's hooks then run on that view; the bridge itself keeps working as before.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

from torch import nn

from attnlab.errors import NotSupported

__all__ = ["is_bridge", "hf_model_of_bridge", "check_unprocessed"]


def is_bridge(obj) -> bool:
    return isinstance(obj, nn.Module) and hasattr(obj, "original_model") and hasattr(obj, "adapter")


def _unwrap(module: nn.Module, memo: dict[int, nn.Module]) -> nn.Module:
    if id(module) in memo:
        return memo[id(module)]
    original = module.__dict__.get("_modules", {}).get("_original_component")
    if original is not None:  # a bridge component: keep only the HF module it wraps
        result = _unwrap(original, memo)
    else:
        # A shallow copy shares parameters, buffers and config, but gets hook dictionaries of its
        # own: attnlab's block-edge dispatchers then act on attnlab's runs of the view only, never
        # half-way into the bridge's own runs through a leaf module both happen to call.
        result = copy.copy(module)
        for attr in _HOOK_DICTS:
            if attr in module.__dict__:
                result.__dict__[attr] = OrderedDict()
        result.__dict__["_attnlab_source"] = module  # attention hooks tied to the view are tied to the source too
        result._modules = OrderedDict((name, _unwrap(child, memo)) for name, child in module._modules.items())
    memo[id(module)] = result
    return result


_HOOK_DICTS = (
    "_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks",
    "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
)


def hf_model_of_bridge(bridge: nn.Module) -> nn.Module:
    """The HF model as it was before the bridge wrapped it (shares every weight with the bridge)."""
    return _unwrap(bridge.original_model, {})


def check_unprocessed(bridge: nn.Module, name: str) -> None:
    """Refuse a bridge whose weights TransformerLens has processed (``enable_compatibility_mode()``).

    The processing (LayerNorm folding, centring, value biases folded into ``b_O``) rewrites
    the shared HF weights in place, but not all of them the way the HF forward reads them
    (GPT-2's fused ``c_attn`` stays unfolded while ``ln_1`` becomes 1/0): the HF model the
    view runs is then a model nobody has (log-probabilities 0.08 off on a tiny GPT-2, head
    outputs 0.6-0.8 off). ``enable_compatibility_mode(no_processing=True)`` keeps the weights.
    """
    if getattr(bridge, "_weights_processed", getattr(bridge, "compatibility_mode", False)):
        raise NotSupported(
            f"{name}: this TransformerBridge's weights were processed by enable_compatibility_mode() (folded and "
            "centred in place), so its HF modules no longer compute the model; attnlab's reads and edits would "
            "be wrong (the HF model shares the processed weights). Boot a bridge on a freshly loaded HF model "
            "and leave its weights as they are (no compatibility mode, or enable_compatibility_mode(no_processing=True))"
        )
