"""The exact intervention behind each attributed unit, for ``AttributionResult.verify``.

Heads use the interventions the exact sweeps use (``AblateHead`` on ``z``; ``Patch`` of ``z``
or ``pattern`` from one counterfactual text per prompt); a head's ``result`` is its ``z``
times its slice of the output projection (no per-head bias), so ablating or patching ``z``
is the same intervention. q/k/v dimensions use ``EditNeuron`` and MLP neurons
``EditMLPNeuron`` (zero: ``scale=0``; mean: ``value=`` the mean). What no public spec
expresses (patching one q/k/v dimension or one MLP neuron) is a :class:`UnitEdit`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from attnlab.engine.locations import KEY_SITES, hook_name
from attnlab.errors import InvalidLocation, ShapeMismatch
from attnlab.interventions import AblateHead, EditMLPNeuron, EditNeuron, Patch
from attnlab.measure._attribution_units import DIM_SITES

__all__ = ["UnitEdit", "exact_spec", "unit_label"]


@dataclass(frozen=True, eq=False)
class UnitEdit:
    """Write ``source`` into one unit (``index``: ``(head, dim)`` or ``(neuron,)``) of one site.

    ``source`` is ``[rows or 1, pos or 1, ...]`` with the site's trailing axes; ``rows`` set
    (all rows) marks a source with one row per prompt row, which the sweep runs as one chunk.
    """

    layer: int
    site: str
    index: tuple[int, ...]
    source: torch.Tensor
    positions: tuple[int, ...] | None = None
    rows: tuple[int, ...] | None = None

    @property
    def hook_name(self) -> str:
        return hook_name(self.layer, self.site)

    def validate(self, cfg) -> None:
        if not 0 <= self.layer < cfg.n_layers:
            raise InvalidLocation(f"layer {self.layer} out of range: {cfg.name} has {cfg.layer_range()}")

    def prepare(self, model) -> UnitEdit:
        return self

    def hooks(self) -> list:
        def edit(x: torch.Tensor, hook) -> torch.Tensor:
            src = self.source.to(device=x.device, dtype=x.dtype)
            if src.ndim != x.ndim or src.shape[0] not in (1, x.shape[0]) or src.shape[1] not in (1, x.shape[1]):
                raise ShapeMismatch(f"UnitEdit source {tuple(src.shape)} does not fit {self.hook_name} {tuple(x.shape)}")
            mask = torch.zeros(x.shape[2:], dtype=torch.bool, device=x.device)
            mask[self.index] = True
            mask = mask[None, None]
            if self.positions is not None:
                pos = hook.key_pos if self.site in KEY_SITES else hook.query_pos  # [batch or 1, pos]
                if pos.shape[-1] != x.shape[1]:
                    pos = torch.arange(x.shape[1])[None, :]
                at = torch.isin(pos, torch.tensor(self.positions)).to(x.device)
                mask = mask & at.reshape(*at.shape, *([1] * (x.ndim - 2)))
            return torch.where(mask, src.expand_as(x), x)

        return [(self.hook_name, edit)]

    def __repr__(self) -> str:
        where = f", positions={list(self.positions)}" if self.positions is not None else ""
        return f"UnitEdit(layer={self.layer}, site={self.site!r}, index={self.index}{where})"


def unit_label(row: pd.Series) -> str:
    """The unit's label (``L3H1``, ``L3H1 q7``, ``L3N12``) with ``@4`` appended for position 4."""
    position = row.get("position")
    if position is None or pd.isna(position):
        return str(row["unit"])
    return f"{row['unit']}@{int(position)}"


def exact_spec(row: pd.Series, method: str, means: dict, counterfactuals: list[str] | None, sources: dict, n_rows: int):
    """The intervention whose exact effect the unit in ``row`` estimates.

    ``means``: ``{(site, layer): mean}``; ``counterfactuals``: one text per prompt (head
    patches follow their prompts); ``sources``: ``{hook name: [rows, ...] values on the
    counterfactual rows}`` for one-dimension and one-neuron patches, which pair with the
    ``n_rows`` metric rows.
    """
    layer, site = int(row["layer"]), str(row["site"])
    position = row.get("position")
    positions = None if position is None or pd.isna(position) else [int(position)]
    all_rows = tuple(range(n_rows))
    if site in ("z", "result", "pattern"):
        head = int(row["head"])
        if method == "patch":
            return Patch(layer, head, site="pattern" if site == "pattern" else "z", source=list(counterfactuals),
                         positions=positions)
        if method == "zero":
            return AblateHead(layer, head, positions=positions)
        return AblateHead(layer, head, method="mean", mean=means[("z", layer)], positions=positions)
    if site in DIM_SITES:
        head, dim = int(row["head"]), int(row["dim"])
        if method == "zero":
            return EditNeuron(layer, head, site=site, dim=dim, scale=0.0, positions=positions)
        if method == "mean":
            return EditNeuron(layer, head, site=site, dim=dim, value=float(means[(site, layer)][head, dim]), positions=positions)
        return UnitEdit(layer, site, (head, dim), sources[hook_name(layer, site)], _tuple(positions), all_rows)
    neuron = int(row["neuron"])
    if method == "zero":
        return EditMLPNeuron(layer, neuron, scale=0.0, positions=positions)
    if method == "mean":
        return EditMLPNeuron(layer, neuron, value=float(means[(site, layer)][neuron]), positions=positions)
    return UnitEdit(layer, site, (neuron,), sources[hook_name(layer, site)], _tuple(positions), all_rows)


def _tuple(positions):
    return tuple(positions) if positions is not None else None
