"""The shared shape of every intervention: where it acts, how it checks itself, how it serialises.

An intervention is immutable data, not a closure: ``(layer, heads, positions, rows)`` say
*where*, the subclass fields say *what*. Anything computed from a model (a mean over
reference prompts, a patch source, resample draws) lives in the :class:`Prepared` object
that ``spec.prepare(model)`` returns, never on the spec: a spec can be printed, saved,
compared and replayed, and ``spec == copy.deepcopy(spec)`` always holds.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from einops import rearrange

from attnlab.engine.config import ModelConfig
from attnlab.engine.locations import HEAD_MAJOR_SITES, KEY_SITES, SITES, hook_name
from attnlab.errors import InvalidInput, InvalidLocation, InvalidSpec, ShapeMismatch, did_you_mean, is_integer

__all__ = [
    "Intervention", "Prepared", "REGISTRY", "register", "as_index_tuple", "tensor_or_none", "finite_number",
    "check_seed", "FLOAT32_MAX", "scale_or_value", "required_indices", "spec_list", "short_repr",
]

REGISTRY: dict[str, type[Intervention]] = {}

#: Largest magnitude a value may have: edits run in float32 at least, so anything larger is inf there.
FLOAT32_MAX = float(torch.finfo(torch.float32).max)

Edit = Callable[[torch.Tensor, Any], torch.Tensor]


def register(cls: type[Intervention]) -> type[Intervention]:
    REGISTRY[cls.kind] = cls
    return cls


def as_index_tuple(value: Any, what: str) -> tuple[int, ...] | None:
    """``None`` -> None (everywhere); an int or a sequence of ints -> a tuple of Python ints.

    numpy integers and arrays count (a layer read back from a result table is ``numpy.int64``).
    """
    if value is None:
        return None
    if isinstance(value, (torch.Tensor, np.ndarray)):
        value = value.tolist()
    items = [value] if is_integer(value) else list(value) if isinstance(value, (Sequence, range)) and not isinstance(value, str) else None
    if items is None or not items or not all(is_integer(i) for i in items):
        raise InvalidSpec(f"{what} must be an int, a non-empty list of ints or None (all), got {value!r}")
    items = [int(i) for i in items]
    if any(i < 0 for i in items):
        raise InvalidLocation(f"{what} must be >= 0, got {value!r}")
    if any(i >= 2**31 for i in items):
        raise InvalidLocation(f"{what} must be < 2**31, got {value!r}")
    return tuple(items)


def finite_number(value: Any, what: str) -> float:
    """A real number (numpy's too) that is finite in float32 (what every edit computes in, at least), as a float."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise InvalidSpec(f"{what} must be a finite number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise InvalidSpec(f"{what} must be a finite number, got {value!r}")
    if abs(number) > FLOAT32_MAX:
        raise InvalidSpec(f"{what} must be a finite number within float32's range (|x| <= {FLOAT32_MAX:.3g}), got {value!r}")
    return number


def scale_or_value(kind: str, scale: Any, value: Any) -> tuple[float | None, float | None]:
    """Exactly one of ``scale=`` (multiply) or ``value=`` (overwrite), as a float32-finite number."""
    if (scale is None) == (value is None):
        raise InvalidSpec(f"{kind} needs exactly one of scale= or value=")
    return (finite_number(scale, "scale") if scale is not None else None,
            finite_number(value, "value") if value is not None else None)


def required_indices(value: Any, what: str, kind: str) -> tuple[int, ...]:
    """A non-optional index field (``dim=``, ``neuron=``): an int or a list of ints."""
    items = as_index_tuple(value, what)
    if items is None:
        raise InvalidSpec(f"{kind} needs {what}= (an int or a list of ints)")
    return items


def check_seed(value: Any) -> int:
    if not is_integer(value) or not 0 <= value < 2**63:
        raise InvalidSpec(f"seed must be an integer in 0..2**63-1, got {value!r}")
    return int(value)


def tensor_or_none(value: Any, what: str) -> torch.Tensor | None:
    """A float32 tensor of finite values (nested lists are converted), or None."""
    if value is None:
        return None
    try:
        if isinstance(value, torch.Tensor):
            tensor = value.detach()
            if tensor.is_floating_point() or tensor.is_complex():
                big = tensor.abs().amax().item() if tensor.numel() else 0.0
                if tensor.is_complex() or not math.isfinite(big):
                    raise InvalidSpec(f"{what} contains NaN or inf values; only finite numbers are allowed")
                if big > FLOAT32_MAX:
                    raise InvalidSpec(f"{what} contains values beyond float32's range (|x| <= {FLOAT32_MAX:.3g})")
            tensor = tensor.to(torch.float32).cpu()
        else:
            tensor = torch.as_tensor(value, dtype=torch.float64)
            big = tensor.abs().amax().item() if tensor.numel() else 0.0
            if math.isfinite(big) and big > FLOAT32_MAX:
                raise InvalidSpec(f"{what} contains values beyond float32's range (|x| <= {FLOAT32_MAX:.3g})")
            tensor = tensor.to(torch.float32)
    except (TypeError, ValueError, RuntimeError, OverflowError) as err:
        if isinstance(err, InvalidSpec):
            raise
        raise InvalidSpec(f"{what} must be a tensor or nested list of numbers: {err}") from None
    if not torch.isfinite(tensor).all():
        raise InvalidSpec(f"{what} contains NaN or inf values; only finite numbers are allowed")
    return tensor


@dataclass(frozen=True)
class Prepared:
    """An intervention made ready for one model: the spec plus what it computed from the model.

    ``edit(x, hook)`` gives the new value of the whole site tensor; :meth:`hooks` keeps it
    only at the rows, heads and positions the spec addresses.
    """

    spec: Intervention
    edit: Edit
    values: dict[str, Any]

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__.get("values") or {}
        if name in values:
            return values[name]
        raise AttributeError(name)

    def hooks(self) -> list[tuple[str, Callable]]:
        spec, edit = self.spec, self.edit

        def hook(x: torch.Tensor, hook) -> torch.Tensor:
            mask = spec.location_mask(x, hook)
            return torch.where(mask, edit(x, hook).to(x.dtype), x)

        hook.__qualname__ = f"{type(spec).__name__}.hook"
        return [(spec.hook_name, hook)]


class Intervention:
    """Base class: one edit at one layer, on some heads, positions and batch rows.

    ``heads``, ``positions`` and ``rows`` are ``None`` (everywhere) or tuples of indices.
    ``positions`` are token positions in each row's own text (query positions for q, z,
    scores and pattern; key positions for k and v), the same in a padded batch as alone.
    ``rows`` picks batch rows, which is how one batch carries a different intervention per row.
    """

    kind: ClassVar[str] = ""
    site: str = "z"
    #: fields written by to_dict() besides the location fields, in order
    fields: ClassVar[tuple[str, ...]] = ()
    #: default values of those fields (omitted from repr and to_dict)
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, layer: int, head: int | Sequence[int] | None = None, *, positions=None, rows=None):
        if not is_integer(layer):
            raise InvalidSpec(f"layer must be an int, got {layer!r}")
        if layer < 0:
            raise InvalidLocation(f"layer must be >= 0, got {layer}")
        self.layer = int(layer)
        self.heads = as_index_tuple(head, "head")
        self.positions = as_index_tuple(positions, "positions")
        self.rows = as_index_tuple(rows, "rows")

    def __setattr__(self, name: str, value: Any) -> None:
        if self.__dict__.get("_frozen"):
            raise AttributeError(f"{type(self).__name__} is immutable; make a new spec (e.g. from_dict({{**spec.to_dict(), ...}}))")
        object.__setattr__(self, name, value)

    def _freeze(self) -> None:
        object.__setattr__(self, "_frozen", True)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__init__

        def frozen_init(self, *args, **kw):
            init(self, *args, **kw)
            if type(self) is cls:
                self._freeze()

        frozen_init.__doc__, frozen_init.__wrapped__ = init.__doc__, init
        cls.__init__ = frozen_init

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

    def prepare(self, model) -> Prepared:
        """This spec made ready for ``model`` (computing sources from the clean model if needed)."""
        values = self.prepare_values(model)
        return Prepared(self, self.make_edit(values), values)

    def prepare_values(self, model) -> dict[str, Any]:
        """What the edit needs from ``model`` (default: nothing)."""
        return {}

    def make_edit(self, values: dict[str, Any]) -> Edit:
        """The new value of the whole site tensor; only the addressed part is kept."""
        raise NotImplementedError

    def hooks(self, model) -> list[tuple[str, Callable]]:
        """``[(hook name, hook function)]`` for ``model`` (``self.prepare(model).hooks()``)."""
        return self.prepare(model).hooks()

    def location_mask(self, x: torch.Tensor, hook) -> torch.Tensor:
        """Boolean mask broadcastable to ``x``: True at the rows, heads and positions addressed."""
        head_major = self.site in HEAD_MAJOR_SITES  # [batch, head, query, key] else [batch, pos, head, d]
        batch = x.shape[0]
        n_heads = x.shape[1] if head_major else x.shape[2]
        dev = x.device
        rows = _axis_mask(self.rows, batch, dev, "row", "batch rows")
        heads = _axis_mask(self.heads, n_heads, dev, "head", "heads")
        pos = self._position_mask(x, hook, head_major).to(dev)  # [batch or 1, pos]
        if head_major:
            return rows[:, None, None, None] & heads[None, :, None, None] & pos[:, None, :, None]
        return rows[:, None, None, None] & pos[:, :, None, None] & heads[None, None, :, None]

    def _position_mask(self, x: torch.Tensor, hook, head_major: bool) -> torch.Tensor:
        n_pos = x.shape[2] if head_major else x.shape[1]
        if self.positions is None:
            return torch.ones(1, n_pos, dtype=torch.bool)
        key_site = self.site in KEY_SITES
        positions = hook.key_pos if key_site else hook.query_pos  # [batch or 1, pos]
        if positions is None or positions.shape[-1] != n_pos:
            positions = torch.arange(n_pos)[None, :]
        wanted = torch.tensor(self.positions)
        if getattr(hook, "generating", False):  # positions not reached yet are not errors; new tokens count
            return torch.isin(positions, wanted)
        # a measurement's chunk checks against its prompts' longest: the same positions are valid in every chunk
        longest = getattr(hook, "n_positions", None) or int(positions.max()) + 1
        bad = [p for p in self.positions if p >= longest]
        if bad:
            raise InvalidLocation(f"position {bad[0]} out of range: this input has positions 0..{longest - 1}")
        lengths = own_lengths(hook, x.shape[0])
        if lengths is None:
            return torch.isin(positions, wanted)
        # a row shorter than a position is not edited there: its right padding is no token of its own
        return torch.isin(positions, wanted) & (positions < lengths[:, None])

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
            if isinstance(v, list) and len(repr(v)) > 60:  # one readable line: long lists are counted, not shown
                return f"[{len(v)} {'prompts' if all(isinstance(i, str) for i in v) else 'items'}]"
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

    def __hash__(self) -> int:
        try:
            return hash(repr(sorted(self.to_dict().items(), key=lambda kv: kv[0])))
        except InvalidSpec:
            return object.__hash__(self)

    def __deepcopy__(self, memo):
        return self  # immutable

    def __copy__(self):
        return self


def _axis_mask(index: tuple[int, ...] | None, size: int, device, noun: str, plural: str) -> torch.Tensor:
    """Boolean vector of length ``size``: True at ``index`` (all True for None)."""
    if index is None:
        return torch.ones(size, dtype=torch.bool, device=device)
    bad = [i for i in index if not 0 <= i < size]
    if bad:
        raise InvalidLocation(f"{noun} {bad[0]} out of range: this input has {plural} 0..{size - 1}")
    mask = torch.zeros(size, dtype=torch.bool, device=device)
    mask[list(index)] = True
    return mask


def spec_list(specs: Any, what: str) -> list[Intervention]:
    """``specs`` (one spec, or an iterable of specs) as a list; anything else is an ``InvalidInput`` from ``what``."""
    if isinstance(specs, Intervention):
        return [specs]
    if isinstance(specs, (str, bytes, Mapping)) or not isinstance(specs, Iterable):
        raise InvalidInput(f"{what}: specs must be an intervention spec or a list of them, "
                           f"got {type(specs).__name__} {short_repr(specs)}")
    out = list(specs)
    for i, spec in enumerate(out):
        if not isinstance(spec, Intervention):
            raise InvalidInput(f"{what}: specs[{i}] must be an intervention spec (AblateHead, Patch, ...), "
                               f"got {type(spec).__name__} {short_repr(spec)}")
    return out


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (for error messages)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_site(site: str, allowed: Sequence[str], kind: str) -> str:
    if site in SITES and site not in allowed:  # a real site, just not one this kind edits
        raise InvalidSpec(f"{kind} cannot act on site {site!r} (valid: {', '.join(allowed)})")
    if site not in allowed:
        hint = did_you_mean(str(site), allowed) or did_you_mean(str(site), SITES)
        raise InvalidSpec(f"{kind}: unknown site {site!r}{hint} (valid: {', '.join(allowed)})")
    return site


def own_lengths(hook, n_rows: int) -> torch.Tensor | None:
    """Each row's own tokens (``[batch]``; in ``generate()`` its prompt's), or None when the call does not say
    (a hook object without the engine's geometry)."""
    row_lengths = getattr(hook, "row_lengths", None)
    return row_lengths(n_rows) if callable(row_lengths) else None


def at_token_positions(value: torch.Tensor, x: torch.Tensor, hook, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``[query, key]``, ``[batch, query, key]`` or ``[batch, head, query, key]`` tensor read at this call's token positions.

    Entry ``[i, j]`` of the tensor is token ``i`` attending to token ``j``, whatever the padding or KV cache:
    a left-padded row reads it at its own tokens, not at its columns. Returns the values laid over ``x``
    and where the tensor reaches: only a row's own tokens (queries and keys below its length), so padding
    on either side and, while generating, every new token keep ``x``. The tensor is sized for the longest
    row (of the measurement, when this pass is one of its chunks; larger is refused as a miscount); entries
    past a shorter row's length are unused (a measurement's chunks share one tensor).
    """
    given_shape = tuple(value.shape)
    batch = x.shape[0]
    if value.ndim == 2:
        value = value[None, None]
    elif value.ndim == 3:
        if value.shape[0] not in (1, batch):
            raise ShapeMismatch(f"{what} has {value.shape[0]} rows but the batch has {batch} (one row per batch row, "
                                "or 1 for every row)")
        value = value[:, None]
    elif value.ndim == 4:
        if value.shape[0] not in (1, batch) or value.shape[1] not in (1, x.shape[1]):
            raise ShapeMismatch(
                f"{what} has shape {tuple(value.shape)} but this input is {tuple(x.shape)} "
                "([batch, head, query, key]; batch and head may also be 1)"
            )
    else:
        raise ShapeMismatch(f"{what} must be [query, key], [batch, query, key] or [batch, head, query, key]")
    n_q, n_k = value.shape[-2:]
    q_pos, k_pos = hook.query_pos, hook.key_pos  # [batch or 1, query], [batch or 1, key]
    if q_pos.shape[-1] != x.shape[-2] or k_pos.shape[-1] != x.shape[-1]:  # a call without geometry: columns
        q_pos, k_pos = torch.arange(x.shape[-2])[None], torch.arange(x.shape[-1])[None]
    lengths = own_lengths(hook, batch)
    if lengths is not None:  # every row's own tokens, in every step of generate() too
        n = int(lengths.max())
    elif not getattr(hook, "decoding", False):  # generate()'s later steps may run past the tensor; a pass may not
        n = getattr(hook, "n_positions", None) or int(k_pos.max()) + 1
    else:
        n = 0
    known = None if getattr(hook, "decoding", False) else getattr(hook, "n_positions", None)
    if n_q < n or n_k < n or (known is not None and (n_q, n_k) != (known, known)):
        n = known or n  # the measurement's longest prompt when known: larger is a miscount too (its extra rows are never read)
        valid = ", ".join(map(str, (*given_shape[:-2], n, n)))
        raise ShapeMismatch(
            f"{what} has shape {given_shape} but this input needs [{valid}]{'' if known else ' or larger'} "
            f"(query x key: one row and one column per token of the longest prompt, {n} tokens; a shorter row "
            "reads its own corner)"
        )
    short = lengths is not None and int(lengths.min()) < x.shape[-1]  # padding (or new tokens) in some row
    if (q_pos.shape[0] == 1 and k_pos.shape[0] == 1 and not short and n_q >= x.shape[-2] and n_k >= x.shape[-1]
            and int(q_pos[0, 0]) == 0 and int(k_pos[0, 0]) == 0):  # positions are the columns: a free broadcast view
        everywhere = torch.ones((), dtype=torch.bool, device=x.device).expand_as(x)
        view = value[..., : x.shape[-2], : x.shape[-1]]
        return view.to(device=x.device, dtype=x.dtype).expand_as(x), everywhere
    rows = torch.arange(batch)[:, None, None] if value.shape[0] > 1 else torch.zeros(1, 1, 1, dtype=torch.long)
    q_at, k_at = q_pos.clamp(0, n_q - 1), k_pos.clamp(0, n_k - 1)
    picked = value[rows, :, q_at[:, :, None], k_at[:, None, :]]  # [batch, query, key, head]
    picked = rearrange(picked, "b q k h -> b h q k").to(device=x.device, dtype=x.dtype)
    q_in, k_in = (q_pos >= 0) & (q_pos < n_q), (k_pos >= 0) & (k_pos < n_k)  # [batch or 1, query], [batch or 1, key]
    if lengths is not None:  # a row's padding (either side) and generated tokens are not its prompt's tokens
        q_in, k_in = q_in & (q_pos < lengths[:, None]), k_in & (k_pos < lengths[:, None])
    covered = q_in[:, None, :, None] & k_in[:, None, None, :]  # [batch or 1, 1, query, key]
    return picked.expand_as(x), covered.to(x.device).expand_as(x)
