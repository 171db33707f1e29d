"""Floor 1: the attention function, hook points, the one forward path and model loading."""

from attnlab.engine.cache import ActivationCache
from attnlab.engine.config import ModelConfig
from attnlab.engine.forward import Output, Resume, run, token_logprobs
from attnlab.engine.hooks import Hook, HookPoint
from attnlab.engine.loading import EMBEDDED_MODELS, cache_dir, load
from attnlab.engine.locations import ALL_SITES, SITE_SHAPES, SITES, Location, get_act_name, hook_name, parse_hook_name
from attnlab.engine.model import HookedModel
from attnlab.engine.tokens import Tokens

__all__ = [
    "HookedModel", "ModelConfig", "load", "EMBEDDED_MODELS", "cache_dir",
    "SITES", "ALL_SITES", "SITE_SHAPES", "Location", "hook_name", "parse_hook_name", "get_act_name",
    "Hook", "HookPoint", "ActivationCache", "Tokens", "Output", "Resume", "run", "token_logprobs",
]
