"""Floor 2: small declarative interventions (what, where), with a JSON round trip.

>>> from attnlab.interventions import AblateHead, EditNeuron, from_dict
>>> spec = AblateHead(3, 5)
>>> from_dict(spec.to_dict()) == spec
True

Apply them with ``with model.intervene(*specs): ...`` or ``model.run_with_hooks(x,
fwd_hooks=hooks_for(model, specs))``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from attnlab._deprecation import moved_names
from attnlab.errors import InvalidInput, InvalidSpec
from attnlab.interventions._base import Intervention, short_repr, spec_list
from attnlab.interventions.ablation import AblateHead
from attnlab.interventions.files import from_dict, load_specs, save_specs
from attnlab.interventions.mlp import EditMLPNeuron
from attnlab.interventions.neurons import EditNeuron
from attnlab.interventions.patching import Patch
from attnlab.interventions.pattern import BlockKeys, EditScores, SetPattern

__all__ = [
    "Intervention",
    "AblateHead",
    "SetPattern",
    "BlockKeys",
    "EditScores",
    "EditNeuron",
    "EditMLPNeuron",
    "Patch",
    "per_row",
    "hooks_for",
    "from_dict",
    "save_specs",
    "load_specs",
]

#: Names that left the package surface: still importable for one release, with a warning naming their home.
__getattr__ = moved_names("attnlab.interventions", {
    "Prepared": "attnlab.interventions._base", "ABLATION_METHODS": "attnlab.interventions.ablation",
    "head_means": "attnlab.interventions.ablation", "NEURON_SITES": "attnlab.interventions.neurons",
})


def per_row(specs: Sequence[Intervention | Sequence[Intervention] | None]) -> list[Intervention]:
    """Give batch row i the intervention(s) ``specs[i]`` (``None``: row i runs clean).

    >>> per_row([AblateHead(0, 0), None, AblateHead(0, 1)])
    [AblateHead(layer=0, head=0, rows=[0]), AblateHead(layer=0, head=1, rows=[2])]
    """
    if isinstance(specs, (str, bytes, Mapping, Intervention)) or not isinstance(specs, Iterable):
        raise InvalidInput(f"per_row: specs must be a list with one entry per batch row (a spec, a list of specs "
                           f"or None), got {type(specs).__name__} {short_repr(specs)}")
    out: list[Intervention] = []
    for row, item in enumerate(specs):
        for spec in _row_specs(item, row):
            if spec.rows is not None:
                raise InvalidSpec(f"per_row: {spec!r} already has rows; give it without rows=")
            data = spec.to_dict() if not _has_callable(spec) else None
            if data is None:
                raise InvalidSpec(f"per_row: {spec!r} holds a function; set rows= on it directly instead")
            data["rows"] = [row]
            out.append(_with_rows(spec, data))
    return out


def _row_specs(item: Any, row: int) -> list[Intervention]:
    """The specs of one row of ``per_row``: a spec, a list of specs or None (clean)."""
    if item is None:
        return []
    if isinstance(item, Intervention):
        return [item]
    listed = not isinstance(item, (str, bytes, Mapping)) and isinstance(item, Iterable)
    specs = list(item) if listed else []
    if not listed or not all(isinstance(s, Intervention) for s in specs):
        raise InvalidInput(f"per_row: specs[{row}] (row {row}) must be an intervention spec, a list of specs or "
                           f"None (clean), got {type(item).__name__} {short_repr(item)}")
    return specs


def _with_rows(spec: Intervention, data: dict[str, Any]) -> Intervention:
    """A copy of ``spec`` with new location fields (tensors and sources kept as they are, not re-read from lists)."""
    kwargs = {k: getattr(spec, k) for k in spec.fields}
    if "dim" in kwargs:
        kwargs["dim"] = spec.dim
    location = {k: data[k] for k in ("head", "positions", "rows") if k in data}
    return type(spec)(spec.layer, **location, **kwargs)


def _has_callable(spec: Intervention) -> bool:
    return any(callable(getattr(spec, f, None)) and not hasattr(getattr(spec, f), "shape") for f in spec.fields)


def hooks_for(model, specs: Intervention | Iterable[Intervention]) -> list[tuple[str, Any]]:
    """``fwd_hooks`` for ``model.run_with_hooks`` (validated like ``intervene``); one spec or a list of them."""
    specs = spec_list(specs, "hooks_for")
    for spec in specs:
        spec.validate(model.cfg)
    return [pair for spec in specs for pair in spec.prepare(model).hooks()]
