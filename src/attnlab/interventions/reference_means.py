"""Means of hook points over reference prompts: what mean ablation writes.

Every mean ablation (``AblateHead(method="mean")``, the mean sweeps, attribution's
``method="mean"``) replaces a site by its average over all real tokens of some reference
prompts, computed from the unedited model. One pass over the references reads every site
asked for at once, in batches (memory is one batch's activations plus one running sum per
site, whatever the number of references), and the model caches the result: a mean sweep
over 18 layers used to run 18 passes, one per layer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

from attnlab.errors import InvalidInput, check_positive_int

__all__ = ["reference_means", "check_reference", "real_token_sum"]

#: Reference prompts per forward pass.
REFERENCE_BATCH = 32


def check_reference(prompts) -> list[str]:
    """The reference prompts as a list (read once: a generator's prompts are not used up by the check)."""
    if isinstance(prompts, (str, bytes, Mapping)) or not isinstance(prompts, Iterable):
        raise InvalidInput(f"reference prompts must be a non-empty list of non-empty strings, got {type(prompts).__name__}")
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise InvalidInput("reference prompts must be a non-empty list of non-empty strings")
    return prompts


def real_token_sum(x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Sum over the real tokens of a ``[batch, pos, ...]`` site (``real``: ``[batch, pos]`` bool), in float64."""
    return x[real.to(x.device)].double().sum(dim=0)


def reference_means(model, names: Sequence[str], prompts: Sequence[str], *,
                    batch_size: int = REFERENCE_BATCH, precision: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """``{name: mean over every real token of prompts}`` (float32, CPU; the site's shape without batch and position).

    Accumulated in float64 inside the forward (no batch's activations are kept) over batches
    of ``batch_size`` right-padded prompts, from the unedited model (inside ``model.clean()``),
    and cached on the model by names and prompts. Sites laid out ``[batch, head, query, key]``
    (patterns, scores) have no mean over tokens and are refused. ``precision``: the pass's
    linear layers multiply in that dtype (an estimate in reduced precision averages its own
    precision's activations; mean ablation itself uses full precision).
    """
    prompts = check_reference(prompts)
    names = tuple(dict.fromkeys(names))
    by_head = [n for n in names if n.endswith(("hook_pattern", "hook_attn_scores"))]
    if by_head:
        raise InvalidInput(
            f"{by_head[0]} is laid out [batch, head, query, key]: it has no mean over token positions "
            "(mean ablation applies to sites laid out [batch, position, ...], e.g. z, q, k, v, resid, post)")
    check_positive_int(batch_size, "batch_size")
    batch_size = int(batch_size)

    def compute() -> dict[str, torch.Tensor]:
        sums: dict[str, torch.Tensor] = {}
        count = 0
        rows = model.token_rows(prompts)
        for start in range(0, len(rows), batch_size):
            tokens = model.pad(rows[start : start + batch_size], padding_side="right")
            real = tokens.mask.bool().to(model.device)

            def add(x, hook, real=real):
                part = real_token_sum(x, real)
                sums[hook.name] = sums[hook.name] + part if hook.name in sums else part

            model.run(tokens, logits=None, hooks=[(name, add) for name in names], precision=precision)
            count += int(real.sum())
        return {name: (sums[name] / count).float().cpu() for name in names}

    return model.prepared_source(("reference_means", names, tuple(prompts), precision), compute)
