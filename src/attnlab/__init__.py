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
    ShapeMismatch,
    UnsupportedModel,
)

__version__ = "0.1.0"

# name -> the module that defines it; imported by ``__getattr__`` on first access
_ENGINE_NAMES = ("load", "HookedModel", "ModelConfig", "SITES", "EMBEDDED_MODELS", "hook_name", "parse_hook_name")
_SUBPACKAGES = ("interventions", "measure", "bias", "analysis", "viz", "testing")

if TYPE_CHECKING:  # static tools see the real objects; the interpreter never runs this
    from attnlab.engine import EMBEDDED_MODELS, SITES, HookedModel, ModelConfig, hook_name, load, parse_hook_name


def __getattr__(name: str) -> Any:
    """Import the engine names and the upper floors on first use (PEP 562)."""
    if name in _ENGINE_NAMES:
        value = getattr(importlib.import_module("attnlab.engine"), name)
    elif name in _SUBPACKAGES or name == "engine":
        value = importlib.import_module(f"attnlab.{name}")
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
    "SITES",
    "EMBEDDED_MODELS",
    "hook_name",
    "parse_hook_name",
    "AttnlabError",
    "InvalidLocation",
    "InvalidSpec",
    "ShapeMismatch",
    "UnsupportedModel",
    "InvalidInput",
    "DataFormatError",
    *_SUBPACKAGES,
]
