"""Means of hook points over reference prompts: what mean ablation writes.

Every mean ablation (``AblateHead(method="mean")``, the mean sweeps, attribution's
``method="mean"``) replaces a site by its average over all real tokens of some reference
prompts, computed from the unedited model. One pass over the references reads every site
asked for at once, in batches (memory is one batch's activations plus one running sum per
site, whatever the number of references), and the model caches the result: a mean sweep
over 18 layers used to run 18 passes, one per layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from attnlab.errors import InvalidInput

__all__ = ["reference_means", "check_reference"]

#: Reference prompts per forward pass.
REFERENCE_BATCH = 32


def check_reference(prompts) -> list[str]:
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise InvalidInput("reference prompts must be a non-empty list of non-empty strings")
    return list(prompts)


def reference_means(model, names: Sequence[str], prompts: Sequence[str]) -> dict[str, torch.Tensor]:
    """``{name: mean over every real token of prompts}`` (float32, CPU; the site's shape without batch and position).

    Accumulated in float64 over batches of :data:`REFERENCE_BATCH` right-padded prompts, from
    the unedited model (inside ``model.clean()``), and cached on the model by names and prompts.
    """
    prompts = check_reference(prompts)
    names = tuple(names)

    def compute() -> dict[str, torch.Tensor]:
        sums: dict[str, torch.Tensor] = {}
        count = 0
        rows = model.token_rows(prompts)
        for start in range(0, len(rows), REFERENCE_BATCH):
            tokens = model.pad(rows[start : start + REFERENCE_BATCH], padding_side="right")
            cache = model.run(tokens, logits=None, read=list(names)).cache
            real = tokens.mask.bool().to(model.device)
            count += int(real.sum())
            for name in names:
                part = cache[name][real].double().sum(dim=0)  # [batch, pos, ...] -> the real tokens' sum
                sums[name] = sums[name] + part if name in sums else part
        return {name: (total / count).float().cpu() for name, total in sums.items()}

    return model.prepared_source(("reference_means", names, tuple(prompts)), compute)
