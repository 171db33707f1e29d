"""Where in the model: attention sites and the TransformerLens hook names that print them.

A location is a structured value (layer, site); this module is the only place that turns
it into a hook name (``blocks.3.attn.hook_pattern``) and back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from attnlab.errors import InvalidLocation, did_you_mean

__all__ = ["SITES", "SITE_SHAPES", "HEAD_MAJOR_SITES", "Site", "hook_name", "parse_hook_name", "check_site"]

#: Every attention site attnlab exposes, in the order the attention computation visits them.
SITES: tuple[str, ...] = ("q", "k", "v", "attn_scores", "pattern", "z")

#: The axes of the tensor each site carries (TransformerLens conventions).
SITE_SHAPES: dict[str, str] = {
    "q": "batch pos head d_head",
    "k": "batch pos head d_head",
    "v": "batch pos head d_head",
    "attn_scores": "batch head query key",
    "pattern": "batch head query key",
    "z": "batch pos head d_head",
}

#: Sites whose head axis comes right after batch (``[batch, head, query, key]``).
HEAD_MAJOR_SITES = frozenset({"attn_scores", "pattern"})

_HOOK_RE = re.compile(r"^blocks\.(\d+)\.attn\.hook_(\w+)$")


def check_site(site: str) -> str:
    """Return ``site`` if attnlab knows it, else raise :class:`InvalidLocation` with a hint."""
    if site not in SITES:
        raise InvalidLocation(f"unknown site {site!r}{did_you_mean(site, SITES)} (valid sites: {', '.join(SITES)})")
    return site


@dataclass(frozen=True)
class Site:
    """One attention site of one layer, e.g. ``Site(3, "pattern")``."""

    layer: int
    site: str

    @property
    def name(self) -> str:
        return hook_name(self.layer, self.site)


def hook_name(layer: int, site: str) -> str:
    """``hook_name(3, "pattern") == "blocks.3.attn.hook_pattern"``."""
    return f"blocks.{int(layer)}.attn.hook_{check_site(site)}"


def parse_hook_name(name: str) -> Site:
    """Inverse of :func:`hook_name`; raises :class:`InvalidLocation` for anything else."""
    match = _HOOK_RE.match(name)
    if match is None or match.group(2) not in SITES:
        raise InvalidLocation(
            f"{name!r} is not an attention hook name; expected 'blocks.<layer>.attn.hook_<site>' "
            f"with site one of {', '.join(SITES)}"
        )
    return Site(int(match.group(1)), match.group(2))
