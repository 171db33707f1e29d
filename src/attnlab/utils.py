"""Where a TransformerLens user looks for helpers: ``from attnlab import utils; utils.get_act_name("resid_pre", 3)``.

Re-exports of the engine's name helpers (floor 1), nothing else.
"""

from attnlab.engine.locations import ALL_SITES, SITE_SHAPES, SITES, get_act_name, hook_name, parse_hook_name

__all__ = ["get_act_name", "hook_name", "parse_hook_name", "SITES"]
