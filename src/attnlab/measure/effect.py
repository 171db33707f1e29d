"""``effect()``, ``score()`` and ``perplexity()``: what a model gives, and what interventions change.

``effect`` runs every prompt twice (clean, then with the interventions), scores both with
the metric and reports ``effect = intervened - clean`` per prompt, with the mean and a
percentile-bootstrap 95% interval over prompts (:func:`attnlab.measure.bootstrap`).
``score`` runs once and returns the metric's values; ``perplexity`` pools every predicted
token of a corpus. All three run their forwards through the one batched runner
(:mod:`attnlab.measure._batched`), in the argument order ``(model, prompts, metric,
interventions)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from attnlab.engine.forward import token_logprobs
from attnlab.engine.tokens import check_texts
from attnlab.errors import AttnlabError, InvalidInput
from attnlab.measure._batched import run_variants
from attnlab.measure._forward import check_measurable, check_model, metric_output
from attnlab.measure._order import metric_third
from attnlab.measure._rows import check_prompts
from attnlab.measure._sources import RowSources, addresses_rows, one_batch, outer_rows, row_tie
from attnlab.measure.batch_size import AUTO, CPU_ROWS, check_batch_size, resolve_batch_size
from attnlab.measure.metrics import Loss, Metric
from attnlab.measure.plots import MAX_FIGSIZE, every_tick, new_figure
from attnlab.measure.result import Result
from attnlab.measure.stats import bootstrap, check_resampling

__all__ = ["EffectResult", "effect", "score", "perplexity", "check_interventions", "row_tie", "check_batch_size", "check_metric"]


class EffectResult(Result):
    """What :func:`effect` measured.

    ``per_prompt``: prompt, clean, intervened, effect (and the generated texts for
    ``GenerationDiff``); ``table`` (= ``summary``): one row with the metric, the number of
    prompts, the mean clean and intervened values, the mean effect and its 95% interval.
    """

    def __init__(self, per_prompt: pd.DataFrame, summary: pd.DataFrame):
        self.per_prompt = per_prompt
        self.table = summary

    @property
    def mean(self) -> float:
        return float(self.table["effect"].iloc[0])

    @property
    def interval(self) -> tuple[float, float]:
        row = self.table.iloc[0]
        return float(row["ci_low"]), float(row["ci_high"])

    def plot(self, ax=None):
        """The effect on each prompt, with the mean and its interval as a band."""
        n = len(self.per_prompt)  # a bar per prompt; past a few dozen the page stays a page and the labels thin out
        fig, ax = new_figure(ax, figsize=(6.0, min(MAX_FIGSIZE[1], 1.2 + 0.3 * n)))
        y = np.arange(n)
        ax.barh(y, self.per_prompt["effect"].to_numpy(float), color="tab:blue")
        low, high = self.interval
        ax.axvspan(low, high, color="grey", alpha=0.2, lw=0)
        ax.axvline(self.mean, color="black", lw=1)
        ax.axvline(0.0, color="grey", lw=0.5)
        shown = every_tick(n)
        ax.set_yticks(shown, [str(self.per_prompt["prompt"].iloc[i])[:40] for i in shown], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(f"{self.table['metric'].iloc[0]} (intervened - clean)")
        return fig

    def __repr__(self) -> str:
        row = self.table.iloc[0]
        return (
            f"EffectResult({row['metric']}: clean {row['clean']:.4g} -> intervened {row['intervened']:.4g}, "
            f"effect {row['effect']:.4g} [95% CI {row['ci_low']:.4g}, {row['ci_high']:.4g}] over {row['n_prompts']} prompts)"
        )


def check_interventions(model, interventions) -> list:
    """A list of specs, each validated against ``model`` before anything runs."""
    if interventions is None:
        return []
    if hasattr(interventions, "validate"):
        interventions = [interventions]
    if isinstance(interventions, (str, bytes, Mapping)) or not isinstance(interventions, Iterable):
        raise InvalidInput(f"interventions must be an intervention spec or a list of them (AblateHead, Patch, ...), "
                           f"got {type(interventions).__name__}: {interventions!r}"[:300])
    specs = list(interventions)
    for spec in specs:
        if not (hasattr(spec, "validate") and hasattr(spec, "prepare")):
            raise InvalidInput(f"interventions must be intervention specs, got {type(spec).__name__}: {spec!r}")
        spec.validate(model.cfg)
    return specs


def check_metric(metric, *, scalar: bool = True) -> Metric:
    """An attnlab metric (``scalar``: one number per prompt, as effects and sweeps need)."""
    if not isinstance(metric, Metric):
        raise InvalidInput(f"metric must be an attnlab.measure metric (LogitDiff, KL, ...), got {type(metric).__name__}")
    if scalar and metric.vector:
        raise InvalidInput(f"{metric.name} gives several numbers per prompt; use score() for it")
    return metric


def _effect_is_old(args, kwargs) -> bool:
    """effect(model, prompts, interventions, metric): a metric where the interventions go."""
    after = args[1] if len(args) > 1 else kwargs.get("metric")
    return not isinstance(args[0], Metric) and isinstance(after, Metric)


@metric_third(("interventions", "metric"), _effect_is_old, "effect(model, prompts, metric, interventions)")
@torch.no_grad()
def effect(
    model,
    prompts: Sequence[str],
    metric: Metric,
    interventions=(),
    *,
    batch_size: int | str = 32,
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = True,
) -> EffectResult:
    """The effect of ``interventions`` on ``metric``, per prompt, with a bootstrap interval.

    >>> from attnlab.testing import tiny_model
    >>> from attnlab.interventions import AblateHead
    >>> from attnlab.measure import effect, LogitDiff
    >>> model = tiny_model("gpt2")
    >>> res = effect(model, ["the nurse said that", "the doctor said that"], LogitDiff(" she", " he"),
    ...              [AblateHead(1, 0)], progress=False)
    >>> list(res.per_prompt.columns)
    ['prompt', 'clean', 'intervened', 'effect']

    A ``Patch`` whose source is text (one per prompt, or one for all) is run chunk by chunk
    with its prompts; other interventions tied to batch rows (``rows=``, a source tensor with one row per
    prompt) are applied to the whole prompt list in one batch; everything else runs in
    chunks of ``batch_size`` rows. (The previous order ``effect(model, prompts,
    interventions, metric)`` still works, with a ``DeprecationWarning``.)
    """
    check_model(model)
    metric = check_metric(metric)
    prompts = check_prompts(prompts)
    check_batch_size(batch_size)
    n_boot, seed = check_resampling(n_boot, seed)
    specs = check_interventions(model, interventions)
    check_measurable(model, metric)
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
    mean, low, high = bootstrap(eff, n_boot=n_boot, seed=seed)
    summary = pd.DataFrame([{
        "metric": metric.name, "n_prompts": len(prompts), "clean": float(np.nanmean(clean)),
        "intervened": float(np.nanmean(inter)), "effect": mean, "ci_low": low, "ci_high": high,
    }])
    return EffectResult(per_prompt, summary)


@torch.no_grad()
def score(
    model,
    prompts: Sequence[str],
    metric: Metric,
    interventions=(),
    *,
    batch_size: int | str = 32,
    progress: bool = False,
) -> np.ndarray:
    """The metric's value for each prompt in one run (clean, or with ``interventions``).

    For non-comparative metrics (LogitDiff, TokenProb, LogProbs, Loss, PairLogRatio): one
    forward per chunk instead of effect()'s two, e.g. ``log p(she) - log p(he)`` for every
    occupation prompt. Returns ``[prompt]`` (``[prompt, candidate]`` for :class:`LogProbs`).

    >>> from attnlab.testing import tiny_model
    >>> from attnlab.measure import score, LogitDiff
    >>> score(tiny_model("gpt2"), ["the nurse said that", "the man said that"], LogitDiff(" she", " he")).shape
    (2,)
    """
    check_model(model)
    metric = check_metric(metric, scalar=False)
    if metric.comparative or metric.generation:
        raise InvalidInput(f"{metric.name} compares with a clean run; use effect() for it")
    prompts = check_prompts(prompts)
    check_batch_size(batch_size)
    specs = check_interventions(model, interventions)
    check_measurable(model, metric)
    try:
        rows = metric.rows(model, prompts)
        sources = RowSources(model, metric, prompts, rows, specs)
        # text patch sources follow the prompts chunk by chunk (as in effect()); other specs act on every pass as given
        values, _ = run_variants(
            model, rows, metric, [], batch_size=batch_size, progress=progress, desc=f"score ({metric.name})",
            single_chunk=one_batch(specs, len(prompts)) if sources else any(addresses_rows(s) for s in specs),
            interventions=(lambda ctx: sources.build(specs, ctx)) if sources else specs,
            chunk_setup=sources.setup if sources else None,
        )
    except AttnlabError as err:
        raise type(err)(f"while scoring {metric.name} on {model.cfg.name}: {err}") from None
    return values


@torch.no_grad()
def perplexity(
    model,
    texts: Sequence[str],
    interventions=(),
    *,
    batch_size: int | str = 4,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``exp(mean NLL)`` over every predicted token of ``texts``, with a bootstrap interval over tokens.

    Tokens are pooled, so a long text weighs by its length (``Loss(perplexity=True)`` gives
    one number per text instead). The NLL of each token is ``-token_logprobs`` (the first
    token of a text is given, not predicted); the interval resamples tokens and is
    exponentiated. Returns ``(perplexity, low, high)``.

    >>> from attnlab.testing import tiny_model
    >>> ppl, low, high = perplexity(tiny_model("gpt2"), ["the cat sat on the mat ."], n_boot=0)
    >>> ppl > 1
    True
    """
    check_model(model)
    metric = Loss()
    check_measurable(model, metric)
    texts = check_texts(texts, "text", "texts")
    check_batch_size(batch_size)
    n_boot, seed = check_resampling(n_boot, seed)
    specs = check_interventions(model, interventions)
    rows = metric.rows(model, texts)
    one = any(addresses_rows(s) for s in specs) or outer_rows(model)
    chunk = rows.n_rows if one else resolve_batch_size(model, rows, batch_size, metric.output)  # not split: this process's
    nll = []
    for c0 in range(0, rows.n_rows, chunk):
        part = rows.select(slice(c0, c0 + chunk)).to(model.device)
        logp = token_logprobs(metric_output(model, part, metric, interventions=specs), part.tokens)
        mask = part.tokens.mask.bool()
        predicted = torch.zeros_like(mask)
        predicted[:, 1:] = mask[:, 1:] & mask[:, :-1]  # right padding: every real token after the first
        nll.append(-logp[predicted.to(logp.device)].double().cpu())  # row-major: text by text, in order
    mean, low, high = bootstrap(torch.cat(nll).numpy(), n_boot=n_boot, seed=seed)
    return float(np.exp(mean)), float(np.exp(low)), float(np.exp(high))


def _forward_effect(model, prompts, specs, metric, batch_size, progress) -> tuple[np.ndarray, np.ndarray]:
    rows = metric.rows(model, prompts)
    sources = RowSources(model, metric, prompts, rows, specs)
    clean, inter = run_variants(
        model, rows, metric, [(0, "interventions")], lambda key, ctx: sources.build(specs, ctx),
        batch_size=batch_size, progress=progress, desc=f"effect ({metric.name})",
        chunk_setup=sources.setup if sources else None, single_chunk=one_batch(specs, len(prompts)),
    )
    return clean, inter[0]


def _generation(model, prompts, specs, metric, batch_size, progress):
    tok = model.tokenizer
    clean_v, inter_v, clean_t, inter_t = [], [], [], []
    if batch_size == AUTO:  # a generation keeps a KV cache, not a sweep's prefix: the CPU rule everywhere
        batch_size = CPU_ROWS
    chunk = len(prompts) if any(addresses_rows(s) for s in specs) or outer_rows(model) else batch_size
    for start in tqdm(range(0, len(prompts), chunk), desc=f"effect ({metric.name})", disable=not progress, leave=False):
        part = prompts[start : start + chunk]
        clean = metric.generate(model, part, first=start)
        inter = metric.generate(model, part, specs, first=start)
        for c, i in zip(clean, inter):
            cv, iv = metric.score(c, i)
            clean_v.append(cv)
            inter_v.append(iv)
            clean_t.append(tok.decode(c))
            inter_t.append(tok.decode(i))
    extra = {"clean_text": clean_t, "intervened_text": inter_t}
    return np.array(clean_v), np.array(inter_v), extra
