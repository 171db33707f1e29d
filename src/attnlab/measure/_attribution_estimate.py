"""The estimating loop of :func:`attnlab.measure.attribute`: chunks of rows, passes, corrections.

For each chunk of metric rows: the patched values ``a'`` (0, the mean, or the counterfactual
run), one grad-enabled forward, then one backward per direction for the plain estimate and,
with GradDrop, one (partial) backward per dropped layer. Estimates are summed over each
prompt's rows and written into ``[unit, position, prompt]`` arrays.
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Bool
from tqdm.auto import tqdm

from attnlab.engine.locations import hook_name
from attnlab.errors import UnsupportedModel
from attnlab.interventions.reference_means import real_token_sum
from attnlab.measure._attribution_grad import GradForward, grad_forward
from attnlab.measure._attribution_qk import check_scores_are_dot_products, qk_fixed, rotary_coefficients
from attnlab.measure._attribution_units import Units, site_values
from attnlab.measure._rows import Rows

__all__ = ["estimate", "forward_means"]


def estimate(model, rows: Rows, cf_rows, metric, units: Units, method, means, correction, probes, batch_size, seed,
             progress, *, precision: torch.dtype | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Clean values ``[prompt]``, estimates ``[unit, position, prompt]`` and GradDrop scores (same shape).

    ``precision``: the precision of the blocks' linear layers in every pass (None: the model's own).
    ``means`` None with ``method="mean"``: the rows are the reference prompts themselves, run
    unedited, all in one chunk, so the grad-enabled forward's own activations give the means
    (see :func:`forward_means`) and no separate pass over the references is needed.
    """
    qk = correction in ("qk", "atp*") and units.site in ("q", "k", "q_pre_rotary", "k_pre_rotary")
    graddrop = correction in ("graddrop", "atp*")
    k = rows.per_prompt
    chunk = max(k, batch_size // k * k)
    if method == "mean" and means is None and rows.n_rows > chunk:
        raise ValueError(f"means from the forward need every row in one chunk ({rows.n_rows} rows > {chunk})")
    width = rows.tokens.ids.shape[1] if units.per_position else 1
    n_units = units.per_layer * len(units.layers)
    est = np.zeros((n_units, width, rows.n_prompts))  # a position a prompt does not have: no effect, as in the exact sweeps
    drop = np.zeros_like(est) if graddrop else None
    clean = np.empty(rows.n_prompts)
    own = {l: units.name(l) for l in units.layers}
    extra = {l: {s: hook_name(l, s) for s in ("q", "k", "attn_scores", "pattern")} for l in units.layers} if qk else {}
    capture = list(own.values()) + [n for l in extra for n in extra[l].values() if n not in own.values()]
    grad_name = {l: (extra[l]["pattern"] if qk else own[l]) for l in units.layers}
    checked = False
    n_layers = model.cfg.n_layers
    unit_layer = torch.tensor(np.repeat(units.layers, units.per_layer), dtype=torch.float32)
    passes = 1 + (n_layers - 1 if graddrop else 0)
    with tqdm(total=-(-rows.n_rows // chunk) * passes, desc=f"attribute {units.site} ({method})", disable=not progress,
              leave=False) as bar:
        for c0 in range(0, rows.n_rows, chunk):
            part = rows.select(slice(c0, c0 + chunk)).to(model.device)
            cf_part = cf_rows.select(slice(c0, c0 + chunk)) if cf_rows is not None else None
            fwd = grad_forward(model, part, metric, capture, graddrop=graddrop, probes=probes, seed=seed,
                               precision=precision)
            if qk and not checked:
                _check_qk(model, fwd, extra, precision)
                checked = True
            valid = part.tokens.mask.bool()
            if method == "mean" and means is None:  # the rows are the reference prompts, unedited, in this one chunk
                means = forward_means(units, fwd.acts, valid)
            targets = _targets(model, units, part, method, means, cf_part, precision)
            layer_est = _layer_estimator(model, units, fwd, targets, valid, own, extra, qk)
            grads = fwd.gradients([grad_name[l] for l in units.layers])
            plain = _one_pass(fwd, grads, units.layers, layer_est, k)  # [prompt, unit, pos]
            bar.update(1)
            p0, p1 = c0 // k, c0 // k + plain.shape[0]
            clean[p0:p1] = fwd.values.numpy()
            _store(est, plain, p0)
            if graddrop:
                score = plain.abs() * unit_layer[None, :, None]  # passes dropping a layer before the unit: unchanged
                for dropped in range(1, n_layers):
                    below = [l for l in units.layers if l < dropped]
                    if below:
                        grads = fwd.dropped_gradients(dropped, [grad_name[l] for l in below])
                        part_est = _one_pass(fwd, grads, below, layer_est, k)
                        score[:, : part_est.shape[1]] += part_est.abs()
                    bar.update(1)
                _store(drop, score / (n_layers - 1), p0)
            del fwd
    return clean, est, drop


def forward_means(units: Units, acts: dict[str, torch.Tensor], valid: Bool[torch.Tensor, "row pos"]) -> dict:
    """``{(site, layer): mean over the real tokens}`` of the captured activations (float64 sums, float32 result).

    The same average as :func:`attnlab.interventions.reference_means` when the rows are the
    reference prompts and the forward is unedited; in a reduced ``precision`` it is the
    average of that precision's activations.
    """
    out = {}
    for layer in units.layers:
        act = acts[units.name(layer)].detach()
        out[(units.site, layer)] = (real_token_sum(act, valid) / int(valid.sum())).float().cpu()
    return out


def _store(out: np.ndarray, values: torch.Tensor, p0: int) -> None:
    """Write ``[prompt, unit, pos]`` chunk values into ``out[unit, position, prompt]``."""
    vals = values.permute(1, 2, 0).double()  # [unit, pos, prompt]; padding positions are already 0
    out[:, : vals.shape[1], p0 : p0 + vals.shape[2]] = vals.numpy()


def _targets(model, units: Units, part: Rows, method: str, means: dict, cf_part: Rows | None,
             precision: torch.dtype | None) -> dict[int, torch.Tensor]:
    """``a'`` per layer: 0, the mean (broadcast over batch and position) or the counterfactual values."""
    if method == "zero":
        return {l: torch.zeros((), device=model.device) for l in units.layers}
    if method == "mean":
        return {l: means[(units.site, l)].to(model.device)[None, None] for l in units.layers}
    values = site_values(model, units, cf_part.to(model.device), precision=precision)
    return {l: values[units.name(l)] for l in units.layers}


def _layer_estimator(model, units: Units, fwd: GradForward, targets, valid, own, extra, qk: bool):
    """``estimate(layer, grads) -> [row, unit, pos]`` for one layer's units."""
    scaling = model.cfg.scaling

    @torch.no_grad()
    def estimate(layer: int, grads: dict[str, torch.Tensor]) -> torch.Tensor:
        act = fwd.acts[own[layer]]
        if not qk:
            return units.linear(act, grads[own[layer]], targets[layer], valid)
        names = extra[layer]
        delta = targets[layer].float() - act.detach().float()
        rotary = fwd.rotary.get(own[layer])  # pre-rotary units of a rotary layer: delta is before the rotation
        rotation = None if rotary is None else rotary_coefficients(*rotary, act.shape[-1])
        return qk_fixed(
            units.site.removesuffix("_pre_rotary"), fwd.acts[names["q"]].detach(), fwd.acts[names["k"]].detach(), delta.expand_as(act),
            fwd.acts[names["attn_scores"]].detach(), grads[names["pattern"]], valid, list(units.heads), list(units.dims),
            scaling, units.per_position, rotation,
        )

    return estimate


def _one_pass(fwd: GradForward, gradients, layers, estimate, k: int) -> torch.Tensor:
    """Estimates ``[prompt, unit, pos]`` of the units in ``layers`` from one gradient per direction."""
    per_direction = []
    for grads in gradients:
        rows = torch.cat([estimate(l, grads) for l in layers], dim=1)  # [row, unit, pos]
        per_direction.append(rows.reshape(-1, k, *rows.shape[1:]).sum(dim=1).float().cpu())
    if fwd.second_order:  # KL: 1/2 E[(w . dl)^2] over the probes
        return 0.5 * torch.stack(per_direction).pow(2).mean(dim=0)
    return per_direction[0]


def _check_qk(model, fwd: GradForward, extra, precision: torch.dtype | None) -> None:
    # scores made from rounded products differ from q.k recomputed in float32 by the rounding (bfloat16: 2**-8 relative)
    tolerance = 1e-3 if precision is None else 3e-2
    for layer, names in extra.items():
        gap = check_scores_are_dot_products(fwd.acts[names["q"]].detach(), fwd.acts[names["k"]].detach(),
                                            fwd.acts[names["attn_scores"]].detach(), model.cfg.scaling)
        if gap > tolerance:
            raise UnsupportedModel(
                f"the QK fix recomputes scores as q.k * {model.cfg.scaling:.4g}, but layer {layer}'s scores differ from that "
                f"by {gap:.2g} (relative; e.g. logit soft-capping); use correction=None or 'graddrop'"
            )
