"""Floor 1: the attention function, hook points and model loading."""

from attnlab.engine.config import ModelConfig
from attnlab.engine.loading import EMBEDDED_MODELS, cache_dir, load
from attnlab.engine.locations import SITE_SHAPES, SITES, hook_name, parse_hook_name
from attnlab.engine.model import HookedModel

__all__ = ["HookedModel", "ModelConfig", "load", "EMBEDDED_MODELS", "cache_dir", "SITES", "SITE_SHAPES", "hook_name", "parse_hook_name"]
