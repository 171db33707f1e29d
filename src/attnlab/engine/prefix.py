"""Prefix reuse: run layers ``0 .. L-1`` once, then resume many edited forwards at layer ``L``.

An edit at layer ``L`` cannot change what layers before ``L`` compute, so a sweep runs the
clean rows once, keeps what each decoder layer returned, and for every edited batch lets
the HF model run as usual except that layers ``0 .. L-1`` hand back the kept output
(repeated for every copy of the rows in the batch) instead of computing it. The model
itself still builds embeddings, attention masks and rotary position embeddings, and
applies its final norm and LM head, so nothing architecture-specific is re-implemented.

Skipping and keeping are per pass: the layers' ``forward`` is routed through a dispatcher
that only skips for the block that asked, so another thread running the same model computes
every layer as usual, and both act only while the forward state of the pass that asked is
current, so a pass a hook starts (a nested run, or a direct HF call) computes and keeps
nothing of the outer pass's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from attnlab.engine.hooks import scoped_module_hook
from attnlab.engine.state import current_state

__all__ = ["Prefix", "capture_layer_outputs", "resumed", "map_tensors"]


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


@dataclass(frozen=True)
class Prefix:
    """Layer outputs kept from a clean run of ``n_rows`` rows: ``outputs[i]`` is what layer i returned."""

    outputs: dict[int, Any]
    n_rows: int

    def resume_at(self, start: int, times: int) -> dict[int, Any]:
        """What layers ``0 .. start-1`` return when the batch holds ``times`` copies of the rows."""
        if start == 0:
            return {}

        def rep(t: torch.Tensor) -> torch.Tensor:
            if t.ndim and t.shape[0] == self.n_rows and times > 1:
                return t.repeat(times, *([1] * (t.ndim - 1)))  # copy g = rows g*n .. g*n + n - 1
            return t

        kept = map_tensors(self.outputs[start - 1], rep)
        return {i: kept for i in range(start)}


@contextmanager
def capture_layer_outputs(layers: list[nn.Module], which: set[int]) -> Iterator[dict[int, Any]]:
    """Record (detached) the output of layers ``which`` during forwards run inside the block."""
    kept: dict[int, Any] = {}
    state = current_state()
    with _stacked([(layers[i], _keeper(kept, i, state)) for i in sorted(which)]):
        yield kept


def _keeper(kept: dict, i: int, state):
    def hook(module, args, output):
        if current_state() is state:  # not a pass a hook started inside this one
            kept[i] = map_tensors(output, lambda t: t.detach())

    return hook


@contextmanager
def _stacked(pairs) -> Iterator[None]:
    if not pairs:
        yield
        return
    (module, fn), rest = pairs[0], pairs[1:]
    with scoped_module_hook(module, fn), _stacked(rest):
        yield


#: ``{id(layer): (forward state of the pass that skips it, kept output)}`` in this context
_SKIP: ContextVar[dict[int, tuple[Any, Any]] | None] = ContextVar("attnlab_skip_layers", default=None)


class _KeptOrReal:
    """A decoder layer's ``forward`` while resumed passes run: the kept output for the context that skips it.

    A copy of the layer made meanwhile (``copy.deepcopy``, ``pickle``; another thread may copy
    the model during a sweep) gets the forward the layer had before, never this one, which
    would run the original layer.
    """

    def __init__(self, layer: nn.Module, original: Callable | None):
        self.layer, self._attnlab_original = layer, original
        self.real = original if original is not None else layer.forward

    def __call__(self, *args, **kwargs):
        skip = _SKIP.get()
        kept = skip.get(id(self.layer)) if skip else None
        if kept is not None and current_state() is kept[0]:
            return kept[1]
        return self.real(*args, **kwargs)

    def __reduce__(self):
        if self._attnlab_original is not None:  # an instance forward of its own (accelerate's): copied as it is
            return (_same, (self._attnlab_original,))
        return (getattr, (self.layer, "forward"))  # the copy's class forward (its instance dict is not filled yet)


def _same(value):
    return value


class _Dispatch:
    """Routes one layer's ``forward``: kept output for the context that skips it, else the real one."""

    _lock = threading.Lock()
    _users: dict[int, int] = {}

    @classmethod
    def install(cls, layer: nn.Module) -> None:
        with cls._lock:
            if cls._users.get(id(layer), 0) == 0:
                layer.forward = _KeptOrReal(layer, layer.__dict__.get("forward"))
            cls._users[id(layer)] = cls._users.get(id(layer), 0) + 1

    @classmethod
    def uninstall(cls, layer: nn.Module) -> None:
        with cls._lock:
            cls._users[id(layer)] -= 1
            if cls._users[id(layer)] == 0:
                del cls._users[id(layer)]
                original = layer.forward._attnlab_original
                if original is None:
                    del layer.forward
                else:
                    layer.forward = original


@contextmanager
def resumed(layers: list[nn.Module], prefix: Prefix, start: int, times: int) -> Iterator[None]:
    """Inside the block (this context only), layers ``0 .. start-1`` return the kept outputs."""
    if start == 0:
        yield
        return
    outputs = prefix.resume_at(start, times)
    state = current_state()
    table = {id(layers[i]): (state, out) for i, out in outputs.items()}
    installed = []
    token = _SKIP.set({**(_SKIP.get() or {}), **table})
    try:
        for i in outputs:
            _Dispatch.install(layers[i])
            installed.append(layers[i])
        yield
    finally:
        for layer in installed:
            _Dispatch.uninstall(layer)
        _SKIP.reset(token)
