"""The figures of the bias results (drawn on a matplotlib Figure, never through pyplot)."""

from __future__ import annotations

import numpy as np

__all__ = ["scatter_log_ratio", "experiment_figure"]


def scatter_log_ratio(result, ax=None, *, label=None):
    """Per occupation: log p(she)/p(he) against the share of women, with the least-squares line."""
    from attnlab.viz.plots import panels

    fig, (ax,) = panels(ax, 1, 6.0, 4.5, "PronounBias.plot")
    df = result.table
    x, y = df.share_women.to_numpy(float), df.log_ratio.to_numpy(float)
    ax.scatter(x, y, s=18, label=label or result.model_name)
    for occ, xi, yi in zip(df.occupation, x, y):
        ax.annotate(occ, (xi, yi), fontsize=6, alpha=0.7, xytext=(2, 2), textcoords="offset points")
    if len(x) > 1 and np.std(x) > 0:
        slope, icpt = np.polyfit(x, y, 1)
        grid = np.linspace(x.min(), x.max(), 10)
        ax.plot(grid, slope * grid + icpt, lw=1)
    ax.axhline(0, color="grey", lw=0.5)
    female, male = result.pronouns
    ax.set_xlabel("share of women in the occupation")
    ax.set_ylabel(f"log p({female}) / p({male})")
    r = result.value("pearson_r")
    ax.set_title(f"{result.model_name}: pronoun bias (Pearson r = {r:.2f})")
    return fig


def experiment_figure(exp, axes=None):
    """Left: log ratio vs share of women before and after. Right: two bias metrics with their intervals."""
    from attnlab.viz.plots import panels

    fig, (left, right) = panels(axes, 2, 11.0, 4.5, "BiasExperiment.plot")
    for res, label in ((exp.before, "before"), (exp.after, "after")):
        d = res.table
        left.scatter(d.share_women, d.log_ratio, s=16, label=f"{label} (r = {res.value('pearson_r'):.2f})")
    left.axhline(0, color="grey", lw=0.5)
    f, m = exp.before.pronouns
    left.set_xlabel("share of women in the occupation")
    left.set_ylabel(f"log p({f}) / p({m})")
    left.legend(fontsize=8)
    left.set_title("pronoun bias before / after the intervention", fontsize=9)
    t = exp.table.set_index("metric")
    names = ["mean_abs_log_ratio", "pearson_r"]
    x = np.arange(len(names))
    for when, off in (("before", -0.18), ("after", 0.18)):
        vals = t.loc[names, when].to_numpy(float)
        err = np.abs(np.vstack([vals - t.loc[names, f"{when}_low"], t.loc[names, f"{when}_high"] - vals]).astype(float))
        right.bar(x + off, vals, width=0.36, yerr=np.nan_to_num(err), capsize=3, label=when)
    right.set_xticks(x, names)
    ppl_b, ppl_a = t.loc["perplexity", "before"], t.loc["perplexity", "after"]
    kl = t.loc["next_token_kl", "after"]
    right.set_title(f"perplexity {ppl_b:.1f} -> {ppl_a:.1f}, next-token KL {kl:.3f} nats", fontsize=9)
    right.legend(fontsize=8)
    return fig
