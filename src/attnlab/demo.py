"""The README's main job: a bias-intervention experiment on Gemma-3-270m, written as one HTML report.

1. measure the profession pronoun bias (log p(she)/p(he) against the share of women);
2. find the heads that mediate it (natural indirect effect per head, Vig et al. 2020);
3. ablate the top heads and measure the bias again, with the perplexity and KL cost;
4. show one example's attention clean vs intervened (diff view) in the report.
"""

from __future__ import annotations

import time
from pathlib import Path

from attnlab.bias.demo import run_bias_demo
from attnlab.viz import diff_view, head_view
from attnlab.viz.report import Report

__all__ = ["run_demo", "DEMO_EXAMPLE"]

DEMO_EXAMPLE = "The nurse said that she"


def _fmt(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}"


def run_demo(model, out_dir: str | Path = "attnlab-out", *, k: int = 2, method: str = "mean", n_boot: int = 1000,
             progress: bool = True, example: str = DEMO_EXAMPLE):
    """Run the bias demo on ``model`` and write ``report.html`` (plus CSV/PNG files) into ``out_dir``.

    Returns ``(BiasDemo, report_path)``.
    """
    started = time.time()
    out = Path(out_dir)
    demo = run_bias_demo(model, out, k=k, method=method, n_boot=n_boot, progress=progress)
    n = demo.numbers
    exp = demo.experiment.table.set_index("metric")

    def with_ci(metric: str, when: str) -> str:
        row = exp.loc[metric]
        low, high = row.get(f"{when}_low"), row.get(f"{when}_high")
        text = _fmt(float(row[when]))
        if low is not None and high is not None and low == low and high == high:
            text += f"  [{_fmt(float(low))}, {_fmt(float(high))}]"
        return text

    heads = ", ".join(f"{layer}.{head}" for layer, head in demo.top_heads)
    report = Report(
        f"attnlab demo: gender bias in {model.cfg.name} and the heads that carry it",
        f"{model.cfg.n_layers} layers x {model.cfg.n_heads} heads; {int(n['n_pairs'])} mediation prompt pairs; "
        f"{method} ablation of the top {k} heads by natural indirect effect.",
    )
    report.heading("Headline numbers (95% bootstrap intervals)")
    report.numbers(
        [
            ("Pearson r, log p(she)/p(he) vs share of women: before", with_ci("pearson_r", "before")),
            ("... after the intervention", with_ci("pearson_r", "after")),
            ("mean |log p(she)/p(he)|: before", with_ci("mean_abs_log_ratio", "before")),
            ("... after", with_ci("mean_abs_log_ratio", "after")),
            ("perplexity on neutral text: before", with_ci("perplexity", "before")),
            ("... after", with_ci("perplexity", "after")),
            ("next-token KL on neutral prompts (nats)", _fmt(n["next_token_kl"], 4)),
            ("total effect of occupation -> man/woman (TE)", _fmt(n["te"])),
            ("heads intervened on (layer.head)", heads),
        ]
    )
    report.heading("Bias before and after")
    report.figure(demo.figures["bias_experiment"], alt="bias before and after")
    report.table(demo.experiment.table)
    report.heading("Which heads mediate the bias (natural indirect effect per head)")
    report.figure(demo.figures["mediation_heatmap"], alt="NIE per head")
    report.heading(f"Attention on {example!r}: clean vs intervened")
    layers = sorted({layer for layer, _ in demo.top_heads})
    report.views(diff_view(model, example, demo.experiment.interventions, layers=layers))
    report.text(
        "Left column of each head: clean attention; the diff panel shows intervened minus clean "
        "(an ablated head's pattern is unchanged: ablation acts on its output, downstream heads shift).",
        note=True,
    )
    report.views(head_view(model, example, layers=layers))
    report.heading("Bias per occupation")
    report.figure(demo.figures["bias_scatter"], alt="bias per occupation")
    report.table(demo.bias.table.sort_values("share_women"), max_rows=50)
    report.text(f"Computed in {time.time() - started:.0f} s. CSV and PNG files sit beside this report.", note=True)
    path = report.save(out / "report.html")
    return demo, path
