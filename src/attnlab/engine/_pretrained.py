"""From a local folder or a Hugging Face id to ``(hf_model, tokenizer)``: safetensors only, no network surprises.

* Weights are read from safetensors only (``use_safetensors=True``): a folder that holds
  only a pickle checkpoint (``pytorch_model.bin``) is refused with the way to convert it,
  because unpickling a file can run code. ``use_safetensors=True`` alone is not enough:
  transformers reads whatever file a ``*.safetensors.index.json`` or config.json's
  ``transformers_weights`` names, so every such name is checked before anything is read.
* An HF id is looked up in the local HF cache first. The hub is contacted only when the id
  is not cached, ``HF_HUB_OFFLINE`` is not set and a one-second connection probe reaches it,
  so on a machine without network a missing id fails at once with a typed error instead of
  spending half a minute in retries.
* :func:`fast_tokenizer` builds a ``tokenizer.json`` tokenizer without the per-class
  conversion that ``AutoTokenizer`` runs on every load (seconds for Gemma's 262k vocabulary).
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from attnlab.errors import AttnlabError, DataFormatError, InvalidInput, UnsupportedModel

__all__ = [
    "load_pretrained", "fast_tokenizer", "check_local_folder", "check_safetensors_file", "hub_reachable",
    "hub_offline_by_setting", "check_no_model_code",
]

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
#: what config.json's transformers_weights may name
_WEIGHTS_SUFFIXES = (".safetensors", ".safetensors.index.json")
#: a safetensors index as transformers names it: model.safetensors.index.json, or with a variant
#: model.safetensors.index.fp16.json
_INDEX = re.compile(r"\.safetensors\.index(\.[^./]+)?\.json$")
_PROBE_SECONDS = 1.0
#: the from_pretrained options that say where a hub file comes from
_HUB_KEYS = ("cache_dir", "revision", "token", "local_files_only", "subfolder", "proxies", "force_download")
_TRUE = {"1", "on", "yes", "true"}
_CONVERT = (
    "attnlab reads safetensors only, because unpickling a file can run code. Convert it once, where you "
    "trust the file: load it with transformers (which reads it with torch.load(weights_only=True)), e.g. "
    "`m = AutoModel.from_pretrained(path, use_safetensors=False)`, then "
    "`m.save_pretrained(path, safe_serialization=True)` writes model.safetensors"
)


def check_local_folder(folder: Path) -> None:
    """Refuse, with a typed error, a path that is not a safetensors model folder."""
    if not folder.is_dir():
        hint = ("; for a GGUF file, load it with transformers (AutoModelForCausalLM.from_pretrained(its folder, "
                "gguf_file=its name), which dequantises it) and pass the model with tokenizer=" if folder.suffix.lower()
                == ".gguf" else "")
        raise InvalidInput(f"{folder} is a file; load() takes a model folder (config.json + model.safetensors){hint}")
    names = sorted(p.name for p in folder.iterdir())
    if "config.json" not in names:
        raise InvalidInput(
            f"{folder} has no config.json, so it is not a transformers model folder "
            "(save_pretrained writes config.json and model.safetensors)"
        )
    if any(name.endswith(".safetensors") or _INDEX.search(name) for name in names):
        files = {name: folder for name in names if name.endswith(".safetensors")}  # name -> where it is named
        indexes = [name for name in names if _INDEX.search(name)]
        explicit = _explicit_weights(folder)
        if explicit.endswith(".json"):
            indexes.append(explicit)
        elif explicit:
            files.setdefault(explicit, folder / "config.json")
        for index in indexes:
            files.update(dict.fromkeys(check_shard_index(folder / index), folder / index))
        for name, named_in in files.items():
            if not (folder / name).is_file():
                raise DataFormatError(f"{named_in} names {name}, which is not a file in {folder}")
            check_safetensors_file(folder / name)
        return
    pickles = [name for name in names if name.endswith(_PICKLE_SUFFIXES) or name.endswith(".bin.index.json")]
    if pickles:
        raise UnsupportedModel(f"{folder} holds its weights only as a pickle ({', '.join(pickles)}); {_CONVERT}")
    raise InvalidInput(f"{folder} has no model.safetensors (files: {', '.join(names)})")


def _explicit_weights(folder: Path) -> str:
    """The weights file that config.json's ``transformers_weights`` names ("" if none).

    transformers loads that file instead of model.safetensors, and it accepts ``adapter_model.bin``
    there (a pickle), so the name is held to the same rule as an index's shards.
    """
    try:
        name = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("transformers_weights")
    except (OSError, ValueError, AttributeError):
        return ""  # transformers reports an unreadable config itself
    if name is None:
        return ""
    _check_shard_name(name, folder / "config.json", "transformers_weights", suffixes=_WEIGHTS_SUFFIXES)
    return name


def _check_shard_name(name: Any, source: Path | str, what: str, *, suffixes: tuple[str, ...] = (".safetensors",)):
    """A weights file named in ``source`` must be safetensors and lie inside the model folder."""
    if not isinstance(name, str) or not name:
        raise DataFormatError(f"{source}: {what} names {name!r}, not a file name")
    if not name.endswith(suffixes):
        raise UnsupportedModel(f"{source}: {what} names {name}, which is not a .safetensors file; {_CONVERT}")
    if Path(name).is_absolute() or ".." in Path(name).parts or "\\" in name:
        raise DataFormatError(f"{source}: {what} names {name}, which lies outside the model folder; the names "
                              "must be plain file names beside the index (model-00001-of-00002.safetensors)")


def check_shard_index(index: Path) -> list[str]:
    """The shard names of a safetensors index, each checked before transformers opens any of them.

    transformers reads every file that ``weight_map`` names, whatever its suffix: a
    ``model.safetensors.index.json`` pointing at ``pytorch_model.bin`` gets that pickle
    loaded, so a name that is not ``*.safetensors`` (or leaves the folder) is refused here.
    """
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
    except (OSError, ValueError, AttributeError) as err:
        raise DataFormatError(f"{index}: not a readable safetensors index ({err})") from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise DataFormatError(f"{index}: a safetensors index needs a non-empty \"weight_map\" object "
                              "(tensor name -> shard file)")
    for shard in weight_map.values():
        _check_shard_name(shard, index, "weight_map")
    return sorted(set(weight_map.values()))


def check_safetensors_file(path: Path) -> None:
    """Refuse a truncated or tampered safetensors file (or a pickle renamed to one) by its header, naming it.

    ``safe_open`` reads only the header (the file is memory-mapped), so this costs microseconds;
    without it the raw ``SafetensorError`` surfaces from inside transformers, naming no file.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as weights:
            weights.keys()
    except SafetensorError as err:
        raise DataFormatError(f"{path}: not a readable safetensors file ({err}); the file is truncated or "
                              "corrupted: save or download the model again") from None


def _is_truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in _TRUE


def hub_offline_by_setting() -> bool:
    """``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` as set now (huggingface_hub reads them only at import)."""
    if _is_truthy(os.environ.get("HF_HUB_OFFLINE")) or _is_truthy(os.environ.get("TRANSFORMERS_OFFLINE")):
        return True
    import huggingface_hub.constants as hub_constants

    return bool(hub_constants.HF_HUB_OFFLINE)


def hub_reachable(timeout: float = _PROBE_SECONDS) -> bool:
    """Whether a TCP connection to the hub endpoint opens within ``timeout`` seconds.

    Runs in a daemon thread so that a hanging DNS lookup cannot hold the caller longer.
    """
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    worker = threading.Thread(target=probe, name="attnlab-hub-probe", daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(result and result[0])


def _looks_like_path(source: str) -> bool:
    """A hub id is ``name`` or ``owner/name``; anything else that does not exist is a missing path."""
    return source.startswith(("/", ".", "~")) or source.count("/") > 1 or "\\" in source


def _from_pretrained(source: str, dtype, device, device_map, **kwargs):
    import torch
    import transformers

    config = transformers.AutoConfig.from_pretrained(source, **kwargs)
    if not Path(source).is_dir():  # a folder was checked by check_local_folder
        _check_hub_weights(source, config, kwargs)
    model = _auto_class(config).from_pretrained(
        source, dtype=dtype or torch.float32, device_map=device_map, attn_implementation="sdpa",
        use_safetensors=True, **kwargs,
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(source, **kwargs)
    if device is not None and device_map is None:
        model = model.to(device)
    return model, tokenizer


def _check_hub_weights(source: str, config, kwargs: dict) -> None:
    """check_local_folder's rule for an HF id: the weights file config.json names and the safetensors
    index (from the HF cache, or fetched as transformers would fetch it) are read before any shard is."""
    from transformers.utils import cached_file

    explicit = getattr(config, "transformers_weights", None)
    if explicit is not None:
        _check_shard_name(explicit, f"{source}: config.json", "transformers_weights", suffixes=_WEIGHTS_SUFFIXES)
        if not explicit.endswith(".json"):
            return
    variant = kwargs.get("variant")
    name = explicit or (f"model.safetensors.index.{variant}.json" if variant else "model.safetensors.index.json")
    index = cached_file(source, name, _raise_exceptions_for_missing_entries=False,
                        _raise_exceptions_for_gated_repo=False, **{k: kwargs[k] for k in _HUB_KEYS if k in kwargs})
    if index is not None:
        check_shard_index(Path(index))


def _auto_class(config):
    import transformers

    for arch in getattr(config, "architectures", None) or []:
        if arch.endswith("ForCausalLM") or arch.endswith("LMHeadModel"):
            return transformers.AutoModelForCausalLM
        if arch.endswith("ForMaskedLM"):
            return transformers.AutoModelForMaskedLM
    return transformers.AutoModel


def _damaged(source: str, err: Exception) -> DataFormatError:
    return DataFormatError(f"cannot load {source!r}: a model.safetensors file is not readable ({err}); the "
                           "file is truncated or corrupted: download the model again")


def _offline_error(source: str, why: str, fix: str) -> InvalidInput:
    return InvalidInput(
        f"cannot load {source!r}: it is not a local folder, it is not in the Hugging Face cache, and {why}. "
        f"Use an embedded model ('minilm' or 'gemma-3-270m'), a local folder with config.json and "
        f"model.safetensors, or {fix}"
    )


def load_pretrained(source: str, *, dtype=None, device=None, device_map=None, **kwargs: Any):
    """``(hf_model, tokenizer)`` from a local folder or an HF id (cache first, hub only when reachable)."""
    if kwargs.pop("use_safetensors", True) is not True:
        raise InvalidInput("attnlab reads safetensors only: use_safetensors=False is not supported")
    # transformers would ask on stdin (a script blocks on a prompt) before running a folder's own Python files
    kwargs["trust_remote_code"] = _trusted(kwargs.get("trust_remote_code", False))
    path = Path(source).expanduser()
    if path.exists():
        check_local_folder(path / kwargs.get("subfolder", ""))  # where transformers reads config and weights
        if not kwargs["trust_remote_code"]:
            check_no_model_code(path / kwargs.get("subfolder", ""))
        return _load_or_explain(str(path), dtype, device, device_map, **kwargs)
    if _looks_like_path(source):
        raise InvalidInput(f"no such model folder: {source}")
    if not kwargs.get("force_download"):
        from safetensors import SafetensorError

        try:  # the HF cache needs no network
            return _from_pretrained(source, dtype, device, device_map, **{**kwargs, "local_files_only": True})
        except AttnlabError:
            raise
        except SafetensorError as err:  # cached, but damaged: downloading again is the fix, not a silent retry
            raise _damaged(source, err) from None
        except (OSError, ValueError) as err:
            if "trust_remote_code" in str(err):
                raise _custom_code(source) from None
            # not (completely) cached: go on to the hub if it can be reached
    if kwargs.get("local_files_only") or hub_offline_by_setting():
        raise _offline_error(
            source, "HF_HUB_OFFLINE (or local_files_only=True) forbids the hub",
            "allow the hub: unset HF_HUB_OFFLINE (or set HF_HUB_OFFLINE=0) on a machine with network",
        )
    if not hub_reachable():
        endpoint = os.environ.get("HF_ENDPOINT") or "huggingface.co"
        raise _offline_error(
            source, f"the hub ({endpoint}) cannot be reached",
            "reach the hub: connect to the network (or point HF_ENDPOINT at a reachable mirror)",
        )
    return _load_or_explain(source, dtype, device, device_map, **kwargs)


def _trusted(value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"trust_remote_code must be True or False, not {value!r}")
    return value


_CODE_FILES = ("config.json", "tokenizer_config.json")


def check_no_model_code(folder: Path) -> None:
    """Refuse a folder whose config maps classes to its own Python files: loading it would run them.

    transformers runs such files only with ``trust_remote_code=True``; without it, it asks on stdin
    or fails with a ``ValueError``. attnlab says so before anything is read, with what to check.
    """
    for name in _CODE_FILES:
        try:
            config = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        auto_map = config.get("auto_map") if isinstance(config, dict) else None
        if auto_map:
            targets = ", ".join(sorted({str(v) for v in (auto_map.values() if isinstance(auto_map, dict) else [auto_map])}))
            raise UnsupportedModel(
                f"{folder / name} maps its classes to Python code shipped with the model ({targets}): loading it "
                f"runs that code. attnlab runs no model code by default; read the files, then pass "
                f"trust_remote_code=True (CLI: --trust-remote-code) to load it"
            )


def _load_or_explain(source: str, dtype, device, device_map, **kwargs):
    """Load through transformers; its errors become typed ones that say what to do."""
    from safetensors import SafetensorError

    try:
        return _from_pretrained(source, dtype, device, device_map, **kwargs)
    except SafetensorError as err:  # a hub file that check_local_folder never saw
        raise _damaged(source, err) from None
    except ValueError as err:
        if "trust_remote_code" not in str(err):
            raise
        raise _custom_code(source) from None
    except OSError as err:
        text = str(err)
        if "safetensors" in text or "pytorch_model.bin" in text:
            raise UnsupportedModel(f"{source!r} has no safetensors weights ({text}); {_CONVERT}") from None
        raise InvalidInput(f"cannot load {source!r}: {text}") from None


def _custom_code(source: str) -> UnsupportedModel:
    return UnsupportedModel(
        f"{source!r} ships its own Python code (its config maps classes to files in the repository), which "
        f"loading it would run. attnlab runs no model code by default; read the code, then pass "
        f"trust_remote_code=True (CLI: --trust-remote-code) to load it"
    )


# -- tokenizer --------------------------------------------------------------------------------


def fast_tokenizer(folder: Path):
    """The tokenizer saved in ``folder`` (``tokenizer.json`` + ``tokenizer_config.json``), built directly.

    ``AutoTokenizer`` turns ``tokenizer.json`` back into Python vocab and merges for classes
    with their own ``__init__`` (Gemma's among them) and rebuilds it: 3-4 s for Gemma. Here the
    Rust tokenizer reads the file once; the class-level defaults that ``AutoTokenizer`` would
    have taken from the named class (padding side, model inputs) are copied from that class.
    The embedded Gemma tests check that both tokenize, pad and decode identically.
    """
    from transformers import PreTrainedTokenizerFast
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    loader_only = ("tokenizer_class", "auto_map", "is_local", "local_files_only")
    kwargs = {k: v for k, v in config.items() if k not in loader_only}
    named = tokenizer_class_from_name(config.get("tokenizer_class") or "PreTrainedTokenizerFast")
    if named is not None:
        kwargs.setdefault("padding_side", named.padding_side)
        kwargs.setdefault("truncation_side", named.truncation_side)
        kwargs.setdefault("model_input_names", list(named.model_input_names))
    return PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), name_or_path=str(folder), **kwargs)
