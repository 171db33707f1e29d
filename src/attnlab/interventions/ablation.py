"""Head ablation on the head output ``z`` (before the output projection).

Zeroing head h's slice of ``z`` is exactly removing that head's contribution to the
attention output. Mean ablation replaces it by its average over reference prompts
(computed from the unedited model when the spec is prepared, and cached by the model; give
``mean=`` to fix it in the spec, e.g. ``spec.with_mean(model)``); resample ablation replaces
it by the same position of a randomly chosen reference prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from jaxtyping import Float

from attnlab.engine.locations import hook_name
from attnlab.errors import InvalidSpec, ShapeMismatch, did_you_mean
from attnlab.interventions._base import Intervention, check_seed, register, tensor_or_none
from attnlab.interventions.reference_means import check_reference, reference_means

__all__ = ["AblateHead", "ABLATION_METHODS", "head_means"]

ABLATION_METHODS = ("zero", "mean", "resample")
_USED_BY = {"reference": ("mean", "resample"), "mean": ("mean",)}  # the methods that read each field


def _reference_z(model, layer: int, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """z at ``layer`` for the reference prompts (right-padded) and their attention mask."""
    name = hook_name(layer, "z")
    out = model.run(check_reference(prompts), logits=None, read=[name], padding_side="right")
    return out.cache[name], out.tokens.mask.bool()


def head_means(model, layer: int, prompts: Sequence[str]) -> Float[torch.Tensor, "head d_head"]:
    """Mean of every head's ``z`` over all non-padding tokens of ``prompts`` (from the unedited model).

    The first call computes every layer's means in the same pass (a mean sweep asks for all
    of them); later calls read the model's cache.
    """
    names = [hook_name(l, "z") for l in range(model.cfg.n_layers)]
    return reference_means(model, names, prompts)[hook_name(layer, "z")]


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
        if not isinstance(method, str) or method not in ABLATION_METHODS:
            raise InvalidSpec(
                f"unknown ablation method {method!r}{did_you_mean(str(method), ABLATION_METHODS)} "
                f"(valid: {', '.join(ABLATION_METHODS)})"
            )
        if method == "mean" and mean is None and not reference:
            raise InvalidSpec("mean ablation needs reference prompts (reference=[...]) or a precomputed mean=")
        if method == "resample" and not reference:
            raise InvalidSpec("resample ablation needs reference prompts to resample from (reference=[...])")
        for name, value in (("reference", reference), ("mean", mean)):  # ignored: a silent other ablation than meant
            if value is not None and method not in _USED_BY[name]:
                uses = " or ".join(f"method={m!r}" for m in _USED_BY[name])
                raise InvalidSpec(f"{method} ablation does not use {name}= (only {uses} does); pass the method that "
                                  f"should use it, or leave {name}= out")
        if reference is not None and (
            isinstance(reference, str) or not isinstance(reference, (list, tuple))
            or not all(isinstance(r, str) and r.strip() for r in reference)
        ):
            raise InvalidSpec("reference must be a list of non-empty prompt strings")
        self.method = method
        self.reference = list(reference) if reference is not None else None
        self.mean = tensor_or_none(mean, "mean")
        self.seed = check_seed(seed)

    def validate(self, cfg) -> None:
        super().validate(cfg)
        if self.mean is not None and tuple(self.mean.shape) != (cfg.n_heads, cfg.d_head):
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

    def prepare_values(self, model) -> dict:
        if self.method == "mean":
            return {"mean": self.mean if self.mean is not None else head_means(model, self.layer, self.reference)}
        if self.method == "resample":
            key = ("reference_z", self.layer, tuple(self.reference))
            z, mask = model.prepared_source(key, lambda: _reference_z(model, self.layer, self.reference))
            return {"reference_z": z, "lengths": mask.sum(dim=1)}
        return {}

    def make_edit(self, values):
        if self.method == "zero":
            return lambda x, hook: torch.zeros_like(x)
        if self.method == "mean":
            mean = values["mean"]
            return lambda x, hook: mean.to(device=x.device, dtype=x.dtype)[None, None].expand_as(x)
        ref_z, lengths = values["reference_z"], values["lengths"]
        seed = self.seed

        def resample(x, hook):
            # prompt k of a measurement draws from its own stream (seed, k): the same pick however it is batched
            keys = hook.row_keys(x.shape[0]).tolist()
            drawn = {k: int(np.random.default_rng([seed, k]).integers(len(ref_z))) for k in set(keys)}
            picks = torch.tensor([drawn[k] for k in keys])
            positions = hook.query_pos.expand(x.shape[0], -1)  # [batch, pos] token positions
            out = []
            for row, pick in enumerate(picks.tolist()):
                # same position in the reference prompt, or its last real token if it is shorter
                at = positions[row].clamp(min=0, max=int(lengths[pick]) - 1)
                out.append(ref_z[pick, at.to(ref_z.device)])
            return torch.stack(out).to(device=x.device, dtype=x.dtype)

        return resample
