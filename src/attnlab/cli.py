"""The ``attnlab`` command line: the everyday jobs from a shell.

Each command parses its arguments, calls one library function and writes what it returns.
Errors print one line (``attnlab: error: ...``) and exit with status 2; ``--debug`` shows
the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "build_parser"]

EXIT_BAD_INPUT = 2


# -- shared helpers ---------------------------------------------------------------------------


def _read_lines(args, *, what: str = "texts") -> list[str]:
    """Texts from positional arguments, ``--file`` (one per line) or standard input."""
    from attnlab.errors import InvalidInput

    if getattr(args, "text", None):
        items = list(args.text)
    elif getattr(args, "file", None):
        path = Path(args.file)
        if not path.is_file():
            raise InvalidInput(f"--file {path}: no such file")
        items = path.read_text(encoding="utf-8").splitlines()
    elif not sys.stdin.isatty():
        items = sys.stdin.read().splitlines()
    else:
        items = []
    items = [line.strip() for line in items if line.strip()]
    if not items:
        raise InvalidInput(f"no {what} given: pass them as arguments, with --file PATH, or on standard input")
    return items


def _specs(path: str | None) -> list:
    if not path:
        return []
    from attnlab.errors import InvalidInput
    from attnlab.interventions import load_specs

    if not Path(path).is_file():
        raise InvalidInput(f"--interventions {path}: no such file")
    return load_specs(path)


def _ints(text: str | None, what: str) -> list[int] | None:
    from attnlab.errors import InvalidInput

    if text is None:
        return None
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise InvalidInput(f"{what} must be comma-separated integers like 0,3,5; got {text!r}") from None


def _load(args):
    import attnlab
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # keep stderr to our own progress bars and one-line errors
    hf_logging.set_verbosity_error()

    return attnlab.load(args.model)


def _write_table(df, out: str | None, *, default_name: str) -> Path | None:
    """CSV or JSON by the suffix of ``out``; print the table when no output is given."""
    if out is None:
        print(df.to_string(index=False, max_rows=40))
        return None
    path = Path(out)
    if path.suffix == "" or path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        path = path / default_name
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        path.write_text(df.to_json(orient="records", indent=1))
    else:
        df.to_csv(path, index=False)
    print(f"wrote {path}")
    return path


def _save_figure(fig, path: str | None) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
        print(f"wrote {path}")


# -- commands ---------------------------------------------------------------------------------


def cmd_demo(args) -> None:
    """Bias-intervention demo on the embedded Gemma model, written as an HTML report."""
    from attnlab.demo import run_demo

    model = _load(args)
    demo, path = run_demo(model, args.out, k=args.k, method=args.method, n_boot=args.n_boot, progress=not args.quiet)
    print(demo.report())
    print(f"report: {path.resolve()}")


def cmd_view(args) -> None:
    """Write a head, model, neuron or diff view as one offline HTML file."""
    from attnlab.errors import InvalidInput
    from attnlab.viz import VIEWS

    text = " ".join(_read_lines(args, what="text"))
    specs = _specs(args.interventions)
    options = dict(layers=_ints(args.layers, "--layers"), heads=_ints(args.heads, "--heads"))
    if args.max_tokens is not None:
        options["max_tokens"] = args.max_tokens
    if args.kind == "diff":
        if not specs:
            raise InvalidInput("the diff view needs --interventions SPEC.json (what to compare against)")
        view = VIEWS["diff"](_load(args), text, specs, **options)
    else:
        if args.kind == "neuron" and args.query is not None:
            options["query"] = args.query
        view = VIEWS[args.kind](_load(args), text, interventions=specs, **options)
    path = view.save(args.out)
    print(f"wrote {path}")


def cmd_sweep(args) -> None:
    """Effect of intervening on every head (or chosen heads) on a metric, as a table and heatmap."""
    from attnlab.measure import metric_from_name, sweep_heads

    layers, heads = _ints(args.layers, "--layers"), _ints(args.heads, "--heads")
    prompts = _read_lines(args, what="prompts")
    model = _load(args)
    options = {}
    if args.metric == "logit_diff":
        options = {"target": args.target, "foil": args.foil}
    elif args.metric == "prob":
        options = {"tokens": [args.target]}
    metric = metric_from_name(args.metric, **options)
    counterfactuals = None
    if args.counterfactuals:
        counterfactuals = [line.strip() for line in Path(args.counterfactuals).read_text().splitlines() if line.strip()]
    result = sweep_heads(
        model, prompts, method=args.method, metric=metric, counterfactuals=counterfactuals,
        reference=prompts if args.method in ("mean", "resample") else None,
        layers=layers, heads=heads,
        batch_size=args.batch_size, n_boot=args.n_boot, progress=not args.quiet,
    )
    _write_table(result.table, args.out, default_name="sweep.csv")
    _save_figure(result.heatmap(), args.figure)


def cmd_bias(args) -> None:
    """Profession pronoun bias (and WinoBias/Winogender gaps), optionally under interventions."""
    import pandas as pd

    from attnlab.bias import bias_experiment, coref_bias, load_winobias_dir, pronoun_bias, winobias_pairs

    model = _load(args)
    specs = _specs(args.interventions)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if specs:
        exp = bias_experiment(model, specs, n_boot=args.n_boot, progress=not args.quiet)
        _write_table(exp.table, str(out / "bias_experiment.csv"), default_name="bias_experiment.csv")
        _save_figure(exp.figure(), str(out / "bias_experiment.png"))
        print(exp.table.to_string(index=False))
    else:
        bias = pronoun_bias(model, n_boot=args.n_boot, progress=not args.quiet)
        _write_table(bias.per_occupation, str(out / "bias_per_occupation.csv"), default_name="x.csv")
        _write_table(bias.summary, str(out / "bias_summary.csv"), default_name="x.csv")
        _save_figure(bias.figure(), str(out / "bias_per_occupation.png"))
        print(bias.summary.to_string(index=False))
    if args.winobias:
        pairs = winobias_pairs(load_winobias_dir(args.winobias, split=args.split))
        if args.limit:
            pairs = pairs.head(args.limit)
        result = coref_bias(model, pairs, n_boot=args.n_boot, progress=not args.quiet)
        table = result.summary if isinstance(getattr(result, "summary", None), pd.DataFrame) else result.table
        _write_table(table, str(out / "winobias.csv"), default_name="winobias.csv")
        print(table.to_string(index=False))


def cmd_analyze(args) -> None:
    """Clark et al. head statistics and clustering over a corpus (plus dependency tables from CoNLL-U)."""
    from attnlab.analysis import head_distances, head_stats

    model = _load(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.conllu:
        from attnlab.analysis.conllu import read_conllu
        from attnlab.analysis.syntax import relation_accuracy

        sentences = read_conllu(args.conllu, limit=args.limit)
        corpus = sentences
        acc = relation_accuracy(model, sentences, progress=not args.quiet)
        _write_table(acc.table(), str(out / "relations.csv"), default_name="relations.csv")
    else:
        corpus = _read_lines(args, what="corpus sentences")
        if args.limit:
            corpus = corpus[: args.limit]
    stats = head_stats(model, corpus, progress=not args.quiet)
    _write_table(stats.df, str(out / "head_stats.csv"), default_name="head_stats.csv")
    _save_figure(stats.plot_targets(), str(out / "head_stats.png"))
    _save_figure(stats.plot_entropy(), str(out / "head_entropy.png"))
    head_map = head_distances(model, corpus, stats=stats, progress=not args.quiet)
    _write_table(head_map.df, str(out / "head_clusters.csv"), default_name="head_clusters.csv")
    _save_figure(head_map.plot(), str(out / "head_clusters.png"))


def cmd_neurons(args) -> None:
    """Rank q/k dimensions (rotary pairs on rotary models) by how strongly they make attention decay with distance."""
    from attnlab.analysis.neurons import decay_neurons

    model = _load(args)
    corpus = _read_lines(args, what="corpus texts")
    layers = _ints(args.layers, "--layers")
    result = decay_neurons(model, corpus, layers=layers, progress=not args.quiet)
    table = result.ranking()
    _write_table(table.head(args.top) if args.top else table, args.out, default_name="decay_neurons.csv")


# -- parser -----------------------------------------------------------------------------------


def _common(p: argparse.ArgumentParser, *, model_default: str, text: bool = True) -> None:
    p.add_argument("--model", default=model_default,
                   help=f"embedded name (minilm, gemma-3-270m), HF id or local path (default: {model_default})")
    if text:
        p.add_argument("text", nargs="*", help="input text(s); or use --file, or pipe them on standard input")
        p.add_argument("--file", help="read inputs from this file, one per line")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnlab",
        description="Read, overwrite, measure and view attention inside transformer models.",
        epilog="Run 'attnlab COMMAND --help' for the options of each command.",
    )
    parser.add_argument("--version", action="version", version="attnlab 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help=cmd_demo.__doc__, description=cmd_demo.__doc__)
    _common(p, model_default="gemma-3-270m", text=False)
    p.add_argument("--out", default="attnlab-out", help="output folder (default: attnlab-out)")
    p.add_argument("--k", type=int, default=2, help="how many top mediating heads to ablate (default: 2)")
    p.add_argument("--method", default="mean", choices=["mean", "zero"], help="ablation method (default: mean)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for intervals")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("view", help=cmd_view.__doc__, description=cmd_view.__doc__)
    p.add_argument("kind", choices=["head", "model", "neuron", "diff"], help="which view")
    _common(p, model_default="minilm")
    p.add_argument("--layers", help="comma-separated layers to include (default: all)")
    p.add_argument("--heads", help="comma-separated heads to include (default: all)")
    p.add_argument("--query", type=int, help="neuron view: the query token position")
    p.add_argument("--max-tokens", type=int, help="refuse inputs longer than this many tokens")
    p.add_argument("--interventions", help="JSON file of intervention specs (required for diff)")
    p.add_argument("--out", default="view.html", help="HTML file to write (default: view.html)")
    p.set_defaults(func=cmd_view)

    p = sub.add_parser("sweep", help=cmd_sweep.__doc__, description=cmd_sweep.__doc__)
    _common(p, model_default="gemma-3-270m")
    p.add_argument("--method", default="zero", choices=["zero", "mean", "resample", "patch"])
    p.add_argument("--metric", default="logit_diff", help="logit_diff, prob, kl, loss, topk (default: logit_diff)")
    p.add_argument("--target", default=" she", help="target continuation for logit_diff/prob (default: ' she')")
    p.add_argument("--foil", default=" he", help="foil continuation for logit_diff (default: ' he')")
    p.add_argument("--counterfactuals", help="file of counterfactual prompts (one per prompt) for --method patch")
    p.add_argument("--layers", help="comma-separated layers (default: all)")
    p.add_argument("--heads", help="comma-separated heads (default: all)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--out", help="CSV or JSON file for the table (default: print it)")
    p.add_argument("--figure", help="PNG file for the layer x head heatmap")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("bias", help=cmd_bias.__doc__, description=cmd_bias.__doc__)
    _common(p, model_default="gemma-3-270m", text=False)
    p.add_argument("--interventions", help="JSON file of specs: report the bias before/after them with the cost")
    p.add_argument("--winobias", help="folder with the WinoBias files (pro/anti_stereotyped_type{1,2}.txt.SPLIT)")
    p.add_argument("--split", default="dev", help="WinoBias split suffix (default: dev)")
    p.add_argument("--limit", type=int, help="use at most this many WinoBias pairs")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--out", default="attnlab-bias", help="output folder (default: attnlab-bias)")
    p.set_defaults(func=cmd_bias)

    p = sub.add_parser("analyze", help=cmd_analyze.__doc__, description=cmd_analyze.__doc__)
    _common(p, model_default="minilm")
    p.add_argument("--conllu", help="CoNLL-U file: analyse its sentences and write per-relation head accuracy")
    p.add_argument("--limit", type=int, help="use at most this many sentences")
    p.add_argument("--out", default="attnlab-analysis", help="output folder (default: attnlab-analysis)")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("neurons", help=cmd_neurons.__doc__, description=cmd_neurons.__doc__)
    _common(p, model_default="gemma-3-270m")
    p.add_argument("--layers", help="comma-separated layers (default: all)")
    p.add_argument("--top", type=int, default=50, help="keep the strongest N (default: 50; 0 keeps all)")
    p.add_argument("--out", help="CSV or JSON file (default: print the table)")
    p.set_defaults(func=cmd_neurons)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # texts given after options land here (argparse stops a nargs="*" at the first option)
        if any(e.startswith("-") for e in extra) or not hasattr(args, "text"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.text = [*args.text, *extra]
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    from attnlab.errors import AttnlabError

    try:
        args.func(args)
    except (AttnlabError, OSError, json.JSONDecodeError) as err:
        if args.debug:
            raise
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"attnlab: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("attnlab: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
