"""Specs as JSON data and files: the one boundary where untrusted data becomes interventions.

A spec file comes from a user, a colleague or a script, so nothing in it is trusted: the
file may be missing, not UTF-8, nested 100,000 deep, hold a 5,000-digit integer or the
non-standard ``NaN``/``Infinity`` tokens, and each entry may name an unknown kind or field
or give a field a value of the wrong JSON type. Every such failure becomes a typed attnlab
error naming the file (and the entry, kind and field); no raw ``ValueError``,
``RecursionError`` or ``UnicodeDecodeError`` escapes.

The checks here are about the *JSON form* (is ``seed`` an integer? is ``pattern`` a
rectangular list of finite numbers?); what a value means (is the head in range, does the
pattern sum to one) is checked by the spec classes themselves.

>>> from attnlab.interventions import AblateHead, from_dict
>>> from_dict({"kind": "ablate_head", "layer": 3, "head": 5}) == AblateHead(3, 5)
True
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from attnlab._textfile import open_error, read_text
from attnlab.errors import AttnlabError, DataFormatError, InvalidInput, InvalidSpec, did_you_mean
from attnlab.interventions._base import REGISTRY, Intervention, short_repr, spec_list

__all__ = ["from_dict", "save_specs", "load_specs"]

_LOCATION_FIELDS = ("layer", "head", "positions", "rows")
_INT64 = 2**63
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)
_MAX_TENSOR_DIMS = 4  # the largest spec tensors are [batch, head, query, key] and [batch, pos, head, d_head]
_RAW_ERRORS = (ValueError, TypeError, OverflowError, AttributeError, RuntimeError, IndexError, KeyError, RecursionError)


# -- the JSON form of each field ---------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(v: Any) -> str | None:
    if not _is_int(v):
        return "an integer"
    if not -_INT64 <= v < _INT64:
        return "an integer that fits in 64 bits"
    return None


def _indices(v: Any) -> str | None:
    """null (everywhere), an integer, or a list of integers."""
    if v is None:
        return None
    items = list(v) if isinstance(v, (list, tuple)) else [v]
    if any(_int(i) for i in items):
        return "null, an integer or a list of integers (each fitting in 64 bits)"
    return None


def _unencodable(v: str) -> bool:
    """A string with a lone surrogate (JSON's "\\ud800" is valid JSON): no tokenizer can read it."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


_SURROGATE = "text without lone surrogates (a \\ud800-\\udfff escape that is not half of a pair)"


def _string(v: Any) -> str | None:
    if not isinstance(v, str):
        return "a string"
    return f"a string of {_SURROGATE}" if _unencodable(v) else None


def _boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def _scalar(v: Any) -> str | None:
    """null or one finite number."""
    if v is None:
        return None
    if not _is_number(v):
        return "null or a finite number"
    try:
        finite = math.isfinite(v)
    except OverflowError:  # an integer too large for a float
        finite = False
    return None if finite else "a finite number (not NaN, inf or beyond the float range)"


def _number_array(v: Any, *, limit: float | None, allow_inf: bool = False) -> str | None:
    """A number or rectangular nested lists of numbers (at most 4 levels), finite and within ``limit``."""
    if isinstance(v, torch.Tensor):
        values = v.detach().double()
    else:
        stack, depth_of = [(v, 0)], {}
        while stack:  # iterative: a deeply nested list cannot exhaust the Python stack
            item, depth = stack.pop()
            if isinstance(item, (list, tuple)):
                if depth >= _MAX_TENSOR_DIMS:
                    return f"a number or nested lists of numbers at most {_MAX_TENSOR_DIMS} levels deep"
                stack.extend((x, depth + 1) for x in item)
            elif _is_number(item):
                if _is_int(item) and abs(item) > 1e308:
                    return "finite numbers (this integer is beyond the float range)"
                depth_of[depth] = True
            else:
                return f"a number or nested lists of numbers, not one holding {short_repr(item, 30)}"
        if len(depth_of) > 1:
            return "a rectangular nested list of numbers (rows of equal length)"
        try:
            values = torch.as_tensor(v, dtype=torch.float64)
        except (ValueError, TypeError, OverflowError, RuntimeError):
            return "a rectangular nested list of numbers (rows of equal length)"
    if torch.isnan(values).any():
        return "finite numbers (no NaN)"
    if not allow_inf and torch.isinf(values).any():
        return "finite numbers (no inf)"
    if limit is not None and values.isfinite().all() and values.numel() and values.abs().max().item() > limit:
        return f"numbers within +-{limit:.4g} (they are stored as float32)"
    return None


def _float32_array(v: Any) -> str | None:
    return None if v is None else _number_array(v, limit=_FLOAT32_MAX)


def _strings(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, (list, tuple)) and all(isinstance(s, str) for s in v):
        return f"a list of strings of {_SURROGATE}" if any(_unencodable(s) for s in v) else None
    return "null or a list of strings"


def _source(v: Any) -> str | None:
    """Patch source: prompt text, a list of prompts, or a tensor as nested lists."""
    if isinstance(v, str) or isinstance(v, (list, tuple)) and v and all(isinstance(s, str) for s in v):
        texts = [v] if isinstance(v, str) else v
        return f"a string or a list of strings of {_SURROGATE}" if any(_unencodable(t) for t in texts) else None
    if isinstance(v, (list, tuple, torch.Tensor)):
        # masked attention scores may legitimately hold -inf, so only NaN is refused here
        problem = _number_array(v, limit=None, allow_inf=True)
        return None if problem is None else f"a string, a list of strings or a tensor as nested lists ({problem})"
    return "a string, a list of strings or a tensor as nested lists"


def _no_function(v: Any) -> str | None:
    return None if v is None else "null: a Python function cannot be given as data; build the spec in Python"


#: what each field may hold in JSON; fields not listed here are left to the spec class
FIELD_FORMS = {
    "layer": _int,
    "head": _indices,
    "positions": _indices,
    "rows": _indices,
    "keys": _indices,
    "dim": _indices,
    "neuron": _indices,
    "seed": _int,
    "method": _string,
    "site": _string,
    "renormalize": _boolean,
    "allow_unnormalized": _boolean,
    "distance_penalty": _scalar,
    "scale": _scalar,
    "value": _scalar,
    "mean": _float32_array,
    "pattern": _float32_array,
    "add": _float32_array,
    "replace": _float32_array,
    "reference": _strings,
    "source": _source,
    "fn": _no_function,
}


# -- from_dict -------------------------------------------------------------------------------


def from_dict(data: dict[str, Any]) -> Intervention:
    """Rebuild any intervention from its ``to_dict()`` (or a hand-written dict of the same form).

    Raises :class:`InvalidSpec` naming the kind and the field for anything that is not a
    valid spec: not a dict, an unknown kind or field, a value of the wrong JSON type, or any
    error the spec's constructor raises.
    """
    if not isinstance(data, dict):
        raise InvalidSpec(f"an intervention must be a JSON object with a 'kind' key, got {type(data).__name__} {short_repr(data)}")
    if "kind" not in data:
        raise InvalidSpec(f"an intervention dict needs a 'kind' key (one of {', '.join(REGISTRY)}), got {short_repr(data)}")
    kind = data["kind"]
    if not isinstance(kind, str) or kind not in REGISTRY:
        hint = did_you_mean(kind, REGISTRY) if isinstance(kind, str) else ""
        raise InvalidSpec(f"unknown intervention kind {short_repr(kind)}{hint} (valid: {', '.join(REGISTRY)})")
    cls = REGISTRY[kind]
    bad_keys = [k for k in data if not isinstance(k, str)]
    if bad_keys:
        raise InvalidSpec(f"{kind}: field names must be strings, got {short_repr(bad_keys[0])}")
    known = getattr(cls, "fields", None)
    if isinstance(known, tuple):
        allowed = {"kind", *_LOCATION_FIELDS, *known}
        unknown = sorted(set(data) - allowed)
        if unknown:
            allowed.discard("kind")
            raise InvalidSpec(
                f"{kind}: unknown field {unknown[0]!r}{did_you_mean(unknown[0], allowed)} "
                f"(fields: {', '.join(sorted(allowed))})"
            )
    if "layer" not in data:
        raise InvalidSpec(f"{kind}: missing field 'layer'")
    for name, value in data.items():
        form = FIELD_FORMS.get(name)
        problem = form(value) if form is not None else None
        if problem:
            raise InvalidSpec(f"{kind}: {name} must be {problem}, got {short_repr(value)}")
    try:
        return cls.from_dict(data)
    except AttnlabError:
        raise
    except _RAW_ERRORS as err:
        raise InvalidSpec(_describe_raw_error(cls, data, err)) from err


def _describe_raw_error(cls: type[Intervention], data: dict[str, Any], err: Exception) -> str:
    """Name the field behind an untyped constructor error: best the one whose removal makes the spec valid."""
    reason = f"{type(err).__name__}: {err}"
    candidates = sorted((k for k in data if k not in ("kind", "layer")), key=lambda k: k in FIELD_FORMS)
    changed = []
    for name in candidates:  # fields without a JSON form first: they were not checked above
        try:
            cls.from_dict({k: v for k, v in data.items() if k != name})
        except Exception as other:
            if not (type(other) is type(err) and str(other) == str(err)):
                changed.append(name)
            continue
        return f"{cls.kind}: field {name!r} = {short_repr(data[name])} is not valid ({reason})"
    if changed:
        return f"{cls.kind}: field {changed[0]!r} = {short_repr(data[changed[0]])} is not valid ({reason})"
    return f"{cls.kind}: these fields do not make a valid spec: {short_repr(data, 120)} ({reason})"


# -- files -----------------------------------------------------------------------------------

_NON_FINITE_TOKEN = re.compile(r"[\[:,]\s*(-?Infinity|NaN)\b")


class _NonFiniteToken(ValueError):
    pass


class _DuplicateKey(ValueError):
    pass


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    """json's object hook: a key given twice is refused (plain json.loads keeps the last one silently)."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _refuse_constant(token: str):
    raise _NonFiniteToken(token)


def save_specs(path: str | Path, specs: Intervention | Iterable[Intervention]) -> None:
    """Write interventions (one spec or a list of them) to a UTF-8 JSON file: a list of their ``to_dict()``."""
    specs = spec_list(specs, "save_specs")
    path = Path(path)
    data = [s.to_dict() for s in specs]
    try:
        text = json.dumps(data, indent=1, allow_nan=False)
    except ValueError as err:  # NaN/inf cannot be written as standard JSON
        raise InvalidSpec(f"cannot save specs to {path}: {err}") from None
    try:
        path.write_text(text + "\n", encoding="utf-8")
    except OSError as err:
        raise open_error(path, err, "cannot write spec file") from None


def load_specs(path: str | Path) -> list[Intervention]:
    """Read interventions from a JSON file written by :func:`save_specs` (or by hand).

    The file holds a list of spec objects (a lone object is a list of one). A path that
    cannot be read is an :class:`InvalidInput`; anything wrong inside the file is a
    :class:`DataFormatError` that names the file (and the line or entry).
    """
    path = Path(path)
    if path.is_dir():
        raise InvalidInput(f"spec file {path}: is a folder, not a file")
    if path.exists() and not path.is_file():
        raise InvalidInput(f"spec file {path}: not a regular file")
    text = read_text(path, what="spec file")
    try:
        data = json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_refuse_duplicates)
    except _DuplicateKey as err:
        raise DataFormatError(
            f"{path}: key {str(err)!r} appears twice in one object; give each field once"
        ) from None
    except _NonFiniteToken as err:
        m = _NON_FINITE_TOKEN.search(text)
        where = f"{path}:{text.count(chr(10), 0, m.start(1)) + 1}" if m else str(path)
        raise DataFormatError(
            f"{where}: {err} is not standard JSON and not a finite number; spec values must be finite numbers"
        ) from None
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
    except RecursionError:
        raise DataFormatError(f"{path}: JSON nested too deeply to be a spec file") from None
    except ValueError as err:  # e.g. an integer with more digits than Python converts
        raise DataFormatError(f"{path}: not usable JSON ({err})") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise DataFormatError(f"{path}: expected a JSON list of intervention objects, got {type(data).__name__}")
    specs = []
    for i, item in enumerate(data):
        try:
            specs.append(from_dict(item))
        except AttnlabError as err:
            raise DataFormatError(f"{path}: intervention #{i}: {err}") from err
    return specs
