"""Ask Gemma-3-270m for a context window in tokens: the dial finds the q/k edit that gives it.

1. Find the distance-decay units of the text (rotary q/k pairs whose score contribution
   falls with distance and favours near keys), once.
2. For each target window, search one scale for all of them (several scales per batched
   forward pass) until the model's effective window (pooled 90% attention-mass window,
   first-token sink left out) is within 10% of the target, or say it cannot be reached.
3. Check each answer: apply its interventions with ``model.intervene`` and measure the
   window again with ``attention_by_distance`` (one plain forward), count the heads whose
   own window stays above the target, and measure window and loss on a held-out text
   (``examples/data/long_text.txt``) the search never saw.
4. Write the table of every target (achieved window, loss cost on the second half of the
   text, time), each search's table and a plot of window and loss against scale.

    python examples/context_window_dial.py --out dial/
    python examples/context_window_dial.py --targets 128 --per-step 2 --max-steps 1 --out /tmp/dial
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import pandas as pd

import attnlab
from attnlab.analysis.context import attention_by_distance, loss_by_position
from attnlab.analysis.dial import DEFAULT_SCALES, WindowNotReached, decay_units, set_context_window
from attnlab.bias.templates import neutral_text

HERE = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder for the tables and figures")
    ap.add_argument("--model", default="gemma-3-270m", help="a rotary causal LM attnlab.load() accepts")
    ap.add_argument("--text", type=Path, default=None, help="a long text file (default: attnlab's packaged neutral text)")
    ap.add_argument("--targets", type=float, nargs="+", default=[16, 32, 64, 128], help="target windows in tokens")
    ap.add_argument("--scales", type=float, nargs="+", default=list(DEFAULT_SCALES), help="first grid of scales")
    ap.add_argument("--per-step", type=int, default=4, help="scales measured per search step")
    ap.add_argument("--max-steps", type=int, default=6, help="search steps after the grid")
    ap.add_argument("--batch-size", type=int, default=8, help="rows per forward pass")
    ap.add_argument("--reuse", action="store_true", help="reuse the scales measured for earlier targets")
    ap.add_argument("--held-out", type=Path, default=HERE / "data" / "long_text.txt",
                    help="a second text to check each answer on")
    ap.add_argument("--no-check", action="store_true", help="skip the checks (re-measuring, held-out text)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    pd.set_option("display.width", 160)
    started = time.perf_counter()

    model = attnlab.load(args.model)
    text = args.text.read_text() if args.text else "\n\n".join(neutral_text())
    print(f"{model.cfg.name}: {len(model.to_str_tokens(text))} tokens of text")

    t0 = time.perf_counter()
    units = decay_units(model, text, progress=not args.quiet)
    found = time.perf_counter() - t0
    units.to_csv(args.out / "units.csv", index=False)
    print(f"{len(units)} distance-decay units in {units.groupby(['layer', 'head']).ngroups} heads ({found:.1f} s)\n")

    held_out = None if args.no_check else args.held_out.read_text()
    if held_out is not None:
        clean_held_out = (attention_by_distance(model, [held_out], progress=False).model_window(0.9),
                          late_loss(model, held_out, []))
    rows, previous = [], None
    for target in args.targets:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", WindowNotReached)
            res = set_context_window(
                model, target, text, units=units, scales=args.scales, per_step=args.per_step,
                max_steps=args.max_steps, batch_size=args.batch_size, progress=not args.quiet,
                start_from=previous if args.reuse else None,
            )
        previous = res
        res.save(args.out, stem=f"target_{target:g}")
        print(f"target {target:g}: {res.message}" + (" [WindowNotReached warning]" if caught else ""))
        row = res.summary
        if held_out is not None:
            row = row.assign(**check(model, res, text, held_out, clean_held_out))
        rows.append(row)
    table = pd.concat(rows, ignore_index=True)
    table.to_csv(args.out / "dial.csv", index=False)
    cols = ["target", "window", "clean_window", "reached", "scale", "clean_loss", "edited_loss", "loss_cost",
            "steps", "forward_rows", "seconds", "cpu_seconds"]
    print("\n" + table[cols].round(3).to_string(index=False))
    if held_out is not None:
        cols = ["target", "window", "remeasured", "wide_heads", "held_out_clean", "held_out_window", "held_out_loss_cost"]
        print("\nChecks (re-measured alone; heads whose own window exceeds target + 10%; held-out text):")
        print(table[cols].round(3).to_string(index=False))
    _plot_all(table, previous, args.out / "dial.png")
    print(f"\noutputs in {args.out}/ ({time.perf_counter() - started:.0f} s in all, {found:.0f} s finding units)")


def late_loss(model, text: str, specs) -> float:
    """Mean next-token loss over the second half of ``text`` (positions (n-1)//2 .. n-1), as the dial reports it."""
    lp = loss_by_position(model, [text], interventions=specs, progress=False)
    return float(lp.loc[lp["position"] >= int(lp["position"].max()) // 2, "loss"].mean())


def check(model, res, text: str, held_out: str, clean_held_out: tuple[float, float]) -> dict:
    """Re-measure the answer with the plain (unbatched) functions, and on a held-out text."""
    edited = attention_by_distance(model, [text], interventions=res.interventions, progress=False)
    heads = edited.windows(res.level)
    edited_out = attention_by_distance(model, [held_out], interventions=res.interventions, progress=False)
    return {
        "remeasured": edited.model_window(res.level),
        "wide_heads": int((heads["window"] > res.target * (1 + res.tolerance)).sum()),
        "held_out_clean": clean_held_out[0],
        "held_out_window": edited_out.model_window(res.level),
        "held_out_loss_cost": late_loss(model, held_out, res.interventions) - clean_held_out[1],
    }


def _plot_all(table: pd.DataFrame, last, path: Path) -> None:
    """One figure: window and loss cost against scale (every scale measured), each target's band."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    measured = pd.concat([pd.read_csv(path.parent / f"target_{t:g}_table.csv") for t in table["target"]])
    curve = measured.drop_duplicates("scale").sort_values("scale")
    ax.plot(curve["scale"], curve["window"], "o-", color="C0", ms=3.5, lw=1, label="model window")
    for i, row in table.iterrows():
        ax.axhline(row["target"], color=f"C{i + 2}", lw=0.8, ls=":")
        marker = "*" if row["reached"] else "x"
        ax.plot([row["scale"]], [row["window"]], marker, color=f"C{i + 2}", ms=11,
                label=f"target {row['target']:g}: {row['window']:g}" + ("" if row["reached"] else " (not reached)"))
    ax.set_yscale("log", base=2)
    ax.set_xlabel(f"scale of the {len(last.units)} distance-decay units (q)")
    ax.set_ylabel("model window at 90% (tokens)")
    twin = ax.twinx()
    twin.plot(curve["scale"], curve["loss_cost"], "s--", color="C1", ms=3, lw=1, label="loss cost")
    twin.set_ylabel("loss on 2nd half − clean (nats)", color="C1")
    ax.legend(handles=ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0], frameon=False,
              fontsize=7, loc="upper center")
    ax.set_title(f"{last.model_name}: context-window dial", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
