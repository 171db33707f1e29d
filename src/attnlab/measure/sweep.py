"""Sweeps: the effect of intervening on every head (or every q/k/v dimension), fast.

``sweep_heads`` ablates (zero / mean / resample) or pattern-patches each head in turn;
``sweep_neurons`` scales each q/k/v dimension of chosen heads; ``sweep_interventions``
runs any labelled list of intervention sets (head sets, layers, per-prompt patches). All
three share one engine (:mod:`attnlab.measure._batched`): layers before the intervened one
run once per prompt chunk and are reused, and several variants share one batch, one per
copy of the prompts. Results equal a naive loop of one ``effect()`` per variant (tests
check <= 1e-4). Every sweep takes ``(model, prompts, metric, what to vary)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from attnlab.engine.precision import check_precision
from attnlab.errors import AttnlabError, InvalidInput, InvalidSpec, check_positive_int, did_you_mean, is_integer
from attnlab.interventions import AblateHead, EditNeuron, Patch
from attnlab.interventions.ablation import head_means
from attnlab.measure._batched import run_variants
from attnlab.measure._forward import check_measurable, check_model
from attnlab.measure._order import metric_third
from attnlab.measure._rows import check_prompts
from attnlab.measure._sources import RowSources, one_batch
from attnlab.measure.batch_size import check_batch_size, metric_batch_size
from attnlab.measure.effect import check_interventions, check_metric
from attnlab.measure.metrics import KL, HiddenShift, Metric
from attnlab.measure.plots import heatmap
from attnlab.measure.result import Result, renamed
from attnlab.measure.stats import bootstrap, check_resampling

__all__ = ["SweepResult", "sweep_heads", "sweep_neurons", "sweep_interventions", "sweep_result", "HEAD_METHODS"]

HEAD_METHODS = ("zero", "mean", "resample", "patch")


@dataclass
class SweepResult(Result):
    """``table``: one row per variant (its location, mean effect, 95% interval, mean clean/intervened values);
    ``per_prompt``: the effect of every variant on every prompt (long format); ``summary``: the
    five variants with the largest absolute effect; ``plot()``: the ``index x columns`` heatmap."""

    table: pd.DataFrame
    per_prompt: pd.DataFrame
    metric: str
    index: str = "layer"  # heatmap rows
    columns: str = "head"  # heatmap columns
    meta: dict = field(default_factory=dict)

    @property
    def summary(self) -> pd.DataFrame:
        return self.top(5)

    def matrix(self) -> pd.DataFrame:
        """Mean effects as an ``index x columns`` table (layer x head for head sweeps)."""
        return self.table.pivot_table(index=self.index, columns=self.columns, values="effect", aggfunc="mean")

    def top(self, k: int = 10) -> pd.DataFrame:
        """The ``k`` variants with the largest absolute mean effect."""
        k = check_top(k)
        order = self.table["effect"].abs().sort_values(ascending=False).index
        return self.table.loc[order[:k]].reset_index(drop=True)

    def plot(self, ax=None, *, title: str | None = None, cmap: str = "RdBu_r"):
        """A matplotlib Figure of the mean effect, ``index x columns``, colour centred on 0."""
        return heatmap(self.matrix(), title=title or f"{self.meta.get('what', 'sweep')}: effect on {self.metric}",
                       label=f"{self.metric} (intervened - clean)", ax=ax, cmap=cmap)

    heatmap = renamed("plot")

    def __repr__(self) -> str:
        best = self.top(1)
        where = ", ".join(f"{c}={best[c].iloc[0]}" for c in self.table.columns if c in ("layer", "head", "site", "dim", "variant"))
        return (
            f"SweepResult({self.meta.get('what', 'sweep')} on {self.metric}: {len(self.table)} variants x "
            f"{self.meta.get('n_prompts', '?')} prompts; largest |effect| {best['effect'].iloc[0]:.4g} at {where})"
        )


def check_top(k) -> int:
    """``k`` of ``top(k)``: a positive integer (``table.loc[order[:-1]]`` would be every row but one, silently)."""
    check_positive_int(k, "k", hint=" (how many rows to keep)")
    return int(k)


def _index_list(values, valid: int, what: str, check) -> list[int]:
    if values is None:
        return list(range(valid))
    if is_integer(values):
        items = [values]
    else:
        try:
            items = list(values)
        except TypeError:
            raise InvalidInput(f"{what} must be None (all), an int or a list of ints, got {values!r}") from None
    if not items:
        raise InvalidInput(f"{what} must be None (all) or a non-empty list")
    return [check(v) for v in items]


def _default_metric(model, metric) -> Metric:
    if metric is None:
        return KL() if model.cfg.has_lm_head else HiddenShift()
    metric = check_metric(metric)
    if metric.generation:
        raise InvalidInput(f"{metric.name} generates text per variant and cannot be swept; use effect() for it")
    return metric


def sweep_result(keys: pd.DataFrame, prompts, clean, inter, metric, n_boot, seed, *, index, columns, meta) -> SweepResult:
    """A :class:`SweepResult` from clean values ``[prompt]`` and intervened values ``[unit, prompt]`` (exact or estimated)."""
    eff = inter - clean[None, :]  # [variant, prompt]
    mean, low, high = bootstrap(eff, n_boot=n_boot, seed=seed)
    table = keys.copy()
    table["effect"], table["ci_low"], table["ci_high"] = mean, low, high
    table["clean"] = float(np.nanmean(clean))
    table["intervened"] = np.nanmean(inter, axis=1)
    n_var, n_p = eff.shape
    long = keys.loc[np.repeat(np.arange(n_var), n_p)].reset_index(drop=True)
    long["prompt"] = list(prompts) * n_var
    long["clean"] = np.tile(clean, n_var)
    long["intervened"] = inter.reshape(-1)
    long["effect"] = eff.reshape(-1)
    meta = {"n_prompts": n_p, **meta}
    return SweepResult(table, long, metric.name, index=index, columns=columns, meta=meta)


def _precision_meta(precision: torch.dtype | None) -> dict:
    """``{"precision": "bfloat16"}`` for a reduced-precision sweep, nothing for a full-precision one."""
    return {} if precision is None else {"precision": str(precision).removeprefix("torch.")}


def _run_specs(model, prompts, rows, metric, variants: dict, *, batch_size, progress, desc, single=False, precision=None):
    """Clean ``[prompt]`` and intervened ``[variant, prompt]`` values of labelled spec lists.

    Patches whose source is one text per prompt follow their prompts chunk by chunk
    (:class:`RowSources`); each variant resumes at its lowest layer.
    """
    batch_size = metric_batch_size(model, rows, batch_size, metric)  # "auto": from the device
    sources = RowSources(model, metric, prompts, rows, [sp for specs in variants.values() for sp in specs])
    keyed = [(min(sp.layer for sp in specs), label) for label, specs in variants.items()]
    clean, inter = run_variants(
        model, rows, metric, keyed, lambda label, ctx: sources.build(variants[label], ctx),
        batch_size=batch_size, progress=progress, desc=desc, chunk_setup=sources.setup if sources else None,
        single_chunk=single, precision=precision,
    )
    return keyed, clean, inter


@metric_third(("method", "metric"), lambda args, kwargs: isinstance(args[0], str),
              "sweep_heads(model, prompts, metric, method)")
@torch.no_grad()
def sweep_heads(
    model,
    prompts: Sequence[str],
    metric: Metric | None = None,
    method: str = "zero",
    *,
    counterfactuals: Sequence[str] | None = None,
    reference: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    seed: int = 0,
    batch_size: int | str = "auto",
    n_boot: int = 1000,
    progress: bool = True,
    precision: str | torch.dtype | None = None,
) -> SweepResult:
    """Effect on ``metric`` of intervening on each head alone.

    >>> from attnlab.testing import tiny_model
    >>> from attnlab.measure import LogitDiff, sweep_heads
    >>> res = sweep_heads(tiny_model("llama"), ["the nurse said that"], LogitDiff(" she", " he"), "zero", progress=False)
    >>> res.table[["layer", "head"]].shape
    (8, 2)

    ``method``: ``"zero"``, ``"mean"`` (the head's mean output over ``reference``, default
    the prompts), ``"resample"`` (its output on a random ``reference`` prompt, drawn with
    ``seed`` and the prompt's number, whatever the chunking) or ``"patch"`` (its attention pattern on the matching
    ``counterfactuals`` prompt, which must have the same number of tokens). ``metric``
    defaults to :class:`KL` (:class:`HiddenShift` for encoders). ``batch_size`` bounds the
    rows of one forward pass. ``precision="bfloat16"``: the blocks' linear layers multiply in
    bfloat16 (1.6-2.6x faster on CPUs with bfloat16 units; effects move by 1-4% of the
    largest, measured in ``docs/sweeps.md``), for a first pass before an exact one.
    (The previous order ``sweep_heads(model, prompts, method, metric)`` still works, with a
    ``DeprecationWarning``.)
    """
    check_model(model)
    precision = check_precision(precision)
    n_boot, seed = check_resampling(n_boot, seed)
    metric = _default_metric(model, metric)
    prompts = check_prompts(prompts)
    check_batch_size(batch_size)
    if method not in HEAD_METHODS:
        raise InvalidSpec(f"unknown method {method!r}{did_you_mean(method, HEAD_METHODS)} (valid: {', '.join(HEAD_METHODS)})")
    layer_list = _index_list(layers, model.cfg.n_layers, "layers", model.check_layer)
    head_list = _index_list(heads, model.cfg.n_heads, "heads", model.check_head)
    check_measurable(model, metric)
    if method == "patch" and counterfactuals is None:
        raise InvalidInput("method='patch' needs counterfactuals=[...], one prompt per prompt, whose patterns are patched in")
    if method != "patch" and counterfactuals is not None:
        raise InvalidInput(f"counterfactuals= is only used by method='patch', not {method!r}")
    if method not in ("mean", "resample") and reference is not None:  # ignored, it would leave a zero ablation unnoticed
        raise InvalidInput(f"reference= is only used by method='mean' or method='resample', not {method!r}")
    try:
        rows = metric.rows(model, prompts)
        make = _head_spec(model, prompts, method, counterfactuals, reference, seed, layer_list)
        variants = {(layer, head): [make(layer, head)] for layer in layer_list for head in head_list}
        _, clean, inter = _run_specs(model, prompts, rows, metric, variants, batch_size=batch_size, progress=progress,
                                     desc=f"sweep heads ({method})", precision=precision)
    except AttnlabError as err:
        raise type(err)(f"while sweeping heads ({method}) of {model.cfg.name}: {err}") from None
    keys = pd.DataFrame([{"layer": layer, "head": head} for layer, head in variants])
    return sweep_result(keys, prompts, clean, inter, metric, n_boot, seed, index="layer", columns="head",
                   meta={"what": f"{method} ablation" if method != "patch" else "pattern patching", "method": method,
                         **_precision_meta(precision)})


def _head_spec(model, prompts, method, counterfactuals, reference, seed, layer_list):
    """``make(layer, head)``: the one spec of the variant that intervenes on that head."""
    if method == "zero":
        return lambda layer, head: AblateHead(layer, head)
    if method == "mean":
        ref = check_prompts(reference) if reference is not None else prompts
        means = {layer: head_means(model, layer, ref) for layer in layer_list}
        return lambda layer, head: AblateHead(layer, head, method="mean", mean=means[layer])
    if method == "resample":  # the model caches each layer's reference run, so it runs once per layer
        if reference is None and len(prompts) == 1:  # the prompt would be its own reference: every effect 0
            raise InvalidInput("method='resample' replaces each head's output with its output on a random reference "
                               "prompt, but without reference= the one prompt is the only reference, so nothing would "
                               "change (every effect 0); give reference=[...] (attnlab sweep: --reference FILE) or "
                               "more prompts")
        ref = check_prompts(reference) if reference is not None else prompts
        return lambda layer, head: AblateHead(layer, head, method="resample", reference=ref, seed=seed)
    cf = check_prompts(counterfactuals)  # pattern patching: one counterfactual per prompt, run chunk by chunk
    if len(cf) != len(prompts):
        raise InvalidInput(f"mismatched prompt pairs: {len(prompts)} prompts but {len(cf)} counterfactuals")
    return lambda layer, head: Patch(layer, head, site="pattern", source=cf)


def _neurons_is_old(args, kwargs) -> bool:
    """sweep_neurons(model, prompts, layer, head): a layer number where the metric goes."""
    return is_integer(args[0])  # numpy's too: a layer read from a result table is numpy.int64


@metric_third(("layer", "head"), _neurons_is_old, "sweep_neurons(model, prompts, metric, layer, head)")
@torch.no_grad()
def sweep_neurons(
    model,
    prompts: Sequence[str],
    metric: Metric | None = None,
    layer: int | None = None,
    head: int | Sequence[int] | None = None,
    *,
    site: str = "q",
    dims: Sequence[int] | None = None,
    scale: float | None = None,
    value: float | None = None,
    batch_size: int | str = "auto",
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = True,
    precision: str | torch.dtype | None = None,
) -> SweepResult:
    """Effect on ``metric`` of scaling (default: zeroing) each q/k/v dimension of chosen heads of ``layer``.

    ``scale=`` multiplies each dimension, ``value=`` sets it instead; give at most one.
    ``scale`` defaults to None, read as 0.0 only when ``value`` is not given, so that
    ``value=`` alone sets the dimension rather than clashing with a default scale.

    >>> from attnlab.testing import tiny_model
    >>> from attnlab.measure import KL, sweep_neurons
    >>> res = sweep_neurons(tiny_model("gemma3"), ["the nurse said that"], KL(), 2, 0, site="k", progress=False)
    >>> len(res.table)  # one row per dimension of head 2.0's key
    8

    ``precision``: as for :func:`sweep_heads`. (The previous order ``sweep_neurons(model,
    prompts, layer, head, metric=...)`` still works, with a ``DeprecationWarning``.)
    """
    check_model(model)
    precision = check_precision(precision)
    n_boot, seed = check_resampling(n_boot, seed)
    if layer is None:
        raise InvalidInput("sweep_neurons needs the layer whose heads' dimensions are swept: sweep_neurons(model, prompts, metric, layer)")
    metric = _default_metric(model, metric)
    prompts = check_prompts(prompts)
    check_batch_size(batch_size)
    layer = model.check_layer(layer)
    if scale is not None and value is not None:
        raise InvalidSpec(f"sweep_neurons takes scale= (multiply) or value= (set), not both; got scale={scale!r} and value={value!r}")
    if value is None and scale is None:
        scale = 0.0
    n_heads = model.cfg.n_kv_heads if site == "k_pre_norm" else model.cfg.n_heads  # one key per kv head there
    head_list = _index_list(head, n_heads, "head", model.check_head)
    # validate site / scale / dims / heads once, with the spec's own messages
    for h in head_list[1:]:
        EditNeuron(layer, h, site=site, dim=0, scale=scale, value=value).validate(model.cfg)
    probe = EditNeuron(layer, head_list[0], site=site, dim=0, scale=scale, value=value)
    dim_list = _index_list(dims, model.cfg.d_head, "dims", lambda d: int(d) if is_integer(d) else d)
    for d in dim_list:
        EditNeuron(layer, head_list[0], site=site, dim=d, scale=scale, value=value).validate(model.cfg)
    probe.validate(model.cfg)
    check_measurable(model, metric)
    try:
        rows = metric.rows(model, prompts)
        variants = {(h, d): [EditNeuron(layer, h, site=site, dim=d, scale=scale, value=value)] for h in head_list for d in dim_list}
        _, clean, inter = _run_specs(model, prompts, rows, metric, variants, batch_size=batch_size, progress=progress,
                                     desc=f"sweep {site} dims of layer {layer}", precision=precision)
    except AttnlabError as err:
        raise type(err)(f"while sweeping {site} dimensions of layer {layer} of {model.cfg.name}: {err}") from None
    keys = pd.DataFrame([{"layer": layer, "head": h, "site": site, "dim": d} for h, d in variants])
    edit = f"scale {scale}" if value is None else f"set to {value}"
    return sweep_result(keys, prompts, clean, inter, metric, n_boot, seed, index="head", columns="dim",
                   meta={"what": f"{site} dims ({edit})", "layer": layer, "site": site, **_precision_meta(precision)})


def _interventions_is_old(args, kwargs) -> bool:
    """sweep_interventions(model, prompts, variants, metric): the variants where the metric goes."""
    return isinstance(args[0], (Mapping, list, tuple))


@metric_third(("variants", "metric"), _interventions_is_old, "sweep_interventions(model, prompts, metric, variants)")
@torch.no_grad()
def sweep_interventions(
    model,
    prompts: Sequence[str],
    metric: Metric | None = None,
    variants: Mapping[str, Sequence] | Sequence[Sequence] | None = None,
    *,
    batch_size: int | str = "auto",
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = True,
    precision: str | torch.dtype | None = None,
) -> SweepResult:
    """Effect of each labelled set of interventions (e.g. head sets, layers), batched like the sweeps.

    ``variants``: ``{label: [spec, ...]}`` (or a list of spec lists, labelled 0, 1, ...).
    A ``Patch`` whose source is one text per prompt (a counterfactual per prompt) follows
    its prompts chunk by chunk, like ``sweep_heads(..., "patch")``. Other specs tied to
    batch rows (``rows=``, source tensors with one row per prompt) make the whole prompt
    list one chunk, so ``batch_size`` must then be at least the number of rows.

    >>> from attnlab.testing import tiny_model
    >>> from attnlab.interventions import AblateHead
    >>> from attnlab.measure import KL, sweep_interventions
    >>> model = tiny_model("gpt2")
    >>> res = sweep_interventions(model, ["the nurse said that"], KL(), {"layer 0": [AblateHead(0)], "layer 1": [AblateHead(1)]},
    ...                           progress=False)
    >>> list(res.table["variant"])
    ['layer 0', 'layer 1']

    ``precision``: as for :func:`sweep_heads`. (The previous order
    ``sweep_interventions(model, prompts, variants, metric)`` still works, with a ``DeprecationWarning``.)
    """
    check_model(model)
    precision = check_precision(precision)
    n_boot, seed = check_resampling(n_boot, seed)
    metric = _default_metric(model, metric)
    prompts = check_prompts(prompts)
    check_batch_size(batch_size)
    if variants is None:
        raise InvalidInput("no variants given: pass {label: [spec, ...]} with at least one entry")
    items = list(variants.items()) if isinstance(variants, Mapping) else list(enumerate(variants))
    if not items:
        raise InvalidInput("no variants given: pass {label: [spec, ...]} with at least one entry")
    specs = {label: check_interventions(model, s) for label, s in items}
    if any(not s for s in specs.values()):
        raise InvalidInput("every variant needs at least one intervention spec")
    check_measurable(model, metric)
    try:
        rows = metric.rows(model, prompts)
        single = one_batch([sp for s in specs.values() for sp in s], len(prompts))
        if single and batch_size == "auto":  # rows tied to the batch: all of them in one batch
            batch_size = max(metric_batch_size(model, rows, batch_size, metric), rows.n_rows)
        if single and rows.n_rows > batch_size:
            raise InvalidInput(
                f"interventions tied to batch rows need all {rows.n_rows} rows in one batch; pass batch_size >= {rows.n_rows}"
            )
        keyed, clean, inter = _run_specs(model, prompts, rows, metric, specs, batch_size=batch_size, progress=progress,
                                         desc="sweep interventions", single=single, precision=precision)
    except AttnlabError as err:
        raise type(err)(f"while sweeping interventions on {model.cfg.name}: {err}") from None
    keys = pd.DataFrame({"variant": [label for label, _ in items], "layer": [k[0] for k in keyed]})
    keys["index"] = "all"
    return sweep_result(keys, prompts, clean, inter, metric, n_boot, seed, index="index", columns="variant",
                   meta={"what": "interventions", **_precision_meta(precision)})
