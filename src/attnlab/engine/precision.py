"""Reduced-precision linear layers, for work whose answer is an estimate anyway.

An exact sweep subtracts two nearly equal metric values, so rounding its products to
bfloat16 moves small effects by a sizeable fraction of themselves. Attribution patching is
already a first-order estimate, and bfloat16 products change it far less than its own error
(measured in ``docs/attribution.md``), while on CPUs with bfloat16 matrix units (AMX) and on
GPUs they run several times faster.

Inside :func:`reduced_linears` every linear layer of the model's blocks (``nn.Linear``, and
GPT-2's ``Conv1D``, which stores its weight transposed) multiplies its input, rounded to
``dtype``, by a rounded copy of its weight (the products accumulate in float32) and returns
the model's dtype, so norms, softmax and the residual stream stay in full precision and the
LM head is left alone. In bfloat16 one exception: the MLP's hidden activations (the outputs
of its first linear layers, the activation function and the gate's product, what
``mlp.hook_pre``, ``hook_pre_linear`` and ``hook_post`` see) stay in bfloat16 until the last
linear layer, which returns the model's dtype. They are rounded to bfloat16 before the last
product anyway; keeping them there skips six casts of the widest tensors of a block (three
forward, three backward) and halves the memory the activation's elementwise work reads,
about 30% of an MLP's forward and backward on a CPU (measured in ``docs/performance.md``). The substitution happens where the layer calls ``F.linear`` (or
``torch.addmm``), through a :class:`~torch.overrides.TorchFunctionMode`: the module is
called as usual, so every hook on it sees its real input and output, and the mode is
thread-local, so another thread using the model meanwhile computes in full precision. A
nested :func:`~attnlab.engine.forward.run` with ``precision=None`` (in a hook) computes in
full precision too.

The rounded weights are made once and kept on the model (2 bytes a weight in bfloat16;
:func:`forget_rounded_weights` frees them), for each weight tensor and its version, so an
in-place edit or a new ``Parameter`` is seen. ``torch.autocast`` would round every weight
again on every call, which on a CPU costs about as much as the products save. Writes that
bypass PyTorch's version counter (``weight.data[...] = ...``, through numpy) are not seen:
call :func:`forget_rounded_weights` after them.
"""

from __future__ import annotations

import platform
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from transformers.pytorch_utils import Conv1D

from attnlab.engine.caller import user_stacklevel
from attnlab.engine.finite import all_finite
from attnlab.errors import InvalidInput, InvalidSpec, UnsupportedModel

__all__ = ["PRECISIONS", "check_precision", "computing_dtype", "has_native_products", "reduced_linears", "forget_rounded_weights", "full_precision"]

#: What ``precision=`` accepts, by name; the dtype itself is accepted too.
PRECISIONS = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}

#: Switches for the benchmark that measures them against the plain path (``benchmarks/bench_precision_casts.py``):
#: keep the MLPs' hidden activations in bfloat16; round an input shared by consecutive products once.
KEEP_MLP_HIDDEN = True
SHARE_CASTS = True

#: The precision the innermost ``run`` asked for, in this context (None: full).
_ASKED: ContextVar[torch.dtype | None] = ContextVar("attnlab_precision", default=None)


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


def _mlp_linears(model, linears: list[nn.Module]) -> tuple[set[int], set[int]]:
    """Weight ids of the MLPs' first linear layers (gate, up) and of their last ones, where all are reduced.

    float16 is left out: its range would let the hidden activations overflow between the products.
    """
    reduced = {id(m) for m in linears}
    hidden, last = set(), set()
    for block in model.layout.blocks:
        first = [m for m in (block.mlp_in, block.mlp_in_linear) if m is not None]
        parts = [*first, block.mlp_down]
        if block.mlp_act is not None and first and block.mlp_down is not None and all(id(m) in reduced for m in parts):
            hidden.update(id(m.weight) for m in first)
            last.add(id(block.mlp_down.weight))
    return hidden, last


def forget_rounded_weights(model) -> None:
    """Drop the rounded weight copies kept on ``model`` (memory; or after a write the version counter misses)."""
    model.__dict__.pop("_rounded_weights", None)


def _rounded_weight(model, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``weight`` in ``dtype`` (same layout), made once per weight tensor and version and kept on the model."""
    if weight.is_inference():  # made under torch.inference_mode(): no version counter, so nothing can be kept
        return weight.detach().to(dtype)
    store: dict = model.__dict__.setdefault("_rounded_weights", {})
    kept = store.get((id(weight), dtype))
    if kept is not None and kept[0]() is weight and kept[1] == (weight._version, weight.data_ptr()):
        return kept[2]
    rounded = weight.detach().to(dtype)  # a new storage (model.half(), .to(device)) keeps the version: compare both
    store[(id(weight), dtype)] = (weakref.ref(weight), (weight._version, weight.data_ptr()), rounded)
    return rounded


class _RoundedProducts(TorchFunctionMode):
    """Replaces the products of the given linear weights by rounded ones (see the module docstring)."""

    def __init__(self, model, dtype: torch.dtype, linear: set[int], conv: set[int], hidden: set[int], last: set[int]):
        super().__init__()
        self.model, self.dtype, self.linear, self.conv = model, dtype, linear, conv
        self.hidden, self.last = hidden, last  # the MLPs' first linears (output kept reduced) and last ones
        self._cast: tuple | None = None  # (input, its version, rounded): q/k/v, or gate/up, share one input

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _ASKED.get() is self.dtype:
            if func is F.linear and len(args) >= 2 and id(args[1]) in self.linear:
                return self._linear(args[0], args[1], args[2] if len(args) > 2 else kwargs.get("bias"))
            if func is torch.addmm and len(args) == 3 and id(args[2]) in self.conv:  # Conv1D: addmm(bias, x, W[in, out])
                return self._product(args[1], args[2], args[0])
        return func(*args, **kwargs)

    def _linear(self, x, weight, bias):
        rounded = _rounded_weight(self.model, weight, self.dtype)
        if id(weight) in self.hidden:
            return F.linear(self._rounded(x), rounded, None if bias is None else _rounded_weight(self.model, bias, self.dtype))
        return self._checked(F.linear(self._rounded(x), rounded).to(self._out_dtype(x, weight)), bias)

    def _product(self, x, weight, bias):
        rounded = _rounded_weight(self.model, weight, self.dtype)
        if id(weight) in self.hidden:
            return torch.addmm(_rounded_weight(self.model, bias, self.dtype), self._rounded(x), rounded)
        return self._checked(torch.mm(self._rounded(x), rounded).to(self._out_dtype(x, weight)), bias)

    def _rounded(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the reduced dtype, rounded once for consecutive products of the same input (q, k, v; gate, up)."""
        if x.dtype == self.dtype:
            return x
        if x.is_inference():  # no version counter to tell an in-place edit by: round every time
            return x.to(self.dtype)
        kept = self._cast
        if kept is not None and kept[0] is x and kept[1] == x._version:
            return kept[2]
        rounded = x.to(self.dtype)
        if not SHARE_CASTS:
            return rounded
        self._cast = (x, x._version, rounded)
        return rounded

    def __exit__(self, *exc):
        self._cast = None  # no reference to the last input outlives the block
        return super().__exit__(*exc)

    def _out_dtype(self, x, weight) -> torch.dtype:
        # an MLP's last linear gets the reduced hidden activations and returns the model's dtype
        return weight.dtype if id(weight) in self.last else x.dtype

    def _checked(self, out, bias):
        if self.dtype is torch.float16 and not all_finite(out):
            raise InvalidSpec(
                f"{self.model.cfg.name}: a linear layer's product overflowed float16 (its largest value is 65504); "
                "use precision='bfloat16' (float32's range) or None")
        return out + bias if bias is not None else out


@contextmanager
def reduced_linears(model, dtype: torch.dtype | None) -> Iterator[None]:
    """Inside, in this thread, the block linears of ``model`` multiply in ``dtype`` (``None``: full precision).

    A model already in ``dtype`` is left as it is.
    """
    token = _ASKED.set(dtype)
    try:
        linears = [] if dtype is None else [m for m in _block_linears(model) if m.weight.dtype != dtype]
        if not linears:
            yield
            return
        offloaded = [m for m in linears if m.weight.device.type == "meta"]
        if offloaded:  # accelerate's offload: the weight exists only inside the module's call
            raise UnsupportedModel(
                f"{model.cfg.name}: precision= keeps rounded copies of the weights, but this model's weights are "
                "offloaded (device_map with disk/CPU offload); load it fully on its devices, or use precision=None")
        _warn_if_emulated(dtype, {m.weight.device for m in linears})
        linear = {id(m.weight) for m in linears if type(m) is nn.Linear}
        conv = {id(m.weight) for m in linears if type(m) is Conv1D}
        hidden, last = _mlp_linears(model, linears) if dtype is torch.bfloat16 and KEEP_MLP_HIDDEN else (set(), set())
        with _RoundedProducts(model, dtype, linear, conv, hidden, last):
            yield
    finally:
        _ASKED.reset(token)


def has_native_products(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether ``device`` multiplies ``dtype`` matrices in hardware (False only where known not to).

    An x86 CPU without AVX512-BF16 or AMX (AMX-FP16 for float16) has PyTorch convert every
    element instead: a bfloat16 product then runs about 8x slower than float32 (one 256 x 640 x
    2048 product on an AVX2 EPYC), and an attribution call on Gemma-3-270m 25-30x slower.
    """
    if torch.device(device).type != "cpu" or platform.machine().lower() not in ("x86_64", "amd64"):
        return True
    if dtype is torch.bfloat16:
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    if dtype is torch.float16:
        return torch.cpu._is_amx_fp16_supported()
    return True


_warned_emulated: set = set()

#: What a CPU needs to multiply each dtype in hardware (x86).
_NATIVE = {torch.bfloat16: "AVX512-BF16 or AMX", torch.float16: "AMX-FP16"}


def _warn_if_emulated(dtype: torch.dtype, devices) -> None:
    """Warn once per process and dtype: on such a CPU ``precision=`` makes a call many times slower, not faster."""
    if dtype in _warned_emulated or all(has_native_products(dtype, device) for device in devices):
        return
    _warned_emulated.add(dtype)
    name = str(dtype).removeprefix("torch.")
    warnings.warn(
        f"precision={name!r}: this CPU has no {name} matrix instructions (it reports "
        f"{torch.backends.cpu.get_cpu_capability()}; needs {_NATIVE.get(dtype, 'them')}), so PyTorch emulates every "
        f"product: about 8x slower than float32 per product, 25-30x slower for a whole attribution call on "
        f"Gemma-3-270m. Pass precision=None on this machine (attnlab sweep/attribute: --precision full)",
        RuntimeWarning,
        stacklevel=user_stacklevel(),
    )


def computing_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype for a step computed in "full precision" (softmax, a norm's scale, log-probabilities): float32 at
    least, never below ``dtype``, so half precision computes in float32 and a float64 model stays float64."""
    return torch.promote_types(dtype, torch.float32)


def full_precision(device: torch.device):
    """Switch ``torch.autocast`` off inside (for products an edit must see in float32), if a caller turned it on."""
    kind = torch.device(device).type
    if torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind):
        return torch.autocast(device_type=kind, enabled=False)
    return nullcontext()
