"""Floor 2: small declarative interventions (what, where), with a JSON round trip.

>>> from attnlab.interventions import AblateHead, EditNeuron, from_dict
>>> spec = AblateHead(3, 5)
>>> from_dict(spec.to_dict()) == spec
True

Apply them with ``with model.intervene(*specs): ...`` or ``model.run_with_hooks(x,
fwd_hooks=hooks_for(model, specs))``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from attnlab.errors import DataFormatError, InvalidSpec, did_you_mean
from attnlab.interventions._base import REGISTRY, Intervention, Prepared
from attnlab.interventions.ablation import ABLATION_METHODS, AblateHead, head_means
from attnlab.interventions.neurons import NEURON_SITES, EditNeuron
from attnlab.interventions.patching import Patch
from attnlab.interventions.pattern import BlockKeys, EditScores, SetPattern

__all__ = [
    "Intervention",
    "Prepared",
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


def from_dict(data: dict[str, Any]) -> Intervention:
    """Rebuild any intervention from its ``to_dict()``."""
    if not isinstance(data, dict) or "kind" not in data:
        raise InvalidSpec(f"an intervention dict needs a 'kind' key (one of {', '.join(REGISTRY)}), got {data!r}")
    kind = data["kind"]
    if not isinstance(kind, str) or kind not in REGISTRY:
        raise InvalidSpec(
            f"unknown intervention kind {kind!r}{did_you_mean(str(kind), REGISTRY)} (valid: {', '.join(REGISTRY)})"
        )
    return REGISTRY[kind].from_dict(data)


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
            out.append(_with_rows(spec, data))
    return out


def _with_rows(spec: Intervention, data: dict[str, Any]) -> Intervention:
    """A copy of ``spec`` with new location fields (tensors and sources kept as they are, not re-read from lists)."""
    kwargs = {k: getattr(spec, k) for k in spec.fields}
    if "dim" in kwargs:
        kwargs["dim"] = spec.dim
    location = {k: data[k] for k in ("head", "positions", "rows") if k in data}
    return type(spec)(spec.layer, **location, **kwargs)


def _has_callable(spec: Intervention) -> bool:
    return any(callable(getattr(spec, f, None)) and not hasattr(getattr(spec, f), "shape") for f in spec.fields)


def hooks_for(model, specs: Iterable[Intervention]) -> list[tuple[str, Any]]:
    """``fwd_hooks`` for ``model.run_with_hooks`` (validated like ``intervene``)."""
    specs = list(specs)
    for spec in specs:
        spec.validate(model.cfg)
    return [pair for spec in specs for pair in spec.prepare(model).hooks()]


def save_specs(path: str | Path, specs: Iterable[Intervention]) -> None:
    """Write interventions to a JSON file (a list of their ``to_dict()``)."""
    Path(path).write_text(json.dumps([s.to_dict() for s in specs], indent=1))


def load_specs(path: str | Path) -> list[Intervention]:
    """Read interventions from a JSON file written by :func:`save_specs` (or by hand)."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise DataFormatError(f"{path}: expected a JSON list of intervention objects")
    specs = []
    for i, item in enumerate(data):
        try:
            specs.append(from_dict(item))
        except InvalidSpec as err:
            raise DataFormatError(f"{path}: intervention #{i}: {err}") from None
    return specs
