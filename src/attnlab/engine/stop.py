"""Stopping a forward pass early: after layer ``k - 1`` (TransformerLens' ``stop_at_layer``), or
after the last layer anything in this context reads or edits.

A pass that returns no logits and no final hidden state (reading a site, computing means or
patch sources) has no use for the layers after the last hooked one: a mean of layer 2's
heads on an 18-layer model ran all 18. The engine stops such a pass there by raising
:class:`StopForward` from a hook on that layer and catching it around the model call; every
``with`` block and ``finally`` on the way out runs as for any exception.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from attnlab.engine.hooks import acting_owners, scoped_module_hook
from attnlab.engine.state import current_state
from attnlab.errors import InvalidInput, InvalidLocation, is_integer

__all__ = ["StopForward", "check_stop_at_layer", "check_keep_layers", "not_reached", "check_reached", "blocks_run",
           "last_layer_in_use", "stop_at"]

#: Hook points after the blocks (a pass that reads them needs every layer).
_AFTER_BLOCKS = ("ln_final", "unembed")


class StopForward(Exception):
    """Raised by the stopping hook; carries the residual stream where the pass stopped."""

    def __init__(self, resid: torch.Tensor):
        super().__init__("forward pass stopped early (caught by the engine)")
        self.resid = resid


def check_stop_at_layer(value, n_layers: int) -> int | None:
    """``None`` or a layer in ``0 .. n_layers`` (negative counts from the end, as in TransformerLens)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not -n_layers <= value <= n_layers:
        raise InvalidInput(
            f"stop_at_layer must be None or an integer in {-n_layers}..{n_layers} (the number of blocks to run; "
            f"negative counts from the end), got {value!r}")
    return int(value) % n_layers if value < 0 else int(value)


def check_keep_layers(value, n_layers: int) -> set[int] | None:
    """``None`` or a set of layers in ``0 .. n_layers - 1``; negative ones count from the end (-1: the last block),
    like layers everywhere else (``cache["z", -1]``), so ``{-1}`` is ``{n_layers - 1}``."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or is_integer(value) or not hasattr(value, "__iter__"):
        raise InvalidLocation(f"keep_layers must be a set of layer indices in 0..{n_layers - 1} (or -{n_layers}..-1 "
                              f"from the end), got {value!r}")
    layers = set()
    for layer in value:
        if not is_integer(layer) or not -n_layers <= layer < n_layers:
            raise InvalidLocation(f"keep_layers holds {layer!r}; layers lie in 0..{n_layers - 1} (or -{n_layers}..-1 "
                                  f"from the end)")
        layers.add(int(layer) % n_layers)
    return layers


def not_reached(point, k: int) -> bool:
    """True when a pass stopped at block ``k`` (``stop_at_layer=k``) never reaches ``point``.

    Blocks ``k ..`` and the points after the blocks do not run; ``blocks.k.hook_resid_pre`` counts as
    reached: it is the stream the stopped pass returns.
    """
    if point.layer_index is None:
        return point.name.startswith(_AFTER_BLOCKS)
    return point.layer_index > k or (point.layer_index == k and point.site != "resid_pre")


def blocks_run(k: int) -> str:
    """What a pass stopped at block ``k`` runs, in words."""
    return "no block" if k == 0 else "block 0 only" if k == 1 else f"blocks 0..{k - 1} only"


def check_reached(model, names: list[str], k: int | None, what: str, asked) -> None:
    """Refuse hook names (asked one by one) that a pass stopped at block ``k`` never reaches: they would be missing."""
    if k is None:
        return
    missed = [n for n in names if not_reached(model.hook_dict[n], k)]
    if missed:
        shown = ", ".join(map(repr, missed[:3])) + (", ..." if len(missed) > 3 else "")
        raise InvalidInput(
            f"{what} asks for {shown}, which a pass with stop_at_layer={asked} never reaches: it runs {blocks_run(k)} "
            f"(the last stream it sees is blocks.{k}.hook_resid_pre, the one returned), not the later blocks nor the "
            f"final norm; read those without stop_at_layer")


def last_layer_in_use(model, keep_layers=None) -> int | None:
    """The last block at which some hook acts in this context or whose output is kept; ``None``: every block is needed.

    -1 when nothing acts at any block (nor after them).
    """
    owners = acting_owners()
    last = max(keep_layers or (), default=-1)
    for point in model.hook_dict.values():
        if not point._forward_hooks or not point.n_hooks(owners=owners):
            continue
        if point.layer_index is not None:
            last = max(last, point.layer_index)
        elif point.name.startswith(_AFTER_BLOCKS):
            return None
    return last


@contextmanager
def stop_at(blocks, k: int) -> Iterator[None]:
    """Inside, this pass raises :class:`StopForward` with the stream entering block ``k``.

    ``k = 0``: the embeddings, before block 0's own hooks; ``k = len(blocks)``: the last block's
    output. Only the pass running when the block opens stops: a nested ``run`` has its own forward
    state, and a direct call of the HF model from a hook runs with none (:func:`root_calls`).
    """
    state = current_state()
    if k == 0:
        def before(module, args, kwargs):
            if current_state() is state:
                raise StopForward(args[0] if args else kwargs["hidden_states"])

        with scoped_module_hook(blocks[0], before, kind="pre", prepend=True):
            yield
        return

    def after(module, args, output):
        if current_state() is state:
            raise StopForward(output[0] if isinstance(output, tuple) else output)

    with scoped_module_hook(blocks[k - 1], after):
        yield
