"""Drive the ``attnlab`` command as a user would: subprocesses, files, stdin, exit codes."""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from attnlab.testing import tiny_hf_model, tiny_tokenizer


def run(*args, stdin: str | None = None, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    return subprocess.run(
        [sys.executable, "-m", "attnlab.cli", *map(str, args)],
        input=stdin, capture_output=True, text=True, env=env, cwd=cwd, timeout=300,
    )


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """Tiny random models saved as local folders: the CLI loads them like any HF path."""
    root = tmp_path_factory.mktemp("models")
    dirs = {}
    for arch in ("gpt2", "bert", "llama"):
        folder = root / arch
        tiny_hf_model(arch).save_pretrained(folder)
        tiny_tokenizer("encoder" if arch == "bert" else "decoder").save_pretrained(folder)
        dirs[arch] = folder
    return dirs


def test_help_lists_every_command():
    out = run("--help")
    assert out.returncode == 0
    for command in ("demo", "view", "sweep", "bias", "analyze", "neurons"):
        assert command in out.stdout
    assert run().returncode == 2  # no command: help and a non-zero exit


def test_head_view_from_argument(tiny_dirs, tmp_path):
    target = tmp_path / "view.html"
    out = run("view", "head", "--model", tiny_dirs["gpt2"], "the nurse said that she was happy", "--out", target)
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


@pytest.mark.parametrize(
    "args, message",
    [
        (["view", "diff", "some text"], "diff view needs --interventions"),
        (["view", "head", "--model", "gema-3-270m", "hello"], "did you mean 'gemma-3-270m'"),
        (["sweep", "--layers", "0,x", "hello"], "--layers must be comma-separated integers"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
    out = run(*args)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_out_of_range_intervention_names_the_valid_range(tiny_dirs, tmp_path):
    specs = tmp_path / "specs.json"
    specs.write_text(json.dumps([{"kind": "ablate_head", "layer": 9, "head": 0}]))
    out = run("view", "diff", "--model", tiny_dirs["gpt2"], "--interventions", specs, "the cat sat")
    assert out.returncode == 2
    assert "layer 9 out of range" in out.stderr and "layers 0..1" in out.stderr
    debug = run("view", "diff", "--model", tiny_dirs["gpt2"], "--interventions", specs, "the cat sat", "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_malformed_spec_file_names_the_line(tmp_path):
    specs = tmp_path / "specs.json"
    specs.write_text('[{"kind": "ablate_head",\n "layer": }]')
    out = run("view", "diff", "--interventions", specs, "the cat sat")
    assert out.returncode == 2 and "not valid JSON (line 2" in out.stderr


def test_sweep_writes_one_row_per_head(tiny_dirs, tmp_path):
    table, figure = tmp_path / "sweep.csv", tmp_path / "sweep.png"
    out = run("sweep", "--model", tiny_dirs["gpt2"], "--target", " she", "--foil", " he", "--n-boot", 50,
              "--quiet", "--out", table, "--figure", figure, stdin="the nurse said that\nthe doctor said that\n")
    assert out.returncode == 0, out.stderr
    df = pd.read_csv(table)
    assert len(df) == 2 * 4 and set(df.columns) >= {"layer", "head", "effect"}
    assert df.effect.abs().max() > 0  # ablating heads of a random model moves the logit difference
    assert figure.stat().st_size > 1000


def test_neurons_and_analyze(tiny_dirs, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the nurse said that she was happy .\nthe doctor left the house because he was sad .\n")
    neurons = tmp_path / "neurons.csv"
    out = run("neurons", "--model", tiny_dirs["llama"], "--file", corpus, "--quiet", "--out", neurons)
    assert out.returncode == 0, out.stderr
    assert len(pd.read_csv(neurons)) > 0
    folder = tmp_path / "analysis"
    out = run("analyze", "--model", tiny_dirs["bert"], "--file", corpus, "--quiet", "--out", folder)
    assert out.returncode == 0, out.stderr
    stats = pd.read_csv(folder / "head_stats.csv")
    assert len(stats) == 2 * 4
    assert (folder / "head_clusters.png").is_file()
