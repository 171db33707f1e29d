"""Scale or set MLP neurons: the activations after the nonlinearity, ``blocks.L.mlp.hook_post``.

These are the neurons Vig et al. (2020) intervened on in their gender-bias mediation
analysis. On gated MLPs (Llama, Gemma) ``hook_post`` is ``act(gate) * up``, the input of the
down projection, so scaling neuron n scales row n of ``W_out``'s contribution exactly.
"""

from __future__ import annotations

import torch

from attnlab.errors import InvalidLocation, UnsupportedModel
from attnlab.interventions._base import Intervention, _axis_mask, register, required_indices, scale_or_value

__all__ = ["EditMLPNeuron"]


@register
class EditMLPNeuron(Intervention):
    """Multiply (``scale=``) or overwrite (``value=``) MLP neuron(s) ``neuron`` of layer ``layer``.

    >>> EditMLPNeuron(3, 1024, scale=0.0, positions=[4])
    EditMLPNeuron(layer=3, positions=[4], neuron=1024, scale=0.0)
    """

    kind = "edit_mlp_neuron"
    site = "post"
    fields = ("neuron", "scale", "value")
    defaults = {"scale": None, "value": None}

    def __init__(self, layer: int, neuron=None, *, scale=None, value=None, positions=None, rows=None):
        super().__init__(layer, None, positions=positions, rows=rows)
        neurons = required_indices(neuron, "neuron", "EditMLPNeuron")
        self.neuron = neurons[0] if len(neurons) == 1 else list(neurons)
        self._neurons = neurons
        self.scale, self.value = scale_or_value("EditMLPNeuron", scale, value)

    def validate(self, cfg) -> None:
        super().validate(cfg)
        if cfg.d_mlp is None:
            raise UnsupportedModel(f"{cfg.name}: attnlab does not know this model's MLP, so it has no neurons to edit")
        for n in self._neurons:
            if n >= cfg.d_mlp:
                raise InvalidLocation(f"neuron {n} out of range: {cfg.name} has d_mlp={cfg.d_mlp} (neurons 0..{cfg.d_mlp - 1})")

    def location_mask(self, x: torch.Tensor, hook) -> torch.Tensor:
        """``[batch, pos, d_mlp]``: True at the rows, token positions and neurons addressed."""
        rows = _axis_mask(self.rows, x.shape[0], x.device, "row", "batch rows")
        neurons = _axis_mask(self._neurons, x.shape[-1], x.device, "neuron", "neurons")
        pos = self._position_mask(x, hook, False).to(x.device)  # [batch or 1, pos]
        return rows[:, None, None] & pos[:, :, None] & neurons[None, None, :]

    def make_edit(self, values):
        if self.scale is not None:
            scale = self.scale
            return lambda x, hook: x * scale
        value = self.value
        return lambda x, hook: torch.full_like(x, value)
