"""What does BERT look at? (Clark et al. 2019) on the embedded MiniLM.

1. Surface statistics of every head: attention to [CLS], [SEP], punctuation, the
   previous / next token, and attention entropy (Clark et al. section 3).
2. Head clustering: Jensen-Shannon distances between heads, embedded in 2-D (section 6).
3. Heads as dependency parsers: per relation, the best head vs the best fixed offset
   (section 4), and an attention-probe parser trained on one part of the data and
   scored (UAS) on the rest (section 5).

By default it uses the small hand-annotated sample shipped in examples/data/; pass a
CoNLL-U file (e.g. UD English EWT) for real numbers:

    python examples/what_does_bert_look_at.py --out figures/
    python examples/what_does_bert_look_at.py --conllu en_ewt-ud-dev.conllu --train 1500 --out figures/
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

import attnlab
from attnlab.analysis import head_distances, head_stats
from attnlab.analysis.conllu import read_conllu
from attnlab.analysis.probe import AttentionProbe
from attnlab.analysis.syntax import relation_accuracy, word_maps

HERE = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conllu", type=Path, default=HERE / "data" / "sample.conllu", help="dependency trees (CoNLL-U)")
    ap.add_argument("--out", type=Path, default=Path("bert_look_at"), help="folder for the figures")
    ap.add_argument("--train", type=int, default=None, help="sentences used to train the probe (default: 2/3)")
    ap.add_argument("--stats-sentences", type=int, default=300, help="sentences used for statistics and clustering")
    ap.add_argument("--max-words", type=int, default=60, help="skip longer sentences")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    pd.set_option("display.width", 140)
    progress = not args.quiet
    t0 = time.time()

    model = attnlab.load("minilm")
    sentences = [s for s in read_conllu(args.conllu) if len(s) <= args.max_words]
    print(f"{model}\n{len(sentences)} sentences from {args.conllu.name} (<= {args.max_words} words)\n")

    # 1. surface statistics --------------------------------------------------------------
    corpus = [s.words for s in sentences[: args.stats_sentences]]
    stats = head_stats(model, corpus, progress=progress)
    print("Heads attending most to each target (mean over all tokens):")
    for col in ("cls", "sep", "punct", "prev", "next"):
        top = stats.top(col, 3)
        print(f"  {col:6s} " + "   ".join(f"{l}-{h}: {v:.2f}" for l, h, v in top.itertuples(index=False)))
    by_layer = stats.table.groupby("layer")[["cls", "sep", "punct", "entropy"]].mean()
    print("\nMean over the heads of each layer:\n" + by_layer.round(3).to_string())
    stats.plot(kind="targets").savefig(args.out / "attention_targets.png", dpi=120)
    stats.plot(kind="entropy").savefig(args.out / "entropy.png", dpi=120)

    # 2. clustering ----------------------------------------------------------------------
    hmap = head_distances(model, corpus, stats=stats, seed=args.seed, progress=progress)
    print("\nHead behaviours:", {b: int(n) for b, n in hmap.summary.itertuples(index=False)})
    hmap.plot().savefig(args.out / "head_clusters.png", dpi=120)

    # 3. syntax --------------------------------------------------------------------------
    maps = word_maps(model, sentences, progress=progress)
    res = relation_accuracy(model, sentences, maps=maps, progress=progress)
    print("\nBest head per relation vs the best fixed offset (most frequent relations):")
    frequent = res.table[res.table["count"] >= 5]
    print(frequent.head(15).round(3).to_string(index=False))
    res.plot().savefig(args.out / "relations.png", dpi=120)

    n_train = args.train if args.train is not None else (2 * len(sentences)) // 3
    probe = AttentionProbe(seed=args.seed).fit(model, sentences[:n_train], maps=maps[:n_train], progress=progress)
    score = probe.evaluate(model, sentences[n_train:], maps=maps[n_train:], progress=progress)
    print(f"\nAttention probe: trained on {n_train} sentences, tested on {score.n_sentences} ({score.n_words} words)")
    print(score.table.round(3).to_string(index=False))
    print(f"\nfigures in {args.out}/ ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
