"""The bias demo pipeline (what ``examples/bias_intervention.py`` and ``attnlab demo`` run).

1. measure the profession pronoun bias over the shipped occupations;
2. find the heads that mediate it: the NIE of every head on (occupation, "man"/"woman")
   prompt pairs built from the most female- and most male-dominated occupations (the
   ``n_mediation_occupations`` at each end, ``n_mediation_templates`` templates each);
3. ablate the top-k heads and measure the bias again, with the perplexity and KL cost;
4. write the figures (PNG) and tables (CSV) into ``out_dir``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from attnlab.bias.experiment import BiasExperiment, bias_experiment
from attnlab.bias.mediation import MediationResult, causal_mediation, mediation_pairs
from attnlab.bias.pronouns import PronounBias, pronoun_bias
from attnlab.bias.templates import neutral_prompts, occupation_frame, templates as shipped_templates
from attnlab.errors import InvalidInput, check_positive_int, is_integer
from attnlab.interventions import AblateHead

__all__ = ["BiasDemo", "run_bias_demo"]


@dataclass
class BiasDemo:
    """Everything the demo measured: tables, figures, headline numbers and the files written."""

    bias: PronounBias
    mediation: MediationResult
    top_heads: list[tuple[int, int]]
    experiment: BiasExperiment
    figures: dict = field(default_factory=dict)  # name -> matplotlib Figure
    numbers: dict = field(default_factory=dict)  # headline numbers (floats)
    files: list[Path] = field(default_factory=list)

    def report(self) -> str:
        """A short plain-text summary of the headline numbers."""
        n = self.numbers
        heads = ", ".join(f"{layer}.{head}" for layer, head in self.top_heads)
        return "\n".join(
            [
                f"profession pronoun bias: Pearson r = {n['pearson_r_before']:.2f} "
                f"(log p(she)/p(he) vs share of women), mean |log ratio| = {n['mean_abs_log_ratio_before']:.2f}",
                f"total effect of occupation -> man/woman: TE = {n['te']:.2f}",
                f"top mediating heads (layer.head, by NIE): {heads}",
                f"after ablating them: Pearson r = {n['pearson_r_after']:.2f}, "
                f"mean |log ratio| = {n['mean_abs_log_ratio_after']:.2f}",
                f"cost: perplexity {n['perplexity_before']:.2f} -> {n['perplexity_after']:.2f}, "
                f"next-token KL on neutral prompts = {n['next_token_kl']:.4f} nats",
            ]
        )


def _extremes(occ: pd.DataFrame, n_each: int) -> pd.DataFrame:
    occ = occ.sort_values("share_women")
    return pd.concat([occ.head(n_each), occ.tail(n_each)]).drop_duplicates("occupation")


def run_bias_demo(
    model,
    out_dir: str | Path | None = "attnlab-out",
    *,
    occupations=None,
    k: int = 2,
    method: str = "mean",
    n_mediation_occupations: int = 4,
    n_mediation_templates: int = 1,
    n_boot: int = 1000,
    progress: bool = True,
) -> BiasDemo:
    """Run the whole demo on ``model`` (a causal LM) and return a :class:`BiasDemo`.

    ``occupations`` (default: the shipped list) are used for the bias metric; the
    mediation pairs come from those at both ends of the share of women. ``k`` heads with
    the largest NIE are ablated (``method`` "zero" or "mean"; the mean is
    taken over the shipped neutral prompts). ``out_dir=None`` writes nothing.
    """
    if not is_integer(k) or k < 1 or k > model.cfg.n_layers * model.cfg.n_heads:
        raise InvalidInput(f"k must be an integer in 1..{model.cfg.n_layers * model.cfg.n_heads}, got {k!r}")
    k = int(k)
    for name, value in (("n_mediation_occupations", n_mediation_occupations),
                        ("n_mediation_templates", n_mediation_templates)):
        check_positive_int(value, name)  # -1 sliced off the last template or dropped the extremes; 1.5 a TypeError
    if out_dir is not None and not isinstance(out_dir, (str, os.PathLike)):  # else a TypeError after the whole run
        raise InvalidInput(f"out_dir must be a folder path (a str or Path) or None, got {out_dir!r}")
    if out_dir is not None and Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise InvalidInput(f"out_dir {str(out_dir)!r} is a file, not a folder; pass a folder to write the figures and "
                           "tables into (it is made if missing)")
    if method not in ("zero", "mean"):
        raise InvalidInput(f"method must be 'zero' or 'mean', got {method!r}")
    occ = occupation_frame(occupations)
    bias = pronoun_bias(model, occupations=occ, n_boot=n_boot, progress=progress)
    pairs, _ = mediation_pairs(
        model, occupations=_extremes(occ, n_mediation_occupations), templates=shipped_templates()[:n_mediation_templates]
    )
    med = causal_mediation(model, pairs, levels=("head",), effects=("nie",), n_boot=n_boot, progress=progress)
    top = med.top_heads(k)
    ref = neutral_prompts() if method == "mean" else None
    specs = [AblateHead(layer, head, method=method, reference=ref) for layer, head in top]
    exp = bias_experiment(model, specs, occupations=occ, n_boot=n_boot, baseline=bias, progress=progress)
    t = exp.table.set_index("metric")
    numbers = {
        "pearson_r_before": float(t.loc["pearson_r", "before"]),
        "pearson_r_after": float(t.loc["pearson_r", "after"]),
        "mean_abs_log_ratio_before": float(t.loc["mean_abs_log_ratio", "before"]),
        "mean_abs_log_ratio_after": float(t.loc["mean_abs_log_ratio", "after"]),
        "perplexity_before": float(t.loc["perplexity", "before"]),
        "perplexity_after": float(t.loc["perplexity", "after"]),
        "next_token_kl": float(t.loc["next_token_kl", "after"]),
        "te": float(med.te[0]),
        "n_pairs": float(len(pairs)),
    }
    figures = {"bias_scatter": bias.plot(), "mediation_heatmap": med.plot(), "bias_experiment": exp.plot()}
    demo = BiasDemo(bias, med, top, exp, figures, numbers)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, fig in figures.items():
            path = out / f"{name}.png"
            fig.savefig(path, dpi=120)
            demo.files.append(path)
        tables = {
            "bias_per_occupation": bias.table,
            "mediation_per_head": med.table,
            "bias_experiment": exp.table,
            "top_heads": pd.DataFrame(top, columns=["layer", "head"]),
        }
        for name, df in tables.items():
            path = out / f"{name}.csv"
            df.to_csv(path, index=False)
            demo.files.append(path)
    return demo
