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

__all__ = ["is_bridge", "hf_model_of_bridge"]


def is_bridge(obj) -> bool:
    return isinstance(obj, nn.Module) and hasattr(obj, "original_model") and hasattr(obj, "adapter")


def _unwrap(module: nn.Module, memo: dict[int, nn.Module]) -> nn.Module:
    if id(module) in memo:
        return memo[id(module)]
    original = module.__dict__.get("_modules", {}).get("_original_component")
    if original is not None:  # a bridge component: keep only the HF module it wraps
        result = _unwrap(original, memo)
    elif not any(_has_bridge_inside(child) for child in module.children()):
        result = module  # untouched subtree: use as is
    else:
        result = copy.copy(module)  # shallow: shares parameters, buffers and config
        result.__dict__["_attnlab_source"] = module  # hooks tied to the view are tied to the source too
        result._modules = OrderedDict((name, _unwrap(child, memo)) for name, child in module._modules.items())
    memo[id(module)] = result
    return result


def _has_bridge_inside(module: nn.Module) -> bool:
    return any("_original_component" in m._modules for m in module.modules())


def hf_model_of_bridge(bridge: nn.Module) -> nn.Module:
    """The HF model as it was before the bridge wrapped it (shares every weight with the bridge)."""
    return _unwrap(bridge.original_model, {})
