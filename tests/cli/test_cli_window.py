"""``attnlab window``: the window it reports is ``set_context_window()``'s; an unreached target is said, not an error."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import attnlab
from attnlab.analysis.dial import WindowNotReached, set_context_window
from attnlab.bias.templates import neutral_text
from attnlab.testing import VOCAB, tiny_tokenizer

from .conftest import main, one_error_line

TEXT = " ".join(
    ["the nurse said that she left the house because the doctor was not happy with the new car ."
     " then the teacher asked the student about the old book and the city ."] * 3
)  # 100 tokens with [BOS]
SHORT = " ".join(["the nurse said that she left the house because the doctor was not happy ."] * 6)
DECAY_PAIR = 2


def decay_llama_hf(strength: float = 8.0):
    """tests/analysis/test_dial.py's tiny Llama with one planted distance-decay pair per head, as a HF model.

    (512 positions, so that the packaged neutral text fits.)
    """
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(
        vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=512, bos_token_id=2, eos_token_id=3, pad_token_id=0,
        attention_bias=True,
    )
    hf = tf.LlamaForCausalLM(cfg).eval()
    d_head = 8
    with torch.no_grad():
        for layer in hf.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                weight = proj.weight.view(-1, d_head, cfg.hidden_size)
                weight[:, DECAY_PAIR] = 0.0
                weight[:, DECAY_PAIR + d_head // 2] = 0.0
                proj.bias.zero_()
                proj.bias.view(-1, d_head)[:, DECAY_PAIR] = strength
    return hf


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, tiny_dirs):
    decay = tmp_path_factory.mktemp("models") / "decay"
    decay_llama_hf().save_pretrained(decay)
    tiny_tokenizer("decoder").save_pretrained(decay)
    return {"decay": decay, "llama": tiny_dirs["llama"], "gpt2": tiny_dirs["gpt2"]}


@pytest.fixture
def text_files(tmp_path):
    paths = {"text": tmp_path / "text.txt", "short": tmp_path / "short.txt"}
    paths["text"].write_text(TEXT + "\n")
    paths["short"].write_text(SHORT + "\n")
    return paths


def library(folder, target, text, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WindowNotReached)
        return set_context_window(attnlab.load(str(folder)), target, text, progress=False, **options)


def printed(out: str, field: str) -> str:
    line = next(l for l in out.splitlines() if l.startswith(f"{field}:"))
    return line.split(":", 1)[1].strip()


def assert_same_table(written: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(written.columns) == list(expected.columns) and len(written) == len(expected)
    for col in expected.columns:
        a, b = written[col].to_numpy(dtype=float), expected[col].to_numpy(dtype=float)
        assert np.array_equal(np.isnan(a), np.isnan(b)) and np.nanmax(np.abs(a - b), initial=0.0) <= 1e-6, col


@pytest.mark.parametrize("target", [25, 12, 10])  # inside the grid's bracket, further in, beyond the grid (scale > 4)
def test_reported_window_equals_set_context_window(capsys, model_dirs, text_files, tmp_path, target):
    folder = tmp_path / "out"
    code, out, err = main(capsys, "window", "--model", model_dirs["decay"], "--target", target,
                          "--file", text_files["text"], "--quiet", "-o", folder)
    assert code == 0, err
    res = library(model_dirs["decay"], target, TEXT)
    assert res.reached
    assert printed(out, "window") == f"{res.window:g} tokens at scale {res.scale:.4g} (clean {res.clean_window:g})"
    assert printed(out, "reached") == "yes"
    assert printed(out, "loss cost").startswith(f"{res.loss_cost:+.4f} nats")
    summary = pd.read_csv(folder / "window_summary.csv").iloc[0]
    assert summary["window"] == res.window and bool(summary["reached"])
    assert summary["scale"] == pytest.approx(res.scale, abs=1e-12)
    assert summary["loss_cost"] == pytest.approx(res.loss_cost, abs=1e-6)
    assert_same_table(pd.read_csv(folder / "window_table.csv"), res.table)
    assert_same_table(pd.read_csv(folder / "window_per_prompt.csv"), res.per_prompt)
    units = pd.read_csv(folder / "units.csv")
    assert units[["layer", "head", "unit"]].equals(res.units[["layer", "head", "unit"]].reset_index(drop=True))
    assert (folder / "window.png").stat().st_size > 1000


def test_unreached_target_exits_0_with_the_closest_window(capsys, model_dirs, text_files, tmp_path):
    """A random tiny Llama has no real decay: target 20 is not reached (the library warns; the CLI says it)."""
    folder = tmp_path / "out"
    code, out, err = main(capsys, "window", "--model", model_dirs["llama"], "--target", 20,
                          "--file", text_files["short"], "--quiet", "-o", folder)
    res = library(model_dirs["llama"], 20, SHORT)
    assert not res.reached
    assert code == 0, err
    assert "WindowNotReached" not in err and "Warning" not in err  # said on stdout, once, not as a Python warning
    assert printed(out, "reached").startswith(f"no: target 20 not reached, closest window {res.window:g} tokens")
    assert printed(out, "window").startswith(f"{res.window:g} tokens at scale {res.scale:.4g}")
    summary = pd.read_csv(folder / "window_summary.csv").iloc[0]
    assert not bool(summary["reached"]) and summary["window"] == res.window


def test_default_text_is_the_packaged_neutral_text_and_units_file_is_used(capsys, model_dirs, tmp_path):
    first = tmp_path / "first"
    code, out, err = main(capsys, "window", "--model", model_dirs["decay"], "--target", 40, "--quiet", "-o", first)
    assert code == 0, err
    res = library(model_dirs["decay"], 40, "\n\n".join(neutral_text()))
    assert "packaged neutral text" in out and f"{res.n_tokens} tokens" in out
    assert printed(out, "window").startswith(f"{res.window:g} tokens at scale {res.scale:.4g}")
    assert_same_table(pd.read_csv(first / "window_table.csv"), res.table)
    # a subset of the units written: the dial scales only those (the library given the same rows)
    units = pd.read_csv(first / "units.csv")
    some = tmp_path / "some_units.csv"
    units[units["layer"] == 1].to_csv(some, index=False)
    second = tmp_path / "second"
    code, out, err = main(capsys, "window", "--model", model_dirs["decay"], "--target", 40, "--units", some,
                          "--site", "k", "--scales=0,2", "--limits=-1,8", "--per-step", 2, "--max-steps", 2,
                          "--tolerance", 0.05, "--quiet", "-o", second)
    assert code == 0, err
    subset = library(model_dirs["decay"], 40, "\n\n".join(neutral_text()), units=units[units["layer"] == 1],
                     site="k", scales=[0, 2], limits=(-1, 8), per_step=2, max_steps=2, tolerance=0.05)
    assert_same_table(pd.read_csv(second / "window_table.csv"), subset.table)
    assert printed(out, "window").startswith(f"{subset.window:g} tokens at scale {subset.scale:.4g}")
    assert set(pd.read_csv(second / "units.csv")["layer"]) == {1}


def test_model_and_text_errors_are_one_line(capsys, model_dirs, text_files):
    code, _, err = main(capsys, "window", "--model", model_dirs["gpt2"], "--target", 8, "--quiet", "the cat sat")
    assert code == 2 and "has no rotary q/k" in one_error_line(err)
    code, _, err = main(capsys, "window", "--model", model_dirs["decay"], "--target", 60, "--file", text_files["text"],
                        "--quiet")
    assert code == 2 and re.search(r"text has 100 tokens; measuring a window of 60 tokens needs at least 120",
                                   one_error_line(err))


ERROR_CASES = [
    ([], r"the following arguments are required: --target"),
    (["--target", "0"], r"argument --target: must be >= 1 \(tokens\), got 0"),
    (["--target", "-5"], r"argument --target: must be >= 1 \(tokens\), got -5"),
    # the library's own bound (a window of at least 1 token): 0.5 passed '> 0' and failed after the model loaded
    (["--target", "0.5"], r"argument --target: must be >= 1 \(tokens\), got 0.5"),
    (["--target", "0.999"], r"argument --target: must be >= 1 \(tokens\), got 0.999"),
    (["--target", "nan"], r"argument --target: must be >= 1 \(tokens\), got nan"),
    (["--target", "many"], r"argument --target: expected a number >= 1 \(tokens\), got 'many'"),
    (["--target", "8", "--level", "1.5"], r"argument --level: must be in \(0, 1\], got 1.5"),
    (["--target", "8", "--level", "0"], r"argument --level: must be in \(0, 1\], got 0"),
    (["--target", "8", "--tolerance", "1"], r"argument --tolerance: must be in \(0, 1\), got 1"),
    (["--target", "8", "--per-step", "0"], r"argument --per-step: must be >= 1, got 0"),
    (["--target", "8", "--max-steps", "-1"], r"argument --max-steps: must be >= 0 \(0: the grid only\), got -1"),
    (["--target", "8", "--batch-size", "0"], r"argument --batch-size: must be >= 1, got 0"),
    (["--target", "8", "--site", "v"], r"argument --site: invalid choice: 'v'"),
    (["--target", "8", "--scales=-1,x"], r"--scales must be comma-separated finite numbers .*got '-1,x'"),
    (["--target", "8", "--scales=inf"], r"--scales must be comma-separated finite numbers"),
    (["--target", "8", "--limits=0,16"], r"limits \(0.0, 16.0\) must contain every scale of the grid and 1.0 \(-1..4\)"),
    (["--target", "8", "--limits=3"], r"--limits must be two numbers LOW,HIGH"),
    (["--target", "8", "--limits=16,-4"], r"limits \(16.0, -4.0\) must contain every scale of the grid and 1.0"),
    (["--target", "8", "--file", "{missing}"], r"--file .*missing.txt: no such file"),
    (["--target", "8", "--file", "{latin}"], r"latin.txt:1: not UTF-8 text"),
    (["--target", "8", "--file", "{empty}"], r"--file .*empty.txt: the file has no text"),
    (["--target", "8", "--file", "{good}", "x"], r"give the text as arguments or with --file, not both"),
    # an empty "$TEXT" was measured as attnlab's packaged neutral text instead
    (["--target", "8", ""], r"the text given is empty \(only spaces\); give the text, --file FILE, or no text"),
    (["--target", "8", "  ", "\t"], r"the text given is empty"),
    (["--target", "8", "--units", "{missing}"], r"--units .*missing.txt: no such file"),
    (["--target", "8", "--units", "{good}"], r"--units .*good.txt: no column\(s\) layer, head, unit"),
    (["--target", "8", "--units", "{units_bad}"],
     r"--units .*units_bad.csv: column unit must hold integers from 0 to 2147483647, got 'x' \(line 3"),
    # huge or infinite values passed as whole numbers and overflowed in astype(int), naming a negative number later
    (["--target", "8", "--units", "{units_huge}"], r"units_huge.csv: column unit must hold integers from 0 to 2147483647, "
     r"got '1e30' \(line 2"),
    (["--target", "8", "--units", "{units_inf}"], r"units_inf.csv: column head must hold integers .*got 'inf' \(line 3"),
    (["--target", "8", "--units", "{units_digits}"], r"units_digits.csv: column layer must hold integers .*got '99999999999999999999' \(line 2"),
    (["--target", "8", "--units", "{units_frac}"], r"units_frac.csv: column unit must hold integers .*got '1.5' \(line 2"),
    (["--target", "8", "--units", "{units_negative}"], r"units_negative.csv: column unit must hold integers .*got '-1' \(line 2"),
    (["--target", "8", "--units", "{units_empty}"], r"--units .*units_empty.csv: the table has no rows"),
    # a repeated column gave a TypeError traceback (units['layer'] was a table of both columns), exit 1
    (["--target", "8", "--units", "{units_twice}"],
     r"--units .*units_twice.csv: column 'layer' appears 2 times in the header \(columns 1, 2\); give each column once"),
    (["--target", "8", "--units", "{units_note}"], r"units_note.csv: column 'note' appears 2 times .*\(columns 4, 5\)"),
]


@pytest.mark.parametrize("args, message", ERROR_CASES, ids=[" ".join(a)[:50] or "no target" for a, _ in ERROR_CASES])
def test_bad_options_exit_2_with_one_line_before_loading(capsys, files, no_model_loading, tmp_path, args, message):
    files = {**files, "units_bad": tmp_path / "units_bad.csv", "units_empty": tmp_path / "units_empty.csv"}
    files["units_bad"].write_text("layer,head,unit\n0,1,2\n1,0,x\n")
    files["units_empty"].write_text("layer,head,unit\n")
    files["units_twice"] = tmp_path / "units_twice.csv"
    files["units_twice"].write_text("layer,layer,head,unit\n0,1,0,0\n")
    files["units_note"] = tmp_path / "units_note.csv"
    files["units_note"].write_text("layer,head,unit,note,note\n0,1,0,a,b\n")
    for name, rows in (("huge", "0,0,1e30\n"), ("inf", "0,0,1\n0,inf,1\n"), ("digits", "99999999999999999999,0,1\n"),
                       ("frac", "0,0,1.5\n"), ("negative", "0,0,-1\n")):
        files[f"units_{name}"] = tmp_path / f"units_{name}.csv"
        files[f"units_{name}"].write_text("layer,head,unit\n" + rows)
    code, out, err = main(capsys, "window", *[a.format(**files) for a in args])
    assert code == 2
    assert re.search(message, one_error_line(err)), err
    assert out == ""


def test_a_real_process_says_not_reached_on_stdout_only(model_dirs, text_files, tmp_path):
    """In a shell: exit 0, the 'reached: no' line on stdout, no Python warning text on stderr."""
    from .test_cli import run

    out = run("window", "--model", model_dirs["llama"], "--target", 20, "--file", text_files["short"], "--quiet",
              "-o", tmp_path / "out")
    assert out.returncode == 0, out.stderr
    assert re.search(r"^reached:   no: target 20 not reached, closest window \d+ tokens", out.stdout, re.M)
    assert "Warning" not in out.stderr and "not reached" not in out.stderr
    bad = run("window", "--target", "0")
    assert bad.returncode == 2 and "argument --target: must be >= 1 (tokens), got 0" in one_error_line(bad.stderr)


def test_a_huge_count_is_one_line_out_of_memory(capsys, model_dirs, text_files, tmp_path):
    """--per-step 10**18: numpy's MemoryError ('Unable to allocate 6.94 EiB') came as a traceback, exit 1."""
    out = tmp_path / "w"
    code, stdout, err = main(capsys, "window", "--model", model_dirs["llama"], "--target", 2, "--per-step", 10**18,
                             "--quiet", "--file", text_files["short"], "-o", out)
    assert code == 2 and stdout == ""
    assert re.match(r"attnlab: error: out of memory \(Unable to allocate .* EiB .*\); ask for less: smaller counts "
                    r"\(--n-boot, --per-step, --batch-size, \.\.\.\)", one_error_line(err))
    assert not out.exists()
