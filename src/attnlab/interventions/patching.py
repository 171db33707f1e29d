"""Activation patching: give a head the q/k/v/scores/pattern/z it has on another input.

The source is either text (run once, cleanly, when the spec is applied; the declarative
form that ``to_dict`` saves), an ``ActivationCache``/dict from ``run_with_cache``, or a
tensor with the site's full shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from attnlab.engine.locations import SITES
from attnlab.errors import InvalidSpec, ShapeMismatch
from attnlab.interventions._base import Intervention, check_site, register

__all__ = ["Patch"]


@register
class Patch(Intervention):
    """Replace a site of chosen heads with its value on ``source``.

    >>> Patch(4, 2, site="pattern", source=["The man said that"])  # doctest: +SKIP

    Source rows pair with batch rows (one source row is used for every row); the source
    must have the same number of tokens as the input it is patched into.
    """

    kind = "patch"
    fields = ("site", "source")

    def __init__(self, layer: int, head=None, *, site: str, source, positions=None, rows=None):
        super().__init__(layer, head, positions=positions, rows=rows)
        self.site = check_site(site, SITES, "Patch")
        if isinstance(source, str):
            source = [source]
        if isinstance(source, Sequence) and source and not all(isinstance(s, str) for s in source):
            try:  # a tensor saved by to_dict() as nested lists
                source = torch.as_tensor(source, dtype=torch.float32)
            except (TypeError, ValueError):
                raise InvalidSpec("Patch source must be prompt text, a list of prompts, a cache or a tensor") from None
        if isinstance(source, Sequence) and not isinstance(source, torch.Tensor):
            if not source:
                raise InvalidSpec("Patch source must be prompt text, a list of prompts, a cache or a tensor")
            source = list(source)
        elif isinstance(source, Mapping) or hasattr(source, "cache_dict"):
            cache = getattr(source, "cache_dict", source)
            if self.hook_name not in cache:
                raise InvalidSpec(f"Patch source cache has no {self.hook_name!r}; cache it with names_filter")
            source = cache[self.hook_name].detach()
        elif isinstance(source, torch.Tensor):
            if not torch.isfinite(source.float()).all() and self.site != "attn_scores":
                raise InvalidSpec("Patch source tensor contains NaN or inf")
            source = source.detach()
        else:
            raise InvalidSpec(f"Patch source must be text, a cache or a tensor, got {type(source).__name__}")
        self.source = source
        self._computed: tuple[int, torch.Tensor] | None = None

    def _source_tensor(self, model) -> torch.Tensor:
        if isinstance(self.source, torch.Tensor):
            return self.source
        if self._computed is None or self._computed[0] != id(model):
            with torch.no_grad():
                _, cache = model.run_with_cache(self.source, names_filter=[self.hook_name])
            self._computed = (id(model), cache[self.hook_name])
        return self._computed[1]

    def edit_fn(self, model):
        source = self._source_tensor(model)

        def edit(x, hook):
            src = source
            if hook.query_offset and self.site in ("q", "z", "attn_scores", "pattern"):
                # KV-cached decoding step: take the source's query rows for this step
                axis = 2 if self.site in ("attn_scores", "pattern") else 1
                src = src.narrow(axis, hook.query_offset, min(x.shape[axis], src.shape[axis] - hook.query_offset))
            if src.shape[1:] != x.shape[1:] or src.shape[0] not in (1, x.shape[0]):
                raise ShapeMismatch(
                    f"patch source for {self.hook_name} has shape {tuple(src.shape)} but the input gives "
                    f"{tuple(x.shape)}; source and input must tokenize to the same length"
                )
            return src.to(device=x.device, dtype=x.dtype).expand_as(x)

        return edit
