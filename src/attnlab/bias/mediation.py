"""Causal mediation analysis of gender bias through attention heads (Vig et al. 2020).

A prompt pair differs by a gender intervention: ``x = "The nurse said that"`` and
``x' = "The man said that"`` (same number of tokens). With the next-token odds

    odds(x) = p(anti-stereotypical pronoun | x) / p(stereotypical pronoun | x)

the effects of a set of heads ``U`` are, averaged over pairs:

    TE      = odds(x') / odds(x) - 1
    NIE(U)  = odds(x  with the attention PATTERN of U taken from x') / odds(x) - 1
    NDE(U)  = odds(x' with the attention pattern of U frozen at x)   / odds(x) - 1

Batched: one (pair, head set) per batch row; each row carries its own
:class:`~attnlab.interventions.Patch` on ``hook_pattern`` (``rows=[i]``), so many heads
are measured in one forward pass.

>>> from attnlab.testing import tiny_model
>>> from attnlab.bias.mediation import MediationPair, causal_mediation
>>> model = tiny_model("gpt2")
>>> pair = MediationPair("The nurse said that", "The man said that", stereotypical=" she", anti=" he")
>>> result = causal_mediation(model, [pair], n_boot=0)
>>> result.per_head.shape[0] == model.cfg.n_layers * model.cfg.n_heads
True
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from attnlab.bias import _scoring
from attnlab.bias._stats import mean_ci
from attnlab.bias.pronouns import _check_pronouns, occupation_frame
from attnlab.bias.templates import Template, _as_templates, templates as shipped_templates
from attnlab.engine.forward import run
from attnlab.engine.locations import hook_name
from attnlab.engine.tokens import Tokens
from attnlab.errors import InvalidInput, InvalidLocation
from attnlab.interventions import Patch

__all__ = [
    "MediationPair",
    "MediationResult",
    "mediation_pairs",
    "total_effect",
    "mediation_effects",
    "causal_mediation",
    "greedy_heads",
    "LEVELS",
]

#: granularity of :func:`causal_mediation`
LEVELS = ("head", "layer", "model")

Head = tuple[int, int | None]  # (layer, head); head None = every head of the layer


@dataclass(frozen=True)
class MediationPair:
    """A base prompt ``x``, its gender-intervened twin ``x'`` and the two pronoun continuations."""

    base: str  # x, e.g. "The nurse said that"
    counterfactual: str  # x', e.g. "The man said that"
    stereotypical: str  # continuation the stereotype predicts after x, e.g. " she"
    anti: str  # the other one, e.g. " he"
    label: str = ""  # free text, e.g. the occupation


def _single(model, text: str, what: str) -> int:
    ids = _scoring.token_ids(model, text, special=False)
    if len(ids) != 1:
        raise InvalidInput(
            f"{what} {text!r} is {len(ids)} tokens for {model.cfg.name} ({ids}); the odds need single-token "
            "pronouns (try a leading space, e.g. ' she')"
        )
    return ids[0]


def _encode_pairs(model, pairs: Sequence[MediationPair]) -> list[tuple[list[int], list[int], int, int]]:
    _scoring.check_lm(model, causal=True)
    if isinstance(pairs, MediationPair):
        pairs = [pairs]
    pairs = list(pairs)
    if not pairs:
        raise InvalidInput("no prompt pairs given: pass a non-empty list of MediationPair")
    out = []
    for i, p in enumerate(pairs):
        if not isinstance(p, MediationPair):
            raise InvalidInput(f"pairs[{i}] must be a MediationPair, got {type(p).__name__}")
        x = _scoring.token_ids(model, p.base, special=True)
        xp = _scoring.token_ids(model, p.counterfactual, special=True)
        if len(x) != len(xp):
            raise InvalidInput(
                f"pair {i}: {p.base!r} is {len(x)} tokens but {p.counterfactual!r} is {len(xp)} for "
                f"{model.cfg.name}; x and x' must have the same number of tokens (pick a replacement word "
                "that is as many tokens as the word it replaces)"
            )
        _scoring._check_length(model, len(x), p.base)
        out.append((x, xp, _single(model, p.stereotypical, "stereotypical pronoun"), _single(model, p.anti, "anti pronoun")))
    return out


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
    otherwise the reverse (``"woman"``). Returns the pairs and a DataFrame of the skipped
    (occupation, template) combinations with the reason.
    """
    occ = occupation_frame(occupations)
    tmpl = shipped_templates() if templates is None else _as_templates(templates)
    female, male = _check_pronouns(pronouns)
    w_female, w_male = _check_pronouns(replacements)
    pairs, skipped = [], []
    for o, share in zip(occ.occupation, occ.share_women):
        fem = share >= threshold
        for t in tmpl:
            x, xp = t.causal(o), t.causal(w_male if fem else w_female)
            nx, nxp = len(_scoring.token_ids(model, x, special=True)), len(_scoring.token_ids(model, xp, special=True))
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


@torch.no_grad()
def _log_odds(model, ids: torch.Tensor, anti: torch.Tensor, stereo: torch.Tensor) -> torch.Tensor:
    """log p(anti) - log p(stereo) at the last position of equal-length rows ``[batch]``."""
    logits = run(model, Tokens(ids, torch.ones_like(ids), "right"), logits="last").logits.float()
    logp = logits.log_softmax(-1)
    rows = torch.arange(len(ids), device=logp.device)
    return (logp[rows, anti.to(logp.device)] - logp[rows, stereo.to(logp.device)]).cpu()


def _as_int(v):
    """numpy integers (from a DataFrame) count as ints; anything else is left for the range check."""
    if v is None or isinstance(v, bool):
        return v
    try:
        return operator.index(v)
    except TypeError:
        return v


def _check_units(model, units: Sequence[Sequence[Head]]) -> list[list[Head]]:
    out = []
    for u in units:
        heads = []
        for item in u:
            layer, head = (_as_int(v) for v in item)
            model.check_layer(layer)
            if head is not None:
                model.check_head(head)
            heads.append((layer, head))
        out.append(heads)
    return out


@torch.no_grad()
def mediation_effects(
    model,
    pairs: Sequence[MediationPair],
    units: Sequence[Sequence[Head]],
    *,
    effect: str = "nie",
    batch_size: int = 64,
    progress: bool = False,
) -> np.ndarray:
    """Per-pair effect of each head set, ``[n_pairs, n_units]``.

    ``units[j]`` is a list of ``(layer, head)`` (``head=None``: all heads of the layer).
    ``effect="nie"`` runs x with the units' patterns taken from x'; ``"nde"`` runs x' with
    them frozen at x. Each value is ``odds(run) / odds(x) - 1``.
    """
    if effect not in ("nie", "nde"):
        raise InvalidInput(f"unknown effect {effect!r}; valid: 'nie', 'nde'")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInput(f"batch_size must be a positive integer, got {batch_size!r}")
    enc = _encode_pairs(model, pairs)
    units = _check_units(model, units)
    if not units:
        raise InvalidInput("no head sets given")
    names = [hook_name(layer, "pattern") for layer in range(model.cfg.n_layers)]
    out = np.zeros((len(enc), len(units)))
    groups: dict[int, list[int]] = {}
    for i, (x, _, _, _) in enumerate(enc):
        groups.setdefault(len(x), []).append(i)
    total = sum(len(g) * len(units) for g in groups.values())
    bar = tqdm(total=total, desc=f"{effect.upper()} ({len(units)} head sets)", disable=not progress, leave=False)
    for idx in groups.values():
        x = torch.tensor([enc[i][0] for i in idx], device=model.device)
        xp = torch.tensor([enc[i][1] for i in idx], device=model.device)
        stereo = torch.tensor([enc[i][2] for i in idx])
        anti = torch.tensor([enc[i][3] for i in idx])
        base_lo = _log_odds(model, x, anti, stereo)
        run_in, source_in = (x, xp) if effect == "nie" else (xp, x)
        _, cache = model.run_with_cache(source_in, names_filter=names)
        source = [cache[n] for n in names]  # per layer [pairs, head, query, key]
        jobs = [(p, u) for p in range(len(idx)) for u in range(len(units))]
        for s in range(0, len(jobs), batch_size):
            chunk = jobs[s : s + batch_size]
            specs = [
                Patch(layer, head, site="pattern", source=source[layer][p : p + 1], rows=[row])
                for row, (p, u) in enumerate(chunk)
                for layer, head in units[u]
            ]
            ids = run_in[[p for p, _ in chunk]]
            rows_p = torch.tensor([p for p, _ in chunk])
            with model.intervene(*specs):
                lo = _log_odds(model, ids, anti[rows_p], stereo[rows_p])
            for (p, u), value in zip(chunk, (lo - base_lo[rows_p]).tolist()):
                out[idx[p], u] = np.expm1(value)
            bar.update(len(chunk))
    bar.close()
    return out


def total_effect(model, pairs: Sequence[MediationPair]) -> pd.DataFrame:
    """Per pair: odds under x and x' and ``TE = odds(x') / odds(x) - 1``."""
    enc = _encode_pairs(model, pairs)
    rows = []
    for p, (x, xp, st, an) in zip(pairs, enc):
        ids = torch.tensor([x, xp], device=model.device)
        lo = _log_odds(model, ids, torch.tensor([an, an]), torch.tensor([st, st]))
        rows.append(
            {
                "label": p.label,
                "base": p.base,
                "counterfactual": p.counterfactual,
                "odds_base": float(torch.exp(lo[0])),
                "odds_counterfactual": float(torch.exp(lo[1])),
                "te": float(torch.expm1(lo[1] - lo[0])),
            }
        )
    return pd.DataFrame(rows)


@dataclass
class MediationResult:
    """Per-unit NIE/NDE (mean over pairs, 95% bootstrap interval), per-pair values and the TE."""

    level: str
    per_unit: pd.DataFrame  # layer, head, nie, nie_low, nie_high[, nde, nde_low, nde_high]
    per_pair: pd.DataFrame  # pair, label, layer, head, nie[, nde]
    total: pd.DataFrame  # per pair TE (see total_effect)
    te: tuple[float, float, float]  # mean TE, low, high
    model_name: str

    @property
    def per_head(self) -> pd.DataFrame:
        return self.per_unit

    def top_heads(self, k: int = 5, *, effect: str = "nie") -> list[tuple[int, int]]:
        """The k heads with the largest mean effect (head level only)."""
        if self.level != "head":
            raise InvalidInput(f"top_heads needs a head-level result, this one is level={self.level!r}")
        if not isinstance(k, int) or k < 1:
            raise InvalidInput(f"k must be a positive integer, got {k!r}")
        if effect not in self.per_unit:
            raise InvalidInput(f"effect {effect!r} was not computed; valid: nie, nde")
        best = self.per_unit.sort_values(effect, ascending=False).head(k)
        return [(int(r.layer), int(r.head)) for r in best.itertuples()]

    def heatmap(self, effect: str = "nie", ax=None):
        """Layer x head heatmap of the mean effect (head level)."""
        from attnlab.bias._plots import heatmap

        if self.level != "head":
            raise InvalidInput("heatmap needs a head-level result")
        if effect not in self.per_unit:
            raise InvalidInput(f"effect {effect!r} was not computed; valid: nie, nde")
        grid = self.per_unit.pivot(index="layer", columns="head", values=effect).to_numpy()
        te = self.te[0]
        return heatmap(
            grid,
            title=f"{self.model_name}: {effect.upper()} per head (TE = {te:.2f})",
            label=f"{effect.upper()} (odds ratio - 1)",
            ax=ax,
        )


def _units_for(model, level: str) -> list[list[Head]]:
    c = model.cfg
    if level == "head":
        return [[(layer, head)] for layer in range(c.n_layers) for head in range(c.n_heads)]
    if level == "layer":
        return [[(layer, None)] for layer in range(c.n_layers)]
    if level == "model":
        return [[(layer, None) for layer in range(c.n_layers)]]
    raise InvalidInput(f"unknown level {level!r}; valid: {', '.join(LEVELS)}")


def causal_mediation(
    model,
    pairs: Sequence[MediationPair],
    *,
    level: str = "head",
    effects: Sequence[str] = ("nie", "nde"),
    batch_size: int = 64,
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = False,
) -> MediationResult:
    """NIE and NDE of every head (``level="head"``), layer (``"layer"``) or of all heads (``"model"``).

    Returns a :class:`MediationResult`; ``result.heatmap()`` draws the layer x head map.
    """
    units = _units_for(model, level)
    effects = [effects] if isinstance(effects, str) else list(effects)
    bad = [e for e in effects if e not in ("nie", "nde")]
    if bad or not effects:
        raise InvalidInput(f"effects must be a non-empty subset of ('nie', 'nde'), got {effects!r}")
    total = total_effect(model, pairs)
    values = {e: mediation_effects(model, pairs, units, effect=e, batch_size=batch_size, progress=progress) for e in effects}
    rows, long = [], []
    for j, u in enumerate(units):
        layer, head = (u[0] if level != "model" else (-1, None))
        row = {"layer": layer, "head": head if head is not None else -1}
        for e in effects:
            m, lo, hi = mean_ci(values[e][:, j], n_boot=n_boot, seed=seed)
            row.update({e: m, f"{e}_low": lo, f"{e}_high": hi})
        rows.append(row)
        for p in range(len(total)):
            long.append({"pair": p, "label": total.label[p], "layer": layer, "head": row["head"], **{e: values[e][p, j] for e in effects}})
    te = mean_ci(total.te.to_numpy(), n_boot=n_boot, seed=seed)
    return MediationResult(level, pd.DataFrame(rows), pd.DataFrame(long), total, te, model.cfg.name)


def greedy_heads(
    model,
    pairs: Sequence[MediationPair],
    *,
    k: int = 5,
    candidates: Sequence[tuple[int, int]] | None = None,
    batch_size: int = 64,
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = False,
) -> pd.DataFrame:
    """Greedy head-set search: at each step add the head that most increases the set's NIE.

    Returns one row per step: ``step, layer, head, nie, nie_low, nie_high`` where ``nie`` is
    the NIE of the whole set chosen so far (all its patterns taken from x' at once).
    """
    if not isinstance(k, int) or k < 1:
        raise InvalidInput(f"k must be a positive integer, got {k!r}")
    c = model.cfg
    pool = [(layer, head) for layer in range(c.n_layers) for head in range(c.n_heads)] if candidates is None else list(candidates)
    _check_units(model, [pool])
    if k > len(pool):
        raise InvalidLocation(f"k={k} but only {len(pool)} candidate heads")
    chosen: list[tuple[int, int]] = []
    rows = []
    for step in range(k):
        options = [h for h in pool if h not in chosen]
        vals = mediation_effects(model, pairs, [chosen + [h] for h in options], batch_size=batch_size, progress=progress)
        best = int(np.argmax(vals.mean(axis=0)))
        chosen.append(options[best])
        m, lo, hi = mean_ci(vals[:, best], n_boot=n_boot, seed=seed)
        rows.append({"step": step + 1, "layer": options[best][0], "head": options[best][1], "nie": m, "nie_low": lo, "nie_high": hi})
    return pd.DataFrame(rows)
