"""Attribution patching (AtP, and AtP* of Kramar et al. 2024): every unit's effect from one backward.

An exact sweep runs one intervened forward per unit. Attribution patching estimates all of
them at once from one clean forward (plus one forward of the counterfactual or reference
prompts) and one backward pass: ``effect ~= (a' - a) . dM/da``, summed over the unit's
elements (and positions, unless ``per_position``). It is exact where the metric is linear in
the unit and a first-order estimate elsewhere; ``result.verify(k)`` measures the top ``k``
units exactly with the sweep machinery. What the estimate costs and when to trust it:
``docs/attribution.md``.

Corrections (AtP*):

* ``"qk"``: for q/k dimension units (before or after the rotary embedding), the head's
  softmax is recomputed exactly with the patched query or key and the estimate linearised
  from the attention probabilities on;
* ``"graddrop"``: one more backward pass per layer with that layer's residual-stream writes
  cut out of the gradient; the unit's score is the mean absolute estimate over those passes
  (a magnitude for ranking, in the ``graddrop`` column);
* ``"atp*"``: both (the QK fix where it applies).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
import copy
from dataclasses import dataclass, field, fields

import numpy as np
import pandas as pd
import torch

from attnlab.engine.hooks import active_frames
from attnlab.engine.locations import hook_name, missing_name_hint
from attnlab.engine.precision import check_precision
from attnlab.errors import (AttnlabError, InvalidInput, InvalidLocation, InvalidSpec, UnsupportedModel, check_flag,
    check_positive_int, did_you_mean)
from attnlab.measure._attribution_exact import exact_spec, unit_label
from attnlab.measure._attribution_estimate import estimate
from attnlab.measure._attribution_units import (
    DIM_SITES,
    UNIT_SITES,
    Units,
    site_means,
    site_values,
)
from attnlab.measure._forward import check_deterministic, check_measurable, check_model
from attnlab.measure._rows import Rows, check_prompts
from attnlab.measure._sources import outer_rows, paired_rows
from attnlab.measure.batch_size import backward_batch_size, check_batch_size, metric_batch_size
from attnlab.measure.effect import check_metric
from attnlab.measure.metrics import KL, LogitDiff, Loss, Metric, PairLogRatio, TokenProb
from attnlab.measure.stats import check_resampling
from attnlab.measure.sweep import SweepResult, check_top, sweep_interventions, sweep_result

__all__ = ["attribute", "check_attribution_options", "AttributionResult", "ATTRIBUTION_METHODS", "CORRECTIONS", "UNIT_SITES"]

ATTRIBUTION_METHODS = ("zero", "mean", "patch")
CORRECTIONS = ("qk", "graddrop", "atp*")

_DIFFERENTIABLE = (LogitDiff, TokenProb, PairLogRatio, Loss, KL)


@dataclass(repr=False)
class AttributionResult(SweepResult):
    """A :class:`SweepResult` whose effects are estimates (``estimate`` is True).

    ``table``: one row per unit (``layer, head`` / ``dim`` / ``neuron``, ``site``, ``unit``
    label, ``position`` when per position), the estimated mean ``effect`` with its 95%
    interval over prompts, and ``graddrop`` (AtP*'s magnitude score) when GradDrop ran.
    ``verify(k)`` measures the top ``k`` exactly.
    """

    estimate: bool = True
    method: str = "zero"
    correction: str | None = None
    _context: dict = field(default_factory=dict, compare=False)

    def __getstate__(self) -> dict:
        """Pickled (``run_parallel``, ``multiprocessing``) without what ``verify()`` needs: the model object."""
        return {**self.__dict__, "_context": {}}

    def __deepcopy__(self, memo) -> AttributionResult:
        """A copy whose tables are copies and whose ``verify()`` still measures the same model."""
        twin = copy.copy(self)
        for name, value in self.__dict__.items():
            if name != "_context":
                setattr(twin, name, copy.deepcopy(value, memo))
        twin._context = dict(self._context)
        return twin

    def top(self, k: int = 10) -> pd.DataFrame:
        """The ``k`` units ranked first: by ``graddrop`` when present, else by ``|effect|``."""
        return self._ranked(check_top(k)).reset_index(drop=True)

    def _ranked(self, k: int) -> pd.DataFrame:
        score = self.table["graddrop"] if "graddrop" in self.table.columns else self.table["effect"].abs()
        order = score.sort_values(ascending=False, na_position="last").index
        return self.table.loc[order[:k]]

    def verify(self, k: int = 10, *, batch_size: int | str = "auto", progress: bool = False) -> SweepResult:
        """Measure the top ``k`` units exactly (``sweep_interventions``), next to their estimates.

        Per-position units and one-dimension / one-neuron patches run all prompt rows in one
        batch (``batch_size`` is raised to their number). Returns the exact sweep's result;
        its table also has ``estimate`` (this result's ``effect``), ``graddrop`` (if computed)
        and ``error = estimate - effect``, and its ``per_prompt`` an ``estimate`` column.
        """
        check_positive_int(k, "k")
        check_batch_size(batch_size)
        ctx = self._context
        if not ctx:
            raise InvalidInput("this AttributionResult was not made by attribute() in this session (a pickled or loaded "
                               "result keeps its tables, not the model); nothing to verify")
        model, prompts, metric = ctx["model"], ctx["prompts"], ctx["metric"]
        check_deterministic(model)  # the model may have been put in training mode since attribute()
        _check_same_blocks(model, ctx["where"])
        ranked = self._ranked(k)  # keeps the table's index: row i's prompts are per_prompt rows i*n .. i*n+n-1
        picked = ranked.reset_index(drop=True)
        labels = [unit_label(row) for _, row in picked.iterrows()]
        one_unit_patch = self.method == "patch" and self.meta["site"] in (*DIM_SITES, "post")
        sources = _verify_sources(model, ctx, picked) if one_unit_patch else {}
        n_rows = ctx["n_rows"]
        means = ctx["means"]
        if self.method == "mean" and not means:  # the estimate took its means from its own forward
            means = exact_means(model, ctx["units"], ctx["reference"], ctx["batch_size"])
        specs = {label: [exact_spec(row, self.method, means, ctx["counterfactuals"], sources, n_rows)]
                 for label, (_, row) in zip(labels, picked.iterrows())}
        # one-unit patches pair with all rows at once; per-position units address positions of the longest prompt,
        # which a batch of shorter prompts alone does not have (with every row in the batch, they are padding there:
        # no effect, as in the estimate)
        size = batch_size
        if sources or "position" in picked.columns:
            size = max(metric_batch_size(model, metric.rows(model, prompts), batch_size, metric), n_rows)
        exact = sweep_interventions(model, prompts, metric, specs, batch_size=size, n_boot=ctx["n_boot"], seed=ctx["seed"],
                                    progress=progress)
        key_cols = [c for c in ("layer", "head", "dim", "neuron", "site", "position", "unit") if c in picked.columns]
        table = picked[key_cols].copy()
        table.insert(0, "variant", labels)
        for col in ("effect", "ci_low", "ci_high", "clean", "intervened"):
            table[col] = exact.table[col].to_numpy()
        table["estimate"] = picked["effect"].to_numpy()
        if "graddrop" in picked.columns:
            table["graddrop"] = picked["graddrop"].to_numpy()
        table["error"] = table["estimate"] - table["effect"]
        n_prompts = len(prompts)
        estimates = self.per_prompt["effect"].to_numpy().reshape(len(self.table), n_prompts)
        per_prompt = exact.per_prompt.copy()
        per_prompt["estimate"] = estimates[ranked.index.to_numpy()].reshape(-1)
        what = f"exact check of the top {len(picked)} attributed units"
        if len(picked) < k:  # k larger than the number of units: all of them
            what += f" (all there are; k={k} asked)"
        meta = {**exact.meta, "what": what, "estimated_by": self.meta.get("what")}
        return SweepResult(table, per_prompt, exact.metric, index="site", columns="variant", meta=meta)

    def __repr__(self) -> str:
        best = self.top(1)
        where = ", ".join(f"{c}={best[c].iloc[0]}" for c in ("layer", "head", "dim", "neuron", "position") if c in best.columns)
        return (
            f"AttributionResult({self.meta.get('what', 'attribution')} on {self.metric}: "
            f"{len(self.table)} units x {self.meta.get('n_prompts', '?')} prompts; first {where})"
        )


def attribute(
    model,
    prompts: Sequence[str],
    metric: Metric,
    *,
    site: str = "z",
    method: str = "zero",
    layers: Sequence[int] | int | None = None,
    heads: Sequence[int] | int | None = None,
    dims: Sequence[int] | int | None = None,
    neurons: Sequence[int] | int | None = None,
    per_position: bool = False,
    counterfactuals: Sequence[str] | None = None,
    reference: Sequence[str] | None = None,
    correction: str | None = None,
    probes: int | None = None,
    precision: str | torch.dtype | None = None,
    batch_size: int | str = "auto",
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = True,
) -> AttributionResult:
    """Estimate the effect on ``metric`` of intervening on every unit, from one backward pass.

    >>> from attnlab.testing import tiny_model
    >>> from attnlab.measure import LogitDiff, attribute
    >>> res = attribute(tiny_model("llama"), ["the nurse said that"], LogitDiff(" she", " he"), progress=False)
    >>> res.table[["layer", "head", "effect"]].shape, res.estimate
    ((8, 3), True)

    ``site``: ``"z"``, ``"result"`` or ``"pattern"`` (one unit per head), ``"q"``, ``"k"`` or
    ``"v"`` (one unit per head and dimension; ``dims`` picks them) or ``"post"`` (MLP neurons,
    ``blocks.L.mlp.hook_post``; ``neurons`` picks them). ``method``: ``"zero"``, ``"mean"``
    (the site's mean over ``reference``, default the prompts) or ``"patch"`` (its value on the
    matching ``counterfactuals`` prompt, of equal token length; the only method for
    ``"pattern"``). ``per_position``: one unit per token position as well (query positions;
    key positions for ``k``/``v``). ``correction``: ``None``, ``"qk"``, ``"graddrop"`` or
    ``"atp*"``. ``metric``: :class:`LogitDiff`, :class:`TokenProb`, :class:`PairLogRatio`,
    :class:`Loss` (first order) or :class:`KL` (second order: its gradient at the clean run is 0; estimated with
    ``probes`` random backward directions, default 16, see the docs; other metrics take no probes). ``precision``: ``"bfloat16"`` (or
    ``torch.bfloat16``, ``"float16"``): the blocks' linear layers multiply in that precision
    in the estimate's passes, faster on CPUs with bfloat16 units and on GPUs; the estimate
    moves far less than its own error (``docs/attribution.md``). ``verify()`` stays exact.
    """
    check_model(model)
    method, correction = check_attribution_options(
        site, method, correction, metric=metric, heads=heads, dims=dims, neurons=neurons,
        counterfactuals=counterfactuals, reference=reference, probes=probes)
    probes = 16 if probes is None else int(probes)
    precision = check_precision(precision)
    metric = _attributable(model, metric)
    prompts = check_prompts(prompts)
    check_batch_size(batch_size)
    units = _units(model, site, layers, heads, dims, neurons, per_position)
    graddrop = correction in ("graddrop", "atp*")
    if graddrop and model.cfg.n_layers < 2:
        raise InvalidSpec(f"GradDrop drops one layer's gradient at a time and needs >= 2 layers; {model.cfg.name} has 1")
    n_boot, seed = check_resampling(n_boot, seed)
    where = _where(model)
    # the estimate needs autograd even when called under torch.no_grad() or torch.inference_mode()
    with torch.inference_mode(False), torch.enable_grad():
        return _attribute(model, prompts, metric, units, method, correction, counterfactuals, reference, probes,
                          batch_size, n_boot, seed, progress, where, precision)


def _attribute(model, prompts, metric, units: Units, method, correction, counterfactuals, reference, probes, batch_size,
               n_boot, seed, progress, where, precision) -> AttributionResult:
    site = units.site
    try:
        rows = metric.rows(model, prompts)
        vocab = metric.vocab(rows)
        batch_size = backward_batch_size(model, rows, batch_size, vocab_width=None if vocab is None else int(vocab.numel()))
        if outer_rows(model):  # an outer spec's rows= are rows of the whole prompt list: one batch
            batch_size = max(batch_size, rows.n_rows)
        cf_rows = paired_rows(model, metric, prompts, rows, check_prompts(counterfactuals)) if method == "patch" else None
        ref = check_prompts(reference) if reference is not None else prompts
        means = {}
        own = method == "mean" and reference is None and _rows_are_the_prompts(model, rows, prompts, batch_size)
        if method == "mean" and not own:
            means = exact_means(model, units, ref, batch_size, precision=precision)
        clean, est, drop = estimate(model, rows, cf_rows, metric, units, method, None if own else means, correction, probes,
                                    batch_size, seed, progress, precision=precision)
        if precision is not None:  # verify() ablates with full-precision means
            means = {}
    except AttnlabError as err:
        raise type(err)(f"while attributing {site} units of {model.cfg.name}: {err}") from None
    result = _build(model, prompts, metric, units, method, correction, clean, est, drop, means, rows, cf_rows,
                    counterfactuals, n_boot, seed, precision)
    result._context.update(where=where, reference=ref, batch_size=batch_size, units=units)
    return result


def exact_means(model, units: Units, reference, batch_size: int, *, precision: torch.dtype | None = None) -> dict:
    """``{(site, layer): mean}`` over ``reference`` from the unedited model (cached on the model).

    ``precision``: that of the estimate (every pass of a reduced-precision estimate runs in
    it, so its means do not depend on whether they came from its own forward); ``verify()``
    uses full precision. For ``result`` units also z's means: ``verify()`` ablates z with z's
    mean, the same intervention.
    """
    means = {(units.site, l): m for l, m in site_means(model, units, reference, batch_size, precision=precision).items()}
    if units.site == "result":
        z = Units("z", units.layers)
        means.update({("z", l): m for l, m in site_means(model, z, reference, batch_size, precision=precision).items()})
    return means


def _rows_are_the_prompts(model, rows: Rows, prompts, batch_size: int) -> bool:
    """The estimate's one forward can give the mean-ablation means itself.

    True when that forward is exactly a reference pass: one row per prompt holding just the
    prompt's tokens, all rows in one chunk, and no hook acting (mean ablation averages the
    unedited model). Then a separate pass over the references is saved.
    """
    if rows.per_prompt != 1 or rows.n_rows > batch_size or model.count_hooks():
        return False
    mask = rows.tokens.mask.bool()
    expected = model.token_rows(prompts)
    return all(rows.tokens.ids[i][mask[i]].tolist() == expected[i] for i in range(rows.n_rows))


def _where(model) -> tuple:
    """Which model acts here: the open hook blocks of this context, the hooks acting in them, the weights' versions."""
    return active_frames(), model.count_hooks(), model.weights_stamp()


def _check_same_blocks(model, where: tuple) -> None:
    """``verify()`` must measure the model ``attribute()`` estimated: the same open ``with`` blocks (interventions)
    and the same weights."""
    now = _where(model)
    if now == where:
        return
    if now[:2] == where[:2]:
        raise InvalidInput(
            "verify() measures the model attribute() estimated, but its weights changed since (an in-place edit or a "
            "new Parameter): call attribute() again")
    def say(w):
        frames, n_hooks, _ = w
        if frames is None:
            return "inside model.clean()"
        return f"with {n_hooks} hook(s) acting in {len(frames)} open model.intervene()/hooks() block(s)"
    raise InvalidInput(
        f"verify() runs where attribute() ran, so that the exact sweep measures the model that was estimated: the "
        f"estimate was made {say(where)}, verify() is called {say(now)} (a different set of blocks). Call verify() "
        f"inside the same with-block as attribute(), or attribute again here"
    )


# -- checking -------------------------------------------------------------------------------


def _attributable(model, metric) -> Metric:
    metric = check_metric(metric)
    if not model.cfg.has_lm_head:  # every attributable metric reads vocabulary logits
        raise UnsupportedModel(
            f"{model.cfg.name} has no LM head (a bare encoder), and attribution differentiates a logit metric "
            "(LogitDiff, TokenProb, PairLogRatio, Loss or KL); load the model with its LM head (e.g. BertForMaskedLM), "
            "or measure hidden-state effects exactly with sweep_heads(..., metric=HiddenShift())"
        )
    check_measurable(model, metric)
    return metric


def check_attribution_options(
    site: str,
    method: str,
    correction: str | None = None,
    *,
    metric: Metric | None = None,
    heads=None,
    dims=None,
    neurons=None,
    counterfactuals=None,
    reference=None,
    probes: int | None = None,
) -> tuple[str, str | None]:
    """The checks of ``attribute()``'s options that need no model, so a caller (the CLI) can fail before loading one.

    Only the presence of ``heads``/``dims``/``neurons``/``counterfactuals``/``reference`` is checked
    here (their values need the model's sizes). Returns ``(method, correction)``.
    """
    method, correction = _check_method(site, method, correction)
    if metric is not None:
        metric = check_metric(metric)
        if metric.generation or not isinstance(metric, _DIFFERENTIABLE):
            raise InvalidInput(
                f"{metric.name} is not a differentiable metric attribution can use; use LogitDiff, TokenProb, "
                "PairLogRatio, Loss or KL, or measure it exactly with sweep_heads / sweep_interventions"
            )
    if site not in DIM_SITES and dims is not None:
        raise InvalidInput(f"dims= picks q/k/v dimensions; site {site!r} has none")
    if site != "post" and neurons is not None:
        raise InvalidInput(f"neurons= picks MLP neurons (site='post'); site {site!r} has none")
    if site == "post" and heads is not None:
        raise InvalidInput("heads= does not apply to MLP neurons (site='post'); pick them with neurons=")
    if method == "patch" and counterfactuals is None:
        raise InvalidInput("method='patch' needs counterfactuals=[...], one prompt per prompt, whose activations are patched in")
    if method != "patch" and counterfactuals is not None:
        raise InvalidInput(f"counterfactuals= is only used by method='patch', not {method!r}")
    if method != "mean" and reference is not None:
        raise InvalidInput(f"reference= is only used by method='mean', not {method!r}")
    if probes is not None:
        check_positive_int(probes, "probes", error=InvalidSpec)
        if metric is not None and not isinstance(metric, KL):
            raise InvalidInput(
                f"probes= sets the random directions of KL's second-order estimate; {metric.name} is first order "
                "and takes none (leave probes unset)")
    return method, correction


def _check_method(site: str, method: str, correction) -> tuple[str, str | None]:
    if not isinstance(site, str) or site not in UNIT_SITES:
        raise InvalidSpec(f"unknown site {site!r}{did_you_mean(str(site), UNIT_SITES)} (valid: {', '.join(UNIT_SITES)})")
    if not isinstance(method, str) or method not in ATTRIBUTION_METHODS:
        raise InvalidSpec(
            f"unknown method {method!r}{did_you_mean(str(method), ATTRIBUTION_METHODS)} (valid: {', '.join(ATTRIBUTION_METHODS)})"
        )
    if site == "pattern" and method != "patch":
        raise InvalidSpec(f"pattern units support method='patch' only (got {method!r}); to remove a head use site='z'")
    if correction is not None and correction not in CORRECTIONS:
        raise InvalidSpec(
            f"unknown correction {correction!r}{did_you_mean(str(correction), CORRECTIONS)} "
            f"(valid: None, {', '.join(CORRECTIONS)})"
        )
    if correction == "qk" and site in ("q_pre_norm", "k_pre_norm"):
        raise InvalidSpec(
            f"the QK fix recomputes the scores from a unit's change; before the model's q/k norm ({site!r}) that change "
            "passes through the norm first, which the fix does not linearise. Use correction='graddrop' or None, or "
            f"the fix at site={site.replace('_pre_norm', '_pre_rotary')!r} (after the norm)"
        )
    if correction == "qk" and site not in ("q", "k", "q_pre_rotary", "k_pre_rotary"):
        raise InvalidSpec(
            f"the QK fix applies to q and k units (their softmax); {site!r} units reach the metric without passing "
            "through their own head's softmax. Use correction='graddrop' or None"
        )
    return method, correction


def _indices(values, size: int, what: str) -> tuple[int, ...]:
    if values is None:
        return tuple(range(size))
    items = [values] if isinstance(values, numbers.Integral) and not isinstance(values, bool) else values
    if isinstance(items, (np.ndarray, torch.Tensor)) and items.ndim == 1:
        items = items.tolist()
    if isinstance(items, (str, bytes)) or not isinstance(items, (list, tuple, range)) or not len(items):
        raise InvalidInput(f"{what} must be None (all), an int or a non-empty list of ints, got {values!r}")
    picked = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise InvalidInput(f"{what} must be integers, got {v!r} ({type(v).__name__}): valid {what} are 0..{size - 1}")
        if not 0 <= v < size:
            raise InvalidLocation(f"{what[:-1]} {v!r} out of range: valid {what} are 0..{size - 1}")
        picked.append(int(v))
    return tuple(sorted(set(picked)))


def _units(model, site, layers, heads, dims, neurons, per_position) -> Units:
    cfg = model.cfg
    per_position = check_flag(per_position, "per_position", error=InvalidSpec)
    layer_ids = _indices(layers, cfg.n_layers, "layers")
    names = [hook_name(l, site) for l in layer_ids]
    missing = [n for n in names if n not in model.hook_dict]
    if missing:
        raise InvalidLocation(f"{cfg.name} has no hook point {missing[0]!r}{missing_name_hint(missing[0])}, so its {site!r} "
                              "units cannot be attributed")
    if site == "post":
        if cfg.d_mlp is None:
            raise UnsupportedModel(f"{cfg.name}: attnlab does not know this model's MLP, so it has no neurons to attribute")
        d_mlp = cfg.d_mlp
        return Units(site, layer_ids, neurons=_indices(neurons, d_mlp, "neurons"), per_position=per_position)
    head_ids = _indices(heads, cfg.n_kv_heads if site == "k_pre_norm" else cfg.n_heads, "heads")  # k there: per kv head
    dim_ids = _indices(dims, cfg.d_head, "dims") if site in DIM_SITES else ()
    return Units(site, layer_ids, heads=head_ids, dims=dim_ids, per_position=per_position)


# -- the result -----------------------------------------------------------------------------


def _build(model, prompts, metric, units: Units, method, correction, clean, est, drop, means, rows, cf_rows,
           counterfactuals, n_boot, seed, precision=None) -> AttributionResult:
    keys = units.keys()
    n_units, width, n_prompts = est.shape
    if units.per_position:
        keys = keys.loc[np.repeat(np.arange(n_units), width)].reset_index(drop=True)
        keys["position"] = np.tile(np.arange(width), n_units)
        index, columns = "unit", "position"
    elif units.site in DIM_SITES:
        index, columns = ["layer", "head"], "dim"
    elif units.site == "post":
        index, columns = "layer", "neuron"
    else:
        index, columns = "layer", "head"
    flat = est.reshape(n_units * width, n_prompts)
    what = {"pattern": "pattern patching", "post": "MLP neurons"}.get(units.site, f"{units.site} units")
    fix = f" + {correction}" if correction else ""
    reduced = None if precision is None else str(precision).removeprefix("torch.")
    meta = {"what": f"{what} ({method}{fix}, estimated{f' in {reduced}' if reduced else ''})", "method": method,
            "site": units.site, "correction": correction, "estimate": True, "precision": reduced}
    if isinstance(metric, KL):
        meta["order"] = "second (KL)"
    base = sweep_result(keys, prompts, clean, clean[None, :] + flat, metric, n_boot, seed, index=index, columns=columns, meta=meta)
    result = AttributionResult(**{f.name: getattr(base, f.name) for f in fields(SweepResult)}, method=method,
                               correction=correction)
    if drop is not None:
        flat_drop = drop.reshape(n_units * width, n_prompts)
        with np.errstate(all="ignore"):
            result.table["graddrop"] = np.nanmean(flat_drop, axis=1)
        result.per_prompt["graddrop"] = flat_drop.reshape(-1)
    result._context = {"model": model, "prompts": prompts, "metric": metric, "means": means, "n_rows": rows.n_rows,
                       "cf_rows": cf_rows, "counterfactuals": list(counterfactuals) if counterfactuals is not None else None,
                       "n_boot": n_boot, "seed": seed}
    return result


def _verify_sources(model, ctx, picked: pd.DataFrame) -> dict[str, torch.Tensor]:
    """Counterfactual values of the sites the picked one-dimension / one-neuron patches need, for all rows at once."""
    cf_rows: Rows = ctx["cf_rows"]
    names = sorted({hook_name(int(row["layer"]), row["site"]) for _, row in picked.iterrows()})
    values = site_values(model, None, cf_rows.to(model.device), names=names)
    return {n: v.float().cpu() for n, v in values.items()}
