"""Reduced-precision linear layers, for work whose answer is an estimate anyway.

An exact sweep subtracts two nearly equal metric values, so rounding its products to
bfloat16 moves small effects by a sizeable fraction of themselves. Attribution patching is
already a first-order estimate, and bfloat16 products change it far less than its own error
(measured in ``docs/attribution.md``), while on CPUs with bfloat16 matrix units (AMX) and on
GPUs they run several times faster.

Inside :func:`reduced_linears` every linear layer of the model's blocks (``nn.Linear``, and
GPT-2's ``Conv1D``, which stores its weight transposed) multiplies its
input, rounded to ``dtype``, by a rounded copy of its weight (the products accumulate in
float32) and returns the model's dtype, so norms, softmax and the residual stream stay in
full precision and the LM head is left alone. The rounded weights are made once and kept on
the model (2 bytes a weight in bfloat16), keyed by each weight's storage and version, so an
in-place weight edit is seen. ``torch.autocast`` would round every weight again on every
call, which on a CPU costs about as much as the products save. Scoped hooks: another
thread using the model meanwhile computes in full precision.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from attnlab.engine.hooks import scoped_module_hook
from attnlab.errors import InvalidInput, UnsupportedModel

__all__ = ["PRECISIONS", "check_precision", "reduced_linears", "full_precision"]

#: What ``precision=`` accepts, by name; the dtype itself is accepted too.
PRECISIONS = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def check_precision(value: str | torch.dtype | None) -> torch.dtype | None:
    """``None`` (the model's own precision) or the reduced dtype ``value`` names; anything else is an error."""
    if value is None:
        return None
    if isinstance(value, torch.dtype) and value in PRECISIONS.values():
        return value
    if isinstance(value, str) and value.lower() in PRECISIONS:
        return PRECISIONS[value.lower()]
    names = ", ".join(repr(n) for n in PRECISIONS)
    raise InvalidInput(f"precision must be None, torch.bfloat16, torch.float16 or one of {names}; got {value!r}")


def _block_linears(model) -> list[nn.Module]:
    layers = model.decoder_layers() or []
    return [m for layer in layers for m in layer.modules() if type(m) in (nn.Linear, Conv1D)]


def _rounded_weight(model, module: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """``module``'s weight as ``[out, in]`` in ``dtype``, made once per weight version and kept on the model."""
    weight = module.weight
    if weight.device.type == "meta":  # offloaded by accelerate: the weight exists only inside the module's call
        raise UnsupportedModel(
            f"{model.cfg.name}: precision= keeps rounded copies of the weights, but this model's weights are offloaded "
            "(device_map with disk/CPU offload); load it fully on its devices, or use precision=None")
    store: dict = model.__dict__.setdefault("_rounded_weights", {})
    key = (weight.data_ptr(), weight._version, dtype)
    kept = store.get(id(module))
    if kept is None or kept[0] != key:
        w = weight.detach().t() if isinstance(module, Conv1D) else weight.detach()
        kept = (key, w.to(dtype).contiguous())
        store[id(module)] = kept
    return kept[1]


@contextmanager
def reduced_linears(model, dtype: torch.dtype | None) -> Iterator[None]:
    """Inside, the block linears of ``model`` multiply in ``dtype`` (a no-op for ``None`` or a model already in it).

    Enter it after every other hook of the forward: its pre-hook hands the module zero
    positions (the module itself then computes nothing) and its forward hook, run first,
    returns the product from the input every earlier pre-hook has seen.
    """
    linears = [] if dtype is None else [m for m in _block_linears(model) if m.weight.dtype != dtype]
    if not linears:
        yield
        return
    pending: dict[int, list[torch.Tensor]] = {}

    def take(module, args, kwargs):
        x = args[0] if args else None
        if not (isinstance(x, torch.Tensor) and x.ndim >= 2 and x.shape[-2] > 0):
            return None
        pending.setdefault(id(module), []).append(x)
        return (x.narrow(-2, 0, 0), *args[1:]), kwargs

    def multiply(module, args, output):
        stack = pending.get(id(module))
        if not stack:
            return None
        x = stack.pop()
        out = F.linear(x.to(dtype), _rounded_weight(model, module, dtype)).to(x.dtype)
        return out + module.bias if module.bias is not None else out

    with ExitStack() as hooks:
        for module in linears:
            hooks.enter_context(scoped_module_hook(module, take, kind="pre"))
            hooks.enter_context(scoped_module_hook(module, multiply, prepend=True))
        yield


def full_precision(device: torch.device):
    """Switch ``torch.autocast`` off inside (for products an edit must see in float32), if a caller turned it on."""
    kind = torch.device(device).type
    if torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind):
        return torch.autocast(device_type=kind, enabled=False)
    return nullcontext()
