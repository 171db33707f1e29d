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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from attnlab.analysis._corpus import attention_batches, prepare
from attnlab.errors import InvalidInput, UnsupportedModel

__all__ = ["DistanceProfile", "attention_by_distance", "loss_by_position", "window_experiment", "WindowExperiment"]


def _window(profile: np.ndarray, level: float) -> np.ndarray:
    """Smallest distance whose cumulative share of the (normalised) profile reaches ``level``; last axis = distance."""
    total = profile.sum(-1, keepdims=True)
    cum = np.cumsum(profile, -1) / np.where(total > 0, total, 1)
    reached = cum >= level - 1e-9
    return np.where(reached.any(-1), reached.argmax(-1), np.nan)


@dataclass
class DistanceProfile:
    """Attention mass by query-key distance for every head (see module docstring)."""

    mass: np.ndarray  # [layer, head, distance]
    sink: np.ndarray  # [layer, head]: mean attention to the first token (0 when ignore_first=False)
    n_queries: int
    model_name: str
    ignore_first: bool

    def windows(self, level: float = 0.9) -> pd.DataFrame:
        """Effective window of every head: ``layer, head, window, sink, mean_distance``."""
        self._check_level(level)
        L, H, D = self.mass.shape
        win = _window(self.mass, level)
        total = self.mass.sum(-1)
        mean_d = (self.mass * np.arange(D)).sum(-1) / np.where(total > 0, total, 1)
        return pd.DataFrame({
            "layer": np.repeat(np.arange(L), H), "head": np.tile(np.arange(H), L),
            "window": win.reshape(-1), "sink": self.sink.reshape(-1), "mean_distance": mean_d.reshape(-1),
        })

    def model_window(self, level: float = 0.9) -> float:
        """Effective window of the whole model (mean of all heads' normalised profiles)."""
        self._check_level(level)
        total = self.mass.sum(-1, keepdims=True)
        norm = self.mass / np.where(total > 0, total, 1)
        return float(_window(norm.reshape(-1, norm.shape[-1]).mean(0), level))

    @staticmethod
    def _check_level(level: float) -> None:
        if not 0 < level <= 1:
            raise InvalidInput(f"level must be in (0, 1], got {level!r}")

    def plot(self, *, level: float = 0.9):
        """Cumulative attention mass vs distance, one line per layer (mean over its heads)."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        total = self.mass.sum(-1, keepdims=True)
        cum = np.cumsum(self.mass / np.where(total > 0, total, 1), -1).mean(1)  # [layer, distance]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        cmap = plt.get_cmap("viridis")
        for layer, row in enumerate(cum):
            ax.plot(row, color=cmap(layer / max(1, len(cum) - 1)), lw=1)
        ax.axhline(level, color="gray", ls="--", lw=0.8)
        ax.set_xscale("symlog")
        ax.set_xlabel("query - key distance (tokens)")
        ax.set_ylabel("cumulative attention mass")
        ax.set_title(f"{self.model_name}: model window {self.model_window(level):.0f} tokens at {level:.0%}")
        fig.tight_layout()
        return fig


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

    Distances beyond ``max_distance`` are folded into the last bin.

    >>> from attnlab.testing import tiny_model
    >>> prof = attention_by_distance(tiny_model("gpt2"), ["the nurse said that she left ."], progress=False)
    >>> bool(np.allclose(prof.mass.sum(-1) + prof.sink, 1.0))
    True
    """
    sentences = prepare(model, corpus)
    longest = max(s.n_tokens for s in sentences)
    D = longest if max_distance is None else max(1, min(int(max_distance) + 1, longest))
    L, H = model.cfg.n_layers, model.cfg.n_heads
    mass = torch.zeros(L, H, D, dtype=torch.float64)
    sink = torch.zeros(L, H, dtype=torch.float64)
    n_q = 0
    for s in attention_batches(model, sentences, batch_size=batch_size, progress=progress,
                               interventions=interventions, desc="attention by distance"):
        p = s.pattern.double()  # [layer, head, query, key]
        n = s.n_tokens
        if ignore_first:
            sink += p[..., 0].sum(-1)
            p = p.clone()
            p[..., 0] = 0.0
        pos = torch.arange(n)
        dist = (pos[:, None] - pos[None, :]).abs().clamp(max=D - 1)  # [query, key]
        mass += torch.zeros(L, H, D, dtype=torch.float64).index_add_(
            2, dist.reshape(-1), p.reshape(L, H, n * n)
        )
        n_q += n
    return DistanceProfile(mass=(mass / n_q).numpy(), sink=(sink / n_q).numpy(), n_queries=n_q,
                           model_name=model.cfg.name, ignore_first=ignore_first)


@torch.no_grad()
def loss_by_position(model, texts, *, interventions: Sequence = (), progress: bool = True) -> pd.DataFrame:
    """Next-token loss (nats) at every position, averaged over ``texts``: ``position, loss, n``.

    Row ``position = t`` is the loss of predicting token t from tokens 0..t-1.
    """
    from tqdm.auto import tqdm

    if not model.cfg.is_causal or not model.cfg.has_lm_head:
        raise UnsupportedModel(f"{model.cfg.name} is not a causal language model; loss by position needs one")
    sentences = prepare(model, texts)
    longest = max(s.n_tokens for s in sentences)
    total = torch.zeros(longest, dtype=torch.float64)
    count = torch.zeros(longest, dtype=torch.float64)
    with model.intervene(*interventions):
        for s in tqdm(sentences, desc="loss by position", disable=not progress):
            ids = torch.tensor([s.token_ids], device=model.device)
            logits = model(ids)[0].float()  # [pos, vocab]
            nll = torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:], reduction="none")
            total[1 : s.n_tokens] += nll.double().cpu()
            count[1 : s.n_tokens] += 1
    keep = count > 0
    pos = torch.arange(longest)[keep]
    return pd.DataFrame({"position": pos.numpy(), "loss": (total[keep] / count[keep]).numpy(), "n": count[keep].numpy()})


@dataclass
class WindowExperiment:
    """Effective windows and losses under several named conditions (``"clean"`` = no intervention)."""

    windows: pd.DataFrame  # condition, layer, head, window, sink, mean_distance
    summary: pd.DataFrame  # condition, model_window, mean_loss, late_loss
    loss: pd.DataFrame  # condition, position, loss, n
    profiles: dict[str, DistanceProfile]

    def plot(self, *, heads: Sequence[tuple[int, int]] | None = None, smooth: int = 16):
        """Two panels: cumulative attention mass vs distance (mean over ``heads``, default all;
        non-sink mass normalised per head), and loss by position (moving average)."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
        for i, (name, prof) in enumerate(self.profiles.items()):
            mass = prof.mass if heads is None else np.stack([prof.mass[l, h] for l, h in heads])
            total = mass.sum(-1, keepdims=True)
            cum = np.cumsum(mass / np.where(total > 0, total, 1), -1).reshape(-1, mass.shape[-1]).mean(0)
            a.plot(cum, color=f"C{i}", label=name)
        a.set_xscale("symlog")
        a.set_xlabel("distance (tokens)")
        a.set_ylabel("cumulative attention mass " + ("(all heads)" if heads is None else f"({len(heads)} heads)"))
        a.legend(frameon=False, fontsize=8)
        if not self.loss.empty:
            for i, name in enumerate(self.profiles):
                sub = self.loss[self.loss["condition"] == name]
                b.plot(sub["position"], sub["loss"].rolling(smooth, min_periods=1).mean(), color=f"C{i}", label=name)
            b.set_xlabel("token position")
            b.set_ylabel(f"loss (nats, moving mean of {smooth})")
        fig.tight_layout()
        return fig


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
    first. ``late_loss`` in the summary averages the loss over positions >= ``late_from``
    (default: the second half of the longest text).
    """
    if not isinstance(conditions, Mapping):
        raise InvalidInput("conditions must be a dict of name -> list of interventions")
    runs = {"clean": []} | {str(k): list(v) for k, v in conditions.items()}
    for name, specs in runs.items():
        for spec in specs:
            spec.validate(model.cfg)
    lm = model.cfg.is_causal and model.cfg.has_lm_head
    win_rows, summary, losses, profiles = [], [], [], {}
    for name, specs in runs.items():
        prof = attention_by_distance(model, texts, interventions=specs, ignore_first=ignore_first, progress=progress)
        profiles[name] = prof
        win_rows.append(prof.windows(level).assign(condition=name))
        row = {"condition": name, "model_window": prof.model_window(level)}
        if lm:
            lp = loss_by_position(model, texts, interventions=specs, progress=progress).assign(condition=name)
            start = late_from if late_from is not None else int(lp["position"].max()) // 2
            row["mean_loss"] = float((lp["loss"] * lp["n"]).sum() / lp["n"].sum())
            row["late_loss"] = float(lp.loc[lp["position"] >= start, "loss"].mean())
            losses.append(lp)
        summary.append(row)
    windows = pd.concat(win_rows, ignore_index=True)
    windows = windows[["condition", "layer", "head", "window", "sink", "mean_distance"]]
    loss = pd.concat(losses, ignore_index=True)[["condition", "position", "loss", "n"]] if losses else pd.DataFrame(
        columns=["condition", "position", "loss", "n"])
    return WindowExperiment(windows=windows, summary=pd.DataFrame(summary), loss=loss, profiles=profiles)
