"""The ``attnlab`` command line: the everyday jobs from a shell.

Each command checks its options and input files, loads the model, calls one library
function and writes what it returns. Every user error (a bad option, a missing or
malformed file, a model that cannot be loaded, an out-of-range spec) prints one line,
``attnlab: error: ...``, and exits with status 2; ``--debug`` shows the traceback instead.
Options and files are checked before the model is loaded, so mistakes fail in a second.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["main", "build_parser", "DEFAULT_MODEL"]

EXIT_BAD_INPUT = 2
#: the largest layer, head or unit index a file may give (no model has more; far below float's exact integers)
_MAX_INDEX = 2**31 - 1
#: the model every command uses unless --model says otherwise
DEFAULT_MODEL = "gemma-3-270m"


# -- option types: refuse bad values while parsing ------------------------------------------


def _count(minimum: int, meaning: str = "") -> Callable[[str], int]:
    """An argparse type for an integer >= ``minimum`` (``meaning`` explains the smallest value)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}{meaning}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}{meaning}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _batch_size(text: str) -> int | str:
    """An argparse type for ``--batch-size``: ``auto`` or an integer >= 1."""
    return text if text == "auto" else _count(1, " or auto")(text)


def _real(valid: str, ok: Callable[[float], bool]) -> Callable[[str], float]:
    """An argparse type for a finite number for which ``ok`` holds (``valid`` says which, e.g. ``in (0, 1)``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number {valid}, got {text!r}") from None
        if not math.isfinite(value) or not ok(value):
            raise argparse.ArgumentTypeError(f"must be {valid}, got {text}")
        return value

    parse.__name__ = f"number {valid}"
    return parse


def _n_boot(text: str) -> int:
    """An argparse type for ``--n-boot``: 0 (no intervals) up to the bootstrap's bound, refused before a model loads."""
    from attnlab.measure.stats import MAX_BOOT

    value = _count(0, " (0: no intervals)")(text)
    if value > MAX_BOOT:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_BOOT} (intervals settle by about 10000 resamples), got {value}")
    return value


def _procs(text: str) -> int:
    """An argparse type for ``--procs``: 1 up to the machine's CPU cores (run_parallel's own bound)."""
    from attnlab.measure.launch import max_procs

    most = max_procs()
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer from 1 to {most} (the CPU cores of this machine), "
                                         f"got {text!r}") from None
    if not 1 <= value <= most:
        raise argparse.ArgumentTypeError(f"must be from 1 to {most} (the CPU cores of this machine), got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is the same single line as every other error."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"attnlab: error: {message} (see '{self.prog} --help')\n")


# -- inputs ---------------------------------------------------------------------------------


def _read_lines(args, *, what: str = "texts") -> list[str]:
    """Texts from positional arguments, ``--file`` (one per line) or standard input."""
    from attnlab._textfile import decode_lines, read_lines
    from attnlab.errors import InvalidInput

    given, file = list(getattr(args, "text", None) or []), getattr(args, "file", None)
    if given and file:
        raise InvalidInput(f"give the {what} as arguments or with --file, not both")
    if given:
        items = given
    elif file:
        items = read_lines(file, what="--file")
    elif not sys.stdin.isatty():
        stream = getattr(sys.stdin, "buffer", None)
        items = decode_lines(stream.read(), source="<stdin>") if stream is not None else sys.stdin.read().splitlines()
    else:
        items = []
    items = [line.strip() for line in items if line.strip()]
    if not items:
        raise InvalidInput(f"no {what} given: pass them as arguments, with --file PATH, or on standard input")
    return items


def _file_lines(path: str | None, option: str) -> list[str] | None:
    """The non-empty lines of the file given to ``option`` (None when the option is absent)."""
    if path is None:
        return None
    from attnlab._textfile import read_lines
    from attnlab.errors import InvalidInput

    lines = [line.strip() for line in read_lines(path, what=option) if line.strip()]
    if not lines:
        raise InvalidInput(f"{option} {path}: the file has no non-empty lines")
    return lines


def _specs(path: str | None) -> list:
    """``--interventions FILE``: at least one spec; a file holding none (``[]``) is refused, since
    running without the interventions that were asked for (or, for the diff view, reporting the
    option as missing) hides the mistake."""
    if path is None:
        return []
    from attnlab.errors import InvalidInput
    from attnlab.interventions import load_specs

    if not path.strip():
        raise InvalidInput("--interventions '': give the spec file to read (JSON, see attnlab.interventions.save_specs)")

    specs = load_specs(path)
    if not specs:
        raise InvalidInput(f"--interventions {path}: the file holds no interventions (an empty list); "
                           "write at least one spec in it (e.g. [{\"kind\": \"ablate_head\", \"layer\": 0, \"head\": 0}])")
    return specs


def _ints(text: str | None, what: str) -> list[int] | None:
    from attnlab.errors import InvalidInput

    if text is None:
        return None
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise InvalidInput(f"{what} must be comma-separated integers like 0,3,5; got {text!r}") from None


def _indices(text: str | None, option: str) -> list[int] | None:
    """``--layers``/``--heads``/``--dims``/``--neurons``: comma-separated integers >= 0, at least one.

    Every command's list options go through here, before the model loads: the library
    refuses an empty or negative list too, but only with a model, and in its own words.
    """
    from attnlab.errors import InvalidInput

    values = _ints(text, option)
    if values is None:
        return None
    if not values:
        raise InvalidInput(f"{option} {text!r}: no numbers given (e.g. {option} 0,2; leave it out for all)")
    negative = [v for v in values if v < 0]
    if negative:
        raise InvalidInput(f"{option} must be integers >= 0 (counted from 0), got {negative[0]}")
    return values


def _occupations(value: str | None) -> list[str] | None:
    """``--occupations``: comma-separated names from the shipped list (which knows their share of women)."""
    if value is None:
        return None
    from attnlab.bias.templates import occupation_table
    from attnlab.errors import InvalidInput, did_you_mean

    names = [x.strip() for x in value.split(",") if x.strip()]
    known = list(occupation_table().occupation)
    if not names:
        raise InvalidInput(f"--occupations {value!r}: no names given (e.g. --occupations nurse,mechanic)")
    for i, name in enumerate(names):
        if name not in known:
            raise InvalidInput(
                f"--occupations: unknown occupation {name!r}{did_you_mean(name, known)} "
                f"(the shipped list: {', '.join(known[:8])}, ... {len(known)} in all)"
            )
        if name in names[:i]:  # the library refuses it too, but only once the model is loaded
            raise InvalidInput(f"--occupations: {name!r} is given twice; give each occupation once")
    return names


def _templates(value: str | None) -> list[str] | None:
    """``--templates``: one template with an ``{occupation}`` slot, or a file of them (one per line)."""
    if value is None:
        return None
    from attnlab.bias.templates import Template
    from attnlab.errors import InvalidInput

    if "{occupation}" in value:
        items = [value]
    elif Path(value).is_file():
        items = _file_lines(value, "--templates")
    else:
        raise InvalidInput(
            f"--templates {value!r}: not a file and not a template with an {{occupation}} slot "
            "(e.g. --templates 'The {occupation} said that')"
        )
    for item in items:
        Template(item)  # refuses a line without the {occupation} slot, naming it
    return items


def _check_model(name: str) -> None:
    """A local --model path must be a folder with config.json; say so before transformers does."""
    from attnlab.errors import InvalidInput

    path = Path(name)
    if not path.exists():
        return
    hint = f"pass a folder written by save_pretrained, an embedded model ({DEFAULT_MODEL}, minilm) or an HF id"
    if not path.is_dir():
        raise InvalidInput(f"--model {name}: a file, not a model folder; {hint}")
    if not (path / "config.json").is_file():
        raise InvalidInput(f"--model {name}: the folder has no config.json; {hint}")


def _load(args):
    import attnlab
    from attnlab.errors import AttnlabError, InvalidInput
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # keep stderr to our own progress bars and one-line errors
    hf_logging.set_verbosity_error()
    try:
        return attnlab.load(args.model, **({"trust_remote_code": True} if args.trust_remote_code else {}))
    except AttnlabError:
        raise
    except (OSError, ValueError) as err:  # transformers' errors for a folder or id it cannot read
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InvalidInput(f"--model {args.model}: cannot load it ({first})") from err


# -- outputs --------------------------------------------------------------------------------


def _write_table(df, out: str | None, *, default_name: str) -> Path | None:
    """CSV or JSON by the suffix of ``out``; print the table when no output is given."""
    if out is None:
        print(df.to_string(index=False, max_rows=40))
        return None
    path = _table_path(out, default_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":  # X.JSON too: it wrote CSV text into a .JSON file
        path.write_text(_json_records(df))
    else:
        df.to_csv(path, index=False)
    print(f"wrote {path}")
    return path


def _table_path(out: str, default_name: str) -> Path:
    """The file a table goes to: ``out`` itself, or ``default_name`` in it when ``out`` is a folder or has no suffix."""
    path = Path(out)
    return path / default_name if path.suffix == "" or path.is_dir() else path


def _through_link(path: Path) -> Path:
    """A symbolic link whose target does not exist yet stands for that target (writing creates it there)."""
    return Path(os.path.realpath(path)) if path.is_symlink() and not path.exists() else path


def _check_place(path: Path, value: str, option: str) -> None:
    """``path`` (a file to write, or a folder to make) can be: an existing file is writable, else
    its nearest existing folder is a folder one may write in.

    Folders on the way that are missing are made when writing; a file where one of them
    should be, or a folder the user may not write in, failed only after the model had loaded
    and the work had run (a raw ``[Errno 17] File exists``).
    """
    from attnlab.errors import InvalidInput

    path = _through_link(path)
    if os.path.lexists(path):  # a file overwritten in place: its own permission is what counts
        if path.is_dir():
            raise InvalidInput(f"{option} {value}: {path} is a folder; give a file name")
        if not os.access(path, os.W_OK):
            raise InvalidInput(f"{option} {value}: cannot overwrite this file (permission denied)")
        _try_writing(path, value, option)
        return
    existing = next((p for p in path.parents if os.path.lexists(p)), Path("."))
    if not existing.is_dir():
        what = "a file" if existing.is_file() else "not a folder"
        raise InvalidInput(f"{option} {value}: {existing} is {what}, so no folder can be made there")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InvalidInput(f"{option} {value}: cannot write in the folder {existing} (permission denied)")
    _try_writing(existing, value, option)


def _try_writing(place: Path, value: str, option: str) -> None:
    """Open the file for appending, or make a nameless file in the folder, and let go: what permission bits miss.

    A read-only mount, ``/proc`` or a full disk passed the bits (as root, everything does) and
    failed only after the work had run.
    """
    import tempfile

    from attnlab.errors import InvalidInput

    try:
        if place.is_dir():
            with tempfile.TemporaryFile(dir=place):
                pass
        else:
            with open(place, "ab"):  # appending nothing: the file and its time stay as they are
                pass
    except OSError as err:
        where = f"in the folder {place}" if place.is_dir() else "this file"
        raise InvalidInput(f"{option} {value}: cannot write {where} ({err.strerror or err})") from None


def _check_out(args) -> None:
    """``-o``: the file or folder the command writes can be written, checked before the model loads.

    ``args.out_kind`` says what ``-o`` names: ``folder`` (the command writes several files
    into it), ``file`` (one file), or ``table`` (one CSV/JSON file; a name without a suffix,
    or an existing folder, is a folder that gets ``args.out_name``; see :func:`_write_table`).
    """
    from attnlab.errors import InvalidInput

    value, kind = getattr(args, "out", None), getattr(args, "out_kind", None)
    if value is None or kind is None:  # the table is printed
        return
    path = _through_link(Path(value))
    if str(value).strip() == "":
        raise InvalidInput("-o '': give a file or folder name")
    folder = kind == "folder" or (kind == "table" and (path.suffix == "" or path.is_dir()))
    if folder:
        if os.path.lexists(path) and not path.is_dir():
            hint = (f"a name without a suffix is a folder here (the table would go in it as {args.out_name}); give a "
                    "name ending in .csv or .json, or a folder" if kind == "table"
                    else "this command writes several files into a folder; give a folder name")
            raise InvalidInput(f"-o {value}: is a file, not a folder; {hint}")
        if path.is_dir():
            if not os.access(path, os.W_OK | os.X_OK):
                raise InvalidInput(f"-o {value}: cannot write in this folder (permission denied)")
            _try_writing(path, value, "-o")
            return
        _check_place(path, value, "-o")
        return
    if path.is_dir():
        kind = args.out_name.rsplit(".", 1)[-1].upper()
        raise InvalidInput(f"-o {value}: is a folder; give the {kind} file to write, e.g. -o {path / args.out_name}")
    _check_place(path, value, "-o")


def _figure_path(value: str | None, option: str = "--figure") -> Path | None:
    """The file ``--figure`` will write, checked before the model loads: a suffix matplotlib can write.

    Without a suffix matplotlib writes PNG and adds ``.png``; the path returned says so, so that
    the 'wrote' line names the file that exists.
    """
    if not value:
        return None
    import shutil

    import matplotlib
    from matplotlib.backend_bases import FigureCanvasBase

    from attnlab.errors import InvalidInput, did_you_mean

    path = Path(value)
    if path.is_dir():
        raise InvalidInput(f"{option} {value}: is a folder; give a file name such as {path / 'figure.png'}")
    _check_place(path if path.suffix else path.with_name(path.name + ".png"), value, option)  # folders: made if missing
    formats = sorted(FigureCanvasBase.get_supported_filetypes())
    tex = matplotlib.rcParams["pgf.texsystem"]
    if shutil.which(tex) is None:  # .pgf needs a TeX system to measure text: it failed after the whole run
        formats.remove("pgf")
        if path.suffix.lower() == ".pgf":
            raise InvalidInput(f"{option} {value}: a .pgf figure needs {tex}, which is not installed; use .pdf or .svg")
    if not path.suffix:
        return path.with_name(path.name + ".png")
    kind = path.suffix[1:].lower()
    if kind not in formats:
        raise InvalidInput(f"{option} {value}: cannot write a .{path.suffix[1:]} figure{did_you_mean(kind, formats)} "
                           f"(suffixes: {', '.join('.' + f for f in formats)})")
    return path


def _distinct_outputs(outputs: dict[str, Path | None]) -> None:
    """Refuse two outputs of one command naming the same file (``-o t.png --figure t.png``): the second
    overwrote the first, and both 'wrote' lines named the one file left."""
    from attnlab.errors import InvalidInput

    seen: dict[str, str] = {}
    for option, path in outputs.items():
        if path is None:
            continue
        key = os.path.realpath(_through_link(Path(path)))
        if key in seen:
            raise InvalidInput(f"{option} {path}: the same file as {seen[key]}, which it would overwrite; "
                               "give each output its own name")
        seen[key] = f"{option} {path}"


def _json_value(value):
    """One cell as JSON data: Python's float repr round-trips every float; NaN, inf and missing are null."""
    import numpy as np
    import pandas as pd

    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    return value


def _json_records(df) -> str:
    """The table as a JSON list of row objects, floats written exactly.

    ``DataFrame.to_json`` rounds to 10 significant digits (``double_precision=10``), so a
    ``-o X.json`` table differed from the ``-o X.csv`` one; ``json.dumps`` writes each float's
    shortest repr, which reads back as the same float.
    """
    import json

    rows = [{str(k): _json_value(v) for k, v in row.items()} for row in df.to_dict(orient="records")]
    return json.dumps(rows, indent=1, allow_nan=False, default=str)


def _save_figure(fig, path: str | Path | None) -> None:
    """Write ``fig`` to ``path`` (already checked by :func:`_figure_path` when the user named it)."""
    if path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
        print(f"wrote {path}")


# -- commands -------------------------------------------------------------------------------


def cmd_demo(args) -> None:
    """Bias-intervention demo (bias, mediating heads, ablation, cost), written as an HTML report."""
    from attnlab.demo import run_demo

    demo, path = run_demo(_load(args), args.out, k=args.k, method=args.method, n_boot=args.n_boot, progress=not args.quiet)
    print(demo.report())
    print(f"report: {path.resolve()}")


def cmd_view(args) -> None:
    """Write a head, model, neuron or diff view as one offline HTML file."""
    from attnlab.errors import InvalidInput
    from attnlab.viz import VIEWS

    options = dict(layers=_indices(args.layers, "--layers"), heads=_indices(args.heads, "--heads"))
    if args.max_tokens is not None:
        options["max_tokens"] = args.max_tokens
    specs = _specs(args.interventions)
    if args.kind == "diff" and not specs:
        raise InvalidInput("the diff view needs --interventions SPEC.json (what to compare against)")
    if args.query is not None:
        if args.kind != "neuron":
            raise InvalidInput("--query is only used by the neuron view")
        options["query"] = args.query
    text = " ".join(_read_lines(args, what="text"))
    model = _load(args)
    if args.kind == "diff":
        view = VIEWS["diff"](model, text, specs, **options)
    else:
        view = VIEWS[args.kind](model, text, interventions=specs, **options)
    print(f"wrote {view.save(args.out)}")


def cmd_sweep(args) -> None:
    """Effect of intervening on every head (or chosen heads) on a metric, as a table and heatmap."""
    from attnlab.errors import InvalidInput
    from attnlab.measure import sweep_heads
    from attnlab.measure.metrics import metric_from_name

    layers, heads = _indices(args.layers, "--layers"), _indices(args.heads, "--heads")
    figure = _figure_path(args.figure)
    _distinct_outputs({"-o": _table_path(args.out, args.out_name) if args.out else None, "--figure": figure})
    if args.reference and args.method not in ("mean", "resample"):
        raise InvalidInput(f"--reference is used by --method mean or resample, not {args.method}")
    if args.counterfactuals and args.method != "patch":
        raise InvalidInput(f"--counterfactuals is used by --method patch, not {args.method}")
    options = {}
    if args.metric == "logit_diff":
        options = {"target": args.target, "foil": args.foil}
    elif args.metric == "prob":
        options = {"token": args.target}
    metric = metric_from_name(args.metric, **options)
    reference = _file_lines(args.reference, "--reference")
    counterfactuals = _file_lines(args.counterfactuals, "--counterfactuals")
    prompts = _read_lines(args, what="prompts")
    sweep_options = dict(
        method=args.method, metric=metric, counterfactuals=counterfactuals,
        reference=reference, layers=layers, heads=heads,
        batch_size=args.batch_size, n_boot=args.n_boot, progress=not args.quiet,
        precision=None if args.precision == "full" else args.precision,
    )
    if args.procs > 1:  # --procs N: N processes split the sweep, each loading its own model (docs/parallel.md)
        from functools import partial

        import attnlab
        from attnlab.measure import run_parallel

        # each process loads the model as one process would: with --trust-remote-code too (it was dropped)
        model = partial(attnlab.load, args.model, trust_remote_code=True) if args.trust_remote_code else args.model
        result = run_parallel(sweep_heads, args.procs, prompts, model=model, **sweep_options)
    else:
        result = sweep_heads(_load(args), prompts, **sweep_options)
    _write_table(result.table, args.out, default_name=args.out_name)
    _save_figure(result.plot(), figure)


def _types_in_turn(pairs, limit: int):
    """The first ``limit`` WinoBias pairs taking the types in turn (1, 2, 1, 2, ...), in file order.

    The pairs come sorted by type, so their first ``limit`` held only type 1 (the docs'
    ``--limit 200`` of the dev split's 396 + 396 scored no type-2 pair).
    """
    import numpy as np

    turn = pairs.groupby("type").cumcount().to_numpy()  # position within its type
    keep = np.sort(np.lexsort((pairs["type"].to_numpy(), turn))[:limit])
    return pairs.iloc[keep].reset_index(drop=True)


def cmd_bias(args) -> None:
    """Occupation pronoun bias (and the WinoBias pro/anti gap), optionally before/after interventions."""
    from attnlab.bias import bias_experiment, coref_bias, pronoun_bias, winobias_pairs
    from attnlab.bias.datasets import load_winobias_dir

    occupations = _occupations(args.occupations)
    templates = _templates(args.templates)
    specs = _specs(args.interventions)
    from attnlab.errors import InvalidInput

    pairs = None
    if not args.winobias:  # they select WinoBias pairs: without --winobias they were silently ignored
        for option, value in (("--limit", args.limit), ("--split", args.split)):
            if value is not None:
                raise InvalidInput(f"{option} {value} selects WinoBias pairs; give the folder with --winobias DIR too")
    if args.winobias:
        pairs = winobias_pairs(load_winobias_dir(args.winobias, split=args.split or "dev"))
        if args.limit:
            pairs = _types_in_turn(pairs, args.limit)
    model = _load(args)
    options = dict(occupations=occupations, templates=templates, n_boot=args.n_boot, progress=not args.quiet)
    # everything is computed before anything is written: an error (a spec that does not fit the model) left
    # the -o folder made, empty or with the first tables only
    exp = bias_experiment(model, specs, **options) if specs else None
    bias = None if specs else pronoun_bias(model, **options)
    result = coref_bias(model, pairs, n_boot=args.n_boot, progress=not args.quiet) if pairs is not None else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if exp is not None:
        _write_table(exp.table, out / "bias_experiment.csv", default_name="bias_experiment.csv")
        _save_figure(exp.plot(), out / "bias_experiment.png")
        print(exp.table.to_string(index=False))
    else:
        _write_table(bias.table, out / "bias_per_occupation.csv", default_name="x.csv")
        _write_table(bias.summary, out / "bias_summary.csv", default_name="x.csv")
        _save_figure(bias.plot(), out / "bias_per_occupation.png")
        print(bias.summary.to_string(index=False))
    if result is not None:
        _write_table(result.summary, out / "winobias.csv", default_name="winobias.csv")
        print(result.summary.to_string(index=False))


def cmd_analyze(args) -> None:
    """Clark et al. head statistics and clustering over a corpus (plus dependency tables from CoNLL-U)."""
    from attnlab.analysis import head_distances, head_stats

    from attnlab.errors import InvalidInput

    sentences = None
    if args.conllu and (args.text or args.file):  # they were ignored: the statistics came from --conllu's sentences
        given = "--file" if args.file else "texts"
        raise InvalidInput(f"give the corpus as {given} or with --conllu, not both (--conllu's sentences are the corpus)")
    if args.conllu:
        from attnlab.analysis.conllu import read_conllu

        sentences = read_conllu(args.conllu, limit=args.limit)
        corpus = sentences
    else:
        corpus = _read_lines(args, what="corpus sentences")[: args.limit]
    model = _load(args)
    acc = None
    if sentences is not None:  # everything is computed before anything is written (as in cmd_bias)
        from attnlab.analysis.syntax import relation_accuracy

        acc = relation_accuracy(model, sentences, progress=not args.quiet)
    stats = head_stats(model, corpus, progress=not args.quiet)
    head_map = head_distances(model, corpus, stats=stats, progress=not args.quiet)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if acc is not None:
        _write_table(acc.table, out / "relations.csv", default_name="relations.csv")
    _write_table(stats.table, out / "head_stats.csv", default_name="head_stats.csv")
    _save_figure(stats.plot(kind="targets"), out / "head_stats.png")
    _save_figure(stats.plot(kind="entropy"), out / "head_entropy.png")
    _write_table(head_map.table, out / "head_clusters.csv", default_name="head_clusters.csv")
    _save_figure(head_map.plot(), out / "head_clusters.png")


def cmd_neurons(args) -> None:
    """Rank q/k dimensions (rotary pairs on rotary models) by how strongly they make attention decay with distance."""
    from attnlab.analysis.neurons import decay_neurons

    layers = _indices(args.layers, "--layers")
    corpus = _read_lines(args, what="corpus texts")
    table = decay_neurons(_load(args), corpus, layers=layers, progress=not args.quiet).table  # refuses short texts
    _write_table(table.head(args.top) if args.top else table, args.out, default_name=args.out_name)


# -- attribute: attribution patching (attnlab.measure.attribute) -----------------------------

def _attribution_metric(args):
    from attnlab.errors import InvalidInput
    from attnlab.measure.metrics import metric_from_name

    options = {}
    if args.metric == "logit_diff":
        options = {"target": args.target, "foil": args.foil}
    elif args.metric == "prob":
        options = {"token": args.target}
    metric = metric_from_name(args.metric, **options)  # an unknown name: did-you-mean and the valid names
    if args.probes is not None and args.metric != "kl":  # the library says it too; this names the flag
        raise InvalidInput(f"--probes is used by --metric kl (its second-order estimate), not {args.metric}")
    return metric


def _check_attribution(args, metric, heads, dims, neurons) -> str | None:
    """``attribute()``'s own model-free checks, run before the model is loaded. Returns the correction."""
    from attnlab.measure.attribution import check_attribution_options

    _, correction = check_attribution_options(
        args.site, args.method, None if args.correction == "none" else args.correction, metric=metric,
        heads=heads, dims=dims, neurons=neurons, counterfactuals=args.counterfactuals, reference=args.reference)
    return correction


def _sibling(path: Path, suffix: str) -> Path:
    """``attr.csv`` -> ``attr_verify.csv``."""
    return path.with_name(f"{path.stem}{suffix}{path.suffix}")


def _attribution_figure(result, top: int):
    """The sweep-style heatmap (index x columns) when it fits on a page; else the top units as bars with intervals."""
    matrix = result.matrix()
    if matrix.shape[0] <= 48 and matrix.shape[1] <= 64:
        return result.plot()
    from matplotlib.figure import Figure

    ranked = result.top(max(top, 1) if top else 30)
    per_position = "position" in ranked.columns
    labels = [f"{row.unit}@{int(row.position)}" if per_position else str(row.unit) for row in ranked.itertuples()]
    fig = Figure(figsize=(6.4, 1.0 + 0.28 * len(ranked)))
    ax = fig.add_subplot()
    y = list(range(len(ranked)))[::-1]
    err = [ranked["effect"] - ranked["ci_low"], ranked["ci_high"] - ranked["effect"]]
    ax.barh(y, ranked["effect"], xerr=err, color=["C3" if e > 0 else "C0" for e in ranked["effect"]], capsize=2)
    ax.set_yticks(y, labels, fontsize=7)
    ax.axvline(0, color="k", lw=0.6)
    ax.set_xlabel(f"estimated {result.metric} (intervened - clean), 95% interval over prompts")
    ax.set_title(f"{result.meta.get('what', 'attribution')}: top {len(ranked)} of {len(result.table)} units", fontsize=10)
    fig.tight_layout()
    return fig


def _print_top(result, top: int) -> None:
    ranked = result.top(top if top else len(result.table))
    by = "GradDrop score" if "graddrop" in ranked.columns else "|estimated effect|"
    print(f"{result.meta.get('what', 'attribution')} on {result.metric}: {len(result.table)} units x "
          f"{result.meta.get('n_prompts', '?')} prompts")
    print(f"top {len(ranked)} by {by}. 'estimate' is the attribution-patching ESTIMATE of each unit's effect "
          "(intervened - clean), not a measurement; --verify K measures the top K exactly")
    show = ranked.rename(columns={"effect": "estimate"})
    cols = [c for c in ("unit", "position", "estimate", "ci_low", "ci_high", "graddrop") if c in show.columns]
    show.insert(0, "rank", range(1, len(show) + 1))
    print(show[["rank", *cols]].to_string(index=False, float_format=lambda x: f"{x:.4g}"))


def cmd_attribute(args) -> None:
    """Estimate every head's (or q/k/v dimension's, or MLP neuron's) effect on a metric from one backward pass (AtP, AtP*)."""
    from attnlab.errors import InvalidInput
    from attnlab.measure import attribute

    layers, heads = _indices(args.layers, "--layers"), _indices(args.heads, "--heads")
    dims, neurons = _indices(args.dims, "--dims"), _indices(args.neurons, "--neurons")
    metric = _attribution_metric(args)
    correction = _check_attribution(args, metric, heads, dims, neurons)
    if args.out is not None and args.verify:  # the exact table goes next to -o's: checked before the model loads too
        verify_table = _sibling(_table_path(args.out, args.out_name), "_verify")
        if verify_table.is_dir():
            raise InvalidInput(f"--verify {args.verify} writes the exact table to {verify_table}, which is a folder; "
                               "move it away or give -o another name")
        _check_place(verify_table, str(verify_table), "--verify table")
    figure = _figure_path(args.figure)
    table = _table_path(args.out, args.out_name) if args.out is not None else None
    _distinct_outputs({"-o": table, "--verify table": _sibling(table, "_verify") if table and args.verify else None,
                       "--figure": figure})
    reference = _file_lines(args.reference, "--reference")
    counterfactuals = _file_lines(args.counterfactuals, "--counterfactuals")
    prompts = _read_lines(args, what="prompts")
    if counterfactuals is not None and len(counterfactuals) != len(prompts):
        raise InvalidInput(f"--counterfactuals {args.counterfactuals}: {len(counterfactuals)} lines for {len(prompts)} "
                           "prompts; give one counterfactual per prompt, in the same order")
    model = _load(args)
    result = attribute(
        model, prompts, metric, site=args.site, method=args.method, layers=layers, heads=heads, dims=dims,
        neurons=neurons, per_position=args.per_position, counterfactuals=counterfactuals, reference=reference,
        correction=correction, probes=args.probes, precision=None if args.precision == "full" else args.precision,
        batch_size=args.batch_size, n_boot=args.n_boot, seed=args.seed, progress=not args.quiet,
    )
    checked = result.verify(args.verify, batch_size=args.batch_size, progress=not args.quiet) if args.verify else None
    if args.out is not None:
        path = _write_table(result.table, args.out, default_name=args.out_name)
        if checked is not None:
            _write_table(checked.table, str(_sibling(path, "_verify")), default_name="attribution_verify.csv")
    _save_figure(_attribution_figure(result, args.top), figure)
    _print_top(result, args.top)
    if checked is not None:
        print(f"\n{checked.meta['what']}: 'effect' measured by an exact sweep, 'estimate' from attribution, "
              "error = estimate - effect")
        cols = [c for c in ("variant", "effect", "ci_low", "ci_high", "estimate", "graddrop", "error")
                if c in checked.table.columns]
        print(checked.table[cols].to_string(index=False, float_format=lambda x: f"{x:.4g}"))


# -- window: the context-window dial (attnlab.analysis.dial.set_context_window) -----------------


def _numbers(text: str | None, option: str) -> list[float] | None:
    from attnlab.errors import InvalidInput

    if text is None:
        return None
    try:
        values = [float(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) for v in values):
        raise InvalidInput(f"{option} must be comma-separated finite numbers like {option}=-1,0,0.5,2; got {text!r}")
    return values


def _window_text(args) -> tuple[str, str]:
    """The text to measure on, and where it came from: arguments, --file (read whole), or the packaged neutral text."""
    from attnlab._textfile import read_text
    from attnlab.errors import InvalidInput

    given = [t for t in (args.text or []) if t.strip()]
    if args.text and not given:  # "$TEXT" of an empty variable: it measured the packaged text instead
        raise InvalidInput("the text given is empty (only spaces); give the text, --file FILE, or no text for "
                           "attnlab's packaged neutral text")
    if given and args.file:
        raise InvalidInput("give the text as arguments or with --file, not both")
    if given:
        return " ".join(given), "the text given"
    if args.file:
        text = read_text(args.file, what="--file").strip()
        if not text:
            raise InvalidInput(f"--file {args.file}: the file has no text")
        return text, args.file
    from attnlab.bias.templates import neutral_text

    return "\n\n".join(neutral_text()), "attnlab's packaged neutral text"


def _window_units(path: str | None):
    """``--units FILE``: a CSV with integer columns layer, head, unit (e.g. the units.csv of an earlier run)."""
    if path is None:
        return None
    import csv
    import io

    import numpy as np
    import pandas as pd

    from attnlab._textfile import read_text
    from attnlab.analysis.dial import check_columns_once
    from attnlab.errors import InvalidInput

    text = read_text(path, what="--units")
    # read with the csv module, which counts the file's lines (a quoted cell may span several): errors name them
    reader = csv.reader(io.StringIO(text))
    header, rows, lines = None, [], []
    try:
        for row in reader:
            if not any(cell.strip() for cell in row):  # a blank line (spaces, a no-break space) holds no unit
                continue
            if header is None:
                header = [cell.strip() for cell in row]
                continue
            if len(row) != len(header):
                raise InvalidInput(f"--units {path}: line {reader.line_num} has {len(row)} cells, the header {len(header)}")
            rows.append([cell.strip() for cell in row])
            lines.append(reader.line_num)
    except csv.Error as err:
        raise InvalidInput(f"--units {path}: not a CSV table (line {reader.line_num}: {err})") from None
    if header is None:
        raise InvalidInput(f"--units {path}: not a CSV table (the file is empty)")
    check_columns_once(header, f"--units {path}")  # units[col] would be a table of both columns, not one column
    missing = [c for c in ("layer", "head", "unit") if c not in header]
    if missing:
        raise InvalidInput(f"--units {path}: no column(s) {', '.join(missing)}; it needs layer, head, unit "
                           "(the units.csv an earlier 'attnlab window' run wrote)")
    if not rows:
        raise InvalidInput(f"--units {path}: the table has no rows")
    units = pd.DataFrame(rows, columns=header)
    for col in ("layer", "head", "unit"):
        values = pd.to_numeric(units[col], errors="coerce").astype(float)
        # finite and below _MAX_INDEX too: 1e30 or inf passed the whole-number test and astype(int)
        # overflowed, so the dial later named a different, negative number
        ok = values.notna() & np.isfinite(values) & (values >= 0) & (values <= _MAX_INDEX) & (values == values.round())
        bad = units[col][~ok]
        if len(bad):
            raise InvalidInput(f"--units {path}: column {col} must hold integers from 0 to {_MAX_INDEX}, got "
                               f"{bad.iloc[0]!r} (line {lines[int(bad.index[0])]} of the file)")
        units[col] = values.astype(np.int64)
    return units


def cmd_window(args) -> None:
    """Ask for a context window in tokens: find the one scale of the distance-decay q/k units that gives it."""
    import warnings

    from attnlab.analysis.dial import DEFAULT_SCALES, WindowNotReached, check_window_options, set_context_window
    from attnlab.errors import InvalidInput

    scales = _numbers(args.scales, "--scales") or list(DEFAULT_SCALES)
    limits = _numbers(args.limits, "--limits") or [-4.0, 16.0]
    if len(limits) != 2:
        raise InvalidInput(f"--limits must be two numbers LOW,HIGH, got {args.limits!r}")
    check_window_options(args.target, level=args.level, tolerance=args.tolerance, per_step=args.per_step,
                         batch_size=args.batch_size, max_steps=args.max_steps, scales=scales, limits=tuple(limits),
                         site=args.site)
    units = _window_units(args.units)
    text, source = _window_text(args)
    model = _load(args)
    with warnings.catch_warnings():  # not reaching the target is reported below, not as a Python warning
        warnings.simplefilter("ignore", WindowNotReached)
        res = set_context_window(
            model, args.target, text, units=units, site=args.site, level=args.level, tolerance=args.tolerance,
            scales=scales, limits=tuple(limits), per_step=args.per_step, max_steps=args.max_steps,
            batch_size=args.batch_size, progress=not args.quiet,
        )
    out = Path(args.out)
    for path in res.save(out, stem="window"):
        print(f"wrote {path}")
    res.units.to_csv(out / "units.csv", index=False)
    print(f"wrote {out / 'units.csv'}")
    s = res.summary.iloc[0]
    t = res.table
    print(f"{res.model_name}: {res.n_tokens} tokens of {source}; {len(res.units)} distance-decay unit(s) in "
          f"{int(s['heads'])} head(s) scaled in {res.site}; {len(t)} scales measured ({res.steps} search steps)")
    print(f"target:    {res.target:g} tokens (± {res.tolerance:.0%}: {s['low']:g}..{s['high']:g}; "
          f"window at {res.level:.0%} attention mass)")
    print(f"window:    {res.window:g} tokens at scale {res.scale:.4g} (clean {res.clean_window:g})")
    if res.reached:
        print("reached:   yes")
    else:
        print(f"reached:   no: target {res.target:g} not reached, closest window {res.window:g} tokens; windows measured "
              f"{t['window'].min():g}..{t['window'].max():g} over scales {t['scale'].min():g}..{t['scale'].max():g}")
    print(f"loss cost: {res.loss_cost:+.4f} nats (mean next-token loss on the 2nd half of the text: "
          f"{s['edited_loss']:.4f} edited, {s['clean_loss']:.4f} clean)")


# -- parser ---------------------------------------------------------------------------------

EXAMPLES = {
    "demo": "attnlab demo -o attnlab-out --k 2",
    "view": 'attnlab view head "The nurse said that she was late." --layers 0,1 -o nurse.html',
    "sweep": "attnlab sweep --file prompts.txt --method mean --reference neutral.txt -o sweep.csv --figure sweep.png",
    "bias": "attnlab bias --occupations nurse,mechanic,secretary --templates 'The {occupation} said that' -o bias/",
    "analyze": "attnlab analyze --model minilm --conllu en_ewt-ud-dev.conllu --limit 200 -o analysis/",
    "neurons": "attnlab neurons --file long_text.txt --top 20 -o decay.csv",
    "attribute": "attnlab attribute --file prompts.txt --site z --method zero --verify 5 -o attribution.csv "
                 "--figure attribution.png",
    "window": "attnlab window --target 128 -o window/",
}


def _command(
    sub, name: str, func, *, text: bool = True, out_default: str | None, out_help: str, out_kind: str,
    out_name: str | None = None, first: Callable | None = None,
) -> argparse.ArgumentParser:
    """A subcommand with the options every command shares: --model, -o/--out, --quiet, --debug.

    ``out_kind`` says what ``-o`` names, checked by :func:`_check_out` before the model loads:
    ``folder``, ``file`` or ``table`` (a CSV/JSON file, or a folder that gets ``out_name``).
    ``first`` adds positionals that come before the input texts (``view``'s kind).
    """
    p = sub.add_parser(
        name, help=func.__doc__, description=func.__doc__, epilog=f"example:\n  {EXAMPLES[name]}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if first is not None:
        first(p)
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"embedded name ({DEFAULT_MODEL}, minilm), HF id or local folder (default: {DEFAULT_MODEL})")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let a model folder or HF id run the Python code it ships (auto_map); read it first")
    if text:
        p.add_argument("text", nargs="*", help="input text(s); or use --file, or pipe them on standard input")
        p.add_argument("--file", help="read inputs from this UTF-8 file, one per line")
    p.add_argument("-o", "--out", default=out_default, help=out_help)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    p.set_defaults(func=func, out_kind=out_kind, out_name=out_name)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="attnlab",
        description="Read, overwrite, measure and view attention inside transformer models.",
        epilog=f"Every command uses --model {DEFAULT_MODEL} unless told otherwise. "
        "Run 'attnlab COMMAND --help' for the options and an example of each command. "
        "Errors print one line and exit with status 2.",
    )
    parser.add_argument("--version", action="version", version="attnlab 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    n_boot = dict(type=_n_boot, default=1000, help="bootstrap resamples for intervals (default: 1000)")

    p = _command(sub, "demo", cmd_demo, text=False, out_default="attnlab-out", out_kind="folder",
                 out_help="output folder (default: attnlab-out)")
    p.add_argument("--k", type=_count(1), default=2, help="how many top mediating heads to ablate (default: 2)")
    p.add_argument("--method", default="mean", choices=["mean", "zero"], help="ablation method (default: mean)")
    p.add_argument("--n-boot", **n_boot)

    p = _command(
        sub, "view", cmd_view, out_default="view.html", out_help="HTML file to write (default: view.html)",
        out_kind="file", out_name="view.html",
        first=lambda p: p.add_argument("kind", choices=["head", "model", "neuron", "diff"], help="which view"),
    )
    p.add_argument("--layers", help="comma-separated layers to include (default: all)")
    p.add_argument("--heads", help="comma-separated heads to include (default: all)")
    p.add_argument("--query", type=_count(0), help="neuron view: the query token position")
    p.add_argument("--max-tokens", type=_count(1), help="refuse inputs longer than this many tokens")
    p.add_argument("--interventions", help="JSON file of intervention specs (required for diff)")

    p = _command(sub, "sweep", cmd_sweep, out_default=None, out_kind="table", out_name="sweep.csv",
                 out_help="CSV or JSON file (or folder) for the table (default: print it)")
    p.add_argument("--method", default="zero", choices=["zero", "mean", "resample", "patch"], help="(default: zero)")
    p.add_argument("--metric", default="logit_diff", help="logit_diff, prob, kl, loss, topk (default: logit_diff)")
    p.add_argument("--target", default=" she", help="target continuation for logit_diff/prob (default: ' she')")
    p.add_argument("--foil", default=" he", help="foil continuation for logit_diff (default: ' he')")
    p.add_argument("--reference", help="file of reference texts (one per line) for --method mean/resample "
                   "(default: the prompts themselves)")
    p.add_argument("--counterfactuals", help="file of counterfactual prompts (one per prompt) for --method patch")
    p.add_argument("--layers", help="comma-separated layers (default: all)")
    p.add_argument("--heads", help="comma-separated heads (default: all)")
    p.add_argument("--batch-size", type=_batch_size, default="auto",
                   help="rows per forward pass, or auto: 64 on CPUs, from free memory on GPUs (default: auto)")
    p.add_argument("--procs", type=_procs, default=1,
                   help="split the sweep over this many processes, at most one per CPU core (default: 1)")
    p.add_argument("--precision", default="full", choices=["full", "bfloat16", "float16"],
                   help="bfloat16: the linear layers multiply in bfloat16, a faster first pass whose effects are no "
                   "longer exact (1-4%% of the largest on Gemma, see docs/sweeps.md) (default: full)")
    p.add_argument("--n-boot", **n_boot)
    p.add_argument("--figure", help="image file for the layer x head heatmap (.png, .svg, .pdf, ...; no suffix: .png)")

    p = _command(sub, "bias", cmd_bias, text=False, out_default="attnlab-bias", out_kind="folder",
                 out_help="output folder (default: attnlab-bias)")
    p.add_argument("--occupations", help="comma-separated occupations from the shipped list (default: all of them)")
    p.add_argument("--templates", help="a template with an {occupation} slot, or a file of them, one per line "
                   "(default: the six shipped templates)")
    p.add_argument("--interventions", help="JSON file of specs: report the bias before/after them with the cost")
    p.add_argument("--winobias", help="folder with the WinoBias files (pro/anti_stereotyped_type{1,2}.txt.SPLIT)")
    p.add_argument("--split", choices=["dev", "test"], help="WinoBias split, with --winobias (default: dev)")
    p.add_argument("--limit", type=_count(1), help="use at most this many WinoBias pairs, with --winobias")
    p.add_argument("--n-boot", **n_boot)

    p = _command(sub, "analyze", cmd_analyze, out_default="attnlab-analysis", out_kind="folder",
                 out_help="output folder (default: attnlab-analysis)")
    p.add_argument("--conllu", help="CoNLL-U file: analyse its sentences and write per-relation head accuracy")
    p.add_argument("--limit", type=_count(1), help="use at most this many sentences")

    p = _command(sub, "neurons", cmd_neurons, out_default=None, out_kind="table", out_name="decay_neurons.csv",
                 out_help="CSV or JSON file (or folder) for the table (default: print the table)")
    p.add_argument("--layers", help="comma-separated layers (default: all)")
    p.add_argument("--top", type=_count(0, " (0 keeps all)"), default=50, help="keep the strongest N (default: 50; 0 keeps all)")

    _attribute_parser(sub, n_boot)
    _window_parser(sub)
    return parser


def _attribute_parser(sub, n_boot: dict) -> None:
    p = _command(sub, "attribute", cmd_attribute, out_default=None, out_kind="table", out_name="attribution.csv",
                 out_help="CSV or JSON file (or folder) for the table of estimates; with --verify K the exact table "
                 "goes next to it as NAME_verify.csv (default: print only the top units)")
    p.description += (
        "\n\nAttribution patching (attnlab.measure.attribute): one clean forward, one of the counterfactual or "
        "reference prompts, and one backward pass give a first-order ESTIMATE of every unit's effect "
        "(intervened - clean); it is exact only where the metric is linear in the unit. --verify K measures "
        "the top K exactly (an intervened forward each) and writes both side by side. See docs/attribution.md."
    )
    p.add_argument("--site", default="z", choices=["z", "result", "pattern", "q", "k", "v", "q_pre_rotary", "k_pre_rotary", "q_pre_norm", "k_pre_norm", "post"],
                   help="z, result, pattern: one unit per head; q, k, v: per head and dimension; post: MLP neurons "
                   "(default: z)")
    p.add_argument("--method", default="zero", choices=["zero", "mean", "patch"],
                   help="what replaces the unit: zero, its mean over --reference, or its value on --counterfactuals "
                   "(default: zero; --site pattern: patch only)")
    p.add_argument("--metric", default="logit_diff", help="logit_diff, prob, kl, loss (default: logit_diff)")
    p.add_argument("--target", default=" she", help="target continuation for logit_diff/prob (default: ' she')")
    p.add_argument("--foil", default=" he", help="foil continuation for logit_diff (default: ' he')")
    p.add_argument("--reference", help="file of reference texts (one per line) for --method mean "
                   "(default: the prompts themselves)")
    p.add_argument("--counterfactuals", help="file of counterfactual prompts (one per prompt, same token length) "
                   "for --method patch")
    p.add_argument("--layers", help="comma-separated layers (default: all)")
    p.add_argument("--heads", help="comma-separated heads (default: all; not with --site post)")
    p.add_argument("--dims", help="comma-separated dimensions of each head, for --site q/k/v (default: all)")
    p.add_argument("--neurons", help="comma-separated MLP neurons, for --site post (default: all)")
    p.add_argument("--per-position", action="store_true", help="one unit per token position as well "
                   "(query positions; key positions for k/v)")
    p.add_argument("--correction", default="none", choices=["none", "qk", "graddrop", "atp*"],
                   help="AtP* corrections: qk (q/k sites), graddrop (ranks by its score), atp* (both; quote it "
                   "in a shell) (default: none)")
    p.add_argument("--verify", type=_count(1), metavar="K",
                   help="measure the top K units exactly and write that table too")
    p.add_argument("--top", type=_count(0, " (0 prints all)"), default=10,
                   help="print the top N units (default: 10; 0 prints all)")
    p.add_argument("--probes", type=_count(1), help="random backward directions for --metric kl (default: 16)")
    p.add_argument("--precision", default="full", choices=["full", "bfloat16", "float16"],
                   help="bfloat16: the estimate's linear layers multiply in bfloat16 (1.2-2x faster on CPUs with "
                   "bfloat16 units; the estimate moves by about 1%% of the largest, see docs/attribution.md); "
                   "--verify stays exact (default: full, the model's own precision)")
    p.add_argument("--batch-size", type=_batch_size, default="auto",
                   help="rows per forward/backward pass, or auto: 32 on a CPU, from free memory on a GPU (default: auto)")
    p.add_argument("--n-boot", **n_boot)
    p.add_argument("--seed", type=_count(0), default=0, help="seed of the bootstrap and the KL probes (default: 0)")
    p.add_argument("--figure", help="image file (.png, .svg, .pdf, ...; no suffix: .png): the heatmap of estimates "
                   "(layer x head, ...), or the top units as bars when there are too many for a heatmap")


def _window_parser(sub) -> None:
    p = _command(sub, "window", cmd_window, text=False, out_default="attnlab-window", out_kind="folder",
                 out_help="output folder (default: attnlab-window): window_table.csv (every scale measured), "
                 "window_summary.csv, window_per_prompt.csv (loss by late position), window.png, units.csv")
    p.description += (
        "\n\nThe context-window dial (attnlab.analysis.dial.set_context_window), named 'window' for what you ask "
        "it for, like the other commands' nouns. The window is the smallest distance holding --level (90%%) of "
        "the attention mass, pooled over heads (first-token sink left out); the loss cost is the mean next-token loss on the second half of "
        "the text, edited minus clean. Rotary causal LMs only (Gemma, Llama, ...). A target the scales cannot reach "
        "is not an error: the command prints 'reached: no' with the closest window, writes the same files and exits "
        "with status 0 (reached is False in window_summary.csv). See docs/recipes/context_window_dial.md."
    ).replace("%%", "%")
    p.add_argument("text", nargs="*", help="the text to measure the window on, as one string (default: attnlab's "
                   "packaged neutral text, as in the dial recipe: 332 tokens on gemma-3-270m)")
    p.add_argument("--file", help="read the text from this UTF-8 file, whole (paragraphs and all)")
    # >= 1 as set_context_window requires (a window is a whole number of tokens); 0.5 passed here and failed after loading
    p.add_argument("--target", type=_real(">= 1 (tokens)", lambda v: v >= 1), required=True,
                   help="the window to reach, in tokens, at least 1 (the text needs at least twice as many tokens)")
    p.add_argument("--units", help="CSV with columns layer, head, unit: the rotary pairs to scale (e.g. the units.csv "
                   "of an earlier run, or a subset of it) (default: the text's distance-decay units)")
    p.add_argument("--site", default="q", choices=["q", "k"], help="scale the units in the query or the key "
                   "(the same effect on the scores) (default: q)")
    p.add_argument("--level", type=_real("in (0, 1]", lambda v: 0 < v <= 1), default=0.9,
                   help="attention-mass level that defines the window (default: 0.9)")
    p.add_argument("--tolerance", type=_real("in (0, 1)", lambda v: 0 < v < 1), default=0.1,
                   help="reached means |window - target| <= tolerance x target (default: 0.1)")
    p.add_argument("--scales", help="first grid of scales, comma-separated; write --scales=-1,0,2 when it starts "
                   "with a minus (default: -1,0,0.5,2,3,4; 1.0, the clean model, is always added)")
    p.add_argument("--limits", help="lowest and highest scale the search may try, as --limits=LOW,HIGH "
                   "(default: -4,16)")
    p.add_argument("--per-step", type=_count(1), default=4, help="scales measured per search step (default: 4)")
    p.add_argument("--max-steps", type=_count(0, " (0: the grid only)"), default=6,
                   help="search steps after the grid (default: 6; 0: the grid only)")
    p.add_argument("--batch-size", type=_count(1), default=8, help="text copies per forward pass (default: 8)")


#: options whose value is text the model reads (file names are not: any bytes are a valid Linux file name)
_TEXT_OPTIONS = ("text", "target", "foil", "templates", "occupations")


def _check_text_arguments(parser, args) -> None:
    """Bytes the shell passed in another encoding arrive as lone surrogates; the tokenizer would fail after loading."""
    for option in _TEXT_OPTIONS:
        values = getattr(args, option, None)
        for value in [values] if isinstance(values, str) else values if isinstance(values, list) else []:
            if not isinstance(value, str):  # window's --target is a number of tokens
                continue
            if option == "templates" and Path(str(value)).exists():  # a file of templates: its name may be any bytes
                continue
            try:
                str(value).encode("utf-8")
            except UnicodeEncodeError:
                shown = str(value).encode("utf-8", "backslashreplace").decode()
                name = "text" if option == "text" else "--" + option
                parser.error(f"{name} {shown!r} is not valid UTF-8 text (the terminal sent another encoding?)")


#: options that name a file (or, for --winobias, a folder) to read or write
_PATH_OPTIONS = {"file": "file", "reference": "file", "counterfactuals": "file", "units": "file", "conllu": "file",
                 "figure": "file", "winobias": "folder"}


def _check_path_options(parser, args) -> None:
    """An empty name (``--conllu ""``, from an unset shell variable) is refused: ``--winobias``, ``--conllu`` and
    ``--figure`` were skipped as if not given (the work ran without them), the others read the current folder."""
    for option, what in _PATH_OPTIONS.items():
        value = getattr(args, option, None)
        if isinstance(value, str) and not value.strip():
            parser.error(f"argument --{option}: empty name {value!r}; give the {what} (or leave the option out)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (0, 2 for any user error, 130 on Ctrl-C)."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # texts given after options land here (argparse stops a nargs="*" at the first option)
            # after '--' every word is text, also one starting with '-' ('view head -o v.html -- "-1 is less"'
            # was refused as an unrecognized '--')
            cut = extra.index("--") if "--" in extra else len(extra)
            if any(e.startswith("-") for e in extra[:cut]) or not hasattr(args, "text"):
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
            args.text = [*args.text, *extra[:cut], *extra[cut + 1:]]
        if not getattr(args, "command", None):
            parser.error("choose a command: demo, view, sweep, bias, analyze, neurons, attribute or window")
        _check_text_arguments(parser, args)
        _check_path_options(parser, args)
    except SystemExit as done:  # --help, --version and usage errors end here, already printed
        return 0 if done.code is None else done.code if isinstance(done.code, int) else EXIT_BAD_INPUT
    from attnlab.errors import AttnlabError

    try:
        if getattr(args, "model", None):
            _check_model(args.model)
        _check_out(args)
        args.func(args)
    except BrokenPipeError:  # the reader went away (| head): not an error, as for any Unix tool
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's final flush must not fail again
        return 0
    except (AttnlabError, OSError) as err:
        if args.debug:
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"attnlab: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except MemoryError as err:  # e.g. --n-boot 300000000: numpy's 'Unable to allocate 4.47 GiB' came as a traceback
        if args.debug:
            raise
        detail = str(err).strip().splitlines()[0] if str(err).strip() else "no detail"
        print(f"attnlab: error: out of memory ({detail}); ask for less: smaller counts (--n-boot, --per-step, "
              "--batch-size, ...), fewer or shorter texts, or a smaller model", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("attnlab: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
