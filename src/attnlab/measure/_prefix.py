"""Prefix reuse: run layers ``0 .. L-1`` once, then resume many intervened forwards at layer ``L``.

An intervention at layer ``L`` cannot change what layers before ``L`` compute, so a sweep
runs the clean prompts once, keeps what each decoder layer returned, and for every
intervened batch lets the HF model run as usual except that layers ``0 .. L-1`` hand back
the kept output (repeated for every copy of the prompts in the batch) instead of
computing it. The model itself still builds embeddings, attention masks and rotary
position embeddings (per layer type in Gemma-3), and applies its final norm and LM head,
so nothing architecture-specific is re-implemented here.

The decoder layers are found generically: for each attention module, its outermost
ancestor that is an element of an ``nn.ModuleList``. A sweep checks once that a resumed
clean run reproduces the clean output and falls back to full forwards otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from attnlab.engine.adapters import find_attention_modules

__all__ = ["decoder_layers", "capture_outputs", "skip_layers", "map_tensors"]


def decoder_layers(model) -> list[nn.Module] | None:
    """The HF decoder/encoder layer module of every attention layer, or None if not found."""
    hf = model.hf_model
    modules = dict(hf.named_modules())
    names = {id(m): n for n, m in modules.items()}
    layers, parents = [], set()
    for attn in find_attention_modules(hf):
        parts = names[id(attn)].split(".")
        found = None
        for i in range(1, len(parts)):
            parent = modules.get(".".join(parts[: i - 1]) if i > 1 else "")
            if isinstance(parent, nn.ModuleList):
                found = modules[".".join(parts[:i])]
                parents.add(id(parent))
                break
        if found is None:
            return None
        layers.append(found)
    if len(parents) != 1 or len({id(l) for l in layers}) != len(layers):
        return None
    return layers


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply ``fn`` to every tensor inside tuples/lists/dicts (a layer's output structure)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(map_tensors(o, fn) for o in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(map_tensors(o, fn) for o in obj)
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    return obj


@contextmanager
def capture_outputs(layers: list[nn.Module], which: set[int]) -> Iterator[dict[int, Any]]:
    """Record the output of layers ``which`` during forwards run inside the block."""
    kept: dict[int, Any] = {}
    handles = []

    def keep(i):
        def hook(module, args, output):
            kept[i] = map_tensors(output, lambda t: t.detach())

        return hook

    try:
        for i in sorted(which):
            handles.append(layers[i].register_forward_hook(keep(i)))
        yield kept
    finally:
        for h in handles:
            h.remove()


@contextmanager
def skip_layers(layers: list[nn.Module], start: int, output_before: Any, times: int, batch: int) -> Iterator[None]:
    """Inside the block, layers ``0 .. start-1`` return ``output_before`` repeated ``times`` over the batch."""
    if start == 0:
        yield
        return

    def rep(t: torch.Tensor) -> torch.Tensor:
        if t.ndim and t.shape[0] == batch and times > 1:
            return t.repeat(times, *([1] * (t.ndim - 1)))  # copy g = rows g*batch .. g*batch + batch - 1
        return t

    repeated = map_tensors(output_before, rep)

    def kept(*args, **kwargs):
        return repeated

    saved = []
    try:
        for layer in layers[:start]:
            saved.append((layer, layer.__dict__.get("forward")))
            layer.forward = kept
        yield
    finally:
        for layer, original in saved:
            if original is None:
                del layer.forward
            else:
                layer.forward = original
