"""Scale or set single q/k/v dimensions ("neurons") of a head.

On rotary models ``site="q"``/``"k"`` are read *after* rotation, so dimension d is mixed with its
rotary partner; scale both dimensions of a pair to act on one frequency. ``site="q_pre_rotary"`` /
``"k_pre_rotary"`` edit the dimension before the rotation: an output unit of the q/k projection
(after a q/k norm), as TransformerLens' ``hook_q``/``hook_k`` name it on Llama-style models.
``site="q_pre_norm"`` / ``"k_pre_norm"`` (models with a q/k norm: Gemma-3, Qwen3, OLMo-2) edit the
projection's own output unit, before that norm: what an edit of a row of ``W_Q``/``W_K`` changes.
There k has one entry per *kv* head, so ``head`` counts kv heads and an edit reaches every
query head that shares the key.
"""

from __future__ import annotations

import torch

from attnlab.errors import InvalidLocation
from attnlab.interventions._base import Intervention, check_site, register, required_indices, scale_or_value

__all__ = ["EditNeuron", "NEURON_SITES"]

NEURON_SITES = ("q", "k", "v", "q_pre_rotary", "k_pre_rotary", "q_pre_norm", "k_pre_norm")


@register
class EditNeuron(Intervention):
    """Multiply (``scale=``) or overwrite (``value=``) dimension(s) ``dim`` of a head's q, k or v (or pre-rotary q, k).

    >>> EditNeuron(2, 1, site="k", dim=7, scale=0.0)
    EditNeuron(layer=2, head=1, site='k', dim=7, scale=0.0)
    """

    kind = "edit_neuron"
    fields = ("site", "dim", "scale", "value")
    defaults = {"scale": None, "value": None}

    def __init__(self, layer: int, head=None, *, site: str, dim, scale=None, value=None, positions=None, rows=None):
        super().__init__(layer, head, positions=positions, rows=rows)
        self.site = check_site(site, NEURON_SITES, "EditNeuron")
        dims = required_indices(dim, "dim", "EditNeuron")
        self.dim = dims[0] if len(dims) == 1 else list(dims)
        self._dims = dims
        self.scale, self.value = scale_or_value("EditNeuron", scale, value)

    def validate(self, cfg) -> None:
        if self.site == "k_pre_norm":  # one key per kv head there: head counts kv heads
            bad = [h for h in self.heads or () if h >= cfg.n_kv_heads]
            if bad:
                raise InvalidLocation(f"head {bad[0]} out of range for site 'k_pre_norm', whose keys are one per kv head: "
                                      f"{cfg.name} has kv heads 0..{cfg.n_kv_heads - 1}")
        super().validate(cfg)
        for d in self._dims:
            if d >= cfg.d_head:
                raise InvalidLocation(f"dim {d} out of range: {cfg.name} has d_head={cfg.d_head} (dims 0..{cfg.d_head - 1})")

    def location_mask(self, x: torch.Tensor, hook) -> torch.Tensor:
        dims = torch.zeros(x.shape[-1], dtype=torch.bool, device=x.device)
        dims[list(self._dims)] = True
        return super().location_mask(x, hook) & dims

    def make_edit(self, values):
        if self.scale is not None:
            scale = self.scale
            return lambda x, hook: x * scale
        value = self.value
        return lambda x, hook: torch.full_like(x, value)
