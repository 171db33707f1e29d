"""What every CLI test file shares: the in-process runner, the one-line-error check, tiny model folders, input files."""

from __future__ import annotations

import json

import pytest

from attnlab import cli
from attnlab.testing import tiny_hf_model, tiny_tokenizer


def main(capsys, *args) -> tuple[int, str, str]:
    """``attnlab ARGS`` in this process: (exit status, stdout, stderr)."""
    code = cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("attnlab: error: ") and "Traceback" not in err
    return lines[0]


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


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fail the test if a command loads a model: options and files must be checked first."""

    def refuse(args):
        raise AssertionError(f"loaded --model {args.model} before finding the error")

    monkeypatch.setattr(cli, "_load", refuse)


@pytest.fixture
def files(tmp_path):
    """Hostile and ordinary input files."""
    f = {
        "latin": tmp_path / "latin.txt",
        "utf16": tmp_path / "utf16.txt",
        "good": tmp_path / "good.txt",
        "spec_seed": tmp_path / "seed.json",
        "spec_nan": tmp_path / "nan.json",
        "spec_deep": tmp_path / "deep.json",
        "spec_digits": tmp_path / "digits.json",
        "spec_none": tmp_path / "none.json",
        "no_config": tmp_path / "model_without_config",
        "empty": tmp_path / "empty.txt",
    }
    f["latin"].write_bytes("the café said that\n".encode("latin-1"))
    f["utf16"].write_bytes("the nurse said that\n".encode("utf-16"))
    f["good"].write_text("the nurse said that\nthe doctor said that\n")
    f["spec_seed"].write_text(json.dumps([{"kind": "ablate_head", "layer": 0, "seed": "x"}]))
    f["spec_nan"].write_text('[{"kind": "edit_scores", "layer": 0, "distance_penalty": NaN}]')
    f["spec_deep"].write_text("[" * 50_000 + "]" * 50_000)
    f["spec_digits"].write_text('[{"kind": "ablate_head", "layer": ' + "9" * 5000 + "}]")
    f["spec_none"].write_text("[]\n")
    f["no_config"].mkdir()
    (f["no_config"] / "model.safetensors").write_bytes(b"")
    f["empty"].write_text("\n\n")
    f["missing"] = tmp_path / "missing.txt"
    f["folder"] = tmp_path
    return f


@pytest.fixture(scope="module")
def llama_dir(tiny_dirs):
    """The tiny Llama's folder (the decoder most CLI tests load)."""
    return tiny_dirs["llama"]
