"""A context-window dial: ask for a window in tokens, get the q/k edits that give it.

The lever is the model's *distance-decay units*: rotary q/k pairs whose mean contribution
to the attention score falls with query-key distance (:func:`attnlab.analysis.neurons.decay_neurons`).
Multiplying their query dimensions by one scale ``s`` for every selected head turns the
distance signal up (``s > 1``: attention stays nearer) or down (``0 <= s < 1``: it reaches
further; ``s < 0`` inverts it). :func:`set_context_window` searches ``s`` until the
model's effective window reaches the target.

**Effective window** (the same definition as :meth:`DistanceProfile.model_window`): for
every head, the attention of every query to the key ``d`` tokens back, summed over
queries, gives a mass profile over distances ``d``; attention to the first token (the BOS
"sink", whose key is atypical) is left out. Each head's profile is normalised to sum 1,
the profiles of all heads are averaged, and the window at level ``m`` (default 0.9) is the
smallest ``d`` whose cumulative share reaches ``m``.

**Why one global scale.** The window of the whole model is one number, so one knob makes
the search one-dimensional: ``window(s)`` is measured on a grid and bracketed like a
bisection. Per-head scales would leave infinitely many answers to one target, and the
search would need a forward pass per head and per step. Users who want a per-layer or
per-head dial pass their own ``units`` (any subset of :func:`decay_units`).

**Batched search.** Each step measures several scales in one forward pass: the text is
repeated once per candidate, row ``g`` carrying candidate ``g``'s scales (one multiplier
per layer, compiled from that candidate's :class:`EditNeuron` specs), attention patterns
are reduced to distance profiles in their hooks as each layer runs, and the LM head runs
only on the second half of the text, where the loss cost is read.
"""

from __future__ import annotations

import math
import numbers
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from einops import rearrange
from jaxtyping import Float

from attnlab.analysis.context import pooled_window
from attnlab.analysis.neurons import decay_neurons, unit_dims
from attnlab.engine.dropout import check_deterministic
from attnlab.engine.hooks import active_frames
from attnlab.engine.forward import run, token_logprobs
from attnlab.engine.locations import hook_name
from attnlab.engine.tokens import Tokens
from attnlab.errors import (AttnlabError, InvalidInput, InvalidLocation, InvalidSpec, UnsupportedModel,
    check_positive_int, did_you_mean)
from attnlab.interventions import EditNeuron
from attnlab.measure.result import Result

__all__ = [
    "set_context_window", "check_window_options", "check_columns_once", "decay_units", "DialResult", "WindowNotReached", "DEFAULT_SCALES", "pooled_window",
]

#: The first grid of scales every search measures (1.0, the clean model, is always added).
DEFAULT_SCALES: tuple[float, ...] = (-1.0, 0.0, 0.5, 2.0, 3.0, 4.0)
UNIT_COLUMNS = ("layer", "head", "unit")


class WindowNotReached(UserWarning):
    """The target window lies outside what the searched scales reach (see ``DialResult.message``)."""


# -- what the dial measures ---------------------------------------------------------------


def decay_units(model, text: str, *, max_spearman: float = -0.8, progress: bool = False) -> pd.DataFrame:
    """The distance-decay units the dial scales by default: rows of ``decay_neurons(...).table``.

    A unit qualifies when its mean score contribution falls almost monotonically with
    distance (``spearman <= max_spearman``) *and* favours near keys (``near > 0``, its
    contribution at distance 1 is positive). Units negative at every distance are left
    out: amplifying them penalises keys by the size of their key in that pair more than
    by distance, and moves attention to keys such as the first token instead of near ones.
    """
    _check_rotary_lm(model)
    # a real number, not a bool: "x" failed in the comparison, True passed as 1 (every unit)
    if not (isinstance(max_spearman, numbers.Real) and not isinstance(max_spearman, bool) and -1 <= max_spearman <= 1):
        raise InvalidInput(f"max_spearman must be a number in [-1, 1], got {max_spearman!r}")
    table = decay_neurons(model, [_check_text(text)], progress=progress).table
    chosen = table[(table["spearman"] <= max_spearman) & (table["near"] > 0)]
    return chosen.reset_index(drop=True)


def _check_rotary_lm(model) -> None:
    cfg = model.cfg
    if not cfg.rotary:
        raise UnsupportedModel(
            f"{cfg.name} has no rotary q/k: the context-window dial scales rotary q/k pairs whose score falls with "
            "query-key distance (Llama, Gemma, Mistral, ...); models with added position embeddings have none "
            "(narrow their attention with EditScores(layer, head, distance_penalty=...) instead)"
        )
    if not (cfg.is_causal and cfg.has_lm_head):
        raise UnsupportedModel(
            f"{cfg.name} is not a causal language model with an LM head; the dial reports the loss cost of each edit "
            "and needs next-token predictions"
        )


def _check_text(text) -> str:
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput(f"text must be one non-empty string (join paragraphs yourself), got {text!r:.80}")
    return text


def check_columns_once(columns: Sequence, what: str = "units") -> None:
    """Refuse a table header naming a column twice: ``table[name]`` would be a table of both, not one column.

    Shared by :func:`set_context_window` and the CLI's ``--units`` file; the message counts
    columns from 1, as a spreadsheet does. Blank names (a CSV's empty header cells) are not compared.
    """
    names = list(columns)
    twice = next((name for i, name in enumerate(names) if name != "" and name in names[:i]), None)
    if twice is not None:
        where = [str(i + 1) for i, name in enumerate(names) if name == twice]
        raise InvalidInput(f"{what}: column {twice!r} appears {len(where)} times in the header (columns "
                           f"{', '.join(where)}); give each column once")


def _check_units(model, units) -> pd.DataFrame:
    if not isinstance(units, pd.DataFrame):
        raise InvalidInput(f"units must be a DataFrame with columns {', '.join(UNIT_COLUMNS)} (e.g. decay_units(...)), "
                           f"got {type(units).__name__}")
    check_columns_once(units.columns)
    missing = [c for c in UNIT_COLUMNS if c not in units.columns]
    if missing:
        raise InvalidInput(f"units lacks column(s) {', '.join(missing)}; it needs {', '.join(UNIT_COLUMNS)}")
    if units.empty:
        raise InvalidInput(
            "no distance-decay units to scale: the table is empty (on this text no rotary pair's score falls with distance "
            "while favouring near keys); pass a longer text, a looser max_spearman to decay_units, or your own units"
        )
    checks = {"layer": model.check_layer, "head": model.check_head, "unit": lambda unit: unit_dims(model, unit)}
    for column in UNIT_COLUMNS:
        for index, value in units[column].items():
            whole = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
            if not (whole and float(value).is_integer()):
                raise InvalidInput(f"units[{column!r}] must hold whole numbers (a {column} index), got {value!r} "
                                   f"in row {index!r}")
            # range-check Python's int of the value, exact for any whole float, before astype(int), which wraps
            # 1e20 to -2**63; the message names the value as given
            try:
                checks[column](int(value))
            except InvalidLocation as err:
                raise InvalidLocation(f"units[{column!r}] holds {value!r} in row {index!r}: {err}") from None
    units = units.astype({column: int for column in UNIT_COLUMNS})
    return units.drop_duplicates(list(UNIT_COLUMNS)).reset_index(drop=True)


def _edits(model, units: pd.DataFrame, scale: float, site: str) -> list[EditNeuron]:
    """One EditNeuron per head: all its units' dimensions multiplied by ``scale``."""
    specs = []
    for (layer, head), group in units.groupby(["layer", "head"], sort=True):
        dims = sorted({d for u in group["unit"] for d in unit_dims(model, int(u))})
        specs.append(EditNeuron(int(layer), int(head), site=site, dim=dims, scale=float(scale)))
    return specs


# -- one batched pass: windows and late loss of several candidates --------------------------


@dataclass
class _Measured:
    window: float
    late_loss: float
    loss_by_position: np.ndarray  # [late positions]


def _row_multipliers(model, variants: Sequence[Sequence[EditNeuron]]) -> dict[str, torch.Tensor]:
    """Compile each row's scale-only EditNeuron specs into one ``[row, head, d_head]`` multiplier per hook point.

    Equal to applying the specs with ``rows=(g,)`` (tests check it) but one multiply per
    layer instead of one masked copy of the whole q tensor per spec: with ~500 edited
    heads per row that copying added 30% to a Gemma pass (``benchmarks/bench_dial.py``).
    """
    H, d = model.cfg.n_heads, model.cfg.d_head
    out: dict[str, torch.Tensor] = {}
    for g, specs in enumerate(variants):
        for spec in specs:
            if spec.scale is None or spec.positions is not None or spec.rows is not None:
                raise InvalidSpec(f"the dial compiles only scale edits at every position and row, got {spec!r}")
            spec.validate(model.cfg)
            mult = out.setdefault(spec.hook_name, torch.ones(len(variants), H, d))
            heads = list(spec.heads) if spec.heads is not None else list(range(H))
            dims = [spec.dim] if isinstance(spec.dim, int) else list(spec.dim)
            mult[g, torch.tensor(heads)[:, None], torch.tensor(dims)[None, :]] *= spec.scale
    return out


@torch.no_grad()
def _measure_rows(model, tokens: Tokens, variants: Sequence[Sequence[EditNeuron]], *, level: float, late_from: int,
                  compiled: bool = True) -> list[_Measured]:
    """Window and late loss of ``tokens`` (one row) under each variant, all in one forward pass.

    ``compiled=False`` hands the specs to the engine with ``rows=(g,)`` instead of compiling
    them into multipliers (same numbers, slower; kept for tests and the benchmark). Each
    layer's pattern is reduced to mass by distance as soon as it is computed, so memory
    holds one layer's ``rows x heads x n x n`` float64 copy at a time, never all layers.
    """
    L, H = model.cfg.n_layers, model.cfg.n_heads
    n = int(tokens.ids.shape[1])
    rows = len(variants)
    batch = tokens.repeat(rows)
    dist = (torch.arange(n)[:, None] - torch.arange(n)[None, :]).clamp(min=0).reshape(-1)  # [query*key]
    mass = torch.zeros(rows, L, H, n, dtype=torch.float64)

    def reduce_pattern(layer):
        def fn(pattern, hook):  # [row, head, query, key] -> mass by distance, first key left out
            p = pattern.detach().double().cpu()
            p[..., 0] = 0.0
            mass[:, layer] = torch.zeros(rows, H, n, dtype=torch.float64).index_add_(
                2, dist, rearrange(p, "r h q k -> r h (q k)"))

        return fn

    hooks = [(hook_name(layer, "pattern"), reduce_pattern(layer)) for layer in range(L)]
    per_row = []
    if compiled:
        for name, mult in _row_multipliers(model, variants).items():
            def scale(x, hook, mult=mult):  # x: [row, pos, head, d_head]
                return x * rearrange(mult, "r h d -> r 1 h d").to(device=x.device, dtype=x.dtype)

            hooks.append((name, scale))
    else:
        per_row = [EditNeuron.from_dict({**spec.to_dict(), "rows": [g]}) for g, specs in enumerate(variants) for spec in specs]
    columns = torch.arange(late_from - 1, n)  # logits here predict tokens late_from..n-1
    check_deterministic(model)
    out = run(model, batch, logits=columns.repeat(rows, 1), hooks=hooks, interventions=per_row)
    window = pooled_window(mass.numpy(), level)
    tail = Tokens(batch.ids[:, late_from - 1 :], batch.mask[:, late_from - 1 :], "right")
    measured = []
    for g in range(rows):  # one row at a time: log-softmax over the vocabulary copies the logits
        nll = -token_logprobs(out.logits[g : g + 1], tail.select(slice(g, g + 1)))[0, 1:].double().cpu().numpy()
        measured.append(_Measured(float(window[g]), float(nll.mean()), nll))
    return measured


# -- the result ---------------------------------------------------------------------------


@dataclass
class DialResult(Result):
    """What :func:`set_context_window` found.

    ``table``: every scale measured (``scale, window, late_loss, loss_cost, within, step,
    chosen``); ``per_prompt``: the loss at each late position, clean and edited
    (``position, clean_loss, edited_loss``); ``summary``: target, achieved window, loss
    cost, ``reached``; ``interventions``: the :class:`EditNeuron` specs to apply
    (``model.intervene(*result.interventions)``; empty when the clean model already fits).
    """

    target: float
    level: float
    tolerance: float
    site: str
    text: str
    units: pd.DataFrame
    table: pd.DataFrame
    per_prompt: pd.DataFrame
    interventions: list[EditNeuron]
    reached: bool
    message: str
    model_name: str
    n_tokens: int
    late_from: int
    seconds: float  # wall clock
    cpu_seconds: float  # this process's CPU time (steadier than wall clock on a shared machine)
    forward_rows: int
    steps: int
    _measured: dict[float, _Measured] = field(default_factory=dict, repr=False)
    _model_state: tuple = field(default=(), repr=False, compare=False)  # (model id, weights stamp, acting hooks)

    @property
    def chosen(self) -> pd.Series:
        return self.table[self.table["chosen"]].iloc[0]

    @property
    def window(self) -> float:
        return float(self.chosen["window"])

    @property
    def scale(self) -> float:
        return float(self.chosen["scale"])

    @property
    def loss_cost(self) -> float:
        return float(self.chosen["loss_cost"])

    @property
    def clean_window(self) -> float:
        return float(self.table.loc[self.table["scale"] == 1.0, "window"].iloc[0])

    @property
    def summary(self) -> pd.DataFrame:
        clean = self.table[self.table["scale"] == 1.0].iloc[0]
        return pd.DataFrame([{
            "target": self.target, "low": self.target * (1 - self.tolerance), "high": self.target * (1 + self.tolerance),
            "window": self.window, "clean_window": float(clean["window"]), "reached": self.reached, "scale": self.scale,
            "clean_loss": float(clean["late_loss"]), "edited_loss": float(self.chosen["late_loss"]),
            "loss_cost": self.loss_cost, "units": len(self.units), "heads": self.units.groupby(["layer", "head"]).ngroups,
            "steps": self.steps, "forward_rows": self.forward_rows,
            "seconds": self.seconds, "cpu_seconds": self.cpu_seconds,
        }])

    def __repr__(self) -> str:
        state = "reached" if self.reached else "NOT reached"
        return (f"DialResult({self.model_name}: target {self.target:g} tokens {state}; window {self.window:g} "
                f"(clean {self.clean_window:g}) at scale {self.scale:.4g}, loss cost {self.loss_cost:+.3f} nats)")

    def plot(self, ax=None):
        """Window (left axis) and loss cost (right axis) against the scale; the target band shaded."""
        from matplotlib.figure import Figure

        if ax is None:
            fig = Figure(figsize=(6.4, 3.8))
            ax = fig.add_subplot()
        else:
            fig = ax.figure
        t = self.table.sort_values("scale")
        lo, hi = self.target * (1 - self.tolerance), self.target * (1 + self.tolerance)
        ax.axhspan(lo, hi, color="C2", alpha=0.15, lw=0, label=f"target {self.target:g} ± {self.tolerance:.0%}")
        ax.plot(t["scale"], t["window"], "o-", color="C0", ms=3.5, lw=1, label="window")
        ax.plot([self.scale], [self.window], "*", color="C3", ms=12, label="chosen", zorder=5)
        ax.set_xlabel(f"scale of the {len(self.units)} decay units ({self.site})")
        ax.set_ylabel(f"model window at {self.level:.0%} (tokens)", color="C0")
        twin = ax.twinx()
        twin.plot(t["scale"], t["loss_cost"], "s--", color="C1", ms=3, lw=1, label="loss cost")
        twin.set_ylabel("late loss − clean (nats)", color="C1")
        handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
        ax.legend(handles=handles, frameon=False, fontsize=8, loc="upper right")
        state = "reached" if self.reached else "not reached"
        ax.set_title(f"{self.model_name}: target {self.target:g} tokens ({state})", fontsize=10)
        fig.tight_layout()
        return fig


# -- the search ---------------------------------------------------------------------------


def _check_number(value, what: str) -> float:
    """A finite real number (Python or numpy), as a float."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
        raise InvalidInput(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _next_scales(points: dict[float, _Measured], target: float, per_step: int, limits: tuple[float, float],
                 spent: set) -> list[float]:
    """The scales to measure next (empty: nothing left to try).

    Inside the bracket of the target nearest the clean scale 1.0 (``per_step`` evenly
    spaced points, like a bisection with several probes per pass); with no bracket, past
    the end of the grid while the window there still moves towards the target (up to
    ``limits``), else once around the scale whose window came closest.
    """
    scales = sorted(points)
    windows = [points[s].window for s in scales]
    brackets = [
        (a, b) for (a, wa), (b, wb) in zip(zip(scales, windows), zip(scales[1:], windows[1:]))
        if (wa - target) * (wb - target) < 0 and (a, b) not in spent
    ]
    if brackets:
        a, b = min(brackets, key=lambda ab: 0.0 if ab[0] <= 1.0 <= ab[1] else min(abs(ab[0] - 1), abs(ab[1] - 1)))
        if b - a < 1e-3 * max(1.0, abs(a), abs(b)):  # the window jumps over the target here: try another bracket
            spent.add((a, b))
            return _next_scales(points, target, per_step, limits, spent)
        return [float(x) for x in np.linspace(a, b, per_step + 2)[1:-1]]
    if len(scales) < 2:
        return []
    miss = [abs(w - target) for w in windows]
    lo, hi = limits

    def closing_in(edge: int, inward: int) -> bool:
        """The edge is closest, and closer than the window half its scale span inwards (not a plateau)."""
        span = max(1.0, abs(scales[edge])) / 2
        inner = [i for i in range(len(scales))[::inward] if abs(scales[i] - scales[edge]) >= span - 1e-9]
        return miss[edge] == min(miss) and bool(inner) and miss[edge] < miss[inner[0]]

    if scales[-1] < hi and closing_in(-1, -1):  # go further up
        end = min(hi, scales[-1] + max(1.0, abs(scales[-1])))
        return [float(x) for x in np.linspace(scales[-1], end, per_step + 1)[1:]]
    if scales[0] > lo and closing_in(0, 1):  # ... or further down
        end = max(lo, scales[0] - max(1.0, abs(scales[0])))
        return [float(x) for x in np.linspace(scales[0], end, per_step + 1)[1:]]
    i = int(np.argmin(miss))
    if "extreme" in spent:
        return []
    spent.add("extreme")  # an interior extreme: look once more around it
    left, right = scales[max(i - 1, 0)], scales[min(i + 1, len(scales) - 1)]
    return [float(x) for x in np.linspace(left, right, per_step + 2)[1:-1] if all(abs(x - s) > 1e-9 for s in scales)]


def set_context_window(
    model,
    target: float,
    text: str,
    *,
    units: pd.DataFrame | None = None,
    site: str = "q",
    level: float = 0.9,
    tolerance: float = 0.1,
    scales: Sequence[float] = DEFAULT_SCALES,
    limits: tuple[float, float] = (-4.0, 16.0),
    per_step: int = 4,
    max_steps: int = 6,
    batch_size: int = 8,
    start_from: DialResult | None = None,
    progress: bool = True,
) -> DialResult:
    """Scale the distance-decay units so that the model's effective window is ``target`` tokens (±``tolerance``).

    The window is the pooled ``level`` (90%) attention-mass window with the first-token
    sink left out (module docstring). The loss cost is the mean next-token loss over the
    second half of ``text`` (positions ``(n-1)//2 .. n-1``, as ``window_experiment``'s
    ``late_loss``), edited minus clean.

    >>> from attnlab.testing import tiny_model
    >>> text = " ".join(["the nurse said that she left the house because the doctor was not happy ."] * 6)
    >>> res = set_context_window(tiny_model("llama"), 20, text, progress=False)  # random weights: WindowNotReached
    >>> res.reached, res.window, res.clean_window
    (False, 53.0, 53.0)

    ``units``: the rotary pairs to scale (columns ``layer, head, unit``; default
    :func:`decay_units` on ``text``); ``site``: scale them in ``"q"`` or ``"k"`` (the same
    effect on the scores). ``scales``: the first grid measured (1.0, the clean model, is
    added); then each of up to ``max_steps`` steps measures ``per_step`` scales: inside the
    bracket of the target nearest 1.0, or beyond the grid (within ``limits``) while the
    window there still moves towards the target, in passes of at most ``batch_size`` rows.
    Among the scales within tolerance the one with the smallest loss cost is chosen.
    When none is, ``reached`` is False, the closest window is returned and a
    :class:`WindowNotReached` warning says so. ``start_from``: an earlier result on the
    same model, text, units, site and level, whose measured scales are reused. ``target``
    runs from 1 token to half the text's tokens (an ``InvalidInput`` names the range).
    """
    try:
        return _search(model, target, text, units=units, site=site, level=level, tolerance=tolerance, scales=scales,
                       limits=limits, per_step=per_step, max_steps=max_steps, batch_size=batch_size,
                       start_from=start_from, progress=progress)
    except AttnlabError as err:
        raise type(err)(f"while setting the context window of {model.cfg.name}: {err}") from None


def check_window_options(
    target: float,
    *,
    level: float = 0.9,
    tolerance: float = 0.1,
    per_step: int = 4,
    batch_size: int = 8,
    max_steps: int = 6,
    scales: Sequence[float] = DEFAULT_SCALES,
    limits: tuple[float, float] = (-4.0, 16.0),
    site: str = "q",
):
    """``set_context_window``'s checks that need no model or text, so a caller (the CLI) can fail before loading.

    Returns ``(target, level, tolerance, grid, limits)`` as floats (``grid``: the sorted scales with 1.0).
    """
    target = _check_number(target, "target")  # its range depends on the text: _check_target
    level = _check_number(level, "level")
    if not 0 < level <= 1:
        raise InvalidInput(f"level must be in (0, 1], got {level:g}")
    tolerance = _check_number(tolerance, "tolerance")
    if not 0 < tolerance < 1:
        raise InvalidInput(f"tolerance must be in (0, 1) (a fraction of the target), got {tolerance:g}")
    check_positive_int(per_step, "per_step")
    check_positive_int(batch_size, "batch_size")
    if not isinstance(max_steps, numbers.Integral) or isinstance(max_steps, bool) or max_steps < 0:
        raise InvalidInput(f"max_steps must be a non-negative integer, got {max_steps!r}")
    if isinstance(scales, np.ndarray) and scales.ndim == 1:
        scales = scales.tolist()
    if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence) or not scales:
        raise InvalidInput(f"scales must be a non-empty list of numbers, got {scales!r}")
    grid = sorted({_check_number(s, "every scale") for s in scales} | {1.0})
    if isinstance(limits, np.ndarray) and limits.ndim == 1:
        limits = limits.tolist()
    if not (isinstance(limits, Sequence) and len(limits) == 2):
        raise InvalidInput(f"limits must be (lowest, highest) scale, got {limits!r}")
    limits = (_check_number(limits[0], "limits[0]"), _check_number(limits[1], "limits[1]"))
    if not limits[0] <= grid[0] <= grid[-1] <= limits[1]:
        raise InvalidInput(f"limits {limits} must contain every scale of the grid and 1.0 ({grid[0]:g}..{grid[-1]:g})")
    if site not in ("q", "k"):
        raise InvalidSpec(f"site must be 'q' or 'k' (the units' score contribution is scaled in the query or the key), "
                          f"got {site!r}{did_you_mean(str(site), ('q', 'k'))}")
    return target, level, tolerance, grid, limits


def _check_target(target: float, n: int, tolerance: float) -> None:
    """A window of 1 token up to half the text (windows are whole distances; half the queries must reach back),
    with a whole number of tokens within ``tolerance`` of it."""
    if target < 1:
        raise InvalidInput(
            f"target must be a window of at least 1 token (windows are whole numbers of tokens; valid for this "
            f"{n}-token text: 1 to {n / 2:g}), got {target:g}"
        )
    if n < 2 * target:
        raise InvalidInput(
            f"text has {n} tokens; measuring a window of {target:g} tokens needs at least {math.ceil(2 * target)} "
            f"(half of the queries must be able to look that far back; valid targets: 1 to {n / 2:g}): pass a longer "
            "text or a smaller target"
        )
    low, high = target - tolerance * target - 1e-9, target + tolerance * target + 1e-9  # as _within compares
    if math.floor(high) < low:  # 2.5 ± 10%: every scale was measured, then WindowNotReached
        raise InvalidInput(
            f"no whole number of tokens lies within ±{tolerance:.0%} of target {target:g} ({target - tolerance * target:g}"
            f"..{target + tolerance * target:g}), and windows are whole numbers of tokens, so the target could never "
            f"be reached; pass a whole target ({math.floor(target)} or {math.ceil(target)}) or a larger tolerance"
        )


def _search(model, target, text, *, units, site, level, tolerance, scales, limits, per_step, max_steps, batch_size,
            start_from, progress) -> DialResult:
    from tqdm.auto import tqdm

    began, began_cpu = time.perf_counter(), time.process_time()
    _check_rotary_lm(model)
    target, level, tolerance, grid, limits = check_window_options(
        target, level=level, tolerance=tolerance, per_step=per_step, batch_size=batch_size, max_steps=max_steps,
        scales=scales, limits=limits, site=site)
    tokens = model.tokens(_check_text(text))
    n = int(tokens.ids.shape[1])
    _check_target(target, n, tolerance)
    if start_from is not None and not isinstance(start_from, DialResult):  # before decay_units' pass, not after
        raise InvalidInput(f"start_from must be a DialResult from an earlier set_context_window call, "
                           f"got {type(start_from).__name__}")
    if units is None:
        units = start_from.units if start_from is not None else decay_units(model, text)
    units = _check_units(model, units)
    points: dict[float, _Measured] = {}
    if start_from is not None:
        _check_start(start_from, model, text, units, site, level)
        points.update(start_from._measured)
    step_of: dict[float, int] = {s: -1 for s in points}  # -1: reused from start_from
    late_from = max(1, (n - 1) // 2)
    rows_run = 0

    def measure(new: list[float], step: int) -> None:
        nonlocal rows_run
        todo = [s for s in new if s not in points]
        for i in range(0, len(todo), batch_size):
            chunk = todo[i : i + batch_size]
            variants = [[] if s == 1.0 else _edits(model, units, s, site) for s in chunk]
            for s, m in zip(chunk, _measure_rows(model, tokens, variants, level=level, late_from=late_from)):
                points[s], step_of[s] = m, step
            rows_run += len(chunk)

    def reached() -> bool:
        return any(_within(m.window, target, tolerance) for m in points.values())

    spent: set = set()
    with tqdm(total=max_steps + 1, desc=f"window dial (target {target:g})", disable=not progress, leave=False) as bar:
        measure(grid, 0)
        bar.update(1)
        steps = 0
        while steps < max_steps and not reached():
            new = _next_scales(points, target, per_step, limits, spent)
            if not new:
                break
            steps += 1
            measure(new, steps)
            bar.update(1)

    clean = points[1.0]
    table = pd.DataFrame([
        {"scale": s, "window": m.window, "late_loss": m.late_loss, "loss_cost": m.late_loss - clean.late_loss,
         "within": _within(m.window, target, tolerance), "step": step_of[s]}
        for s, m in sorted(points.items())
    ])
    pick = _choose(table, target)
    table["chosen"] = table.index == pick
    best = table.loc[pick]
    if best["within"]:
        message = f"window {best['window']:g} tokens (target {target:g} ± {tolerance:.0%}) at scale {best['scale']:.4g}"
    else:
        message = (
            f"{model.cfg.name}: target window {target:g} tokens (± {tolerance:.0%}) not reached by scaling "
            f"{len(units)} decay units between {table['scale'].min():g} and {table['scale'].max():g} (limits "
            f"{limits[0]:g}..{limits[1]:g}): windows measured span {table['window'].min():g}..{table['window'].max():g} "
            f"tokens (clean {clean.window:g}); closest {best['window']:g} at scale {best['scale']:.4g}, loss cost "
            f"{best['loss_cost']:+.3f} nats"
        )
        warnings.warn(message, WindowNotReached, stacklevel=3)
    scale = float(best["scale"])
    per_prompt = pd.DataFrame({"position": np.arange(late_from, n), "clean_loss": clean.loss_by_position,
                               "edited_loss": points[scale].loss_by_position})
    return DialResult(
        target=target, level=level, tolerance=tolerance, site=site, text=text, units=units, table=table,
        per_prompt=per_prompt, interventions=[] if scale == 1.0 else _edits(model, units, scale, site),
        reached=bool(best["within"]), message=message, model_name=model.cfg.name, n_tokens=n, late_from=late_from,
        seconds=time.perf_counter() - began, cpu_seconds=time.process_time() - began_cpu, forward_rows=rows_run,
        steps=steps, _measured=dict(points), _model_state=_model_state(model),
    )


def _model_state(model) -> tuple:
    """What the measured windows depend on besides text and units: this model object, its weights, the hooks acting
    (the open ``with`` blocks of this context and the hooks in them: two blocks can hold as many hooks)."""
    return id(model), model.weights_stamp(), (active_frames(), model.count_hooks())


def _within(window: float, target: float, tolerance: float) -> bool:
    return abs(window - target) <= tolerance * target + 1e-9


def _choose(table: pd.DataFrame, target: float) -> int:
    """Row of the answer: the smallest loss cost within tolerance, else the closest window.

    Among equally close windows the smallest edit wins (scale nearest 1.0, the clean model),
    so a target the units cannot move towards returns no edit rather than an arbitrary one.
    """
    ranked = table.assign(off=(table["window"] - target).abs(), edit=(table["scale"] - 1.0).abs())
    ok = ranked[ranked["within"]]
    if len(ok):
        return int(ok.sort_values(["loss_cost", "off", "edit"], kind="stable").index[0])
    return int(ranked.sort_values(["off", "edit", "loss_cost"], kind="stable").index[0])


def _check_start(previous: DialResult, model, text: str, units: pd.DataFrame, site: str, level: float) -> None:
    key = list(UNIT_COLUMNS)

    def ordered(frame: pd.DataFrame) -> pd.DataFrame:
        return frame[key].astype(int).sort_values(key).reset_index(drop=True)

    then = previous._model_state or _model_state(model)
    now = _model_state(model)
    same_name = previous.model_name == model.cfg.name
    model_label = f"model ({previous.model_name}, now {model.cfg.name}{'' if not same_name else ': another object'})"
    checks = {model_label: same_name and then[0] == now[0],
              "weights (edited since)": then[0] != now[0] or then[1] == now[1],
              "set of acting hooks (measured inside another intervene() block)": then[2] == now[2],
              "text": previous.text == text, "units": ordered(previous.units).equals(ordered(units)),
              "site": previous.site == site, "level": previous.level == level}
    differs = [what for what, same in checks.items() if not same]
    if differs:
        raise InvalidInput(f"start_from was measured with another {', '.join(differs)}; its scales cannot be reused")
