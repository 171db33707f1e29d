"""``attnlab sweep --procs N``: the same table as one process (bad counts: tests/cli/test_cli.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest


PROMPTS = "the nurse said that\nthe doctor said that he was\na man\nthe king told the queen that\n"


def run(*args, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    return subprocess.run([sys.executable, "-m", "attnlab.cli", *map(str, args)], input=stdin, capture_output=True,
                          text=True, env=env, timeout=600)


def test_two_processes_write_the_one_process_table(llama_dir, tmp_path):
    import attnlab
    from attnlab.measure import LogitDiff, sweep_heads

    table = tmp_path / "sweep.csv"
    out = run("sweep", "--model", llama_dir, "--procs", 2, "--batch-size", 4, "--n-boot", 50, "--quiet",
              "--out", table, stdin=PROMPTS)
    assert out.returncode == 0, out.stderr
    two = pd.read_csv(table)
    one = sweep_heads(attnlab.load(str(llama_dir)), PROMPTS.splitlines(), "zero", LogitDiff(" she", " he"),
                      batch_size=4, n_boot=50, progress=False).table
    assert list(one.columns) == list(two.columns) and len(two) == 2 * 4
    numbers = one.select_dtypes("number").columns
    assert np.abs(one[numbers].to_numpy() - two[numbers].to_numpy()).max() <= 1e-6


def test_two_processes_load_a_trusted_model_with_its_own_code(tmp_path):
    """--procs 2 dropped --trust-remote-code: every process refused the model the user had trusted."""
    import json

    from attnlab.testing import tiny_hf_model, tiny_tokenizer

    folder = tmp_path / "custom"
    hf = tiny_hf_model("gpt2")
    hf.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(auto_map={"AutoConfig": "custom.CustomConfig", "AutoModelForCausalLM": "custom.CustomModel"},
                  model_type="custom_gpt2", architectures=["GPT2LMHeadModel"])
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "custom.py").write_text(
        "from transformers import GPT2Config, GPT2LMHeadModel\n"
        "class CustomConfig(GPT2Config):\n    model_type = 'custom_gpt2'\n"
        "class CustomModel(GPT2LMHeadModel):\n    config_class = CustomConfig\n")
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    for procs, table in ((1, one), (2, two)):
        out = run("sweep", "--model", folder, "--trust-remote-code", "--procs", procs, "--n-boot", 20, "--quiet",
                  "--out", table, stdin=PROMPTS)
        assert out.returncode == 0, out.stderr
    one, two = pd.read_csv(one), pd.read_csv(two)
    assert list(one.columns) == list(two.columns) and len(two) == 2 * 4
    numbers = one.select_dtypes("number").columns
    assert np.abs(one[numbers].to_numpy() - two[numbers].to_numpy()).max() <= 1e-6
