"""Benchmark: one step of the context-window dial on Gemma-3-270m, batched vs one scale at a time.

Same process, same text (attnlab's packaged neutral text, 332 tokens), the same
distance-decay units and the same ``k`` scales, measured three ways:

* loop: for each scale, ``attention_by_distance`` + ``loss_by_position`` under the edit
  (what ``window_experiment`` does per condition: two forwards per scale, the LM head over
  every position);
* per-row specs: one batch of ``k`` rows, each row's EditNeuron specs handed to the engine
  with ``rows=(g,)`` (the engine's per-row machinery as it is);
* dial: the same batch with each row's specs compiled into one multiplier per hook point
  (what ``set_context_window`` runs), LM head on the second half of the text only.

Prints CPU and wall times (CPU time is steadier on a shared machine), the ratios against
the loop, and the largest differences of windows and late losses.
Run: ``python benchmarks/bench_dial.py [--scales 0 0.5 2 3] [--threads N]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from timing import timed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", type=float, nargs="+", default=[0.0, 0.5, 2.0, 3.0])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import attnlab
    from attnlab.analysis.context import attention_by_distance, loss_by_position
    from attnlab.analysis.dial import _edits, _measure_rows, decay_units
    from attnlab.bias.templates import neutral_text

    model = attnlab.load("gemma-3-270m")
    text = "\n\n".join(neutral_text())
    tokens = model.tokens(text)
    n = int(tokens.ids.shape[1])
    late_from = (n - 1) // 2
    units = decay_units(model, text)
    variants = [_edits(model, units, s, "q") for s in args.scales]
    print(f"{model.cfg.name}, {n} tokens, {len(units)} units in {len(variants[0])} heads, scales {args.scales}, "
          f"{args.threads} thread(s)")

    def loop():
        out = []
        for specs in variants:
            window = attention_by_distance(model, [text], interventions=specs, progress=False).model_window(0.9)
            lp = loss_by_position(model, [text], interventions=specs, progress=False)
            out.append((window, float(lp.loc[lp["position"] >= late_from, "loss"].mean())))
        return out

    def batched(compiled):
        rows = _measure_rows(model, tokens, variants, level=0.9, late_from=late_from, compiled=compiled)
        return [(m.window, m.late_loss) for m in rows]

    batched(True)  # warm-up (first pattern hooks, allocator)
    ref, loop_wall, loop_cpu = timed(loop)
    specs_out, specs_wall, specs_cpu = timed(lambda: batched(False))
    dial_out, dial_wall, dial_cpu = timed(lambda: batched(True))

    def gaps(other):
        a, b = np.array(ref), np.array(other)
        return np.abs(a[:, 0] - b[:, 0]).max(), np.abs(a[:, 1] - b[:, 1]).max()

    print(f"{'way':<16}{'wall s':>8}{'cpu s':>8}{'cpu ratio':>11}{'max |dwindow|':>15}{'max |dloss|':>13}")
    for name, out, wall, cpu in (("loop", ref, loop_wall, loop_cpu), ("per-row specs", specs_out, specs_wall, specs_cpu),
                                 ("dial", dial_out, dial_wall, dial_cpu)):
        dw, dl = gaps(out)
        print(f"{name:<16}{wall:8.1f}{cpu:8.1f}{loop_cpu / cpu:10.2f}x{dw:15.0f}{dl:13.2e}")
    print("windows:", [w for w, _ in dial_out], "late losses:", [round(l, 4) for _, l in dial_out])


if __name__ == "__main__":
    main()
