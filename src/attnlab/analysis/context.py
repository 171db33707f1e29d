"""How far attention reaches: attention mass by distance, effective windows, loss by position.

Definitions (all over a corpus, every query token counted once):

* ``mass[layer, head, d]`` = mean over queries i of the attention from i to key i - d
  (decoders; encoders pool keys i - d and i + d). Attention to the first token (BOS /
  [CLS], the usual "sink") is kept apart in ``sink`` when ``ignore_first=True``.
* effective window of a head at level m (default 0.9) = the smallest distance w such that
  keys within w hold a fraction m of the head's (non-sink) attention mass. The model's
  window uses the mean of all heads' profiles.
* loss by position = next-token cross-entropy at each position, averaged over texts:
  if a model stops using far context, the loss at late positions rises.

``window_experiment`` repeats these under several sets of interventions (e.g. scaling
distance-decay neurons with ``EditNeuron``) so their effect can be compared side by side.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from einops import rearrange
from jaxtyping import Float

from attnlab.analysis._corpus import (attention_batches, check_corpus, check_corpus_interventions,
                                      check_max_distance, prepare)
from attnlab.analysis._result import Renamed, empty_frame
from attnlab.engine.dropout import check_deterministic
from attnlab.engine.locations import check_head_pair
from attnlab.engine.forward import run, token_logprobs
from attnlab.errors import (InvalidInput, InvalidLocation, InvalidSpec, UnsupportedModel, check_flag,
    check_positive_int, is_integer)
from attnlab.measure.batch_size import check_batch_size
from attnlab.measure.result import Result

__all__ = ["DistanceProfile", "attention_by_distance", "loss_by_position", "pooled_window", "window_experiment",
           "WindowExperiment"]

_WINDOW_COLUMNS = ["layer", "head", "window", "sink", "mean_distance"]


def _window(profile: np.ndarray, level: float) -> np.ndarray:
    """Smallest distance whose cumulative share of the (normalised) profile reaches ``level``; last axis = distance."""
    total = profile.sum(-1, keepdims=True)
    cum = np.cumsum(profile, -1) / np.where(total > 0, total, 1)
    reached = cum >= level - 1e-9
    return np.where(reached.any(-1), reached.argmax(-1), np.nan)


def pooled_window(mass: Float[np.ndarray, "*rows layer head distance"], level: float = 0.9) -> np.ndarray:
    """The model's effective window (``DistanceProfile.model_window``; the dial's target) from non-sink mass by distance.

    Each head's profile is normalised to sum 1, the heads that have non-sink mass are averaged
    (a head attending only to the sink has no profile; counting it as zeros kept the pooled
    share below ``level`` once a tenth of the heads did, and the window was NaN), and the
    smallest distance whose cumulative share reaches ``level`` is returned (NaN if no head has mass).
    """
    _check_level(level)  # 90 (a percent) gave NaN
    if np.ndim(mass) < 3:
        raise InvalidInput(f"mass must be an array [..., layer, head, distance], got shape {np.shape(mass)}")
    mass = np.asarray(mass)
    total = mass.sum(-1, keepdims=True)
    norm = rearrange(mass / np.where(total > 0, total, 1), "... layer head d -> ... (layer head) d")
    has_mass = rearrange(total > 0, "... layer head one -> ... (layer head) one")
    pooled = norm.sum(-2) / np.maximum(has_mass.sum(-2), 1)  # [*rows, distance]
    cum = np.cumsum(pooled, -1)
    reached = cum >= level - 1e-9
    return np.where(reached.any(-1), reached.argmax(-1), np.nan)


def _window_table(mass: np.ndarray, sink: np.ndarray, level: float) -> pd.DataFrame:
    """``layer, head, window, sink, mean_distance`` of every head from its mass by distance ``[layer, head, distance]``."""
    L, H, D = mass.shape
    total = mass.sum(-1)
    mean_d = (mass * np.arange(D)).sum(-1) / np.where(total > 0, total, 1)
    return pd.DataFrame({
        "layer": np.repeat(np.arange(L), H), "head": np.tile(np.arange(H), L),
        "window": _window(mass, level).reshape(-1), "sink": sink.reshape(-1), "mean_distance": mean_d.reshape(-1),
    })


def _cumulative(mass: np.ndarray) -> np.ndarray:
    """Cumulative share of each head's (non-sink) mass by distance, heads' profiles normalised first."""
    total = mass.sum(-1, keepdims=True)
    return np.cumsum(mass / np.where(total > 0, total, 1), -1)


def _check_level(level: float) -> None:
    # a real number, not a bool: "0.9" or None raised a bare TypeError from the comparison, True passed as 1.0
    if not (isinstance(level, numbers.Real) and not isinstance(level, bool) and 0 < level <= 1):
        raise InvalidInput(f"level must be a number in (0, 1], got {level!r}")


def _check_ignore_first(ignore_first) -> None:
    check_flag(ignore_first, "ignore_first")  # "no" is truthy: it set the sink apart


@dataclass
class DistanceProfile(Result):
    """Attention mass by query-key distance for every head (see module docstring).

    ``table``: every head's effective window at 90% (``layer, head, window, sink,
    mean_distance``; :meth:`windows` for another level); ``per_prompt``: the same per
    sentence and head, plus ``n_tokens``; ``summary``: the model's window, the mean sink
    and the number of queries.
    """

    mass: np.ndarray  # [layer, head, distance]
    sink: np.ndarray  # [layer, head]: mean attention to the first token (0 when ignore_first=False)
    n_queries: int
    model_name: str
    ignore_first: bool
    per_prompt: pd.DataFrame | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.per_prompt is None:
            self.per_prompt = empty_frame(["sentence", *_WINDOW_COLUMNS, "n_tokens"])

    def __repr__(self) -> str:
        L, H, D = self.mass.shape
        return f"DistanceProfile({self.model_name}: {L} layers x {H} heads, {self.n_queries} queries, distances 0..{D - 1})"

    @property
    def table(self) -> pd.DataFrame:
        return self.windows(0.9)

    @property
    def summary(self) -> pd.DataFrame:
        return pd.DataFrame([{"level": 0.9, "model_window": self.model_window(0.9), "mean_sink": float(self.sink.mean()),
                              "n_queries": self.n_queries}])

    def windows(self, level: float = 0.9) -> pd.DataFrame:
        """Effective window of every head: ``layer, head, window, sink, mean_distance``."""
        _check_level(level)
        return _window_table(self.mass, self.sink, level)

    def model_window(self, level: float = 0.9) -> float:
        """Effective window of the whole model (mean of all heads' normalised profiles)."""
        _check_level(level)
        return float(pooled_window(self.mass, level))

    def plot(self, ax=None, *, level: float = 0.9):
        """Cumulative attention mass vs distance, one line per layer (mean over its heads)."""
        from attnlab.viz.plots import context_window_curves

        cum = _cumulative(self.mass).mean(1)  # [layer, distance]
        L, D = cum.shape
        curves = pd.DataFrame({"distance": np.tile(np.arange(D), L), "cumulative attention mass": cum.reshape(-1),
                               "layer": np.repeat(np.arange(L), D)})
        return context_window_curves(
            curves, y="cumulative attention mass", group="layer", logx=True, reference=level, markers=False,
            title=f"{self.model_name}: model window {self.model_window(level):.0f} tokens at {level:.0%}", ax=ax,
        )


@torch.no_grad()
def attention_by_distance(
    model,
    corpus,
    *,
    interventions: Sequence = (),
    max_distance: int | None = None,
    ignore_first: bool = True,
    batch_size: int = 8,
    progress: bool = True,
) -> DistanceProfile:
    """Mean attention mass at every query-key distance, for every head, over ``corpus``.

    Distances beyond ``max_distance`` (None or an integer >= 0) are folded into the last bin.

    >>> from attnlab.testing import tiny_model
    >>> prof = attention_by_distance(tiny_model("gpt2"), ["the nurse said that she left ."], progress=False)
    >>> bool(np.allclose(prof.mass.sum(-1) + prof.sink, 1.0))
    True
    """
    return _distance_profile(model, corpus, interventions=interventions, max_distance=max_distance,
                             ignore_first=ignore_first, batch_size=batch_size, progress=progress, level=0.9)


@torch.no_grad()
def _distance_profile(model, corpus, *, interventions: Sequence, max_distance: int | None, ignore_first: bool,
                      batch_size: int, progress: bool, level: float) -> DistanceProfile:
    """:func:`attention_by_distance` with ``per_prompt``'s windows at ``level`` (``window_experiment``'s, whose
    table is at its level: per_prompt said 27 tokens where the table said 9 at level 0.5)."""
    max_distance = check_max_distance(max_distance)  # -3 put every pair in bin 0, silently
    _check_ignore_first(ignore_first)
    _check_level(level)
    sentences = prepare(model, corpus)
    order = {id(s): i for i, s in enumerate(sentences)}
    longest = max(s.n_tokens for s in sentences)
    D = longest if max_distance is None else min(max_distance + 1, longest)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    mass = torch.zeros(L, H, D, dtype=torch.float64)
    sink = torch.zeros(L, H, dtype=torch.float64)
    n_q = 0
    per_sentence = []
    for s in attention_batches(model, sentences, batch_size=batch_size, progress=progress,
                               interventions=interventions, desc="attention by distance"):
        p = s.pattern.double()  # [layer, head, query, key]
        n = s.n_tokens
        s_sink = p[..., 0].sum(-1) if ignore_first else torch.zeros(L, H, dtype=torch.float64)
        if ignore_first:
            p = p.clone()
            p[..., 0] = 0.0
        pos = torch.arange(n)
        dist = (pos[:, None] - pos[None, :]).abs().clamp(max=D - 1)  # [query, key]
        s_mass = torch.zeros(L, H, D, dtype=torch.float64).index_add_(2, dist.reshape(-1), p.reshape(L, H, n * n))
        mass += s_mass
        sink += s_sink
        n_q += n
        per_sentence.append(_window_table((s_mass / n).numpy(), (s_sink / n).numpy(), level)
                            .assign(sentence=order[id(s)], n_tokens=n))
    per_prompt = pd.concat(per_sentence, ignore_index=True)[["sentence", *_WINDOW_COLUMNS, "n_tokens"]]
    per_prompt = per_prompt.sort_values(["sentence", "layer", "head"], kind="stable").reset_index(drop=True)
    return DistanceProfile(mass=(mass / n_q).numpy(), sink=(sink / n_q).numpy(), n_queries=n_q,
                           model_name=model.cfg.name, ignore_first=ignore_first, per_prompt=per_prompt)


@torch.no_grad()
def loss_by_position(model, texts, *, interventions: Sequence = (), progress: bool = True,
                     batch_size: int = 4) -> pd.DataFrame:
    """Next-token loss (nats) at every position, averaged over ``texts``: ``position, loss, n``.

    Row ``position = t`` is the loss of predicting token t from tokens 0..t-1. Texts run
    ``batch_size`` at a time (right-padded by the engine; padding is never scored); the
    logits of a batch are ``batch_size x length x vocabulary`` floats, so lower it for long
    texts on a large vocabulary.
    """
    from tqdm.auto import tqdm

    if not model.cfg.is_causal or not model.cfg.has_lm_head:
        raise UnsupportedModel(f"{model.cfg.name} is not a causal language model; loss by position needs one")
    batch_size = check_batch_size(batch_size, auto=False)
    interventions = check_corpus_interventions(model, interventions)  # a generator served only the first batch
    sentences = prepare(model, texts)
    longest = max(s.n_tokens for s in sentences)
    total = torch.zeros(longest, dtype=torch.float64)
    count = torch.zeros(longest, dtype=torch.float64)
    check_deterministic(model)
    with tqdm(total=len(sentences), desc="loss by position", disable=not progress) as bar:
        for start in range(0, len(sentences), batch_size):
            tokens = model.pad([s.token_ids for s in sentences[start : start + batch_size]], padding_side="right")
            out = run(model, tokens, logits="all", interventions=interventions)
            # column t: log p(token t | tokens before it); 0 at padding and in column 0, which nothing predicts
            logp = token_logprobs(out.logits, out.tokens).double().cpu()
            width = logp.shape[1]
            total[1:width] -= logp[:, 1:].sum(0)
            count[1:width] += out.tokens.mask[:, 1:].cpu().double().sum(0)  # right padding: real tokens t >= 1
            bar.update(tokens.n_rows)
    keep = count > 0
    pos = torch.arange(longest)[keep]
    return pd.DataFrame({"position": pos.numpy(), "loss": (total[keep] / count[keep]).numpy(), "n": count[keep].numpy()})


class WindowExperiment(Result):
    """Effective windows and losses under several named conditions (``"clean"`` = no intervention).

    ``table``: every head's window under each condition (``condition, layer, head, window,
    sink, mean_distance``); ``summary``: per condition ``model_window`` and, for language
    models, ``mean_loss`` and ``late_loss``; ``per_prompt``: the windows per sentence and
    head under each condition (at the experiment's ``level``, as ``table``); ``loss``: loss
    by position per condition; ``profiles``: the :class:`DistanceProfile` of each condition.
    """

    def __init__(self, table: pd.DataFrame, summary: pd.DataFrame, loss: pd.DataFrame,
                 profiles: dict[str, DistanceProfile]):
        self.table = table
        self._summary = summary
        self.loss = loss
        self.profiles = profiles

    def __repr__(self) -> str:
        return f"WindowExperiment(conditions: {', '.join(self.profiles)})"

    @property
    def summary(self) -> pd.DataFrame:
        return self._summary

    @property
    def per_prompt(self) -> pd.DataFrame:
        return pd.concat([p.per_prompt.assign(condition=name) for name, p in self.profiles.items()], ignore_index=True)[
            ["condition", "sentence", *_WINDOW_COLUMNS, "n_tokens"]]

    windows = Renamed("table")

    def _check_heads(self, heads) -> list[tuple[int, int]]:
        """``(layer, head)`` pairs in range: -1 read the last layer, one past the end failed in numpy."""
        L, H = next(iter(self.profiles.values())).mass.shape[:2]
        if isinstance(heads, (str, bytes)) or not isinstance(heads, Iterable):
            raise InvalidLocation(f"heads must be a list of (layer, head) pairs or None (all), got {heads!r}")
        out = [check_head_pair(loc, f"heads[{i}]", L, H, "the profiles have") for i, loc in enumerate(heads)]
        if not out:  # np.stack([]) failed with a bare ValueError
            raise InvalidLocation("heads is empty: give at least one (layer, head) pair, or None for all")
        return out

    def plot(self, ax=None, *, heads: Sequence[tuple[int, int]] | None = None, smooth: int = 16):
        """Two panels: cumulative attention mass vs distance (mean over ``heads``, default all;
        non-sink mass normalised per head), and loss by position (moving average). ``ax``: two Axes."""
        from attnlab.viz.plots import context_window_curves, panels

        heads = None if heads is None else self._check_heads(heads)
        smooth = check_positive_int(smooth, "smooth")  # 0 failed in pandas' rolling()
        fig, (left, right) = panels(ax, 2, 11, 3.8, "WindowExperiment.plot")
        y = "cumulative attention mass " + ("(all heads)" if heads is None else f"({len(heads)} heads)")
        curves = []
        for name, prof in self.profiles.items():
            mass = prof.mass if heads is None else np.stack([prof.mass[l, h] for l, h in heads])
            cum = _cumulative(mass).reshape(-1, mass.shape[-1]).mean(0)
            curves.append(pd.DataFrame({"distance": np.arange(len(cum)), y: cum, "condition": name}))
        context_window_curves(pd.concat(curves, ignore_index=True), y=y, group="condition", logx=True, markers=False,
                              title="attention by distance", ax=left)
        if not self.loss.empty:
            label = f"loss (nats, moving mean of {smooth})"
            smoothed = [sub.assign(**{label: sub["loss"].rolling(smooth, min_periods=1).mean()})
                        for _, sub in self.loss.groupby("condition", sort=False)]
            context_window_curves(pd.concat(smoothed, ignore_index=True), x="position", y=label, group="condition",
                                  markers=False, title="loss by position", ax=right)
        else:
            right.set_axis_off()
        return fig


def _window_conditions(conditions) -> dict[str, list]:
    """``{"clean": [], name: [specs], ...}``, checked before any pass.

    Names are compared as the strings the tables show: a user's "clean" would replace the
    clean baseline, and 1 and "1" would silently become one condition.
    """
    example = "e.g. {'no_head_0': [AblateHead(0, 0)]}"
    if not isinstance(conditions, Mapping):
        raise InvalidInput(f"conditions must be a dict of name -> list of interventions ({example}), "
                           f"got {type(conditions).__name__}")
    runs: dict[str, list] = {"clean": []}
    keys: dict[str, object] = {}
    for key, specs in conditions.items():
        name = str(key)
        if name == "clean":
            raise InvalidInput(f"condition name 'clean' is reserved for the run without interventions, which "
                               f"window_experiment adds itself; name this condition otherwise ({example})")
        if name in runs:
            raise InvalidInput(f"conditions {keys[name]!r} and {key!r} are both named {name!r} in the tables; "
                               "give each condition a distinct name")
        if isinstance(specs, (str, bytes)) or hasattr(specs, "validate") or not isinstance(specs, Iterable):
            hint = f" (a single spec goes in a list: [{specs!r:.60}])" if hasattr(specs, "validate") else ""
            raise InvalidInput(f"condition {name!r}: expected a list of interventions, got {type(specs).__name__} "
                               f"{specs!r:.80}{hint}")
        specs = list(specs)  # any iterable, as bias_experiment takes (a generator, dict.values())
        for i, spec in enumerate(specs):
            if not (hasattr(spec, "validate") and hasattr(spec, "prepare")):  # what intervene() accepts
                raise InvalidSpec(f"condition {name!r}, item {i}: expected an intervention spec (AblateHead, ...), "
                                  f"got {type(spec).__name__} {spec!r:.80}")
        runs[name], keys[name] = specs, key
    return runs


def window_experiment(
    model,
    texts,
    conditions: Mapping[str, Sequence],
    *,
    level: float = 0.9,
    late_from: int | None = None,
    ignore_first: bool = True,
    progress: bool = True,
) -> WindowExperiment:
    """Attention windows (and, for language models, loss by position) with and without interventions.

    ``conditions`` maps a name to a list of intervention specs; a ``"clean"`` run is added
    first, so "clean" is not a condition name, and names must differ as strings (1 and "1" do not). ``late_loss`` in the summary averages the loss over positions >= ``late_from``
    (an integer in 1..longest length - 1; default: the second half of the longest text).
    """
    runs = _window_conditions(conditions)
    _check_level(level)  # before any pass, not after the first condition's
    _check_ignore_first(ignore_first)
    texts = check_corpus(texts)  # read once: every condition runs the same texts (a generator was empty the second time)
    runs = {name: check_corpus_interventions(model, specs) for name, specs in runs.items()}  # before any pass
    longest = max(s.n_tokens for s in prepare(model, texts))
    if late_from is not None and not (is_integer(late_from) and 1 <= late_from <= longest - 1):
        # 1000 gave late_loss NaN, -5 averaged every position, 2.5 passed: all without a word
        raise InvalidInput(f"late_from must be an integer position in 1..{longest - 1} (the longest text has "
                           f"{longest} tokens; position t is the loss of predicting token t), got {late_from!r}")
    start = (longest - 1) // 2 if late_from is None else int(late_from)
    lm = model.cfg.is_causal and model.cfg.has_lm_head
    win_rows, summary, losses, profiles = [], [], [], {}
    for name, specs in runs.items():
        prof = _distance_profile(model, texts, interventions=specs, max_distance=None, ignore_first=ignore_first,
                                 batch_size=8, progress=progress, level=level)
        profiles[name] = prof
        win_rows.append(prof.windows(level).assign(condition=name))
        row = {"condition": name, "model_window": prof.model_window(level)}
        if lm:
            lp = loss_by_position(model, texts, interventions=specs, progress=progress).assign(condition=name)
            row["mean_loss"] = float((lp["loss"] * lp["n"]).sum() / lp["n"].sum())
            row["late_loss"] = float(lp.loc[lp["position"] >= start, "loss"].mean())
            losses.append(lp)
        summary.append(row)
    windows = pd.concat(win_rows, ignore_index=True)
    windows = windows[["condition", *_WINDOW_COLUMNS]]
    loss = pd.concat(losses, ignore_index=True)[["condition", "position", "loss", "n"]] if losses else pd.DataFrame(
        columns=["condition", "position", "loss", "n"])
    return WindowExperiment(windows, pd.DataFrame(summary), loss, profiles)
