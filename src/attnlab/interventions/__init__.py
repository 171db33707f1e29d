"""Floor 2: small declarative interventions (what, where), with a JSON round trip.

>>> from attnlab.interventions import AblateHead, EditNeuron, from_dict
>>> spec = AblateHead(3, 5)
>>> from_dict(spec.to_dict()) == spec
True

Apply them with ``with model.intervene(*specs): ...`` or ``model.run_with_hooks(x,
fwd_hooks=hooks_for(model, specs))``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from attnlab.errors import InvalidSpec
from attnlab.interventions._base import Intervention
from attnlab.interventions.ablation import ABLATION_METHODS, AblateHead, head_means
from attnlab.interventions.files import from_dict, load_specs, save_specs
from attnlab.interventions.neurons import NEURON_SITES, EditNeuron
from attnlab.interventions.patching import Patch
from attnlab.interventions.pattern import BlockKeys, EditScores, SetPattern

__all__ = [
    "Intervention",
    "AblateHead",
    "SetPattern",
    "BlockKeys",
    "EditScores",
    "EditNeuron",
    "Patch",
    "ABLATION_METHODS",
    "NEURON_SITES",
    "head_means",
    "per_row",
    "hooks_for",
    "from_dict",
    "save_specs",
    "load_specs",
]


def per_row(specs: Sequence[Intervention | Sequence[Intervention] | None]) -> list[Intervention]:
    """Give batch row i the intervention(s) ``specs[i]`` (``None``: row i runs clean).

    >>> per_row([AblateHead(0, 0), None, AblateHead(0, 1)])
    [AblateHead(layer=0, head=0, rows=[0]), AblateHead(layer=0, head=1, rows=[2])]
    """
    out: list[Intervention] = []
    for row, item in enumerate(specs):
        for spec in [] if item is None else [item] if isinstance(item, Intervention) else list(item):
            if spec.rows is not None:
                raise InvalidSpec(f"per_row: {spec!r} already has rows; give it without rows=")
            data = spec.to_dict() if not _has_callable(spec) else None
            if data is None:
                raise InvalidSpec(f"per_row: {spec!r} holds a function; set rows= on it directly instead")
            data["rows"] = [row]
            clone = from_dict(data)
            _carry_prepared_values(spec, clone)
            out.append(clone)
    return out


def _has_callable(spec: Intervention) -> bool:
    return any(callable(getattr(spec, f, None)) and not hasattr(getattr(spec, f), "shape") for f in spec.fields)


def _carry_prepared_values(src: Intervention, dst: Intervention) -> None:
    for attr in ("_resample_cache", "_computed"):
        if hasattr(src, attr):
            setattr(dst, attr, getattr(src, attr))


def hooks_for(model, specs: Iterable[Intervention]) -> list[tuple[str, Any]]:
    """``fwd_hooks`` for ``model.run_with_hooks`` (validated like ``intervene``)."""
    specs = list(specs)
    for spec in specs:
        spec.validate(model.cfg)
    return [pair for spec in specs for pair in spec.hooks(model)]
