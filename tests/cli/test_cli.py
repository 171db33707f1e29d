"""Drive the ``attnlab`` command as a user would: files, stdin, options, exit codes.

Most cases call ``attnlab.cli.main([...])`` in this process (an error path exits before any
model is loaded, so a fresh interpreter per case would only measure import time); a few
run the real console entry point in a subprocess to check what a shell sees.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from attnlab import cli

CONLLU = Path(__file__).parents[1] / "analysis" / "fixtures"
COMMANDS = ("demo", "view", "sweep", "bias", "analyze", "neurons", "attribute", "window")


def run(*args, stdin: str | None = None, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    return subprocess.run(
        [sys.executable, "-m", "attnlab.cli", *map(str, args)],
        input=stdin, capture_output=True, text=True, env=env, cwd=cwd, timeout=300,
    )


from .conftest import main, one_error_line


# -- errors: one line on stderr, exit 2, before any model is loaded -------------------------------

ERROR_CASES = [
    # unreadable or malformed input files
    (["sweep", "--file", "{latin}"], r"latin.txt:1: not UTF-8 text .*latin-1"),
    (["sweep", "--file", "{utf16}"], r"utf16.txt:1: this is UTF-16 text; save it as UTF-8"),
    (["sweep", "--file", "{missing}"], r"--file .*missing.txt: no such file"),
    (["neurons", "--file", "{folder}"], r"--file .*: is a folder, not a file"),
    (["sweep", "--file", "{empty}"], r"no prompts given"),
    (["sweep", "--method", "patch", "--counterfactuals", "{latin}", "x"], r"latin.txt:1: not UTF-8 text"),
    (["sweep", "--method", "patch", "--counterfactuals", "{missing}", "x"], r"--counterfactuals .*missing.txt: no such file"),
    (["sweep", "--method", "mean", "--reference", "{latin}", "x"], r"latin.txt:1: not UTF-8 text"),
    (["sweep", "--method", "mean", "--reference", "{empty}", "x"], r"--reference .*empty.txt: the file has no non-empty lines"),
    (["analyze", "--conllu", "{latin}"], r"latin.txt:1: not UTF-8 text"),
    (["analyze", "--conllu", str(CONLLU / "cycle.conllu")], r"cycle.conllu:3 \(sent_id c1\): heads form a cycle 2 -> 3 -> 2"),
    (["analyze", "--conllu", "{missing}"], r"no CoNLL-U file at"),
    # texts or --file beside --conllu were ignored: the statistics came from the CoNLL-U sentences alone
    (["analyze", "--conllu", str(CONLLU / "good.conllu"), "my own sentence"],
     r"give the corpus as texts or with --conllu, not both \(--conllu's sentences are the corpus\)$"),
    (["analyze", "--conllu", str(CONLLU / "good.conllu"), "--file", "{good}"],
     r"give the corpus as --file or with --conllu, not both"),
    (["bias", "--winobias", "{folder}"], r"missing WinoBias file"),
    # spec files
    (["view", "diff", "--interventions", "{spec_seed}", "x"], r"seed.json: intervention #0: ablate_head: seed must be an integer, got 'x'"),
    (["view", "diff", "--interventions", "{spec_nan}", "x"], r"nan.json:1: NaN is not standard JSON"),
    (["view", "diff", "--interventions", "{spec_deep}", "x"], r"deep.json: JSON nested too deeply"),
    (["view", "diff", "--interventions", "{spec_digits}", "x"], r"digits.json: not usable JSON \(Exceeds the limit"),
    (["view", "diff", "--interventions", "{missing}", "x"], r"spec file .*missing.txt: no such file"),
    (["view", "diff", "--interventions", "{folder}", "x"], r"spec file .*: is a folder, not a file"),
    (["bias", "--interventions", "{latin}"], r"latin.txt:1: not UTF-8 text"),
    # a file holding [] was read as no --interventions: "the diff view needs --interventions", or bias without them
    (["view", "diff", "--interventions", "{spec_none}", "x"], r"error: --interventions .*none.json: the file holds no interventions"),
    (["view", "head", "--interventions", "{spec_none}", "x"], r"--interventions .*none.json: the file holds no interventions"),
    (["bias", "--interventions", "{spec_none}"], r"--interventions .*none.json: the file holds no interventions"),
    (["view", "diff", "--interventions", "", "x"], r"--interventions '': give the spec file to read"),
    # models
    (["view", "head", "--model", "{no_config}", "x"], r"--model .*model_without_config: the folder has no config.json"),
    (["view", "head", "--model", "{good}", "x"], r"--model .*good.txt: a file, not a model folder"),
    # counts refused by argparse
    (["sweep", "--n-boot", "-5", "x"], r"argument --n-boot: must be >= 0 \(0: no intervals\), got -5"),
    (["bias", "--n-boot", "-5"], r"argument --n-boot: must be >= 0"),
    (["demo", "--n-boot", "many"], r"argument --n-boot: expected an integer >= 0 .*got 'many'"),
    # a huge --n-boot ran the whole measurement, then failed with a MemoryError in the bootstrap
    (["sweep", "--n-boot", "1000001", "x"], r"argument --n-boot: must be at most 1000000 \(intervals settle by about 10000 resamples\), got 1000001"),
    (["attribute", "--n-boot", "10000000000", "x"], r"argument --n-boot: must be at most 1000000"),
    (["neurons", "--top", "-5", "x"], r"argument --top: must be >= 0 \(0 keeps all\), got -5"),
    (["bias", "--limit", "-1"], r"argument --limit: must be >= 1, got -1"),
    (["analyze", "--limit", "0", "x"], r"argument --limit: must be >= 1, got 0"),
    (["sweep", "--batch-size", "0", "x"], r"argument --batch-size: must be >= 1 or auto, got 0"),
    (["sweep", "--batch-size", "big", "x"], r"argument --batch-size: expected an integer >= 1 or auto, got 'big'"),
    (["sweep", "--procs", "0", "x"], r"argument --procs: must be from 1 to \d+ \(the CPU cores of this machine\), got 0"),
    (["sweep", "--procs", "100000", "x"], r"argument --procs: must be from 1 to \d+ \(the CPU cores of this machine\), got 100000"),
    (["sweep", "--procs", "2.5", "x"], r"argument --procs: expected an integer from 1 to \d+ .*got '2.5'"),
    (["demo", "--k", "0"], r"argument --k: must be >= 1, got 0"),
    (["view", "head", "--max-tokens", "0", "x"], r"argument --max-tokens: must be >= 1, got 0"),
    (["view", "neuron", "--query", "-1", "x"], r"argument --query: must be >= 0, got -1"),
    # options that do not fit together, or that name nothing known
    (["sweep", "--reference", "{good}", "x"], r"--reference is used by --method mean or resample, not zero"),
    (["sweep", "--method", "mean", "--counterfactuals", "{good}", "x"], r"--counterfactuals is used by --method patch"),
    (["sweep", "--file", "{good}", "x"], r"give the prompts as arguments or with --file, not both"),
    (["view", "head", "--query", "2", "x"], r"--query is only used by the neuron view"),
    (["bias", "--occupations", "nurse,mechnic"], r"--occupations: unknown occupation 'mechnic'; did you mean 'mechanic'\?"),
    (["bias", "--templates", "The nurse said that"], r"--templates 'The nurse said that': not a file and not a template"),
    (["bias", "--templates", "{good}"], r"template prefix 'the nurse said that' has no '\{occupation\}' slot"),
    (["bias", "--templates", "The {{occupation}} said {{x}}"], r"template prefix .*: unknown field \{x\}"),
    (["sweep", "--figure", "heat.xyz", "x"], r"--figure heat.xyz: cannot write a .xyz figure \(suffixes: .*\.png, .*\.svg"),
    (["sweep", "--figure", "heat.pnf", "x"], r"cannot write a .pnf figure; did you mean 'png'\?"),
    (["attribute", "--figure", "heat.xyz", "x"], r"--figure heat.xyz: cannot write a .xyz figure"),
    (["sweep", "--figure", "{folder}", "x"], r"--figure .*: is a folder; give a file name"),
    (["sweep", "--figure", "{good}/fig.png", "x"], r"--figure .*good.txt/fig.png: .*good.txt is a file, so no folder can be made"),
    (["sweep", "caf\udce9 is", "x"], r"text 'caf\\\\udce9 is' is not valid UTF-8 text"),
    (["bias", "--templates", "The {{occupation}} \udce9"], r"--templates .* is not valid UTF-8 text"),
    (["sweep", "--target", " \udce9", "x"], r"--target ' \\\\udce9' is not valid UTF-8 text"),
    (["bias", "--occupations", "nurse,mechanic,nurse"], r"--occupations: 'nurse' is given twice; give each occupation once"),
    (["view", "head", "-o", "{folder}", "x"], r"-o .*: is a folder; give the HTML file to write, e.g. -o .*view.html"),
    (["bias", "--templates", "The {{occupation}} said {{"], r"template prefix .*: Single '\{' encountered"),
    (["bias", "--split", "train"], r"argument --split: invalid choice: 'train'"),
    (["sweep", "--metric", "klx", "x"], r"unknown metric 'klx'; did you mean 'kl'\?"),
    (["view", "diff", "x"], r"diff view needs --interventions"),
    (["sweep", "--layers", "0,x", "hello"], r"--layers must be comma-separated integers"),
    (["neurons", "--layers", ",", "hello"], r"--layers ',': no numbers given \(e.g. --layers 0,2; leave it out for all\)"),
    # sweep and view once passed an empty or negative list to the library: refused after loading, in its words
    (["sweep", "--heads", ",", "hello"], r"--heads ',': no numbers given \(e.g. --heads 0,2; leave it out for all\)$"),
    (["sweep", "--layers", "-1", "hello"], r"--layers must be integers >= 0 \(counted from 0\), got -1$"),
    (["view", "head", "--heads", " , ", "x"], r"--heads ' , ': no numbers given"),
    (["view", "model", "--layers", ",", "x"], r"--layers ',': no numbers given"),
    (["view", "head", "--bogus", "x"], r"unrecognized arguments: --bogus"),
    ([], r"choose a command: demo, view, sweep, bias, analyze, neurons, attribute or window"),
    # WinoBias options without --winobias were ignored: the bias ran without the pairs asked for
    (["bias", "--limit", "5"], r"--limit 5 selects WinoBias pairs; give the folder with --winobias DIR too$"),
    (["bias", "--split", "test"], r"--split test selects WinoBias pairs; give the folder with --winobias DIR too$"),
    # an empty name (an unset shell variable): --winobias, --conllu and --figure were skipped as if not given,
    # --reference and --units read the current folder ("--units .: is a folder")
    (["bias", "--winobias", ""], r"argument --winobias: empty name ''; give the folder \(or leave the option out\)"),
    (["analyze", "--conllu", "", "x"], r"argument --conllu: empty name ''; give the file"),
    (["sweep", "--figure", "", "x"], r"argument --figure: empty name ''; give the file"),
    (["sweep", "--method", "mean", "--reference", " ", "x"], r"argument --reference: empty name ' '; give the file"),
    (["window", "--target", "8", "--units", ""], r"argument --units: empty name ''; give the file"),
    # two outputs naming one file: the figure overwrote the table, and both 'wrote' lines named it
    (["sweep", "-o", "{folder}/t.png", "--figure", "{folder}/t.png", "x"],
     r"--figure .*/t.png: the same file as -o .*/t.png, which it would overwrite; give each output its own name$"),
    (["sweep", "-o", "{folder}/t.png", "--figure", "{folder}/t", "x"], r"--figure .*/t.png: the same file as -o .*/t.png"),
    (["attribute", "-o", "{folder}/a.png", "--verify", "2", "--figure", "{folder}/a_verify.png", "x"],
     r"--figure .*/a_verify.png: the same file as --verify table .*/a_verify.png, which it would overwrite"),
]


@pytest.mark.parametrize("args, message", ERROR_CASES, ids=[" ".join(a)[:60] or "no command" for a, _ in ERROR_CASES])
def test_user_errors_print_one_line_and_exit_2(capsys, files, no_model_loading, args, message):
    code, out, err = main(capsys, *[a.format(**files) for a in args])
    assert code == 2
    assert re.search(message, one_error_line(err)), err
    assert out == ""


def test_latin1_on_standard_input_is_one_line(capsys, monkeypatch, no_model_loading):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("ok\nthe café\n".encode("latin-1"))))
    code, _, err = main(capsys, "sweep")
    assert code == 2 and re.search(r"<stdin>:2: not UTF-8 text", one_error_line(err))


def test_unknown_model_name_suggests_the_embedded_one(capsys):
    code, _, err = main(capsys, "view", "head", "--model", "gema-3-270m", "hello")
    assert code == 2 and "did you mean 'gemma-3-270m'" in one_error_line(err)


def test_a_model_folder_transformers_cannot_read_is_one_line(capsys, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "no-such-architecture"}')
    from safetensors.torch import save_file

    save_file({}, str(folder / "model.safetensors"))  # readable weights, so transformers is asked (and fails)
    code, _, err = main(capsys, "view", "head", "--model", folder, "hello")
    assert code == 2 and re.search(r"--model .*broken: cannot load it \(", one_error_line(err))


def test_a_truncated_safetensors_file_is_one_line_naming_it(capsys, tiny_dirs, tmp_path):
    import shutil

    folder = shutil.copytree(tiny_dirs["gpt2"], tmp_path / "cut")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    code, _, err = main(capsys, "view", "head", "--model", folder, "-o", tmp_path / "v.html", "hello")
    assert code == 2 and re.search(r"cut/model\.safetensors: not a readable safetensors file .*truncated or corrupted",
                                   one_error_line(err))


def test_sweep_refuses_an_index_that_names_a_pickle_shard_unread(capsys, tiny_dirs, tmp_path, monkeypatch):
    import shutil

    import torch

    from attnlab.testing import tiny_hf_model

    folder = shutil.copytree(tiny_dirs["gpt2"], tmp_path / "pickled")
    weights = tiny_hf_model("gpt2").state_dict()
    torch.save(weights, folder / "pytorch_model-00001-of-00001.bin")
    (folder / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": dict.fromkeys(weights, "pytorch_model-00001-of-00001.bin")}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail(f"torch.load was called on {a[:1]}"))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the nurse said that\n")
    code, _, err = main(capsys, "sweep", "--model", folder, "--target", " she", "--foil", " he", "--quiet",
                        "--out", tmp_path / "sweep.csv", "--file", prompts)
    assert code == 2 and re.search(r"pickled/model\.safetensors\.index\.json: weight_map names "
                                   r"pytorch_model-00001-of-00001\.bin, which is not a \.safetensors file", one_error_line(err))


def test_debug_shows_the_traceback_instead(capsys, files, no_model_loading):
    with pytest.raises(Exception, match="seed must be an integer"):
        cli.main(["view", "diff", "--interventions", str(files["spec_seed"]), "x", "--debug"])


# -- conventions: -o/--out, one default model, an example in every --help ----------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_every_help_names_the_default_model_out_and_an_example(capsys, command):
    code, out, _ = main(capsys, command, "--help")
    assert code == 0
    assert f"(default: {cli.DEFAULT_MODEL})" in " ".join(out.split())
    assert "-o OUT, --out OUT" in out
    example = out.split("example:\n", 1)[1].strip()
    assert example.startswith(f"attnlab {command} ")
    args, extra = cli.build_parser().parse_known_args(shlex.split(example)[1:])  # the example parses as it reads
    assert args.command == command and not [e for e in extra if e.startswith("-")]


def test_one_default_model_for_every_command():
    parser = cli.build_parser()
    argv = {"view": ["view", "head"], "window": ["window", "--target", "64"]}
    for command in COMMANDS:
        args, _ = parser.parse_known_args(argv.get(command, [command]))
        assert args.model == cli.DEFAULT_MODEL == "gemma-3-270m"


def test_help_lists_every_command():
    out = run("--help")
    assert out.returncode == 0
    for command in COMMANDS:
        assert command in out.stdout
    assert "gemma-3-270m" in out.stdout
    assert run().returncode == 2  # no command: one error line and a non-zero exit


@pytest.mark.parametrize(
    "args, message",
    [
        (["sweep", "--n-boot", "-5", "x"], "argument --n-boot: must be >= 0"),
        (["view", "diff", "some text"], "diff view needs --interventions"),
    ],
)
def test_a_real_process_exits_2_with_one_line(args, message):
    out = run(*args)
    assert out.returncode == 2
    assert message in one_error_line(out.stderr)


# -- commands that work ------------------------------------------------------------------------


def test_head_view_from_argument(tiny_dirs, tmp_path):
    target = tmp_path / "view.html"
    out = run("view", "head", "--model", tiny_dirs["gpt2"], "the nurse said that she was happy", "-o", target)
    assert out.returncode == 0, out.stderr
    page = target.read_text()
    assert page.startswith("<!DOCTYPE html>") and "nurse" in page
    assert not re.search(r"(src|href)=[\"']?https?:|url\(['\"]?https?:|import\s+['\"]https?:", page)  # offline


def test_diff_view_reads_stdin_and_interventions_file(tiny_dirs, tmp_path):
    specs = tmp_path / "specs.json"
    specs.write_text(json.dumps([{"kind": "ablate_head", "layer": 0, "head": 1}]))
    target = tmp_path / "diff.html"
    out = run("view", "diff", "--model", tiny_dirs["llama"], "--interventions", specs, "--out", target,
              stdin="the doctor said that he left\n")
    assert out.returncode == 0, out.stderr
    assert "doctor" in target.read_text()


def test_encoder_views_still_work_with_an_encoder_model(capsys, tiny_dirs, tmp_path):
    """The default is a decoder now; an encoder (MiniLM's family) still gets its bidirectional views."""
    for kind in ("head", "neuron"):
        target = tmp_path / f"{kind}.html"
        extra = ["--query", "2"] if kind == "neuron" else []
        code, out, err = main(capsys, "view", kind, "--model", tiny_dirs["bert"], "the nurse said that", *extra, "-o", target)
        assert code == 0, err
        assert "nurse" in target.read_text() and f"wrote {target}" in out


def test_out_of_range_intervention_names_the_valid_range(tiny_dirs, tmp_path):
    specs = tmp_path / "specs.json"
    specs.write_text(json.dumps([{"kind": "ablate_head", "layer": 9, "head": 0}]))
    out = run("view", "diff", "--model", tiny_dirs["gpt2"], "--interventions", specs, "the cat sat")
    assert out.returncode == 2
    assert "layer 9 out of range" in out.stderr and "layers 0..1" in out.stderr
    debug = run("view", "diff", "--model", tiny_dirs["gpt2"], "--interventions", specs, "the cat sat", "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_malformed_spec_file_names_the_line(capsys, tmp_path, no_model_loading):
    specs = tmp_path / "specs.json"
    specs.write_text('[{"kind": "ablate_head",\n "layer": }]')
    code, _, err = main(capsys, "view", "diff", "--interventions", specs, "the cat sat")
    assert code == 2 and "not valid JSON (line 2" in one_error_line(err)


def test_sweep_writes_one_row_per_head(tiny_dirs, tmp_path):
    table, figure = tmp_path / "sweep.csv", tmp_path / "sweep.png"
    out = run("sweep", "--model", tiny_dirs["gpt2"], "--target", " she", "--foil", " he", "--n-boot", 50,
              "--quiet", "--out", table, "--figure", figure, stdin="the nurse said that\nthe doctor said that\n")
    assert out.returncode == 0, out.stderr
    df = pd.read_csv(table)
    assert len(df) == 2 * 4 and set(df.columns) >= {"layer", "head", "effect"}
    assert df.effect.abs().max() > 0  # ablating heads of a random model moves the logit difference
    assert figure.stat().st_size > 1000


def test_sweep_mean_ablation_uses_the_reference_file(capsys, tiny_dirs, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the nurse said that\nthe doctor said that\n")
    reference = tmp_path / "reference.txt"
    reference.write_text("the cat sat on the mat\na dog ran to the car\n")
    tables = {}
    for name, extra in (("own", []), ("reference", ["--reference", reference])):
        tables[name] = tmp_path / f"{name}.csv"
        code, _, err = main(capsys, "sweep", "--model", tiny_dirs["gpt2"], "--file", prompts, "--method", "mean",
                            *extra, "--n-boot", 0, "--quiet", "-o", tables[name])
        assert code == 0, err
    own, ref = pd.read_csv(tables["own"]), pd.read_csv(tables["reference"])
    assert len(ref) == 2 * 4 and ref.effect.abs().max() > 0
    assert not own.effect.equals(ref.effect)  # the means come from other texts, so the effects differ


def test_bias_with_chosen_occupations_and_templates(capsys, tiny_dirs, tmp_path):
    templates = tmp_path / "templates.txt"
    templates.write_text("The {occupation} said that\nThe {occupation} went home because\n")
    for name, given in (("file", str(templates)), ("string", "The {occupation} said that")):
        out = tmp_path / name
        code, _, err = main(capsys, "bias", "--model", tiny_dirs["gpt2"], "--occupations", "nurse,mechanic,secretary",
                            "--templates", given, "--n-boot", 10, "--quiet", "-o", out)
        assert code == 0, err
        per_occupation = pd.read_csv(out / "bias_per_occupation.csv")
        assert per_occupation.occupation.tolist() == ["nurse", "mechanic", "secretary"]
        assert per_occupation.n_templates.tolist() == [2 if name == "file" else 1] * 3


def test_neurons_and_analyze(capsys, tiny_dirs, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the nurse said that she was happy .\nthe doctor left the house because he was sad .\n")
    neurons = tmp_path / "neurons.csv"
    code, _, err = main(capsys, "neurons", "--model", tiny_dirs["llama"], "--file", corpus, "--quiet", "--out", neurons)
    assert code == 0, err
    assert len(pd.read_csv(neurons)) > 0
    odd = tmp_path / os.fsdecode(b"caf\xe9.txt")  # a file name that is not UTF-8: legal on Linux, and not text
    odd.write_bytes(corpus.read_bytes())
    code, _, err = main(capsys, "neurons", "--model", tiny_dirs["llama"], "--file", str(odd), "--quiet", "--out", neurons)
    assert code == 0, err
    code, out, err = main(capsys, "neurons", "--model", tiny_dirs["llama"], "--quiet", "hello")  # nothing to rank
    assert code == 2 and "need at least 3 ranked distances" in one_error_line(err) and "hello" not in out
    folder = tmp_path / "analysis"
    code, _, err = main(capsys, "analyze", "--model", tiny_dirs["bert"], "--file", corpus, "--quiet", "--out", folder)
    assert code == 0, err
    stats = pd.read_csv(folder / "head_stats.csv")
    assert len(stats) == 2 * 4
    assert (folder / "head_clusters.png").is_file()


def test_analyze_a_conllu_file_with_an_encoder(capsys, tiny_dirs, tmp_path):
    folder = tmp_path / "analysis"
    code, _, err = main(capsys, "analyze", "--model", tiny_dirs["bert"], "--conllu", CONLLU / "good.conllu", "--quiet", "-o", folder)
    assert code == 0, err
    relations = pd.read_csv(folder / "relations.csv")
    assert len(relations) > 0
    assert len(pd.read_csv(folder / "head_stats.csv")) == 2 * 4


def test_sweep_precision_writes_the_bfloat16_sweep(capsys, tiny_dirs, tmp_path):
    import attnlab
    from attnlab.measure import LogitDiff, sweep_heads

    prompts = ["the nurse said that", "the doctor said that"]
    table = tmp_path / "bf16.csv"
    code, _, err = main(capsys, "sweep", "--model", tiny_dirs["gpt2"], "--precision", "bfloat16", "--n-boot", 0,
                        "--quiet", "-o", table, *prompts)
    assert code == 0, err
    model = attnlab.load(str(tiny_dirs["gpt2"]))
    metric = LogitDiff(" she", " he")
    low = sweep_heads(model, prompts, metric, "zero", precision="bfloat16", n_boot=0, progress=False).table
    full = sweep_heads(model, prompts, metric, "zero", n_boot=0, progress=False).table
    written = pd.read_csv(table)
    assert np.abs(written.effect.to_numpy() - low.effect.to_numpy()).max() < 1e-6
    assert np.abs(written.effect.to_numpy() - full.effect.to_numpy()).max() > 1e-6


def test_sweep_metric_prob_is_the_target_probability(capsys, tiny_dirs, tmp_path):
    """--metric prob builds TokenProb(--target): the table equals sweep_heads with that metric."""
    import attnlab
    from attnlab.measure import TokenProb, sweep_heads

    table = tmp_path / "prob.csv"
    code, _, err = main(capsys, "sweep", "--model", tiny_dirs["gpt2"], "--metric", "prob", "--target", " her",
                        "--n-boot", 0, "--quiet", "-o", table, "the nurse said that")
    assert code == 0, err
    expected = sweep_heads(attnlab.load(str(tiny_dirs["gpt2"])), ["the nurse said that"], metric=TokenProb(" her"),
                           n_boot=0, progress=False).table
    written = pd.read_csv(table)
    assert len(written) == len(expected) == 2 * 4
    assert np.allclose(written["effect"], expected["effect"], rtol=0, atol=1e-9)


def test_figure_without_a_suffix_is_written_as_png_and_named_so(capsys, tiny_dirs, tmp_path):
    code, out, err = main(capsys, "sweep", "--model", tiny_dirs["gpt2"], "--n-boot", 0, "--quiet",
                          "--figure", tmp_path / "heat", "the nurse said that")
    assert code == 0, err
    written = tmp_path / "heat.png"
    assert written.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not (tmp_path / "heat").exists()
    assert f"wrote {written}\n" in out


def test_json_tables_keep_every_float_exactly(capsys, tmp_path):
    """-o X.json was rounded to 10 significant digits by pandas; the numbers now read back bit for bit."""
    table = pd.DataFrame({
        "unit": ["L0H0", "L0H1", "L1H0", "L1H1"],
        "layer": np.array([0, 0, 1, 1], dtype=np.int64),
        "effect": [0.1 + 0.2, -0.19693058729171753, 1e-300 / 3, np.float32(0.1)],
        "ci_low": [np.nan, np.inf, -np.inf, 2.0 / 3.0],
        "reached": [True, False, True, np.bool_(False)],
    })
    path = cli._write_table(table, str(tmp_path / "t.json"), default_name="x.json")
    rows = json.loads(path.read_text())
    assert [r["effect"] for r in rows] == [float(x) for x in table["effect"]]  # == on floats: exact
    assert [r["ci_low"] for r in rows] == [None, None, None, 2.0 / 3.0]  # not finite: null, as pandas wrote it
    assert [r["layer"] for r in rows] == [0, 0, 1, 1] and [r["reached"] for r in rows] == [True, False, True, False]
    assert list(rows[0]) == list(table.columns)
    assert pd.read_json(path, orient="records", precise_float=True)["effect"].tolist() == table["effect"].tolist()


def test_upper_case_json_suffix_writes_json(tmp_path):
    """-o X.JSON wrote CSV text into the .JSON file."""
    table = pd.DataFrame({"layer": [0, 1], "effect": [0.25, -1.5]})
    path = cli._write_table(table, str(tmp_path / "T.JSON"), default_name="x.json")
    assert json.loads(path.read_text()) == [{"layer": 0, "effect": 0.25}, {"layer": 1, "effect": -1.5}]


def test_winobias_limit_scores_both_types(capsys, tiny_dirs, tmp_path):
    """--limit 4 kept the first 4 pairs, sorted by type: 5 type-1 pairs on disk meant no type-2 pair was scored."""
    folder = tmp_path / "wb"
    folder.mkdir()
    for t in (1, 2):
        for stereotype, pronoun in (("pro", "she"), ("anti", "he")):
            lines = [f"{i} [The nurse] said that [{pronoun}] was tired ." if t == 1 else
                     f"{i} The doctor told [the nurse] that [{pronoun}] was late ." for i in range(1, 6)]
            (folder / f"{stereotype}_stereotyped_type{t}.txt.dev").write_text("\n".join(lines) + "\n")
    from attnlab.bias import winobias_pairs
    from attnlab.bias.datasets import load_winobias_dir

    pairs = winobias_pairs(load_winobias_dir(folder, split="dev"))
    kept = cli._types_in_turn(pairs, 5)
    assert list(zip(kept["type"], kept["id"])) == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2)]
    assert cli._types_in_turn(pairs.iloc[:6], 5)["type"].tolist() == [1, 1, 1, 1, 2]  # one type-2 pair: the rest type 1
    out = tmp_path / "out"
    code, _, err = main(capsys, "bias", "--model", tiny_dirs["gpt2"], "--occupations", "nurse,mechanic,teacher",
                        "--winobias", folder, "--limit", 4, "--n-boot", 0, "--quiet", "-o", out)
    assert code == 0, err
    summary = pd.read_csv(out / "winobias.csv")
    assert {"type=1", "type=2"} <= set(summary.iloc[:, 0]), summary


def test_python_dash_m_attnlab_is_the_same_command_line(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "attnlab", "--version"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert (done.returncode, done.stdout.strip()) == (0, "attnlab 0.1.0"), done.stderr
    done = subprocess.run([sys.executable, "-m", "attnlab", "sweep", "--n-boot", "-5", "x"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 2 and one_error_line(done.stderr).endswith("got -5 (see 'attnlab sweep --help')")


def test_a_view_saved_onto_a_folder_is_a_worded_error(tmp_path):
    from attnlab.errors import InvalidInput
    from attnlab.testing import tiny_model
    from attnlab.viz import head_view

    with pytest.raises(InvalidInput, match=r"cannot write the view to .*: it is a folder; give a file name such as "):
        head_view(tiny_model("gpt2"), "the nurse").save(tmp_path)


def test_a_pgf_figure_without_a_tex_system_is_refused_before_loading(capsys, monkeypatch, no_model_loading):
    """matplotlib lists .pgf, but writing one needs xelatex: it failed with a traceback after the whole run."""
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    code, _, err = main(capsys, "sweep", "--figure", "heat.pgf", "x")
    assert code == 2 and re.search(r"a \.pgf figure needs xelatex, which is not installed; use \.pdf or \.svg",
                                   one_error_line(err))


@pytest.mark.parametrize("content, line", [
    ("layer,head,unit\n0,0,3\n\n1,0,1e30\n", 4),  # pandas skipped the blank line 3 and named row 3
    ("layer,head,unit\n0,0,3\n\u00a0\n1,0,1e30\n", 4),  # a no-break-space line: an IndexError before
    ('layer,head,unit,note\n0,0,3,"two\nlines"\n1,0,1e30,x\n', 4),  # a quoted cell spans lines 2-3
])
def test_units_errors_name_the_file_line_and_the_cell_as_written(capsys, tmp_path, no_model_loading, content, line):
    units = tmp_path / "units.csv"
    units.write_text(content)
    code, _, err = main(capsys, "window", "--units", str(units), "--target", "16")
    assert code == 2 and re.search(rf"column unit must hold integers from 0 to \d+, got '1e30' \(line {line} of the file\)",
                                   one_error_line(err)), err


def test_output_piped_into_head_is_not_an_error(tiny_dirs, tmp_path):
    """``attnlab ... | head -1``: the reader leaving early is how pipes end, not a user error (it said so, exit 2)."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the nurse said that\nthe doctor told the man that he\na cat sat\n")
    script = (f"{sys.executable} -m attnlab.cli attribute --model {tiny_dirs['llama']} --file {prompts} --quiet --top 0 "
              "| head -1; exit ${PIPESTATUS[0]}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "error" not in out.stderr and len(out.stdout.splitlines()) == 1


# every command's -o, with a file where a folder must be: found only after the model loaded and the work ran,
# as a raw "[Errno 17] File exists: 'afile'"
OUT_CASES = [
    (["neurons", "-o", "{afile}/out.csv", "x"], r"-o .*afile/out.csv: .*afile is a file, so no folder can be made there"),
    (["neurons", "-o", "{afile}", "x"], r"-o .*afile: is a file, not a folder; a name without a suffix is a folder here "
     r"\(the table would go in it as decay_neurons.csv\); give a name ending in .csv or .json, or a folder"),
    (["sweep", "-o", "{afile}/sweep.json", "x"], r"-o .*afile/sweep.json: .*afile is a file, so no folder"),
    (["attribute", "-o", "{afile}", "x"], r"-o .*afile: is a file, not a folder; .*as attribution.csv\)"),
    (["view", "head", "-o", "{afile}/v.html", "x"], r"-o .*afile/v.html: .*afile is a file, so no folder"),
    (["window", "--target", "8", "-o", "{afile}"], r"-o .*afile: is a file, not a folder; this command writes several "
     r"files into a folder; give a folder name"),
    (["window", "--target", "8", "-o", "{afile}/sub/deeper"], r"-o .*afile/sub/deeper: .*afile is a file, so no folder"),
    (["analyze", "-o", "{afile}", "x"], r"-o .*afile: is a file, not a folder"),
    (["bias", "-o", "{afile}"], r"-o .*afile: is a file, not a folder"),
    (["demo", "-o", "{afile}"], r"-o .*afile: is a file, not a folder"),
    (["sweep", "-o", "", "x"], r"-o '': give a file or folder name"),
]


@pytest.mark.parametrize("args, message", OUT_CASES, ids=[" ".join(a)[:40] for a, _ in OUT_CASES])
def test_an_output_that_cannot_be_written_is_refused_before_loading(capsys, tmp_path, no_model_loading, args, message):
    afile = tmp_path / "afile"
    afile.write_text("x\n")
    code, out, err = main(capsys, *[a.format(afile=afile) for a in args])
    assert code == 2 and re.search(message, one_error_line(err)), err
    assert out == "" and afile.read_text() == "x\n"


def test_an_output_folder_without_permission_is_refused_before_loading(capsys, tmp_path, monkeypatch, no_model_loading):
    """os.access stands in for a read-only folder (the tests may run as root, who may write anywhere)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "old.csv").write_text("a\n1\n")
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: real(p, mode) and not str(p).startswith(str(locked)))
    for args, message in [
        (["neurons", "-o", locked / "new" / "t.csv", "x"], rf"-o .*new/t.csv: cannot write in the folder {locked} "
         r"\(permission denied\)"),
        (["analyze", "-o", locked, "x"], r"-o .*locked: cannot write in this folder \(permission denied\)"),
        (["sweep", "-o", locked / "old.csv", "x"], r"-o .*old.csv: cannot overwrite this file \(permission denied\)"),
        (["sweep", "--figure", locked / "f.png", "x"], r"--figure .*f.png: cannot write in the folder .*locked"),
    ]:
        code, _, err = main(capsys, *args)
        assert code == 2 and re.search(message, one_error_line(err)), err


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_a_place_that_passes_the_permission_bits_but_cannot_be_written_is_refused_before_loading(capsys, no_model_loading):
    """/proc (like a read-only mount or a full disk) passes os.access as root, and failed after the work had run."""
    for args, message in [
        (["sweep", "-o", "/proc/x.csv", "x"], r"^attnlab: error: -o /proc/x.csv: cannot write in the folder /proc \("),
        (["analyze", "-o", "/proc", "x"], r"-o /proc: cannot write in the folder /proc \("),
        (["sweep", "--figure", "/proc/f.png", "x"], r"--figure /proc/f.png: cannot write in the folder /proc \("),
        (["view", "head", "-o", "/proc/version", "x"], r"-o /proc/version: cannot write this file \("),
    ]:
        code, out, err = main(capsys, *args)
        assert code == 2 and re.search(message, one_error_line(err)), err


def test_attribute_checks_where_verify_writes_before_loading(capsys, tmp_path, monkeypatch, no_model_loading):
    """--verify K writes NAME_verify.csv next to -o's table: a folder there, or a folder one may not write in, fails early."""
    (tmp_path / "t_verify.csv").mkdir()
    code, out, err = main(capsys, "attribute", "--verify", "3", "-o", tmp_path / "t.csv", "x")
    assert code == 2 and re.search(r"--verify 3 writes the exact table to .*t_verify.csv, which is a folder", one_error_line(err)), err
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "attribution_verify.csv").mkdir()  # -o a folder: the table is attribution.csv in it
    code, _, err = main(capsys, "attribute", "--verify", "3", "-o", tmp_path / "out", "x")
    assert code == 2 and "attribution_verify.csv, which is a folder" in one_error_line(err), err
    with pytest.raises(AssertionError, match="loaded --model"):  # without --verify the same -o is fine
        main(capsys, "attribute", "-o", tmp_path / "t.csv", "x")


def test_writable_outputs_still_reach_the_model(capsys, tmp_path, no_model_loading):
    """A new folder under an existing one, an existing folder, a new file: the check passes and the model loads."""
    (tmp_path / "there").mkdir()
    for args in (["window", "--target", "8", "-o", tmp_path / "new" / "deeper"], ["analyze", "-o", tmp_path / "there", "x"],
                 ["neurons", "-o", tmp_path / "there", "x"], ["view", "head", "-o", tmp_path / "a" / "v.html", "x"]):
        with pytest.raises(AssertionError, match="loaded --model"):
            main(capsys, *args)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["there"]  # nothing made before the work ran


def test_a_link_to_a_file_or_folder_not_made_yet_is_written_through(capsys, tmp_path, no_model_loading):
    """A dangling symbolic link stands for its target: the check judges the target's folder (it said permission denied)."""
    (tmp_path / "to.csv").symlink_to(tmp_path / "target.csv")
    (tmp_path / "to.html").symlink_to(tmp_path / "sub" / "target.html")
    (tmp_path / "todir").symlink_to(tmp_path / "missing-folder")
    (tmp_path / "to.png").symlink_to(tmp_path / "figure.png")
    for args in (["sweep", "-o", tmp_path / "to.csv", "x"], ["view", "head", "-o", tmp_path / "to.html", "x"],
                 ["demo", "-o", tmp_path / "todir"], ["sweep", "--figure", tmp_path / "to.png", "x"]):
        with pytest.raises(AssertionError, match="loaded --model"):
            main(capsys, *args)


def test_a_model_with_its_own_code_is_refused_unless_trusted(capsys, tmp_path):
    """No stdin prompt, one line naming the flag; --trust-remote-code hands the choice to transformers (the code runs)."""
    import json

    from attnlab.testing import tiny_hf_model, tiny_tokenizer

    folder, marker = tmp_path / "custom", tmp_path / "ran"
    hf = tiny_hf_model("gpt2")
    hf.config.architectures = ["GPT2LMHeadModel"]
    hf.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(auto_map={"AutoConfig": "custom.CustomConfig"}, model_type="custom_gpt2")
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "custom.py").write_text(  # a class of its own: transformers marks a trusted class as the folder's
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import GPT2Config\n"
        "class CustomConfig(GPT2Config):\n    model_type = 'custom_gpt2'\n")
    capsys.readouterr()  # save_pretrained's progress bar
    code, _, err = main(capsys, "view", "head", "--model", folder, "-o", tmp_path / "v.html", "hello")
    assert code == 2 and re.search(r"maps its classes to Python code .*--trust-remote-code", one_error_line(err))
    assert not marker.exists()
    main(capsys, "view", "head", "--model", folder, "--trust-remote-code", "-o", tmp_path / "v.html", "hello")
    assert marker.exists()


def test_the_views_token_cap_names_the_command_line_options(capsys, tiny_dirs, tmp_path):
    # the one-line error told a command-line user to "pass max_tokens=9", a Python keyword they cannot give
    target = tmp_path / "view.html"
    code, _, err = main(capsys, "view", "model", "--model", tiny_dirs["gpt2"], "the nurse said that she was very happy",
                        "--max-tokens", "4", "-o", target)
    assert code == 2 and not target.exists()
    assert one_error_line(err) == (
        "attnlab: error: the input has 9 tokens but the model view caps it at max_tokens=4 (the page holds layers x "
        "heads x tokens^2 numbers); pass max_tokens=9 or more to raise the cap (attnlab view: --max-tokens 9), "
        "restrict layers=/heads= (--layers/--heads), or shorten the text")
    code, _, err = main(capsys, "view", "model", "--model", tiny_dirs["gpt2"], "the nurse said that she was very happy",
                        "--max-tokens", "9", "-o", target)
    assert code == 0 and target.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_running_out_of_memory_is_one_line(capsys, llama_dir, monkeypatch):
    """A MemoryError while resampling (numpy: 'Unable to allocate 4.47 GiB' for --n-boot 300000000 before the cap) was a traceback."""
    from attnlab.measure import stats

    def too_big(n, n_boot, seed):
        raise MemoryError("Unable to allocate 4.47 GiB for an array with shape (300000000, 2) and data type int64")

    monkeypatch.setattr(stats, "_picks", too_big)
    code, out, err = main(capsys, "sweep", "--model", llama_dir, "--quiet", "--n-boot", 1000000, "a b", "c d")
    assert code == 2 and out == ""
    assert one_error_line(err) == (
        "attnlab: error: out of memory (Unable to allocate 4.47 GiB for an array with shape (300000000, 2) and data "
        "type int64); ask for less: smaller counts (--n-boot, --per-step, --batch-size, ...), fewer or shorter texts, "
        "or a smaller model")


def test_words_after_a_double_dash_are_texts(capsys, monkeypatch, tmp_path):
    """'--' ends the options: 'view head -o v.html -- "-1 is less"' was refused as 'unrecognized arguments: -- ...'."""
    seen = []
    monkeypatch.setattr(cli, "cmd_view", lambda args: seen.append(args.text))
    monkeypatch.setattr(cli, "cmd_sweep", lambda args: seen.append((args.text, args.layers)))
    code, _, err = main(capsys, "view", "head", "-o", tmp_path / "v.html", "--", "-1 is less", "--layers")
    assert (code, err) == (0, "") and seen.pop() == ["-1 is less", "--layers"]
    code, _, err = main(capsys, "sweep", "a b", "--layers", "0", "--", "-c d")
    assert (code, err) == (0, "") and seen.pop() == (["a b", "-c d"], "0")
    code, _, err = main(capsys, "view", "head", "-o", tmp_path / "v.html", "x", "--bogus", "--", "y")
    assert code == 2 and one_error_line(err).startswith("attnlab: error: unrecognized arguments: x --bogus -- y")
    assert seen == []


def test_the_slow_precision_warning_names_the_command_line_option(capsys, llama_dir, monkeypatch):
    """On a CPU that emulates bfloat16 the warning told a command-line user to 'Pass precision=None'."""
    import warnings

    from attnlab.engine import precision

    monkeypatch.setattr(precision, "has_native_products", lambda dtype, device: False)
    monkeypatch.setattr(precision, "_warned_emulated", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, err = main(capsys, "sweep", "--model", llama_dir, "--quiet", "--precision", "bfloat16",
                            "--layers", 0, "--heads", 0, "--n-boot", 0, "the nurse said that")
    assert code == 0 and err == ""
    slow = [str(w.message) for w in caught if "emulates every product" in str(w.message)]
    assert len(slow) == 1 and slow[0].endswith("Pass precision=None on this machine (attnlab sweep/attribute: "
                                               "--precision full)")


def test_a_bias_run_that_fails_writes_nothing(capsys, llama_dir, tmp_path):
    """A spec that does not fit the model fails after loading: the -o folder was made anyway (empty)."""
    import json

    specs, out = tmp_path / "specs.json", tmp_path / "bias-out"
    specs.write_text(json.dumps([{"kind": "ablate_head", "layer": 5, "head": 0}]))
    code, stdout, err = main(capsys, "bias", "--model", llama_dir, "--occupations", "nurse", "--n-boot", 0, "--quiet",
                             "--interventions", specs, "-o", out)
    assert code == 2 and stdout == ""
    assert one_error_line(err).endswith("layer 5 out of range: " + str(llama_dir) + " has layers 0..1")
    assert not out.exists()
