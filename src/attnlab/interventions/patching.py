"""Activation patching: give a head the q/k/v/scores/pattern/z it has on another input.

The source is either text (run once, from the unedited model, when the spec is prepared;
the declarative form that ``to_dict`` saves), an ``ActivationCache``/dict from
``run_with_cache``, or a tensor with the site's full shape. Source positions are token
positions: they land on the same tokens of a left-padded batch or a KV-cached decoding step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from einops import rearrange
from jaxtyping import Int

from attnlab.engine.locations import HEAD_MAJOR_SITES, KEY_SITES, SITES
from attnlab.errors import InvalidSpec, ShapeMismatch
from attnlab.interventions._base import Intervention, check_site, own_lengths, register, tensor_or_none

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
        if isinstance(source, Mapping) or hasattr(source, "cache_dict"):
            cache = getattr(source, "cache_dict", source)
            if self.hook_name not in cache:
                raise InvalidSpec(f"Patch source cache has no {self.hook_name!r}; cache it with names_filter")
            source = cache[self.hook_name]
        if isinstance(source, (list, tuple)) and source and all(isinstance(s, str) for s in source):
            if not all(s.strip() for s in source):
                raise InvalidSpec("Patch source prompts must be non-empty")
            self.source = list(source)
            return
        if isinstance(source, (list, tuple)) and not source:
            raise InvalidSpec("Patch source must be prompt text, a list of prompts, a cache or a tensor; got an empty list")
        if not isinstance(source, (torch.Tensor, list, tuple)):
            raise InvalidSpec(f"Patch source must be text, a cache or a tensor, got {type(source).__name__}")
        try:
            tensor = tensor_or_none(source, "Patch source tensor")
        except InvalidSpec as err:
            if "NaN or inf" in str(err) or "beyond" in str(err):
                raise InvalidSpec(f"Patch source tensor contains NaN or inf ({err})") from None
            raise InvalidSpec("Patch source must be prompt text, a list of prompts, a cache or a tensor of numbers") from None
        if tensor.ndim != 4:
            raise ShapeMismatch(
                f"Patch source tensor for site {self.site!r} must have 4 axes "
                f"({'batch head query key' if self.site in HEAD_MAJOR_SITES else 'batch pos head d_head'}), got {tuple(tensor.shape)}"
            )
        self.source = tensor

    def prepare_values(self, model) -> dict:
        if isinstance(self.source, torch.Tensor):
            return {"source": self.source}
        # right-padded whatever model.padding_side: the edit reads the source at token positions
        name, texts = self.hook_name, tuple(self.source)
        return {"source": model.prepared_source(
            ("patch_source", name, texts),
            lambda: model.run(list(texts), logits=None, read=[name], padding_side="right").cache[name],
        )}

    def make_edit(self, values):
        source = values["source"]
        name, site = self.hook_name, self.site

        def edit(x, hook):
            src = source.to(device=x.device, dtype=x.dtype)
            head_major = site in HEAD_MAJOR_SITES
            n_src = _check_fits(src, x, hook, head_major, name)
            axis_pos = hook.key_pos if site in KEY_SITES else hook.query_pos  # [batch or 1, n] token positions
            rows = torch.arange(x.shape[0])[:, None] if src.shape[0] > 1 else torch.zeros(1, 1, dtype=torch.long)
            end = _row_ends(hook, x.shape[0], n_src)  # [batch or 1, 1]
            inside = (axis_pos >= 0) & (axis_pos < end)  # a row's padding and new tokens keep x
            at = axis_pos.clamp(0, n_src - 1)
            if head_major:
                keys = hook.key_pos
                key_at = keys.clamp(0, n_src - 1)
                picked = src[rows[:, :, None], :, at[:, :, None], key_at[:, None, :]]  # [batch, query, key, head]
                picked = rearrange(picked, "b q k h -> b h q k")
                keep = inside[:, None, :, None] & ((keys >= 0) & (keys < end))[:, None, None, :]
            else:
                picked = src[rows, at]  # [batch, pos, head, d_head]
                keep = inside[:, :, None, None]
            return torch.where(keep.to(x.device), picked.expand_as(x), x)

        return edit


def _row_ends(hook, n_rows: int, n_src: int) -> Int[torch.Tensor, "batch 1"]:
    """Where each row's patched positions end: its own length, within the source.

    As for a tensor ``SetPattern`` (``at_token_positions``): a shorter row of a batch is patched at
    its own tokens only, never at its padding (right padding: columns a longer row still has) nor,
    in ``generate()``, at its new tokens, which the source does not hold.
    """
    lengths = own_lengths(hook, n_rows)
    if lengths is None:
        return torch.full((1, 1), n_src)
    return lengths.clamp(max=n_src)[:, None]


def _check_fits(src: torch.Tensor, x: torch.Tensor, hook, head_major: bool, name: str) -> int:
    """The source's number of token positions, after checking it can be patched into ``x``.

    The source must cover the longest row of this pass, or of the measurement this pass is a chunk of
    (one source tensor shared by every chunk); a shorter row is patched at its own tokens only.
    """
    n_src = src.shape[2] if head_major else src.shape[1]
    given = f"patch source for {name} has shape {tuple(src.shape)} but the input gives {tuple(x.shape)}"
    widths, model_widths = (src.shape[1:2], x.shape[1:2]) if head_major else (src.shape[2:], x.shape[2:])
    if widths != model_widths:  # not a matter of tokens: the source has another model's heads
        axes = "head axis" if head_major else "[head, d_head] axes"
        verb = "differs" if head_major else "differ"
        raise ShapeMismatch(f"{given}: its {axes} {tuple(widths)} {verb} from this model's {tuple(model_widths)} "
                            "(a source from another model?)")
    if src.shape[0] not in (1, x.shape[0]):
        raise ShapeMismatch(f"{given}: it has {src.shape[0]} rows but the batch has {x.shape[0]} (one source row per "
                            "batch row, or 1 for every row)")
    fits = src.shape[3] == n_src if head_major else True
    lengths = own_lengths(hook, x.shape[0])
    own = int(lengths.max()) if lengths is not None else (x.shape[2] if head_major else x.shape[1])
    known = getattr(hook, "n_positions", None)
    # generate()'s first step runs the prompt itself, so it is checked like a forward pass; only the
    # later steps (positions past the prompt) may run past the source, keeping their own values
    if not getattr(hook, "decoding", False):
        fits &= n_src in (own, known)
    if not fits:
        need = own if known in (None, own) else f"{own} in this chunk, {known} in the whole measurement"
        raise ShapeMismatch(
            f"{given}; source and input must tokenize to the same length (the longest prompt: {need} tokens)"
        )
    return n_src
