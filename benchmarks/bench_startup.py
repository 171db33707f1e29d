"""Start-up times, each in a fresh Python process (median of several runs).

    python benchmarks/bench_startup.py [--repeats 5] [--threads 1] [--baseline path/to/other/checkout/src]

Conditions (targets from the issue "One forward path", item 7):

* ``import attnlab``                                               target <= 1 s
* ``attnlab --help`` (``python -m attnlab.cli --help``)           target <= 0.5 s
* ``attnlab.load("gemma-3-270m")`` + a first forward on a short prompt, from the cache  target <= 6 s
* ``attnlab.load("minilm")`` + a first forward
* ``import transformer_lens`` after everything else that loading needs is imported: what
  TransformerLens adds to a load while the engine still imports it at start-up (the
  "without TL" rows subtract it).

Every run is a new interpreter, so nothing is shared between runs except the operating
system's file cache (warmed by one untimed run of each condition first). Conditions are
interleaved within each round so that a busy machine slows them alike. Times are wall
clock: for the model loads from spawning the process to the end of the first forward
(interpreter start included, its exit not: freeing a loaded model at exit takes about a
second more), for the others the whole process. ``in process`` splits a load: the script's
``import attnlab``, ``attnlab.load``, the first forward. ``CPU`` is the whole process's CPU
time, the steadier number on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["CONDITIONS", "run", "main"]

_SRC = str(Path(__file__).resolve().parents[1] / "src")

_LOAD_AND_FORWARD = """
import time
started = time.perf_counter()
import sys, json
import attnlab
imported = time.perf_counter()
model = attnlab.load({name!r})
loaded = time.perf_counter()
import torch
with torch.no_grad():
    model({prompt!r})
done = time.perf_counter()
print(json.dumps({{"import": imported - started, "load": loaded - imported, "forward": done - loaded,
                  "total": done - started, "done_at": time.time(), "tl_imported": "transformer_lens" in sys.modules}}))
"""

# everything a Gemma or MiniLM load imports besides TransformerLens, then TransformerLens alone
_TL_MARGINAL = """
import time, json
import torch, transformers, jaxtyping, einops, safetensors, tokenizers
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast
import transformers.masking_utils, transformers.integrations.sdpa_attention
import transformers.models.gemma3.modeling_gemma3, transformers.models.bert.modeling_bert
started = time.perf_counter()
import transformer_lens
print(json.dumps({"total": time.perf_counter() - started}))
"""

_TL = "transformer_lens import (marginal)"
CONDITIONS: dict[str, list[str]] = {
    "import attnlab": ["-c", "import time; s = time.perf_counter(); import attnlab; "
                             "import json; print(json.dumps({'total': time.perf_counter() - s}))"],
    "attnlab --help": ["-m", "attnlab.cli", "--help"],
    "gemma-3-270m load + first forward": ["-c", _LOAD_AND_FORWARD.format(name="gemma-3-270m", prompt="The nurse said")],
    "minilm load + first forward": ["-c", _LOAD_AND_FORWARD.format(name="minilm", prompt="The nurse said [MASK].")],
    _TL: ["-c", _TL_MARGINAL],
}
TARGETS = {"import attnlab": 1.0, "attnlab --help": 0.5, "gemma-3-270m load + first forward": 6.0}


def _run_once(args: list[str], threads: int, src: str, cache: str | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if cache:
        env["ATTNLAB_CACHE"] = cache
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TRANSFORMERS_VERBOSITY="error")
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    spawned_at = time.time()
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)[:80]} failed:\n{done.stderr[-2000:]}")
    inner = {}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            inner = json.loads(line)
            break
    if "done_at" in inner:  # from spawning the process to the end of the first forward (exit not included)
        inner["ready"] = inner["done_at"] - spawned_at
    return {"wall": wall, "cpu": cpu, **inner}


def _summary(name: str, runs: list[dict], tl: float) -> dict:
    # the TL import alone (in process); a model load up to its first forward; else the whole process
    walls = [r["total"] if name == _TL else r.get("ready", r["wall"]) for r in runs]
    row = {"condition": name, "median_s": statistics.median(walls), "min_s": min(walls), "max_s": max(walls),
           "cpu_median_s": None if name == _TL else statistics.median(r["cpu"] for r in runs)}
    if "load" in runs[0]:
        for part in ("import", "load", "forward", "total"):
            row[f"in_process_{part}_s"] = statistics.median(r[part] for r in runs)
        if all(r["tl_imported"] for r in runs):
            row["median_without_tl_s"] = row["median_s"] - tl
    row["target_s"] = TARGETS.get(name)
    return row


def run(repeats: int = 5, threads: int = 1, sources: dict[str, tuple[str, str | None]] | None = None):
    """Median, min and max of each condition over ``repeats`` fresh processes (after one warm-up).

    ``sources`` maps a label to ``(attnlab src folder, ATTNLAB_CACHE or None)`` (default: this
    checkout, the current cache); with two, each condition runs for both in turn within every
    round, so machine noise hits both alike. Returns ``{label: rows}``.
    """
    sources = sources or {"this checkout": (_SRC, None)}
    for src, cache in sources.values():  # warm the file cache; not timed
        for args in CONDITIONS.values():
            _run_once(args, threads, src, cache)
    samples = {label: {name: [] for name in CONDITIONS} for label in sources}
    for _ in range(repeats):
        for name, args in CONDITIONS.items():
            for label, (src, cache) in sources.items():
                samples[label][name].append(_run_once(args, threads, src, cache))
    results = {}
    for label, by_condition in samples.items():
        tl = statistics.median(s["total"] for s in by_condition[_TL])
        results[label] = [_summary(name, runs, tl) for name, runs in by_condition.items()]
    return results


def _print(label: str, rows: list[dict]) -> None:
    print(f"\n{label}")
    print(f"{'condition':36} {'median':>7} {'min':>6} {'max':>6} {'CPU':>6} {'w/o TL':>7} {'target':>7}"
          "   in process: import/load/forward")
    for r in rows:
        cpu = f"{r['cpu_median_s']:6.2f}" if r["cpu_median_s"] is not None else " " * 6
        without = f"{r['median_without_tl_s']:7.2f}" if "median_without_tl_s" in r else " " * 7
        target = f"{r['target_s']:7.1f}" if r["target_s"] else " " * 7
        parts = ""
        if "in_process_total_s" in r:
            parts = "/".join(f"{r[f'in_process_{p}_s']:.2f}" for p in ("import", "load", "forward"))
        print(f"{r['condition']:36} {r['median_s']:7.2f} {r['min_s']:6.2f} {r['max_s']:6.2f} {cpu} {without} {target}"
              f"   {parts}")


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per condition (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="OMP/torch threads in each child (default 1)")
    parser.add_argument("--baseline", metavar="SRC", help="another attnlab src/ folder to time in the same rounds")
    parser.add_argument("--baseline-cache", metavar="DIR", help="ATTNLAB_CACHE for the baseline (default: the same)")
    args = parser.parse_args(argv)
    sources = {"this checkout": (_SRC, None)}
    if args.baseline:
        sources["baseline " + args.baseline] = (args.baseline, args.baseline_cache)
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    results = run(args.repeats, args.threads, sources)
    for label, rows in results.items():
        _print(label, rows)
    if load_before:
        print(f"\nload average before: {load_before[0]:.1f}, after: {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs). "
              "Seconds of wall clock: model loads from spawning the process to the end of the first forward, "
              "the others the whole process; CPU: the whole process")
    return results


if __name__ == "__main__":
    main()
