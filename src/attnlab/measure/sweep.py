"""Sweeps: the effect of intervening on every head (or every q/k/v dimension), fast.

``sweep_heads`` ablates (zero / mean / resample) or pattern-patches each head in turn;
``sweep_neurons`` scales each q/k/v dimension of chosen heads; ``sweep_interventions``
runs any labelled list of intervention sets. All three share one engine
(:mod:`attnlab.measure._batched`): layers before the intervened one run once per prompt
chunk and are reused, and several variants share one batch, one per copy of the prompts.
Results equal a naive loop of one ``effect()`` per variant (tests check <= 1e-4).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from attnlab.engine.forward import run
from attnlab.engine.locations import hook_name
from attnlab.errors import AttnlabError, InvalidInput, InvalidSpec, did_you_mean
from attnlab.interventions import AblateHead, EditNeuron, Patch, head_means
from attnlab.measure._batched import run_variants
from attnlab.measure._rows import check_prompts
from attnlab.measure._stats import bootstrap_mean
from attnlab.measure.batch_size import check_batch_size, resolve_batch_size
from attnlab.measure.effect import _addresses_rows, _metric, check_interventions
from attnlab.measure.metrics import KL, HiddenShift, Metric

__all__ = ["SweepResult", "sweep_heads", "sweep_neurons", "sweep_interventions", "HEAD_METHODS"]

HEAD_METHODS = ("zero", "mean", "resample", "patch")


@dataclass
class SweepResult:
    """``table``: one row per variant (its location, mean effect, 95% interval, mean clean/intervened values);
    ``per_prompt``: the effect of every variant on every prompt (long format)."""

    table: pd.DataFrame
    per_prompt: pd.DataFrame
    metric: str
    index: str = "layer"  # heatmap rows
    columns: str = "head"  # heatmap columns
    meta: dict = field(default_factory=dict)

    def matrix(self) -> pd.DataFrame:
        """Mean effects as an ``index x columns`` table (layer x head for head sweeps)."""
        return self.table.pivot_table(index=self.index, columns=self.columns, values="effect", aggfunc="mean")

    def top(self, k: int = 10) -> pd.DataFrame:
        """The ``k`` variants with the largest absolute mean effect."""
        order = self.table["effect"].abs().sort_values(ascending=False).index
        return self.table.loc[order[:k]].reset_index(drop=True)

    def heatmap(self, *, title: str | None = None, cmap: str = "RdBu_r"):
        """A matplotlib Figure of the mean effect, ``index x columns``, colour centred on 0."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure

        mat = self.matrix()
        values = mat.to_numpy(dtype=float)
        lim = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
        lim = lim or 1.0
        fig = Figure(figsize=(1.2 + 0.45 * max(4, values.shape[1]), 1.0 + 0.32 * max(4, values.shape[0])))
        ax = fig.add_subplot()
        im = ax.imshow(values, cmap=cmap, vmin=-lim, vmax=lim, aspect="auto")
        ax.set_xticks(range(values.shape[1]), [str(c) for c in mat.columns])
        ax.set_yticks(range(values.shape[0]), [str(i) for i in mat.index])
        ax.set_xlabel(self.columns)
        ax.set_ylabel(self.index)
        ax.set_title(title or f"{self.meta.get('what', 'sweep')}: effect on {self.metric}")
        fig.colorbar(im, ax=ax, label=f"{self.metric} (intervened - clean)")
        fig.tight_layout()
        return fig

    def __repr__(self) -> str:
        best = self.top(1)
        where = ", ".join(f"{c}={best[c].iloc[0]}" for c in self.table.columns if c in ("layer", "head", "site", "dim", "variant"))
        return (
            f"SweepResult({self.meta.get('what', 'sweep')} on {self.metric}: {len(self.table)} variants x "
            f"{self.meta.get('n_prompts', '?')} prompts; largest |effect| {best['effect'].iloc[0]:.4g} at {where})"
        )


def _index_list(values, valid: int, what: str, check) -> list[int]:
    if values is None:
        return list(range(valid))
    items = [values] if isinstance(values, int) else list(values)
    if not items:
        raise InvalidInput(f"{what} must be None (all) or a non-empty list")
    return [check(v) for v in items]


def _default_metric(model, metric) -> Metric:
    if metric is None:
        return KL() if model.cfg.has_lm_head else HiddenShift()
    metric = _metric(metric)
    if metric.generation:
        raise InvalidInput(f"{metric.name} generates text per variant and cannot be swept; use effect() for it")
    return metric


def _result(keys: pd.DataFrame, prompts, clean, inter, metric, n_boot, seed, *, index, columns, meta) -> SweepResult:
    eff = inter - clean[None, :]  # [variant, prompt]
    mean, low, high = bootstrap_mean(eff, n_boot=n_boot, seed=seed)
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


@torch.no_grad()
def sweep_heads(
    model,
    prompts: Sequence[str],
    method: str = "zero",
    metric: Metric | None = None,
    *,
    counterfactuals: Sequence[str] | None = None,
    reference: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    seed: int = 0,
    batch_size: int | str = "auto",
    n_boot: int = 1000,
    progress: bool = True,
) -> SweepResult:
    """Effect on ``metric`` of intervening on each head alone.

    >>> from attnlab.testing import tiny_model
    >>> from attnlab.measure import LogitDiff, sweep_heads
    >>> res = sweep_heads(tiny_model("llama"), ["the nurse said that"], "zero", LogitDiff(" she", " he"), progress=False)
    >>> res.table[["layer", "head"]].shape
    (8, 2)

    ``method``: ``"zero"``, ``"mean"`` (the head's mean output over ``reference``, default
    the prompts), ``"resample"`` (its output on a random ``reference`` prompt, drawn with
    ``seed`` per chunk of rows) or ``"patch"`` (its attention pattern on the matching
    ``counterfactuals`` prompt, which must have the same number of tokens). ``metric``
    defaults to :class:`KL` (:class:`HiddenShift` for encoders). ``batch_size`` bounds the
    rows of one forward pass; ``"auto"`` picks it from the device (64 on CPUs, from free
    memory on GPUs: :mod:`attnlab.measure.batch_size`).
    """
    metric = _default_metric(model, metric)
    prompts = check_prompts(prompts)
    check_batch_size(batch_size)
    if method not in HEAD_METHODS:
        raise InvalidSpec(f"unknown method {method!r}{did_you_mean(method, HEAD_METHODS)} (valid: {', '.join(HEAD_METHODS)})")
    layer_list = _index_list(layers, model.cfg.n_layers, "layers", model.check_layer)
    head_list = _index_list(heads, model.cfg.n_heads, "heads", model.check_head)
    metric.check_model(model)
    if method == "patch" and counterfactuals is None:
        raise InvalidInput("method='patch' needs counterfactuals=[...], one prompt per prompt, whose patterns are patched in")
    if method != "patch" and counterfactuals is not None:
        raise InvalidInput(f"counterfactuals= is only used by method='patch', not {method!r}")
    try:
        rows = metric.rows(model, prompts)
        batch_size = resolve_batch_size(model, rows, batch_size, metric.output)
        chunk_setup, build = _head_builders(model, prompts, rows, method, metric, counterfactuals, reference, seed, layer_list)
        variants = [(layer, (layer, head)) for layer in layer_list for head in head_list]
        clean, inter = run_variants(model, rows, metric, variants, build, batch_size=batch_size, progress=progress,
                                    desc=f"sweep heads ({method})", chunk_setup=chunk_setup)
    except AttnlabError as err:
        raise type(err)(f"while sweeping heads ({method}) of {model.cfg.name}: {err}") from None
    keys = pd.DataFrame([{"layer": l, "head": h} for _, (l, h) in variants])
    return _result(keys, prompts, clean, inter, metric, n_boot, seed, index="layer", columns="head",
                   meta={"what": f"{method} ablation" if method != "patch" else "pattern patching", "method": method})


def _head_builders(model, prompts, rows, method, metric, counterfactuals, reference, seed, layer_list):
    """``(chunk_setup, build)`` making the one spec of variant (layer, head) for a chunk."""
    if method == "zero":
        return None, lambda key, ctx: [AblateHead(key[0], key[1])]
    if method == "mean":
        ref = check_prompts(reference) if reference is not None else prompts
        means = {layer: head_means(model, layer, ref) for layer in layer_list}
        return None, lambda key, ctx: [AblateHead(key[0], key[1], method="mean", mean=means[key[0]])]
    if method == "resample":  # the model caches each layer's reference run, so it runs once per layer
        ref = check_prompts(reference) if reference is not None else prompts
        return None, lambda key, ctx: [AblateHead(key[0], key[1], method="resample", reference=ref, seed=seed)]
    # pattern patching from counterfactual prompts
    cf = check_prompts(counterfactuals)
    if len(cf) != len(prompts):
        raise InvalidInput(f"mismatched prompt pairs: {len(prompts)} prompts but {len(cf)} counterfactuals")
    cf_rows = metric.rows(model, cf)
    bad = (cf_rows.lengths != rows.lengths).nonzero()
    if len(bad):
        i = int(bad[0, 0]) // rows.per_prompt
        raise InvalidInput(
            f"mismatched prompt pair {i}: {prompts[i]!r} has {int(rows.lengths[bad[0, 0]])} tokens but counterfactual "
            f"{cf[i]!r} has {int(cf_rows.lengths[bad[0, 0]])}; patterns can only be patched between equal lengths"
        )
    names = [hook_name(layer, "pattern") for layer in layer_list]

    def setup(part, sl):
        src = cf_rows.select(sl)
        with model.clean():
            cache = run(model, src.tokens, logits=None, read=names).cache
        return {layer: cache[name] for layer, name in zip(layer_list, names)}

    return setup, lambda key, ctx: [Patch(key[0], key[1], site="pattern", source=ctx[key[0]])]


@torch.no_grad()
def sweep_neurons(
    model,
    prompts: Sequence[str],
    layer: int,
    head: int | Sequence[int] | None = None,
    *,
    site: str = "q",
    dims: Sequence[int] | None = None,
    scale: float | None = 0.0,
    value: float | None = None,
    metric: Metric | None = None,
    batch_size: int | str = "auto",
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = True,
) -> SweepResult:
    """Effect on ``metric`` of scaling (default: zeroing) each q/k/v dimension of chosen heads.

    >>> from attnlab.testing import tiny_model
    >>> from attnlab.measure import KL, sweep_neurons
    >>> res = sweep_neurons(tiny_model("gemma3"), ["the nurse said that"], 2, 0, site="k", metric=KL(), progress=False)
    >>> len(res.table)  # one row per dimension of head 2.0's key
    8
    """
    metric = _default_metric(model, metric)
    prompts = check_prompts(prompts)
    check_batch_size(batch_size)
    model.check_layer(layer)
    head_list = _index_list(head, model.cfg.n_heads, "head", model.check_head)
    # validate site / scale / dims once, with the spec's own messages
    probe = EditNeuron(layer, head_list[0], site=site, dim=0, scale=scale, value=value)
    dim_list = _index_list(dims, model.cfg.d_head, "dims", lambda d: d)
    for d in dim_list:
        EditNeuron(layer, head_list[0], site=site, dim=d, scale=scale, value=value).validate(model.cfg)
    probe.validate(model.cfg)
    metric.check_model(model)
    try:
        rows = metric.rows(model, prompts)
        batch_size = resolve_batch_size(model, rows, batch_size, metric.output)
        variants = [(layer, (h, d)) for h in head_list for d in dim_list]
        clean, inter = run_variants(
            model, rows, metric, variants,
            lambda key, ctx: [EditNeuron(layer, key[0], site=site, dim=key[1], scale=scale, value=value)],
            batch_size=batch_size, progress=progress, desc=f"sweep {site} dims of layer {layer}",
        )
    except AttnlabError as err:
        raise type(err)(f"while sweeping {site} dimensions of layer {layer} of {model.cfg.name}: {err}") from None
    keys = pd.DataFrame([{"layer": layer, "head": h, "site": site, "dim": d} for _, (h, d) in variants])
    edit = f"scale {scale}" if value is None else f"set to {value}"
    return _result(keys, prompts, clean, inter, metric, n_boot, seed, index="head", columns="dim",
                   meta={"what": f"{site} dims ({edit})", "layer": layer, "site": site})


@torch.no_grad()
def sweep_interventions(
    model,
    prompts: Sequence[str],
    variants: Mapping[str, Sequence] | Sequence[Sequence],
    metric: Metric | None = None,
    *,
    batch_size: int | str = "auto",
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = True,
) -> SweepResult:
    """Effect of each labelled set of interventions (e.g. head sets, layers), batched like the sweeps.

    ``variants``: ``{label: [spec, ...]}`` (or a list of spec lists, labelled 0, 1, ...).
    Specs tied to batch rows (``rows=``, patch sources with one row per prompt) make the
    whole prompt list one chunk, so ``batch_size`` must then be at least the number of rows.

    >>> from attnlab.testing import tiny_model
    >>> from attnlab.interventions import AblateHead
    >>> from attnlab.measure import KL, sweep_interventions
    >>> model = tiny_model("gpt2")
    >>> res = sweep_interventions(model, ["the nurse said that"], {"layer 0": [AblateHead(0)], "layer 1": [AblateHead(1)]},
    ...                           KL(), progress=False)
    >>> list(res.table["variant"])
    ['layer 0', 'layer 1']
    """
    metric = _default_metric(model, metric)
    prompts = check_prompts(prompts)
    check_batch_size(batch_size)
    items = list(variants.items()) if isinstance(variants, Mapping) else list(enumerate(variants))
    if not items:
        raise InvalidInput("no variants given: pass {label: [spec, ...]} with at least one entry")
    specs = {label: check_interventions(model, s) for label, s in items}
    if any(not s for s in specs.values()):
        raise InvalidInput("every variant needs at least one intervention spec")
    metric.check_model(model)
    single = any(_addresses_rows(sp) for s in specs.values() for sp in s)
    try:
        rows = metric.rows(model, prompts)
        if single and batch_size == "auto":  # rows tied to the batch: all of them in one batch
            batch_size = max(resolve_batch_size(model, rows, batch_size, metric.output), rows.n_rows)
        batch_size = resolve_batch_size(model, rows, batch_size, metric.output)
        if single and rows.n_rows > batch_size:
            raise InvalidInput(
                f"interventions tied to batch rows need all {rows.n_rows} rows in one batch; pass batch_size >= {rows.n_rows}"
            )
        keyed = [(min(sp.layer for sp in s), label) for label, s in specs.items()]
        clean, inter = run_variants(model, rows, metric, keyed, lambda label, ctx: list(specs[label]),
                                    batch_size=batch_size, progress=progress, desc="sweep interventions", single_chunk=single)
    except AttnlabError as err:
        raise type(err)(f"while sweeping interventions on {model.cfg.name}: {err}") from None
    keys = pd.DataFrame({"variant": [label for label, _ in items], "layer": [k[0] for k in keyed]})
    keys["index"] = "all"
    return _result(keys, prompts, clean, inter, metric, n_boot, seed, index="index", columns="variant",
                   meta={"what": "interventions"})
