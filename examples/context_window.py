"""Change Gemma's effective context window by scaling its distance-decay neurons.

1. For every layer, head and rotary frequency pair of q/k, measure the pair's mean
   contribution to the attention score as a function of query-key distance over a long
   text, and rank the pairs by how strongly that contribution falls with distance.
2. Scale the strongest decay pairs (in q) by 0, 0.5, 2 and 4 and measure, against the
   clean model: each edited head's effective window (smallest distance holding 90% of its
   non-sink attention), its attention to the first token (the sink), the window of the
   whole model, and the language-modelling loss by token position.

    python examples/context_window.py --out figures/
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

import attnlab
from attnlab.analysis.context import window_experiment
from attnlab.analysis.neurons import decay_neurons, unit_dims
from attnlab.interventions import EditNeuron

HERE = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", type=Path, nargs="*", default=[HERE / "data" / "long_text.txt"], help="long text file(s)")
    ap.add_argument("--out", type=Path, default=Path("context_window"), help="folder for the figures")
    ap.add_argument("--top", type=int, default=3, help="how many decay pairs to scale")
    ap.add_argument("--scales", type=float, nargs="*", default=[0.0, 0.5, 2.0, 4.0])
    ap.add_argument("--max-distance", type=int, default=200, help="distances used to rank the pairs")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    pd.set_option("display.width", 140)
    progress = not args.quiet
    t0 = time.time()

    model = attnlab.load("gemma-3-270m")
    texts = [p.read_text() for p in args.text]
    print(f"{model}\n{len(texts)} text(s), {sum(len(model.to_tokens(t)[0]) for t in texts)} tokens\n")

    # 1. find distance-decay neurons -----------------------------------------------------
    profile = decay_neurons(model, texts, progress=progress)
    ranking = profile.ranked(max_distance=args.max_distance).table
    print(f"Strongest distance-decay pairs (score contribution over distances 1..{args.max_distance}):")
    print(ranking.head(10).round(3).to_string(index=False))
    top = ranking.head(args.top)
    units = list(zip(top["layer"], top["head"], top["unit"]))
    profile.plot(units=units).savefig(args.out / "decay_neurons.png", dpi=120)

    # 2. scale them and measure windows and loss -----------------------------------------
    def edits(scale: float) -> list[EditNeuron]:
        return [
            EditNeuron(int(r.layer), int(r.head), site="q", dim=unit_dims(model, int(r.unit)), scale=scale)
            for r in top.itertuples()
        ]

    conditions = {f"x{s:g}": edits(s) for s in args.scales}
    exp = window_experiment(model, texts, conditions, progress=progress)
    print("\nWhole model (window over all heads; loss in nats, late = second half of the text):")
    print(exp.summary.round(3).to_string(index=False))
    edited = exp.table.merge(top[["layer", "head"]].drop_duplicates(), on=["layer", "head"])
    for col in ("window", "sink", "mean_distance"):
        table = edited.pivot_table(index=["layer", "head"], columns="condition", values=col)
        print(f"\nEdited heads, {col}:\n" + table[["clean", *conditions]].round(2).to_string())
    edited_heads = [(int(l), int(h)) for l, h in top[["layer", "head"]].drop_duplicates().itertuples(index=False)]
    exp.plot(heads=edited_heads).savefig(args.out / "window_and_loss.png", dpi=120)
    print(f"\nfigures in {args.out}/ ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
