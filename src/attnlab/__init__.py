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
]
