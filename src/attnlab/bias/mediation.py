"""Causal mediation analysis of gender bias through attention heads (Vig et al. 2020), as sweeps.

A prompt pair differs by a gender intervention: ``x = "The nurse said that"`` and
``x' = "The man said that"`` (same number of tokens). With the next-token odds

    odds(x) = p(anti-stereotypical pronoun | x) / p(stereotypical pronoun | x)

the effects of a set of heads ``U`` on one pair are odds ratios minus one:

    TE      = odds(x') / odds(x) - 1
    NIE(U)  = odds(x  with the attention PATTERN of U taken from x') / odds(x) - 1
    NDE(U)  = odds(x' with the attention pattern of U frozen at x)   / odds(x) - 1

and each is reported over pairs three ways, each with a 95% bootstrap interval: the mean
(Vig et al.'s number; heavy-tailed, since an odds ratio can be in the thousands), the mean
log odds ratio and the median.

How it runs: the log odds are a :class:`~attnlab.measure.LogitDiff` (anti vs stereotypical
pronoun, one pair per prompt); the NIE of every unit (head, layer or all heads) is one
variant of :func:`attnlab.measure.sweep_interventions` made of
``Patch(layer, head, site="pattern", source=[x' of every pair])`` specs. The sweep runs
the counterfactual prompts once per chunk of pairs and patches their patterns in row by
row, reuses the layers before each unit (prefix reuse) and stacks several units per
batch; the NDE is the same sweep run on x' with sources x. All levels come from one call,
and TE is measured once.

>>> from attnlab.testing import tiny_model
>>> from attnlab.bias.mediation import MediationPair, causal_mediation
>>> model = tiny_model("gpt2")
>>> pair = MediationPair("The nurse said that", "The man said that", stereotypical=" she", anti=" he")
>>> result = causal_mediation(model, [pair], levels=("head", "layer", "model"), n_boot=0)
>>> result.table.groupby("level", sort=False).size().to_dict()
{'head': 8, 'layer': 2, 'model': 1}
"""

from __future__ import annotations

import numbers
import operator
import warnings
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass

import numpy as np
import pandas as pd

from attnlab.bias._checks import check_lm, check_pronouns, distinct_tokens, single_token
from attnlab.bias.templates import (
    Template,
    as_templates,
    check_next_word_prefixes,
    occupation_frame,
    templates as shipped_templates,
)
from attnlab.errors import InvalidInput, InvalidLocation, check_positive_int
from attnlab.interventions import Patch
from attnlab.measure import LogitDiff, Result, bootstrap, check_resampling, score, sweep_interventions
from attnlab.measure.batch_size import check_batch_size
from attnlab.measure.plots import heatmap
from attnlab.measure.result import renamed

__all__ = [
    "MediationPair",
    "MediationResult",
    "mediation_pairs",
    "total_effect",
    "mediation_effects",
    "causal_mediation",
    "greedy_heads",
    "LEVELS",
    "EFFECTS",
    "READOUTS",
]

#: granularity of :func:`causal_mediation`
LEVELS = ("head", "layer", "model")
#: indirect (patterns of x' in x) and direct (patterns of x frozen in x') effects
EFFECTS = ("nie", "nde")
#: how the per-pair odds ratios are summarised: column suffix -> what it is
READOUTS = {"": "mean of odds ratio - 1", "_log": "mean log odds ratio", "_median": "median of odds ratio - 1"}

Head = tuple[int, int | None]  # (layer, head); head None = every head of the layer


@dataclass(frozen=True)
class MediationPair:
    """A base prompt ``x``, its gender-intervened twin ``x'`` and the two pronoun continuations."""

    base: str  # x, e.g. "The nurse said that"
    counterfactual: str  # x', e.g. "The man said that"
    stereotypical: str  # continuation the stereotype predicts after x, e.g. " she"
    anti: str  # the other one, e.g. " he"
    label: str = ""  # free text, e.g. the occupation


def _checked_pairs(model, pairs) -> list[MediationPair]:
    check_lm(model, causal=True)
    pairs = [pairs] if isinstance(pairs, MediationPair) else list(pairs)
    if not pairs:
        raise InvalidInput("no prompt pairs given: pass a non-empty list of MediationPair")
    seen: dict[tuple[str, ...], int] = {}
    for i, p in enumerate(pairs):
        if not isinstance(p, MediationPair):
            raise InvalidInput(f"pairs[{i}] must be a MediationPair, got {type(p).__name__}")
        for name in ("base", "counterfactual", "stereotypical", "anti"):  # the tokenizer's error named no pair
            value = getattr(p, name)
            if not isinstance(value, str):
                raise InvalidInput(f"pair {i}: {name} must be a string, got {value!r} ({type(value).__name__})")
        key = (p.base, p.counterfactual, p.stereotypical, p.anti)  # the label aside: the same measurement
        if key in seen:  # each copy counts again in every mean effect
            warnings.warn(f"pair {i} repeats pair {seen[key]} ({p.base!r} / {p.counterfactual!r}); it is counted again "
                          "in every mean", UserWarning, stacklevel=3)
        seen.setdefault(key, i)
        x, xp = model.token_rows([p.base, p.counterfactual])
        if x == xp:  # nothing intervened: its effects are exactly 0, averaged in as "gender has no effect"
            warnings.warn(f"pair {i}: {p.base!r} and {p.counterfactual!r} are the same tokens for {model.cfg.name}, so "
                          "its TE, NIE and NDE are exactly 0 (a check of the method, or a replacement word that was "
                          "left out?); x' should differ from x in the gendered word", UserWarning, stacklevel=3)
        if len(x) != len(xp):
            raise InvalidInput(
                f"pair {i}: {p.base!r} is {len(x)} tokens but {p.counterfactual!r} is {len(xp)} for "
                f"{model.cfg.name}; x and x' must have the same number of tokens (pick a replacement word "
                "that is as many tokens as the word it replaces)"
            )
        for word in (p.stereotypical, p.anti):
            single_token(model, word, "the odds need single-token pronouns (try a leading space, e.g. ' she')")
        distinct_tokens(model, p.stereotypical, p.anti, f"pair {i} (stereotypical, anti)")
        spaced = [w[:1].isspace() for w in (p.stereotypical, p.anti)]
        if spaced[0] != spaced[1]:  # the odds compared a next word with a word glued to the prompt: they measured the space
            yes, no = ("stereotypical", "anti") if spaced[0] else ("anti", "stereotypical")
            raise InvalidInput(f"pair {i}: {yes} {getattr(p, yes)!r} starts with a space but {no} {getattr(p, no)!r} "
                               "does not; write both as the next word, with a leading space (' she', ' he')")
    return pairs


def _log_odds_metric(pairs: Sequence[MediationPair]) -> LogitDiff:
    """``log odds = log p(anti) - log p(stereotypical)`` after each pair's prompt."""
    return LogitDiff([p.anti for p in pairs], [p.stereotypical for p in pairs], single_token=True)


def mediation_pairs(
    model,
    *,
    occupations=None,
    templates: Sequence[Template | str] | None = None,
    pronouns: tuple[str, str] = ("she", "he"),
    replacements: tuple[str, str] = ("woman", "man"),
    threshold: float = 0.5,
) -> tuple[list[MediationPair], pd.DataFrame]:
    """Build (x, x') pairs from occupations and templates; keep those with equal token counts.

    An occupation with ``share_women >= threshold`` is female-stereotyped: its stereotypical
    pronoun is the female one and x' replaces the occupation by the male word (``"man"``);
    otherwise the reverse (``"woman"``). Returns the pairs (occupation-major, templates in
    order) and a DataFrame of the skipped (occupation, template) combinations with the reason.
    """
    if not isinstance(threshold, numbers.Real) or isinstance(threshold, bool) or not 0 <= threshold <= 1:
        # NaN (every comparison False) or a percent (50) made every occupation male-stereotyped without a word
        raise InvalidInput(f"threshold must be a share of women in 0..1 (a fraction, not a percent), got {threshold!r}")
    occ = occupation_frame(occupations)
    tmpl = shipped_templates() if templates is None else as_templates(templates)
    female, male = check_pronouns(pronouns)
    w_female, w_male = check_pronouns(replacements, "replacements")
    check_next_word_prefixes(tmpl, " " + female)
    pairs, skipped = [], []
    for o, share in zip(occ.occupation, occ.share_women):
        fem = share >= threshold
        for t in tmpl:
            x, xp = t.causal(o), t.causal(w_male if fem else w_female)
            nx, nxp = (len(r) for r in model.token_rows([x, xp]))
            if nx != nxp:
                skipped.append({"occupation": o, "template": t.prefix, "reason": f"{nx} vs {nxp} tokens"})
                continue
            stereo, anti = (female, male) if fem else (male, female)
            pairs.append(MediationPair(x, xp, " " + stereo, " " + anti, label=o))
    if not pairs:
        raise InvalidInput(
            "no occupation/template combination gives x and x' of equal token length; "
            f"skipped: {skipped[:3]}"
        )
    return pairs, pd.DataFrame(skipped, columns=["occupation", "template", "reason"])


def _as_int(v):
    """numpy integers (from a DataFrame) count as ints; anything else is left for the range check."""
    if v is None or isinstance(v, bool):
        return v
    try:
        return operator.index(v)
    except TypeError:
        return v


def _check_head(model, item, where: str) -> Head:
    """One ``(layer, head)`` pair (``head`` None: every head of the layer); an int or a triple raised a bare
    TypeError / ValueError from unpacking."""
    try:
        if isinstance(item, (str, bytes)):
            raise TypeError
        layer, head = (_as_int(v) for v in item)
    except (TypeError, ValueError):
        raise InvalidInput(f"{where} must be a (layer, head) pair, got {item!r}; {model.cfg.name} has "
                           f"{model.cfg.layer_range()} and {model.cfg.head_range()}") from None
    model.check_layer(layer)
    if head is not None:
        model.check_head(head)
    return layer, head


def _check_units(model, units: Sequence[Sequence[Head]], what: str = "units") -> list[list[Head]]:
    out = []
    for j, u in enumerate(units):
        if isinstance(u, (str, bytes)) or not isinstance(u, Iterable):
            raise InvalidInput(f"{what}[{j}] must be a list of (layer, head) pairs, got {u!r}")
        out.append([_check_head(model, item, f"{what}[{j}][{i}]") for i, item in enumerate(u)])
    return out


def _log_odds(model, pairs, *, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Log odds of every pair under x and under x' (``[pair]`` each): what TE is made of."""
    metric = _log_odds_metric(pairs)
    return (score(model, [p.base for p in pairs], metric, batch_size=batch_size),
            score(model, [p.counterfactual for p in pairs], metric, batch_size=batch_size))


def _log_ratios(model, pairs, units, effect: str, lo_x: np.ndarray, lo_xp: np.ndarray, *, batch_size, progress) -> np.ndarray:
    """``[pair, unit]`` log odds ratios ``log odds(patched run) - log odds(x)`` of one effect, by a sweep."""
    run_on, source = ([p.base for p in pairs], [p.counterfactual for p in pairs])
    if effect == "nde":
        run_on, source = source, run_on
    variants = {j: [Patch(layer, head, site="pattern", source=source) for layer, head in unit]
                for j, unit in enumerate(units) if unit}
    out = np.empty((len(pairs), len(units)))
    out[:, [j for j, unit in enumerate(units) if not unit]] = ((lo_x if effect == "nie" else lo_xp) - lo_x)[:, None]
    if variants:
        sweep = sweep_interventions(model, run_on, _log_odds_metric(pairs), variants, batch_size=batch_size, n_boot=0,
                                    progress=progress)
        patched = sweep.per_prompt["intervened"].to_numpy().reshape(len(variants), len(pairs))  # [unit, pair]
        out[:, list(variants)] = (patched - lo_x[None, :]).T
    return out


def _check_effects(effects) -> list[str]:
    """The asked effects, each once (("nie", "nie") made two "nie" columns); a set in EFFECTS' order (its own varied)."""
    given = effects
    effects = [effects] if isinstance(effects, str) else list(effects) if isinstance(effects, Iterable) else [effects]
    bad = [e for e in effects if not isinstance(e, str) or e not in EFFECTS]
    if bad or not effects or len(set(effects)) < len(effects):
        raise InvalidInput(f"effects must be a non-empty subset of ('nie', 'nde'), each named once, got {given!r}")
    return [e for e in EFFECTS if e in effects] if isinstance(given, Set) else effects


def mediation_effects(
    model,
    pairs: Sequence[MediationPair],
    units: Sequence[Sequence[Head]],
    *,
    effect: str = "nie",
    batch_size: int = 256,
    progress: bool = False,
) -> np.ndarray:
    """Per-pair effect of each head set, ``[n_pairs, n_units]`` (odds ratio - 1).

    ``units[j]`` is a list of ``(layer, head)`` (``head=None``: all heads of the layer).
    ``effect="nie"`` runs x with the units' patterns taken from x'; ``"nde"`` runs x' with
    them frozen at x. Each value is ``odds(run) / odds(x) - 1``. ``batch_size``: rows of
    one forward pass (several units share one, each on its own copy of the pairs).
    """
    if effect not in EFFECTS:
        raise InvalidInput(f"unknown effect {effect!r}; valid: 'nie', 'nde'")
    check_batch_size(batch_size)
    pairs = _checked_pairs(model, pairs)
    units = _check_units(model, units)
    if not units:
        raise InvalidInput("no head sets given")
    lo_x, lo_xp = _log_odds(model, pairs, batch_size=batch_size)
    return np.expm1(_log_ratios(model, pairs, units, effect, lo_x, lo_xp, batch_size=batch_size, progress=progress))


def total_effect(model, pairs: Sequence[MediationPair], *, batch_size: int = 256) -> pd.DataFrame:
    """Per pair: odds under x and x', ``TE = odds(x') / odds(x) - 1`` and its log, ``log_odds_ratio``."""
    pairs = _checked_pairs(model, pairs)
    lo_x, lo_xp = _log_odds(model, pairs, batch_size=batch_size)
    return _total_frame(pairs, lo_x, lo_xp)


def _total_frame(pairs, lo_x: np.ndarray, lo_xp: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({
        "label": [p.label for p in pairs],
        "base": [p.base for p in pairs],
        "counterfactual": [p.counterfactual for p in pairs],
        "odds_base": np.exp(lo_x),
        "odds_counterfactual": np.exp(lo_xp),
        "te": np.expm1(lo_xp - lo_x),
        "log_odds_ratio": lo_xp - lo_x,
    })


def readouts(log_ratios: np.ndarray, prefix: str, *, n_boot: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    """The three summaries of ``[..., pair]`` log odds ratios, each with its bootstrap interval.

    Keys ``{prefix}``, ``{prefix}_log`` and ``{prefix}_median`` (see :data:`READOUTS`), each
    with ``_low`` and ``_high``: the mean of ``odds ratio - 1``, the mean log odds ratio and
    the median of ``odds ratio - 1``. Every unit is resampled with the same pair indices.
    """
    out = {}
    for suffix, values, statistic in (("", np.expm1(log_ratios), "mean"), ("_log", log_ratios, "mean"),
                                      ("_median", np.expm1(log_ratios), "median")):
        est, low, high = bootstrap(values, statistic, n_boot=n_boot, seed=seed)
        out.update({f"{prefix}{suffix}": est, f"{prefix}{suffix}_low": low, f"{prefix}{suffix}_high": high})
    return out


class MediationResult(Result):
    """What :func:`causal_mediation` measured.

    ``table``: one row per unit (``level``, ``layer``, ``head``; -1 where a unit spans all
    heads or layers) with, for each effect computed, its three readouts and their intervals
    (``nie``, ``nie_log``, ``nie_median`` and ``_low`` / ``_high``; see :data:`READOUTS`);
    ``per_prompt``: one row per unit and pair (``pair``, ``label``, ``nie``, ``nie_log``, ...);
    ``total``: per pair odds, TE and log odds ratio; ``te``: (mean TE, low, high);
    ``summary``: TE and the largest-NIE unit of each level in all three readouts;
    ``plot(ax=None, effect=None)``: the layer x head map of the mean effect (default: the
    first effect computed; needs the head level, see ``can_plot``).
    """

    def __init__(self, levels: tuple[str, ...], table: pd.DataFrame, per_prompt: pd.DataFrame, total: pd.DataFrame,
                 model_name: str, *, n_boot: int = 1000, seed: int = 0):
        self.levels, self.table, self.per_prompt, self.total, self.model_name = levels, table, per_prompt, total, model_name
        self.te_readouts = readouts(total["log_odds_ratio"].to_numpy(float), "te", n_boot=n_boot, seed=seed)
        self.te = tuple(float(self.te_readouts[k]) for k in ("te", "te_low", "te_high"))

    per_unit = renamed("table")
    per_head = renamed("table")
    per_pair = renamed("per_prompt")

    @property
    def level(self) -> str:
        """The first level measured (the only one when a single level was asked for)."""
        return self.levels[0]

    @property
    def effects(self) -> list[str]:
        return [e for e in EFFECTS if e in self.table.columns]

    @property
    def summary(self) -> pd.DataFrame:
        rows = []

        def add(effect, level, layer, head, values, prefix):
            for suffix in READOUTS:
                rows.append({"effect": effect, "level": level, "layer": layer, "head": head,
                             "readout": READOUTS[suffix], "value": float(values[f"{prefix}{suffix}"]),
                             "low": float(values[f"{prefix}{suffix}_low"]), "high": float(values[f"{prefix}{suffix}_high"])})

        add("te", "total", -1, -1, self.te_readouts, "te")
        for level in self.levels:
            rows_of_level = self.table[self.table["level"] == level]
            for effect in self.effects:
                best = rows_of_level.loc[rows_of_level[effect].idxmax()]
                add(effect, level, int(best["layer"]), int(best["head"]), best, effect)
        return pd.DataFrame(rows)

    @property
    def can_plot(self) -> bool:
        """The map is of heads: a result of layers or the whole model has none (``save`` writes only CSV)."""
        return "head" in self.levels

    def top_heads(self, k: int = 5, *, effect: str | None = None) -> list[tuple[int, int]]:
        """The k heads with the largest mean effect (default: the first computed; needs the head level)."""
        effect, heads = self._heads(effect)
        k = check_positive_int(k, "k")
        best = heads.sort_values(effect, ascending=False).head(k)
        return [(int(layer), int(head)) for layer, head in zip(best["layer"], best["head"])]

    def plot(self, ax=None, *, effect: str | None = None):
        """Layer x head heatmap of the mean effect (default: the first computed; needs the head level)."""
        effect, heads = self._heads(effect)
        if ax is not None:  # one Axes (or a list of one); anything else is refused as by the other results
            from attnlab.viz.plots import panels

            _, (ax,) = panels(ax, 1, 0, 0, "MediationResult.plot")
        grid = heads.pivot(index="layer", columns="head", values=effect)
        return heatmap(grid, title=f"{self.model_name}: {effect.upper()} per head (TE = {self.te[0]:.2f})",
                       label=f"{effect.upper()} (odds ratio - 1)", ax=ax)

    def heatmap(self, effect: str | None = None, ax=None):
        """Deprecated spelling of ``plot(ax, effect=...)``."""
        warnings.warn("MediationResult.heatmap is deprecated and will be removed in the next release; use .plot(effect=...)",
                      DeprecationWarning, stacklevel=2)
        return self.plot(ax, effect=effect)

    def _heads(self, effect: str | None) -> tuple[str, pd.DataFrame]:
        """The effect asked for (None: the first computed; "nie" was assumed even when only NDE was) and the head rows."""
        if not self.can_plot:
            raise InvalidInput(f"this needs the head level; this result has levels {', '.join(self.levels)}")
        effect = self.effects[0] if effect is None else effect
        if effect not in self.effects:
            raise InvalidInput(f"effect {effect!r} was not computed; computed: {', '.join(self.effects)}")
        return effect, self.table[self.table["level"] == "head"]


def _units_for(model, level: str) -> list[list[Head]]:
    c = model.cfg
    if level == "head":
        return [[(layer, head)] for layer in range(c.n_layers) for head in range(c.n_heads)]
    if level == "layer":
        return [[(layer, None)] for layer in range(c.n_layers)]
    if level == "model":
        return [[(layer, None) for layer in range(c.n_layers)]]
    raise InvalidInput(f"unknown level {level!r}; valid: {', '.join(LEVELS)}")


def _unit_keys(level: str, unit: list[Head]) -> tuple[int, int]:
    if level == "model":
        return -1, -1
    layer, head = unit[0]
    return layer, -1 if head is None else head


def causal_mediation(
    model,
    pairs: Sequence[MediationPair],
    *,
    levels: str | Sequence[str] = ("head",),
    effects: Sequence[str] = ("nie", "nde"),
    batch_size: int = 256,
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = False,
    level: str | None = None,
) -> MediationResult:
    """NIE and NDE of every head (``"head"``), layer (``"layer"``) and/or of all heads (``"model"``).

    ``levels``: one level or several; all of them come from one sweep per effect (a unit per
    head, per layer and the whole model side by side), with TE measured once. Returns a
    :class:`MediationResult`; ``result.plot()`` draws the layer x head map. (``level="head"``
    is the previous spelling of ``levels=("head",)`` and still works, with a ``DeprecationWarning``.)
    """
    n_boot, seed = check_resampling(n_boot, seed)
    if level is not None:
        warnings.warn("causal_mediation(level=...) is deprecated and will be removed in the next release; "
                      "use levels=(...)", DeprecationWarning, stacklevel=2)
        levels = level
    if isinstance(levels, Set):  # its order varies from run to run: the table's rows follow LEVELS
        levels = sorted(levels, key=lambda lv: (LEVELS.index(lv) if lv in LEVELS else len(LEVELS), str(lv)))
    ordered = isinstance(levels, Iterable) and not isinstance(levels, Mapping)
    levels = (levels,) if isinstance(levels, str) else tuple(levels) if ordered else ()
    if not levels or not all(isinstance(lv, str) for lv in levels) or len(set(levels)) != len(levels):
        raise InvalidInput(f"levels must be a non-empty list of distinct levels from {', '.join(LEVELS)}, got {levels!r}")
    units_by_level = {lv: _units_for(model, lv) for lv in levels}
    effects = _check_effects(effects)
    check_batch_size(batch_size)
    pairs = _checked_pairs(model, pairs)
    units = [(lv, u) for lv in levels for u in units_by_level[lv]]
    lo_x, lo_xp = _log_odds(model, pairs, batch_size=batch_size)
    ratios = {e: _log_ratios(model, pairs, [u for _, u in units], e, lo_x, lo_xp, batch_size=batch_size, progress=progress)
              for e in effects}  # [pair, unit]
    keys = pd.DataFrame([{"level": lv, "layer": _unit_keys(lv, u)[0], "head": _unit_keys(lv, u)[1]} for lv, u in units])
    table = keys.copy()
    for e in effects:
        for name, column in readouts(ratios[e].T, e, n_boot=n_boot, seed=seed).items():
            table[name] = column
    n_pairs = len(pairs)
    long = keys.loc[np.repeat(np.arange(len(units)), n_pairs)].reset_index(drop=True)
    long.insert(1, "pair", np.tile(np.arange(n_pairs), len(units)))
    long.insert(2, "label", [p.label for p in pairs] * len(units))
    for e in effects:
        long[e] = np.expm1(ratios[e].T.reshape(-1))
        long[f"{e}_log"] = ratios[e].T.reshape(-1)
    total = _total_frame(pairs, lo_x, lo_xp)
    return MediationResult(levels, table, long, total, model.cfg.name, n_boot=n_boot, seed=seed)


def greedy_heads(
    model,
    pairs: Sequence[MediationPair],
    *,
    k: int = 5,
    candidates: Sequence[tuple[int, int]] | None = None,
    batch_size: int = 256,
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = False,
) -> pd.DataFrame:
    """Greedy head-set search: at each step add the head that most increases the set's NIE.

    Returns one row per step: ``step, layer, head`` and the NIE of the whole set chosen so far
    (all its patterns taken from x' at once) in the three readouts with intervals (``nie``,
    ``nie_low``, ``nie_high``, ``nie_log``, ..., ``nie_median``, ...).
    """
    n_boot, seed = check_resampling(n_boot, seed)
    k = check_positive_int(k, "k")
    check_batch_size(batch_size)
    c = model.cfg
    pool = [(layer, head) for layer in range(c.n_layers) for head in range(c.n_heads)] if candidates is None else list(candidates)
    pool = [_check_head(model, item, f"candidates[{i}]") for i, item in enumerate(pool)]
    twice = sorted({h for h in pool if pool.count(h) > 1}, key=str)
    if twice:  # a chosen head leaves the options with its copies, and a later step had none to pick from
        raise InvalidInput(f"candidates must be distinct heads; given more than once: {', '.join(map(str, twice))}")
    if k > len(pool):
        raise InvalidLocation(f"k={k} but only {len(pool)} candidate heads")
    pairs = _checked_pairs(model, pairs)
    lo_x, lo_xp = _log_odds(model, pairs, batch_size=batch_size)
    chosen: list[Head] = []
    rows = []
    for step in range(k):
        options = [h for h in pool if h not in chosen]
        ratios = _log_ratios(model, pairs, [chosen + [h] for h in options], "nie", lo_x, lo_xp,
                             batch_size=batch_size, progress=progress)
        best = int(np.argmax(np.expm1(ratios).mean(axis=0)))
        chosen.append(options[best])
        rows.append({"step": step + 1, "layer": options[best][0], "head": options[best][1],
                     **{name: float(v) for name, v in readouts(ratios[:, best], "nie", n_boot=n_boot, seed=seed).items()}})
    return pd.DataFrame(rows)
