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

import torch
from torch import nn

from attnlab.errors import AttnlabError, NotSupported

__all__ = ["is_bridge", "hf_model_of_bridge", "check_unprocessed", "processed_steps"]


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


def _centred(weight, dim: int) -> bool:
    """Every slice of ``weight`` along ``dim`` has mean 0, to the rounding of its dtype (TransformerLens' centring).

    A weight nobody centred has means of about ``|w| / sqrt(n)``: far above this bound in every slice.
    """
    w = weight.detach().float()
    bound = 16 * torch.finfo(weight.dtype).eps * w.abs().mean(dim).clamp_min(torch.finfo(torch.float32).tiny)
    return bool((w.mean(dim).abs() <= bound).all())


def _orthonormal_rows(weight) -> bool:
    """``W_O`` of every head has orthonormal rows, as ``refactor_factored_attn_matrices`` leaves it (an SVD's ``Vh``)."""
    w = weight.detach().float()  # [head, d_head, d_model]
    gram = w @ w.transpose(-1, -2)
    eye = torch.eye(gram.shape[-1], device=gram.device)
    return bool(torch.allclose(gram, eye.expand_as(gram), atol=max(1e-4, 64 * torch.finfo(weight.dtype).eps)))


def _traces(sources, read) -> bool:
    """``read(source)`` is true for one of ``sources``; a source without such a weight (an encoder's unembedding,
    a bias-free projection: None) shows no trace."""
    for source in sources:
        try:
            if read(source):
                return True
        except (AttnlabError, AttributeError, TypeError):
            continue
    return False


def _value_biases_folded(source) -> bool:
    blocks = list(source.blocks)
    b_v, b_q = [b.attn.b_V for b in blocks], [b.attn.b_Q for b in blocks]
    return bool(blocks) and all(not t.any() for t in b_v) and any(t.any() for t in b_q)


def processed_steps(bridge: nn.Module, weights) -> list[str]:
    """The steps of TransformerLens' weight processing whose traces the weights carry (empty: the model's own).

    TransformerLens marks a bridge processed (``_weights_processed``) whenever
    ``enable_compatibility_mode()`` ran ``process_weights``, even with every step turned off, and
    records only ``fold_ln`` (on the adapter). The other steps leave their mark in the weights:
    centring makes means exactly 0 (``W_E`` over ``d_model``, ``W_U`` over the vocabulary), folding
    the value biases (also done by ``refactor_factored_attn_matrices``) zeroes every ``b_V`` of a model
    whose queries keep their biases, and the refactoring leaves orthonormal rows in every ``W_O``.
    Random or trained weights show none of these. The weights are read both as the bridge's
    components hold them (GPT-2's value biases are folded there, while the HF model's fused
    ``c_attn`` keeps them) and through ``weights``, the wrapped model's views of the HF modules.
    """
    if not getattr(bridge, "_weights_processed", getattr(bridge, "compatibility_mode", False)):
        return []
    adapter = getattr(bridge, "adapter", None)
    found = []
    if getattr(adapter, "_fold_ln_requested", True) and getattr(adapter, "supports_fold_ln", True):
        found.append("the norms folded into the layers after them (fold_ln)")
    with torch.no_grad():
        if _traces([weights], lambda m: _centred(m.W_E, -1)):
            found.append("the writing weights centred (center_writing_weights: every row of W_E has mean 0)")
        if _traces([weights], lambda m: _centred(m.W_U, -1)):
            found.append("the unembedding centred (center_unembed: W_U has mean 0 over the vocabulary)")
        if _traces([bridge, weights], _value_biases_folded):
            found.append("the value biases folded into b_O (fold_value_biases or refactor_factored_attn_matrices: "
                         "every b_V is 0)")
        if _traces([bridge, weights], lambda m: len(m.blocks) > 0 and all(_orthonormal_rows(b.attn.W_O) for b in m.blocks)):
            found.append("the attention matrices refactored (refactor_factored_attn_matrices: every W_O has "
                         "orthonormal rows)")
    return found


def check_unprocessed(bridge: nn.Module, name: str, weights) -> None:
    """Refuse a bridge whose weights TransformerLens has processed (``enable_compatibility_mode()``).

    The processing (LayerNorm folding, centring, value biases folded into ``b_O``) rewrites
    the shared HF weights in place, but not all of them the way the HF forward reads them
    (GPT-2's fused ``c_attn`` stays unfolded while ``ln_1`` becomes 1/0): the HF model the
    view runs is then a model nobody has (log-probabilities 0.08 off on a tiny GPT-2, head
    outputs 0.6-0.8 off). ``enable_compatibility_mode(no_processing=True)``, or with every
    processing step turned off, keeps the weights (see :func:`processed_steps`).
    """
    steps = processed_steps(bridge, weights)
    if steps:
        raise NotSupported(
            f"{name}: this TransformerBridge's weights were processed by enable_compatibility_mode() "
            f"({'; '.join(steps)}) in place, so its HF modules no longer compute the model; attnlab's reads and "
            "edits would be wrong (the HF model shares the processed weights). Boot a bridge on a freshly loaded "
            "HF model and leave its weights as they are (no compatibility mode, or "
            "enable_compatibility_mode(no_processing=True), or with fold_ln, center_writing_weights, "
            "center_unembed, fold_value_biases and refactor_factored_attn_matrices all False)"
        )
