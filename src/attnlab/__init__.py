"""attnlab: read, overwrite, measure and view attention inside transformer models.

``import attnlab`` stays cheap (no torch, no transformers): every name below except the
errors is imported on first use, so ``attnlab --help`` and scripts that only need an error
class start in a fraction of a second. ``attnlab.load`` pulls in torch and the engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from attnlab.errors import (
    AttnlabError,
    DataFormatError,
    InvalidInput,
    InvalidLocation,
    InvalidSpec,
    NotSupported,
    ShapeMismatch,
    UnsupportedModel,
)

__version__ = "0.1.0"

# imported by ``__getattr__`` on first access
_ENGINE_NAMES = ("load", "HookedModel", "ModelConfig")
_SUBPACKAGES = ("engine", "interventions", "measure", "bias", "analysis", "viz", "testing", "utils", "errors")
#: names that left the top level: still reachable for one release, with a warning naming their home
_MOVED = {"SITES": "attnlab.utils", "EMBEDDED_MODELS": "attnlab.engine.loading", "hook_name": "attnlab.utils",
          "parse_hook_name": "attnlab.utils"}

if TYPE_CHECKING:  # static tools see the real objects; the interpreter never runs this
    from attnlab.engine import HookedModel, ModelConfig, load


def __getattr__(name: str) -> Any:
    """Import the engine names and the upper floors on first use (PEP 562)."""
    if name in _ENGINE_NAMES:
        value = getattr(importlib.import_module("attnlab.engine"), name)
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f"attnlab.{name}")
    elif name in _MOVED:
        from attnlab._deprecation import deprecated

        deprecated(f"attnlab.{name}", f"{_MOVED[name]}.{name}")
        return getattr(importlib.import_module(_MOVED[name]), name)
    else:
        raise AttributeError(f"module 'attnlab' has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "load",
    "HookedModel",
    "ModelConfig",
    "AttnlabError",
    "InvalidLocation",
    "InvalidSpec",
    "ShapeMismatch",
    "UnsupportedModel",
    "InvalidInput",
    "DataFormatError",
    "NotSupported",
]
