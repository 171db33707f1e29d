"""``effect()``: what a set of interventions does to a metric, per prompt and on average.

Runs every prompt twice (clean, then with the interventions), scores both with the metric
and reports ``effect = intervened - clean`` per prompt, with the mean and a percentile
bootstrap 95% interval over prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from attnlab.errors import AttnlabError, InvalidInput
from attnlab.measure._forward import metric_output
from attnlab.measure._rows import check_prompts
from attnlab.measure._stats import bootstrap_mean
from attnlab.measure.distributed import map_units
from attnlab.measure.metrics import Metric

__all__ = ["EffectResult", "effect", "score", "check_interventions", "check_batch_size"]


@dataclass
class EffectResult:
    """``per_prompt``: prompt, clean, intervened, effect; ``summary``: one row with mean and 95% interval."""

    per_prompt: pd.DataFrame
    summary: pd.DataFrame

    @property
    def mean(self) -> float:
        return float(self.summary["effect"].iloc[0])

    @property
    def interval(self) -> tuple[float, float]:
        row = self.summary.iloc[0]
        return float(row["ci_low"]), float(row["ci_high"])

    def __repr__(self) -> str:
        row = self.summary.iloc[0]
        return (
            f"EffectResult({row['metric']}: clean {row['clean']:.4g} -> intervened {row['intervened']:.4g}, "
            f"effect {row['effect']:.4g} [95% CI {row['ci_low']:.4g}, {row['ci_high']:.4g}] over {row['n_prompts']} prompts)"
        )


def check_batch_size(batch_size) -> int:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InvalidInput(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


def check_interventions(model, interventions) -> list:
    """A list of specs, each validated against ``model`` before anything runs."""
    if interventions is None:
        return []
    if hasattr(interventions, "validate"):
        interventions = [interventions]
    specs = list(interventions)
    for spec in specs:
        if not (hasattr(spec, "validate") and hasattr(spec, "prepare")):
            raise InvalidInput(f"interventions must be intervention specs, got {type(spec).__name__}: {spec!r}")
        spec.validate(model.cfg)
    return specs


def _addresses_rows(spec) -> bool:
    """Specs tied to batch rows (rows=, or a patch source with one row per prompt) need one batch."""
    if getattr(spec, "rows", None) is not None:
        return True
    source = getattr(spec, "source", None)
    if isinstance(source, list):
        return len(source) > 1
    return isinstance(source, torch.Tensor) and source.ndim == 4 and source.shape[0] > 1


def _metric(metric) -> Metric:
    if not isinstance(metric, Metric):
        raise InvalidInput(f"metric must be an attnlab.measure metric (LogitDiff, KL, ...), got {type(metric).__name__}")
    return metric


@torch.no_grad()
def effect(
    model,
    prompts: Sequence[str],
    interventions,
    metric: Metric,
    *,
    batch_size: int = 32,
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = True,
) -> EffectResult:
    """The effect of ``interventions`` on ``metric``, per prompt, with a bootstrap interval.

    >>> from attnlab.testing import tiny_model
    >>> from attnlab.interventions import AblateHead
    >>> from attnlab.measure import effect, LogitDiff
    >>> model = tiny_model("gpt2")
    >>> res = effect(model, ["the nurse said that", "the doctor said that"], [AblateHead(1, 0)],
    ...              LogitDiff(" she", " he"), progress=False)
    >>> list(res.per_prompt.columns)
    ['prompt', 'clean', 'intervened', 'effect']

    Interventions tied to batch rows (``rows=``, a patch source with one prompt per row)
    are applied to the whole prompt list in one batch; everything else runs in chunks of
    ``batch_size`` rows.
    """
    metric = _metric(metric)
    prompts = check_prompts(prompts)
    check_batch_size(batch_size)
    specs = check_interventions(model, interventions)
    metric.check_model(model)
    try:
        if metric.generation:
            clean, inter, extra = _generation(model, prompts, specs, metric, batch_size, progress)
        else:
            clean, inter = _forward_effect(model, prompts, specs, metric, batch_size, progress)
            extra = {}
    except AttnlabError as err:
        raise type(err)(f"while measuring {metric.name} on {model.cfg.name}: {err}") from None
    eff = inter - clean
    per_prompt = pd.DataFrame({"prompt": prompts, "clean": clean, "intervened": inter, "effect": eff, **extra})
    mean, low, high = bootstrap_mean(eff[None, :], n_boot=n_boot, seed=seed)
    summary = pd.DataFrame([{
        "metric": metric.name, "n_prompts": len(prompts), "clean": float(np.nanmean(clean)),
        "intervened": float(np.nanmean(inter)), "effect": float(mean[0]), "ci_low": float(low[0]), "ci_high": float(high[0]),
    }])
    return EffectResult(per_prompt, summary)


@torch.no_grad()
def score(
    model,
    prompts: Sequence[str],
    metric: Metric,
    interventions=(),
    *,
    batch_size: int = 32,
    progress: bool = False,
) -> np.ndarray:
    """The metric's value for each prompt in one run (clean, or with ``interventions``).

    For non-comparative metrics only (LogitDiff, TokenProb, Loss): one forward per chunk
    instead of effect()'s two, e.g. ``log p(she) - log p(he)`` for every occupation prompt.

    >>> from attnlab.testing import tiny_model
    >>> from attnlab.measure import score, LogitDiff
    >>> score(tiny_model("gpt2"), ["the nurse said that", "the man said that"], LogitDiff(" she", " he")).shape
    (2,)
    """
    metric = _metric(metric)
    if metric.comparative or metric.generation:
        raise InvalidInput(f"{metric.name} compares with a clean run; use effect() for it")
    prompts = check_prompts(prompts)
    check_batch_size(batch_size)
    specs = check_interventions(model, interventions)
    metric.check_model(model)
    rows = metric.rows(model, prompts)
    k = rows.per_prompt
    chunk = rows.n_rows if any(_addresses_rows(s) for s in specs) else max(k, batch_size // k * k)

    def one_chunk(start: int) -> torch.Tensor:  # in a process group, chunks are dealt to the processes
        part = rows.select(slice(start, start + chunk)).to(model.device)
        stats = metric.reduce(metric_output(model, part, metric.output, interventions=specs), part)
        return metric.compare(stats, stats, part).cpu()

    try:
        values = list(map_units(one_chunk, range(0, rows.n_rows, chunk), progress=progress, desc=f"score ({metric.name})"))
    except AttnlabError as err:
        raise type(err)(f"while scoring {metric.name} on {model.cfg.name}: {err}") from None
    return metric.combine(torch.cat(values).reshape(-1, k)).double().numpy()


def _forward_effect(model, prompts, specs, metric, batch_size, progress) -> tuple[np.ndarray, np.ndarray]:
    rows = metric.rows(model, prompts)
    k = rows.per_prompt
    chunk = rows.n_rows if any(_addresses_rows(s) for s in specs) else max(k, batch_size // k * k)

    def one_chunk(start: int) -> tuple[torch.Tensor, torch.Tensor]:  # in a process group, chunks are dealt to the processes
        part = rows.select(slice(start, start + chunk)).to(model.device)
        clean = metric.reduce(metric_output(model, part, metric.output), part)
        stats = metric.reduce(metric_output(model, part, metric.output, interventions=specs), part)
        return metric.compare(clean, clean, part).cpu(), metric.compare(stats, clean, part).cpu()

    pairs = list(map_units(one_chunk, range(0, rows.n_rows, chunk), progress=progress, desc=f"effect ({metric.name})"))
    clean_vals, inter_vals = [c for c, _ in pairs], [i for _, i in pairs]
    clean_v = metric.combine(torch.cat(clean_vals).reshape(-1, k))
    inter_v = metric.combine(torch.cat(inter_vals).reshape(-1, k))
    return clean_v.double().numpy(), inter_v.double().numpy()


def _generation(model, prompts, specs, metric, batch_size, progress):
    tok = model.tokenizer
    clean_v, inter_v, clean_t, inter_t = [], [], [], []
    chunk = len(prompts) if any(_addresses_rows(s) for s in specs) else batch_size
    for start in tqdm(range(0, len(prompts), chunk), desc=f"effect ({metric.name})", disable=not progress, leave=False):
        part = prompts[start : start + chunk]
        clean = metric.generate(model, part)
        inter = metric.generate(model, part, specs)
        for c, i in zip(clean, inter):
            cv, iv = metric.score(c, i)
            clean_v.append(cv)
            inter_v.append(iv)
            clean_t.append(tok.decode(c))
            inter_t.append(tok.decode(i))
    extra = {"clean_text": clean_t, "intervened_text": inter_t}
    return np.array(clean_v), np.array(inter_v), extra
