"""The normalisation layers of a model, described once: LayerNorm or RMSNorm, epsilon, weight offset.

TransformerLens-style analyses treat a norm as a linear map by *freezing* its scale: the
scale a forward pass computed (cached at ``...hook_scale``) is reused for every component of
the residual stream, so the components still sum to what the norm saw. That needs to know,
for each norm, whether it centres (LayerNorm) or not (RMSNorm), its epsilon and how its
weight enters: ``w`` (LayerNorm, Llama) or ``1 + w`` (Gemma, whose weights are stored as
offsets from one).

The kind and the offset are found by running the module on a probe input and comparing with
the three formulas, not by reading class names, so a new architecture with one of these
norms is described correctly or not at all (``describe_norm`` returns None).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import nn

from attnlab.engine.precision import computing_dtype

__all__ = ["Norm", "describe_norm", "NORM_KINDS"]

#: TransformerLens' names for the two normalisations attnlab can freeze.
NORM_KINDS = ("LN", "RMS")


@dataclass(frozen=True, eq=False)
class Norm:
    """One normalisation module of the model (the module itself, never a copy of its weights)."""

    module: nn.Module
    kind: str  # "LN" (centre, divide by the standard deviation) or "RMS" (divide by the root mean square)
    eps: float
    weight_offset: float  # the module multiplies by (weight_offset + weight): 0 usually, 1 for Gemma

    @property
    def weight(self) -> torch.Tensor | None:
        return getattr(self.module, "weight", None)

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.module, "bias", None)

    def effective_weight(self) -> torch.Tensor | None:
        """What the normalised vector is multiplied by: ``w`` or ``1 + w`` (None: nothing)."""
        w = self.weight
        if w is None:
            return None
        return w + self.weight_offset if self.weight_offset else w

    def scale(self, x: Float[torch.Tensor, "... d_model"], dtype: torch.dtype | None = None) -> Float[torch.Tensor, "... 1"]:
        """The divisor the module applies to ``x`` (in ``dtype``): ``sqrt(var + eps)`` or ``sqrt(mean(x^2) + eps)``.

        ``dtype`` defaults to float32 at least: a half-precision ``x`` is computed in float32, a float64 one in float64.
        """
        x = x.to(dtype or computing_dtype(x.dtype))
        if self.kind == "LN":
            x = x - x.mean(dim=-1, keepdim=True)
        return (x.pow(2).mean(dim=-1, keepdim=True) + self.eps).sqrt()

    def normalize(self, x: Float[torch.Tensor, "... d_model"], scale: torch.Tensor,
                  dtype: torch.dtype | None = None) -> Float[torch.Tensor, "... d_model"]:
        """``x`` centred (LayerNorm) and divided by a given (frozen) ``scale``, before the weight (in ``dtype``,
        by default float32 at least, as :meth:`scale`)."""
        dtype = dtype or computing_dtype(x.dtype)
        x = x.to(dtype)
        if self.kind == "LN":
            x = x - x.mean(dim=-1, keepdim=True)
        return x / scale.to(dtype)

    def weigh(self, normalized: torch.Tensor, *, bias: bool = True, frozen: bool = False) -> torch.Tensor:
        """The module's affine part applied to a normalised vector (its bias only if ``bias``; ``frozen``: the
        weights out of the graph, for terms that must send no gradient to them)."""
        w, b = self.effective_weight(), self.bias
        if frozen:
            w, b = (t.detach() if t is not None else None for t in (w, b))
        out = normalized * w.to(normalized.dtype) if w is not None else normalized
        return out + b.to(normalized.dtype) if bias and b is not None else out

    def output_with_scale(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """What the module outputs for ``x`` if its scale were ``scale`` (in ``x``'s dtype)."""
        return self.weigh(self.normalize(x, scale)).to(x.dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def _eps(module: nn.Module) -> float | None:
    for name in ("eps", "variance_epsilon", "epsilon"):
        value = getattr(module, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def _width(module: nn.Module) -> int | None:
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.ndim == 1:
        return int(weight.shape[0])
    shape = getattr(module, "normalized_shape", None)
    if isinstance(shape, (tuple, list)) and len(shape) == 1:
        return int(shape[0])
    return None


@torch.no_grad()
def describe_norm(module: nn.Module | None) -> Norm | None:
    """How ``module`` normalises (LayerNorm, RMSNorm with ``w`` or ``1 + w``), or None if it is neither.

    Runs ``module`` once on a small probe input; call it while no hook is attached to it.
    """
    if module is None:
        return None
    eps, width = _eps(module), _width(module)
    if eps is None or width is None:
        return None
    weight = getattr(module, "weight", None)
    dtype = weight.dtype if isinstance(weight, torch.Tensor) and weight.is_floating_point() else torch.float32
    device = weight.device if isinstance(weight, torch.Tensor) else torch.device("cpu")
    if device.type == "meta":
        return None
    probe = torch.randn(3, width, generator=torch.Generator().manual_seed(0)) * 2 + 0.5  # not centred
    try:
        seen = module(probe.to(device=device, dtype=dtype)).float().cpu()
    except Exception:  # a module that is not a plain norm over the last axis
        return None
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2
    for kind in NORM_KINDS:
        for offset in (0.0, 1.0):
            if kind == "LN" and offset:
                continue
            candidate = Norm(module, kind, eps, offset)
            expected = candidate.weigh(candidate.normalize(probe, candidate.scale(probe)).to(device)).cpu()
            if torch.allclose(seen, expected, atol=tolerance * max(1.0, float(expected.abs().max())), rtol=0):
                return candidate
    return None
