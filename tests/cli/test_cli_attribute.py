"""``attnlab attribute``: the table it writes is ``attribute()``'s, bad options exit 2 before the model loads."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

import attnlab
from attnlab.measure import KL, LogitDiff, Loss, TokenProb, attribute
from attnlab.testing import tiny_hf_model, tiny_tokenizer

from .conftest import main, one_error_line

PROMPTS = ["the nurse said that", "the doctor said that he was", "the king told the queen that"]
COUNTERFACTUALS = ["the doctor said that", "the nurse said that she was", "the queen told the king that"]
REFERENCE = ["the cat sat on the mat", "a dog ran to the car"]


@pytest.fixture(scope="module")
def llama(llama_dir):
    return attnlab.load(str(llama_dir))


@pytest.fixture
def inputs(tmp_path):
    paths = {}
    for name, lines in (("prompts", PROMPTS), ("cf", COUNTERFACTUALS), ("ref", REFERENCE)):
        paths[name] = tmp_path / f"{name}.txt"
        paths[name].write_text("\n".join(lines) + "\n")
    return paths


def assert_same_table(written: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Same columns and rows; numbers to 1e-6, labels exactly."""
    assert list(written.columns) == list(expected.columns)
    assert len(written) == len(expected)
    numbers = expected.select_dtypes("number").columns
    for col in expected.columns:
        if col in numbers:
            a, b = written[col].to_numpy(dtype=float), expected[col].to_numpy(dtype=float)
            assert np.array_equal(np.isnan(a), np.isnan(b)), col
            assert np.nanmax(np.abs(a - b), initial=0.0) <= 1e-6, col
        else:
            assert written[col].astype(str).tolist() == expected[col].astype(str).tolist(), col


# (CLI options, attribute() keywords, metric): each a different site / method / correction / metric
CASES = {
    "z-zero": ([], dict(), LogitDiff(" she", " he")),
    "q-atp*": (["--site", "q", "--layers", "1", "--correction", "atp*"],
               dict(site="q", layers=[1], correction="atp*"), LogitDiff(" she", " he")),
    "post-mean-per-position": (
        ["--site", "post", "--layers", "1", "--neurons", "0,3,5,7", "--method", "mean", "--reference", "{ref}",
         "--per-position"],
        dict(site="post", layers=[1], neurons=[0, 3, 5, 7], method="mean", reference=REFERENCE, per_position=True),
        LogitDiff(" she", " he")),
    "pattern-patch": (["--site", "pattern", "--method", "patch", "--counterfactuals", "{cf}"],
                      dict(site="pattern", method="patch", counterfactuals=COUNTERFACTUALS), LogitDiff(" she", " he")),
    "k-dims-qk-loss": (["--site", "k", "--dims", "1,2", "--heads", "0", "--correction", "qk", "--metric", "loss"],
                       dict(site="k", dims=[1, 2], heads=[0], correction="qk"), Loss()),
    "v-kl": (["--site", "v", "--layers", "0", "--metric", "kl", "--probes", "4", "--seed", "3"],
             dict(site="v", layers=[0], probes=4, seed=3), KL()),
    "z-bfloat16": (["--precision", "bfloat16"], dict(precision="bfloat16"), LogitDiff(" she", " he")),
    "z-prob": (["--metric", "prob", "--target", " her"], dict(), TokenProb(" her")),  # --target is TokenProb's token
}


@pytest.mark.parametrize("case", CASES)
def test_written_table_equals_attribute_in_process(capsys, llama_dir, llama, inputs, tmp_path, case):
    options, keywords, metric = CASES[case]
    table = tmp_path / "attr.csv"
    code, out, err = main(capsys, "attribute", "--model", llama_dir, "--file", inputs["prompts"],
                          *[o.format(**inputs) for o in options], "--n-boot", 50, "--batch-size", 4, "--quiet",
                          "-o", table)
    assert code == 0, err
    expected = attribute(llama, PROMPTS, metric, n_boot=50, batch_size=4, progress=False, **keywords)
    assert_same_table(pd.read_csv(table), expected.table)
    # the printed list: the library's top unit first, its effect labelled as an estimate
    assert "ESTIMATE" in out and "estimate" in out.split("rank", 1)[1].splitlines()[0]
    first = out.split("rank", 1)[1].splitlines()[1]
    assert re.match(rf"\s*1\s+{re.escape(str(expected.top(1)['unit'].iloc[0]))}\s", first), first


def test_verify_writes_the_exact_table_next_to_the_estimates(capsys, llama_dir, llama, inputs, tmp_path):
    folder = tmp_path / "out"
    figure = tmp_path / "attr.png"
    code, out, err = main(capsys, "attribute", "--model", llama_dir, "--file", inputs["prompts"], "--verify", 3,
                          "--n-boot", 50, "--batch-size", 4, "--quiet", "-o", folder, "--figure", figure)
    assert code == 0, err
    expected = attribute(llama, PROMPTS, LogitDiff(" she", " he"), n_boot=50, batch_size=4, progress=False)
    assert_same_table(pd.read_csv(folder / "attribution.csv"), expected.table)
    exact = expected.verify(3, batch_size=4)
    written = pd.read_csv(folder / "attribution_verify.csv")
    assert_same_table(written, exact.table)
    assert written["variant"].tolist() == expected.top(3)["unit"].tolist()
    assert np.allclose(written["error"], written["estimate"] - written["effect"])
    assert "exact check of the top 3" in out and f"wrote {folder / 'attribution_verify.csv'}" in out
    assert figure.stat().st_size > 1000


def test_too_many_units_for_a_heatmap_draw_the_top_as_bars(capsys, llama_dir, inputs, tmp_path):
    figure = tmp_path / "bars.png"
    code, out, err = main(capsys, "attribute", "--model", llama_dir, "--file", inputs["prompts"], "--site", "post",
                          "--per-position", "--top", 5, "--n-boot", 0, "--quiet", "--figure", figure)
    assert code == 0, err
    assert figure.stat().st_size > 1000
    assert len(out.split("rank", 1)[1].strip().splitlines()) == 1 + 5  # header and the top 5, no table written


ERROR_CASES = [
    (["--site", "pattern", "x"], r"pattern units support method='patch' only \(got 'zero'\)"),
    (["--site", "mlp", "x"], r"argument --site: invalid choice: 'mlp'"),
    (["--method", "resample", "x"], r"argument --method: invalid choice: 'resample'"),
    (["--correction", "atp", "x"], r"argument --correction: invalid choice: 'atp'"),
    (["--correction", "qk", "x"], r"the QK fix applies to q and k units .*'z' units"),
    (["--dims", "0", "x"], r"dims= picks q/k/v dimensions; site 'z' has none"),
    (["--neurons", "1", "x"], r"neurons= picks MLP neurons \(site='post'\); site 'z' has none"),
    (["--site", "post", "--heads", "0", "x"], r"heads= does not apply to MLP neurons"),
    (["--method", "patch", "x"], r"method='patch' needs counterfactuals="),
    (["--counterfactuals", "{good}", "x"], r"counterfactuals= is only used by method='patch', not 'zero'"),
    (["--reference", "{good}", "x"], r"reference= is only used by method='mean', not 'zero'"),
    (["--method", "patch", "--counterfactuals", "{good}", "a", "b", "c"], r"--counterfactuals .*good.txt: 2 lines for 3 prompts"),
    (["--method", "patch", "--counterfactuals", "{missing}", "x"], r"--counterfactuals .*missing.txt: no such file"),
    (["--method", "mean", "--reference", "{empty}", "x"], r"--reference .*empty.txt: the file has no non-empty lines"),
    (["--file", "{latin}"], r"latin.txt:1: not UTF-8 text"),
    (["--file", "{missing}"], r"--file .*missing.txt: no such file"),
    (["--file", "{good}", "x"], r"give the prompts as arguments or with --file, not both"),
    (["--metric", "topk", "x"], r"is not a differentiable metric attribution can use; use LogitDiff, TokenProb, PairLogRatio, Loss or KL"),
    (["--metric", "klx", "x"], r"unknown metric 'klx'; did you mean 'kl'\?"),
    (["--probes", "4", "x"], r"--probes is used by --metric kl .*not logit_diff"),
    (["--metric", "kl", "--probes", "0", "x"], r"argument --probes: must be >= 1, got 0"),
    (["--verify", "0", "x"], r"argument --verify: must be >= 1, got 0"),
    (["--verify", "-3", "x"], r"argument --verify: must be >= 1, got -3"),
    (["--verify", "all", "x"], r"argument --verify: expected an integer >= 1, got 'all'"),
    (["--top", "-1", "x"], r"argument --top: must be >= 0 \(0 prints all\), got -1"),
    (["--batch-size", "0", "x"], r"argument --batch-size: must be >= 1 or auto, got 0"),
    (["--n-boot", "-5", "x"], r"argument --n-boot: must be >= 0 \(0: no intervals\), got -5"),
    (["--seed", "-1", "x"], r"argument --seed: must be >= 0, got -1"),
    (["--layers", "-1", "x"], r"--layers must be integers >= 0 \(counted from 0\), got -1"),
    (["--heads", "0,x", "x"], r"--heads must be comma-separated integers like 0,3,5; got '0,x'"),
    (["--layers", ",", "x"], r"--layers ',': no numbers given"),
    (["--precision", "int8", "x"], r"argument --precision: invalid choice: 'int8'"),
]


@pytest.mark.parametrize("args, message", ERROR_CASES, ids=[" ".join(a)[:50] for a, _ in ERROR_CASES])
def test_bad_options_exit_2_with_one_line_before_loading(capsys, files, no_model_loading, args, message):
    code, out, err = main(capsys, "attribute", *[a.format(**files) for a in args])
    assert code == 2
    assert re.search(message, one_error_line(err)), err
    assert out == ""


def test_out_of_range_layer_names_the_valid_range(capsys, llama_dir):
    code, _, err = main(capsys, "attribute", "--model", llama_dir, "--layers", "0,7", "--quiet", "the nurse said that")
    assert code == 2
    assert re.search(r"layer 7 out of range: valid layers are 0\.\.1", one_error_line(err))


def test_a_model_without_an_lm_head_is_one_line(capsys, tmp_path):
    from transformers import BertModel

    folder = tmp_path / "bare_bert"
    BertModel(tiny_hf_model("bert").config).save_pretrained(folder)
    tiny_tokenizer("encoder").save_pretrained(folder)
    code, _, err = main(capsys, "attribute", "--model", folder, "--quiet", "the nurse said that")
    assert code == 2 and "has no LM head" in one_error_line(err)


def test_a_real_process_exits_2_with_one_line():
    from .test_cli import run

    out = run("attribute", "--verify", "0", "the nurse said that")
    assert out.returncode == 2
    assert "argument --verify: must be >= 1, got 0" in one_error_line(out.stderr)
