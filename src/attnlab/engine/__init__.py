"""Floor 1: the attention function, hook points, the one forward path and model loading."""

from attnlab._deprecation import moved_names
from attnlab.engine.cache import ActivationCache
from attnlab.engine.config import ModelConfig
from attnlab.engine.factored import FactoredMatrix
from attnlab.engine.forward import Output, Resume, run
from attnlab.engine.hooks import Hook, HookPoint
from attnlab.engine.loading import load
from attnlab.engine.model import HookedModel
from attnlab.engine.tokens import Tokens

__all__ = ["HookedModel", "ModelConfig", "load", "run", "Tokens", "Output", "Resume", "ActivationCache", "HookPoint", "Hook",
           "FactoredMatrix"]

#: Names that left the package surface: still importable for one release, with a warning naming their home.
__getattr__ = moved_names("attnlab.engine", {
    "EMBEDDED_MODELS": "attnlab.engine.loading", "cache_dir": "attnlab.engine.loading",
    "SITES": "attnlab.utils", "ALL_SITES": "attnlab.utils", "SITE_SHAPES": "attnlab.utils",
    "Location": "attnlab.engine.locations", "hook_name": "attnlab.utils", "parse_hook_name": "attnlab.utils",
    "get_act_name": "attnlab.utils", "token_logprobs": "attnlab.engine.forward",
})
