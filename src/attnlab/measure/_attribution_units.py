"""What attribution patching scores: sets of units at one site, their patched values, their estimates.

A unit is the part of one hook point that one exact intervention would change: a head
(``z``, ``result``, ``pattern``), one dimension of a head's ``q``/``k``/``v``, or one MLP neuron
(``post``, ``blocks.L.mlp.hook_post``), at every position or (``per_position``) at one.
Its linear estimate is ``sum over its elements of (a' - a) * dM/da`` where ``a'`` is the value
the intervention writes: 0 (``zero``), the mean over reference prompts (``mean``) or the value
on the counterfactual prompt (``patch``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from einops import rearrange
from jaxtyping import Bool, Float

from attnlab.engine.forward import run
from attnlab.engine.locations import hook_name
from attnlab.errors import InvalidInput
from attnlab.interventions.reference_means import reference_means
from attnlab.measure._rows import Rows

__all__ = ["UNIT_SITES", "HEAD_SITES", "DIM_SITES", "Units", "site_means", "site_values"]

HEAD_SITES = ("z", "result", "pattern")
DIM_SITES = ("q", "k", "v", "q_pre_rotary", "k_pre_rotary", "q_pre_norm", "k_pre_norm")
UNIT_SITES = (*HEAD_SITES, *DIM_SITES, "post")


@dataclass(frozen=True)
class Units:
    """Every unit of ``site`` in ``layers`` (heads, dims or neurons chosen), in table order."""

    site: str
    layers: tuple[int, ...]
    heads: tuple[int, ...] = ()  # head and dim sites
    dims: tuple[int, ...] = ()  # dim sites
    neurons: tuple[int, ...] = ()  # "post"
    per_position: bool = False

    def name(self, layer: int) -> str:
        return hook_name(layer, self.site)

    @property
    def per_layer(self) -> int:
        if self.site in HEAD_SITES:
            return len(self.heads)
        if self.site in DIM_SITES:
            return len(self.heads) * len(self.dims)
        return len(self.neurons)

    def keys(self) -> pd.DataFrame:
        """One row per unit (layer-major, then head, then dim), without positions; ``unit`` is its label."""
        site = self.site
        if site in HEAD_SITES:
            rows = [{"layer": l, "head": h, "site": site, "unit": f"L{l}H{h}"} for l in self.layers for h in self.heads]
        elif site in DIM_SITES:
            rows = [{"layer": l, "head": h, "site": site, "dim": d, "unit": f"L{l}H{h} {site}{d}"}
                    for l in self.layers for h in self.heads for d in self.dims]
        else:
            rows = [{"layer": l, "neuron": n, "site": site, "unit": f"L{l}N{n}"} for l in self.layers for n in self.neurons]
        return pd.DataFrame(rows)

    def linear(
        self,
        act: torch.Tensor,
        grad: torch.Tensor,
        target: torch.Tensor,
        valid: Bool[torch.Tensor, "batch pos"],
    ) -> Float[torch.Tensor, "batch unit position"]:
        """``(a' - a) . dM/da`` of this layer's units: ``[batch, units, pos]`` (``pos`` 1 unless per position).

        ``target`` is ``a'`` (broadcastable to ``act``); padding positions count for nothing.
        """
        delta = target.float() - act.detach().float()
        prod = delta * grad.float()
        ok = valid.to(prod.device).to(prod.dtype)
        if self.site in ("z", "result"):  # [batch, pos, head, X] -> [batch, head, pos]
            per = rearrange(prod.sum(-1) * ok[:, :, None], "b p h -> b h p")[:, list(self.heads)]
        elif self.site == "pattern":  # [batch, head, query, key] -> [batch, head, query]
            per = (prod.sum(-1) * ok[:, None, :])[:, list(self.heads)]
        elif self.site in DIM_SITES:  # [batch, pos, head, d_head] -> [batch, head*dim, pos]
            picked = (prod * ok[:, :, None, None])[:, :, list(self.heads)][:, :, :, list(self.dims)]
            per = rearrange(picked, "b p h d -> b (h d) p")
        else:  # MLP neurons [batch, pos, d_mlp] -> [batch, neuron, pos]
            per = rearrange((prod * ok[:, :, None])[:, :, list(self.neurons)], "b p n -> b n p")
        return per if self.per_position else per.sum(-1, keepdim=True)


def site_means(model, units: Units, reference: Sequence[str], batch_size: int, *,
               precision: torch.dtype | None = None) -> dict[int, torch.Tensor]:
    """Mean of the site over every real token of ``reference``, per layer (from the unedited model).

    ``[head, d]`` for head and dim sites, ``[d_mlp]`` for neurons: what mean ablation writes
    at every position (the one computation of :func:`attnlab.interventions.reference_means`).
    """
    names = [units.name(layer) for layer in units.layers]
    means = reference_means(model, names, reference, batch_size=batch_size, precision=precision)
    return {layer: means[name] for layer, name in zip(units.layers, names)}




def site_values(model, units: Units, part: Rows, names: Sequence[str] | None = None, *,
                precision: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The sites' values on ``part`` (counterfactual rows), from the unedited model."""
    names = list(names) if names is not None else [units.name(layer) for layer in units.layers]
    with model.clean():
        return run(model, part.tokens, logits=None, read=names, precision=precision).cache
