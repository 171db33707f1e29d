"""Head ablation on the head output ``z`` (before the output projection).

Zeroing head h's slice of ``z`` is exactly removing that head's contribution to the
attention output. Mean ablation replaces it by its average over reference prompts
(computed once, stored in the spec, reusable and saved by ``to_dict``); resample ablation
replaces it by the same position of a randomly chosen reference prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float

from attnlab.errors import InvalidInput, InvalidSpec, did_you_mean
from attnlab.interventions._base import Intervention, register, tensor_or_none

__all__ = ["AblateHead", "ABLATION_METHODS", "head_means"]

ABLATION_METHODS = ("zero", "mean", "resample")


def _reference_z(model, layer: int, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """z at ``layer`` for the reference prompts and their attention mask."""
    if isinstance(prompts, str) or not prompts:
        raise InvalidInput("reference prompts must be a non-empty list of strings")
    enc = model.tokenize(list(prompts))
    name = f"blocks.{layer}.attn.hook_z"
    with torch.no_grad():
        _, cache = model.run_with_cache(enc["input_ids"], attention_mask=enc["attention_mask"], names_filter=[name])
    return cache[name], enc["attention_mask"].bool()


def head_means(model, layer: int, prompts: Sequence[str]) -> Float[torch.Tensor, "head d_head"]:
    """Mean of every head's ``z`` over all non-padding tokens of ``prompts``."""
    z, mask = _reference_z(model, layer, prompts)
    return z[mask].mean(dim=0).float().cpu()


@register
class AblateHead(Intervention):
    """Ablate the output of one or more heads.

    >>> AblateHead(3, 5)                                   # zero ablation
    AblateHead(layer=3, head=5)
    >>> AblateHead(3, [0, 2], method="mean", reference=["The cat sat.", "A dog ran."])  # doctest: +SKIP
    """

    kind = "ablate_head"
    site = "z"
    fields = ("method", "reference", "mean", "seed")
    defaults = {"method": "zero", "reference": None, "mean": None, "seed": 0}

    def __init__(
        self,
        layer: int,
        head=None,
        *,
        method: str = "zero",
        reference: Sequence[str] | None = None,
        mean=None,
        seed: int = 0,
        positions=None,
        rows=None,
    ):
        super().__init__(layer, head, positions=positions, rows=rows)
        if method not in ABLATION_METHODS:
            raise InvalidSpec(
                f"unknown ablation method {method!r}{did_you_mean(method, ABLATION_METHODS)} "
                f"(valid: {', '.join(ABLATION_METHODS)})"
            )
        if method == "mean" and mean is None and not reference:
            raise InvalidSpec("mean ablation needs reference prompts (reference=[...]) or a precomputed mean=")
        if method == "resample" and not reference:
            raise InvalidSpec("resample ablation needs reference prompts to resample from (reference=[...])")
        if reference is not None and (isinstance(reference, str) or not all(isinstance(r, str) for r in reference)):
            raise InvalidSpec("reference must be a list of prompt strings")
        self.method = method
        self.reference = list(reference) if reference is not None else None
        self.mean = tensor_or_none(mean, "mean")
        self.seed = int(seed)
        self._resample_cache: tuple[int, torch.Tensor, torch.Tensor] | None = None

    def validate(self, cfg) -> None:
        super().validate(cfg)
        if self.mean is not None and tuple(self.mean.shape) != (cfg.n_heads, cfg.d_head):
            from attnlab.errors import ShapeMismatch

            raise ShapeMismatch(
                f"mean has shape {tuple(self.mean.shape)}; {cfg.name} needs [n_heads, d_head] = "
                f"[{cfg.n_heads}, {cfg.d_head}]"
            )

    def with_mean(self, model) -> AblateHead:
        """This spec with its mean computed from ``reference`` (so it can be reused or saved)."""
        if self.method != "mean" or self.mean is not None:
            return self
        return AblateHead(
            self.layer, list(self.heads) if self.heads else None, method="mean",
            mean=head_means(model, self.layer, self.reference), seed=self.seed,
            positions=self.positions, rows=self.rows,
        )

    def edit_fn(self, model):
        if self.method == "zero":
            return lambda x, hook: torch.zeros_like(x)
        if self.method == "mean":
            if self.mean is None:
                self.mean = head_means(model, self.layer, self.reference)  # computed once, then reused
            return lambda x, hook: self.mean.to(device=x.device, dtype=x.dtype)[None, None].expand_as(x)

        key = id(model)
        if self._resample_cache is None or self._resample_cache[0] != key:
            z, mask = _reference_z(model, self.layer, self.reference)
            self._resample_cache = (key, z, mask.sum(dim=1))

        def resample(x, hook):
            _, ref_z, lengths = self._resample_cache
            gen = torch.Generator().manual_seed(self.seed)
            picks = torch.randint(len(ref_z), (x.shape[0],), generator=gen)
            positions = torch.arange(hook.query_offset, hook.query_offset + x.shape[1])
            out = []
            for row, pick in enumerate(picks.tolist()):
                # same position in the reference prompt, or its last real token if it is shorter
                at = positions.clamp(max=int(lengths[pick]) - 1)
                out.append(ref_z[pick, at])
            return torch.stack(out).to(device=x.device, dtype=x.dtype)

        return resample
