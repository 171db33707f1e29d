"""The one batched runner: ``score``, ``effect`` and every sweep run their forwards here.

A *variant* is a list of intervention specs acting at layers ``>= start``. For each chunk
of metric rows the clean forward runs once (keeping what every decoder layer returned);
then the variants are grouped ``copies`` at a time into one batch of ``copies x chunk``
rows, copy ``g`` carrying variant ``g`` (one hook per hook point splits the batch and hands
each copy to its own variant's hook function, so each copy sees exactly the rows a naive
one-variant forward would see), and the forward resumes at layer ``start``.
Memory is bounded by ``batch_size`` rows, whatever the number of variants. ``score()`` is
the case with no variant (the baseline pass only), ``effect()`` the case with one.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from attnlab.engine.forward import Resume
from attnlab.measure._forward import metric_output
from attnlab.measure._rows import Rows
from attnlab.measure._sources import outer_rows
from attnlab.measure.batch_size import metric_batch_size
from attnlab.measure.distributed import current, fingerprint, head_cost_in_layers, model_fingerprint, split_variants

__all__ = ["run_variants"]

Build = Callable[[Any, Any], list]  # (variant key, chunk context) -> specs


def _grouped_hooks(model, spec_lists: Sequence[list], rows_per_copy: int) -> list[tuple[str, Callable]]:
    """One hook per hook point; copy ``g`` of the batch goes through variant ``g``'s hook functions."""
    per_name: dict[str, list[tuple[int, Callable]]] = {}
    for g, specs in enumerate(spec_lists):
        for spec in specs:
            spec.validate(model.cfg)
            for name, fn in spec.prepare(model).hooks():
                per_name.setdefault(name, []).append((g, fn))

    def make(fns):
        def grouped(x, hook):
            parts = list(x.split(rows_per_copy, dim=0))  # [copies x (rows, ...)]
            for g, fn in fns:
                rows = slice(g * rows_per_copy, (g + 1) * rows_per_copy)
                out = fn(parts[g], hook=hook.rows(rows))  # each copy sees its own rows' token positions
                if out is not None:
                    parts[g] = out
            return torch.cat(parts, dim=0)

        return grouped

    return [(name, make(fns)) for name, fns in per_name.items()]


def _repeat_stats(stats: torch.Tensor, times: int) -> torch.Tensor:
    return stats.repeat(times, *([1] * (stats.ndim - 1))) if times > 1 else stats


def _prefix_works(model, part: Rows, metric, clean_out: torch.Tensor, prefix, start: int, base: dict) -> bool:
    """A resumed clean run at ``start`` must reproduce the clean output (checked once per sweep)."""
    resumed = metric_output(model, part, metric, resume=Resume(prefix, start), **base)
    tol = 1e-4 * max(1.0, float(clean_out.abs().max()))
    return resumed.shape == clean_out.shape and bool((resumed - clean_out).abs().max() <= tol)


def _head_layers(model, rows: Rows, metric) -> float:
    """The LM head's cost per row in layers, for balancing work between processes."""
    layers = model.decoder_layers()
    if not layers or metric.output != "logits" or not model.cfg.d_vocab:
        return 0.0 if metric.output != "logits" else 1.0
    layer_params = sum(p.numel() for p in layers[0].parameters())
    tokens = float(rows.lengths.float().mean())
    positions = 1.0 if rows.positions == "read" else tokens
    vocab = metric.vocab(rows)  # the rows of the unembedding the engine computes (a logit difference: two)
    width = model.cfg.d_vocab if vocab is None else int(vocab.numel())
    return head_cost_in_layers(layer_params, width * model.cfg.d_model, tokens, positions)


def _fingerprints(model, metric, variants, build, interventions, precision) -> dict[str, str]:
    """What the processes of a parallel run must agree on besides the rows: the specs, the metric, the model.

    ``build(key, None)`` gives a variant's specs as given (text patch sources as text, before
    any chunk's sources are run), so nothing is computed for the check.
    """
    specs = [(start, build(key, None) if build is not None else key) for start, key in variants]
    always = interventions(None) if callable(interventions) else list(interventions)
    return {"specs": fingerprint((specs, always, precision)), "metric": fingerprint(metric),
            "model": model_fingerprint(model)}


@torch.no_grad()
def run_variants(
    model,
    rows: Rows,
    metric,
    variants: Sequence[tuple[int, Any]],
    build: Build | None = None,
    *,
    batch_size: int | str,
    progress: bool,
    desc: str,
    chunk_setup: Callable[[Rows, slice], Any] | None = None,
    single_chunk: bool = False,
    interventions: Sequence = (),
    precision: torch.dtype | None = None,
    bar: tqdm | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Baseline values ``[prompt]`` and intervened values ``[variant, prompt]`` of ``metric``.

    ``variants``: ``(start layer, key)`` pairs; ``build(key, ctx)`` makes the specs of one
    variant for one chunk (``ctx`` from ``chunk_setup(chunk rows, slice)``, e.g. that chunk's
    patch sources; ``build(key, None)``: the specs as given, fingerprinted in a process
    group). ``interventions`` act in every pass, the baseline included (what
    :func:`attnlab.measure.score` measures; a function of ``ctx`` for specs that differ per chunk, such as
    text patch sources); with no variants only the baseline runs, and a
    metric with several numbers per prompt (``vector``) gives ``[prompt, ...]``. ``precision``:
    every pass's linear layers multiply in that dtype (:mod:`attnlab.engine.precision`).
    ``bar``: a bar to advance by one per forward instead of drawing one (a process's share
    of a parallel run: one bar for all the chunks it holds).
    """
    batch_size = metric_batch_size(model, rows, batch_size, metric)  # "auto": from the device
    outer = outer_rows(model)  # an outer spec's rows=: every row in one batch, no copies stacked under it
    k = rows.per_prompt
    chunk = rows.n_rows if single_chunk or outer else max(k, min(rows.n_rows, batch_size) // k * k)
    copies = 1 if outer else max(1, batch_size // chunk)
    if current().size > 1:  # a process group: the processes share (chunk, batch) units (docs/parallel.md)
        def share(part, mine, size, setup, bar):
            return run_variants(model, part, metric, mine, build, batch_size=size, progress=False, desc=desc,
                                chunk_setup=setup, single_chunk=single_chunk, interventions=interventions,
                                precision=precision, bar=bar)

        return split_variants(share, rows, variants, chunk=chunk, copies=copies, n_layers=model.cfg.n_layers,
                              head_layers=_head_layers(model, rows, metric), chunk_setup=chunk_setup, progress=progress,
                              desc=desc, same=_fingerprints(model, metric, variants, build, interventions, precision))
    layers = model.decoder_layers()
    by_start: dict[int, list[int]] = {}
    for i, (start, _) in enumerate(variants):
        by_start.setdefault(int(start), []).append(i)
    need = {s - 1 for s in by_start if s > 0}
    use_prefix = layers is not None and bool(need)
    if layers is None and need:
        warnings.warn(f"{model.cfg.name}: decoder layers not found; the sweep runs full forwards (slower, same results)")
    def chunk_base(ctx) -> dict:
        specs = interventions(ctx) if callable(interventions) else interventions  # chunk-dependent: text sources
        base = {"interventions": list(specs)} if specs else {}
        if precision is not None:
            base["precision"] = precision
        return base

    n_chunks = -(-rows.n_rows // chunk)
    total = n_chunks * (1 + sum(-(-len(ix) // copies) for ix in by_start.values()))
    clean_rows: list[torch.Tensor] = []
    inter_rows = torch.empty(len(variants), rows.n_rows)
    checked = False
    with nullcontext(bar) if bar is not None else tqdm(total=total, desc=desc, disable=not progress, leave=False) as bar:
        for c0 in range(0, rows.n_rows, chunk):
            sl = slice(c0, c0 + chunk)
            part = rows.select(sl).to(model.device)
            n = part.n_rows
            ctx = chunk_setup(part, sl) if chunk_setup is not None and (variants or callable(interventions)) else None
            base = chunk_base(ctx)
            if use_prefix:
                clean_out, prefix = metric_output(model, part, metric, keep_layers=need, **base)
            else:
                clean_out, prefix = metric_output(model, part, metric, **base), None
            clean = metric.reduce(clean_out, part)
            clean_rows.append(metric.compare(clean, clean, part).float().cpu())
            bar.update(1)
            if use_prefix and not checked:
                checked = True
                if not _prefix_works(model, part, metric, clean_out, prefix, max(by_start), base):
                    use_prefix = False
                    warnings.warn(
                        f"{model.cfg.name}: resuming at a layer does not reproduce the clean output; "
                        "the sweep falls back to full forwards (slower, same results)"
                    )
            del clean_out
            for start, idx in by_start.items():
                for g0 in range(0, len(idx), copies):
                    group = idx[g0 : g0 + copies]
                    r = len(group)
                    hooks = _grouped_hooks(model, [build(variants[i][1], ctx) for i in group], n)
                    big = part.repeat(r)
                    resume = Resume(prefix, start, r) if use_prefix and start > 0 else None
                    out = metric_output(model, big, metric, hooks=hooks, resume=resume, **base)
                    vals = metric.compare(metric.reduce(out, big), _repeat_stats(clean, r), big)
                    inter_rows[group, c0 : c0 + n] = vals.float().cpu().reshape(r, n)
                    bar.update(1)
    per_row = torch.cat(clean_rows)
    clean_v = metric.combine(per_row.reshape(-1, k, *per_row.shape[1:])).double().numpy()
    inter_v = torch.stack([metric.combine(v.reshape(-1, k)) for v in inter_rows]).double().numpy() if len(variants) else np.zeros((0, len(clean_v)))
    return clean_v, inter_v
