"""The shared shape of every intervention: where it acts, how it checks itself, how it serialises.

An intervention is data, not a closure: ``(layer, heads, positions, rows)`` say *where*,
the subclass fields say *what*. ``hooks(model)`` turns it into TransformerLens hook
functions only when it is applied, so specs can be printed, saved, compared and replayed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch

from attnlab.engine.config import ModelConfig
from attnlab.engine.locations import HEAD_MAJOR_SITES, SITES, hook_name
from attnlab.errors import InvalidLocation, InvalidSpec, did_you_mean

__all__ = ["Intervention", "REGISTRY", "register", "as_index_tuple", "tensor_or_none"]

REGISTRY: dict[str, type[Intervention]] = {}

HookFn = Callable[..., torch.Tensor]


def register(cls: type[Intervention]) -> type[Intervention]:
    REGISTRY[cls.kind] = cls
    return cls


def as_index_tuple(value: Any, what: str) -> tuple[int, ...] | None:
    """``None`` -> None (everywhere); an int or a sequence of ints -> a tuple of ints."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    items = [value] if isinstance(value, int) else list(value) if isinstance(value, (Sequence, range)) else None
    if items is None or not items or not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
        raise InvalidSpec(f"{what} must be an int, a non-empty list of ints or None (all), got {value!r}")
    if any(i < 0 for i in items):
        raise InvalidLocation(f"{what} must be >= 0, got {value!r}")
    return tuple(items)


def tensor_or_none(value: Any, what: str) -> torch.Tensor | None:
    if value is None:
        return None
    try:
        tensor = torch.as_tensor(value, dtype=torch.float32) if not isinstance(value, torch.Tensor) else value.detach()
    except (TypeError, ValueError) as err:
        raise InvalidSpec(f"{what} must be a tensor or nested list of numbers: {err}") from None
    if not torch.isfinite(tensor).all():
        raise InvalidSpec(f"{what} contains NaN or inf values; only finite numbers are allowed")
    return tensor


class Intervention:
    """Base class: one edit at one layer, on some heads, positions and batch rows.

    ``heads``, ``positions`` and ``rows`` are ``None`` (everywhere) or tuples of indices.
    ``positions`` are absolute token positions (query positions for q, z, scores and
    pattern; key positions for k and v). ``rows`` picks batch rows, which is how one batch
    carries a different intervention per row.
    """

    kind: ClassVar[str] = ""
    site: str = "z"
    #: fields written by to_dict() besides the location fields, in order
    fields: ClassVar[tuple[str, ...]] = ()
    #: default values of those fields (omitted from repr and to_dict)
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, layer: int, head: int | Sequence[int] | None = None, *, positions=None, rows=None):
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise InvalidSpec(f"layer must be an int, got {layer!r}")
        if layer < 0:
            raise InvalidLocation(f"layer must be >= 0, got {layer}")
        self.layer = layer
        self.heads = as_index_tuple(head, "head")
        self.positions = as_index_tuple(positions, "positions")
        self.rows = as_index_tuple(rows, "rows")

    # -- checking ---------------------------------------------------------------------------

    def validate(self, cfg: ModelConfig) -> None:
        """Raise a typed error if this spec does not fit ``cfg``; touches nothing."""
        if self.layer >= cfg.n_layers:
            raise InvalidLocation(f"layer {self.layer} out of range: {cfg.name} has {cfg.layer_range()}")
        for head in self.heads or ():
            if head >= cfg.n_heads:
                raise InvalidLocation(f"head {head} out of range: {cfg.name} has {cfg.head_range()}")

    # -- applying ---------------------------------------------------------------------------

    @property
    def hook_name(self) -> str:
        return hook_name(self.layer, self.site)

    def hooks(self, model) -> list[tuple[str, HookFn]]:
        """``[(hook name, hook function)]`` for ``model``; may run ``model`` to prepare values."""
        edit = self.edit_fn(model)

        def hook(x: torch.Tensor, hook) -> torch.Tensor:
            mask = self.location_mask(
                x, hook.query_offset, loose=getattr(hook, "generating", False), key_offset=getattr(hook, "key_offset", 0)
            )
            return torch.where(mask, edit(x, hook).to(x.dtype), x)

        return [(self.hook_name, hook)]

    def edit_fn(self, model) -> Callable[[torch.Tensor, Any], torch.Tensor]:
        """The new value of the whole site tensor; ``hooks`` keeps it only where the mask is True."""
        raise NotImplementedError

    def location_mask(
        self, x: torch.Tensor, query_offset: int = 0, *, loose: bool = False, key_offset: int = 0
    ) -> torch.Tensor:
        """Boolean mask broadcastable to ``x``: True at the rows, heads and positions addressed.

        ``loose`` (set while generating) ignores positions this call does not contain yet.
        """
        head_major = self.site in HEAD_MAJOR_SITES  # [batch, head, query, key] else [batch, pos, head, d]
        batch = x.shape[0]
        n_pos = x.shape[2] if head_major else x.shape[1]
        n_heads = x.shape[1] if head_major else x.shape[2]
        offset = query_offset if self.site in ("q", "z", "attn_scores", "pattern") else key_offset
        dev = x.device
        rows = _axis_mask(self.rows, batch, dev, "row", "batch rows")
        heads = _axis_mask(self.heads, n_heads, dev, "head", "heads")
        pos = _axis_mask(self.positions, n_pos, dev, "position", "positions", offset=offset, loose=loose or offset > 0)
        if head_major:
            return rows[:, None, None, None] & heads[None, :, None, None] & pos[None, None, :, None]
        return rows[:, None, None, None] & pos[None, :, None, None] & heads[None, None, :, None]

    # -- describing -------------------------------------------------------------------------

    def _location_items(self) -> list[tuple[str, Any]]:
        items: list[tuple[str, Any]] = [("layer", self.layer)]
        if self.heads is not None:
            items.append(("head", self.heads[0] if len(self.heads) == 1 else list(self.heads)))
        if self.positions is not None:
            items.append(("positions", list(self.positions)))
        if self.rows is not None:
            items.append(("rows", list(self.rows)))
        return items

    def _field_items(self) -> list[tuple[str, Any]]:
        items = []
        for name in self.fields:
            value = getattr(self, name)
            default = self.defaults.get(name, None)
            if isinstance(value, torch.Tensor) or value is not default and value != default:
                items.append((name, value))
        return items

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; :func:`attnlab.interventions.from_dict` inverts it."""
        out: dict[str, Any] = {"kind": self.kind}
        for key, value in self._location_items() + self._field_items():
            if callable(value) and not isinstance(value, torch.Tensor):
                raise InvalidSpec(
                    f"{self.kind}: field {key!r} holds a Python function, which cannot be saved as JSON; "
                    "use a tensor or a named option instead"
                )
            out[key] = value.tolist() if isinstance(value, torch.Tensor) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Intervention:
        data = dict(data)
        kind = data.pop("kind", cls.kind)
        if kind != cls.kind:
            raise InvalidSpec(f"{cls.__name__}.from_dict got kind {kind!r}, expected {cls.kind!r}")
        allowed = {"layer", "head", "positions", "rows", *cls.fields}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise InvalidSpec(
                f"{cls.kind}: unknown field {unknown[0]!r}{did_you_mean(unknown[0], allowed)} "
                f"(fields: {', '.join(sorted(allowed))})"
            )
        if "layer" not in data:
            raise InvalidSpec(f"{cls.kind}: missing field 'layer'")
        layer = data.pop("layer")
        try:
            return cls(layer, **data)
        except TypeError as err:  # a missing required field, e.g. BlockKeys without keys
            message = str(err).split("() ", 1)[-1]
            raise InvalidSpec(f"{cls.kind}: {message}") from None

    def __repr__(self) -> str:
        def show(v):
            if isinstance(v, torch.Tensor):
                return f"tensor{tuple(v.shape)}"
            if callable(v):
                return getattr(v, "__name__", "fn")
            return repr(v)

        body = ", ".join(f"{k}={show(v)}" for k, v in self._location_items() + self._field_items())
        return f"{type(self).__name__}({body})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        try:
            return self.to_dict() == other.to_dict()
        except InvalidSpec:
            return self is other

    __hash__ = object.__hash__


def _axis_mask(
    index: tuple[int, ...] | None, size: int, device, noun: str, plural: str, *, offset: int = 0, loose: bool = False
) -> torch.Tensor:
    """Boolean vector of length ``size``: True at ``index - offset`` (all True for None).

    ``loose`` (generation with a KV cache) ignores indices outside this call's window
    instead of raising, since the query rows of one decoding step are a slice of the text.
    """
    if index is None:
        return torch.ones(size, dtype=torch.bool, device=device)
    local = [i - offset for i in index]
    bad = [i for i, j in zip(index, local) if not 0 <= j < size]
    if bad and not loose:
        raise InvalidLocation(f"{noun} {bad[0]} out of range: this input has {plural} {offset}..{offset + size - 1}")
    mask = torch.zeros(size, dtype=torch.bool, device=device)
    keep = [j for j in local if 0 <= j < size]
    if keep:
        mask[keep] = True
    return mask


def check_site(site: str, allowed: Sequence[str], kind: str) -> str:
    if site in SITES and site not in allowed:  # a real site, just not one this kind edits
        raise InvalidSpec(f"{kind} cannot act on site {site!r} (valid: {', '.join(allowed)})")
    if site not in allowed:
        hint = did_you_mean(site, allowed) or did_you_mean(site, SITES)
        raise InvalidSpec(f"{kind}: unknown site {site!r}{hint} (valid: {', '.join(allowed)})")
    return site
