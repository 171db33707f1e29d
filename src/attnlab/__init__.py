"""attnlab: read, overwrite, measure and view attention inside transformer models."""

from attnlab.engine import EMBEDDED_MODELS, SITES, HookedModel, ModelConfig, hook_name, load, parse_hook_name
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

_SUBPACKAGES = ("interventions", "measure", "bias", "analysis", "viz", "testing")


def __getattr__(name: str):
    """Import the upper floors on first use (``attnlab.measure``, ``attnlab.viz``, ...)."""
    if name in _SUBPACKAGES:
        import importlib

        return importlib.import_module(f"attnlab.{name}")
    raise AttributeError(f"module 'attnlab' has no attribute {name!r}")


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
