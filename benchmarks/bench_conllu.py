"""Benchmark: reading one long CoNLL-U sentence grows linearly with its length.

The worst case for a tree check is a chain: word i is headed by word i+1, the last word is
the root, so every word's walk to the root is long. This script parses such sentences of
1k, 2k, 4k and 8k words with :func:`attnlab.analysis.parse_conllu` and prints the time per
word, which stays flat when the work is linear. For contrast it also times the tree check
attnlab used before (walk every word to the root, remembering the walk in a list: cubic)
on the same sentences, in the same process, up to the length it can finish in a few
seconds, and prints the ratio old/new of the tree check alone.

Run: ``python benchmarks/bench_conllu.py [--repeats 5] [--old-max 1000]``. CPU time is
printed next to wall time because the machine may be shared.
"""

from __future__ import annotations

import argparse
import statistics
import time

from attnlab.analysis.conllu import _check_tree, parse_conllu


def chain_sentence(n: int) -> str:
    """CoNLL-U text of one n-word sentence whose heads form a single chain to the root."""
    return "\n".join(f"{i}\tw{i}\tw{i}\tX\t_\t_\t{i + 1 if i < n else 0}\tdep\t_\t_" for i in range(1, n + 1))


def old_check_tree(heads: list[int]) -> None:
    """The tree check attnlab shipped before: for each word, follow heads keeping a list of the walk."""
    for start in range(1, len(heads) + 1):
        node, seen = start, []
        while node != 0:
            if node in seen:  # a linear scan at each step of each walk: n * n * n
                raise ValueError("cycle")
            seen.append(node)
            node = heads[node - 1]


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``fn()`` over ``repeats`` runs."""
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--old-max", type=int, default=1000, help="longest sentence to time the old check on")
    args = parser.parse_args()

    print("parse_conllu on one chain sentence (median of", args.repeats, "runs)")
    print(f"{'words':>6} {'wall ms':>9} {'cpu ms':>9} {'us/word':>9}")
    for n in (1000, 2000, 4000, 8000):
        text = chain_sentence(n)
        wall, cpu = timed(lambda: parse_conllu(text), args.repeats)
        print(f"{n:>6} {wall * 1e3:>9.1f} {cpu * 1e3:>9.1f} {cpu / n * 1e6:>9.2f}")

    print("\ntree check alone: old (cubic) vs new (linear), same sentence, same process")
    print(f"{'words':>6} {'old cpu s':>10} {'new cpu ms':>11} {'old/new':>9}")
    for n in (250, 500, 1000, 2000):
        if n > args.old_max:
            break
        (sent,) = parse_conllu(chain_sentence(n))
        lines = list(range(1, n + 1))
        _, new = timed(lambda: _check_tree(sent, lines, "<bench>"), args.repeats)
        _, old = timed(lambda: old_check_tree(sent.heads), 1 if n >= 1000 else 3)
        print(f"{n:>6} {old:>10.2f} {new * 1e3:>11.2f} {old / new:>9.0f}")


if __name__ == "__main__":
    main()
