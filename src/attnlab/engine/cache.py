"""``ActivationCache``: the tensors a ``run_with_cache`` call read, by hook name.

It behaves like TransformerLens' ``ActivationCache`` where the names match:
``cache["pattern", 3]``, ``cache["pattern3"]`` and ``cache["blocks.3.attn.hook_pattern"]`` are the same
tensor, ``cache["z", -1]`` is the last layer's, ``cache["embed"]`` is ``hook_embed``,
``cache["scale", 3, "ln1"]`` is ``blocks.3.ln1.hook_scale``, and ``remove_batch_dim()`` /
``apply_slice_to_batch_dim()`` / ``to()`` / ``stack_activation()`` work as there. The
analyses (``decompose_resid``, ``stack_head_results``, ``logit_attrs`` ...) live in
:mod:`attnlab.engine.decompose`. attnlab keeps its own class so that importing attnlab never
imports TransformerLens (a 5-second import).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from attnlab.engine.decompose import ResidualAnalyses, apply_slice
from attnlab.engine.locations import BLOCK_NORMS, get_act_name, missing_name_hint, norm_path, scale_name
from attnlab.engine.stop import blocks_run, not_reached
from attnlab.errors import InvalidInput, InvalidLocation, did_you_mean, is_integer

__all__ = ["ActivationCache", "check_device"]


def check_device(device, what: str) -> torch.device | None:
    """``device`` as a torch.device this machine has (None stays None), checked before any work: a bad name or a
    device the machine lacks failed inside the first hook that moved a tensor there."""
    if device is None:
        return None
    try:
        checked = torch.device(device)
        torch.empty(0, device=checked)
    except (RuntimeError, TypeError, ValueError, AssertionError) as err:
        raise InvalidInput(f"{what}: device={device!r} is not a device this machine has "
                           f"(a torch.device or a name such as 'cpu' or 'cuda:0'): {err}") from None
    return checked


class ActivationCache(ResidualAnalyses):
    """Cached activations of one forward pass, keyed by hook name (``cache_dict``)."""

    def __init__(self, cache_dict: dict[str, torch.Tensor], model, *, has_batch_dim: bool = True,
                 stopped_at: int | None = None):
        self.cache_dict = dict(cache_dict)
        self.model = model
        self.has_batch_dim = has_batch_dim
        self.stopped_at = stopped_at  # run_with_cache(stop_at_layer=k): blocks k.. did not run

    # -- mapping ----------------------------------------------------------------------------

    def _key(self, key) -> str:
        """A hook name, a shorthand (``"embed"``, ``"k6"``) or a ``(site, layer[, type])`` tuple -> the hook name.

        As in TransformerLens, a negative layer counts from the end (``cache["z", -1]``).
        """
        if isinstance(key, str):
            if key in self.cache_dict or "." in key or key.startswith("hook_"):
                return key
            try:
                return get_act_name(key)
            except InvalidLocation:
                return key  # not a shorthand either: reported as missing by the caller
        if isinstance(key, tuple) and not (1 <= len(key) <= 3 and isinstance(key[0], str)):
            raise InvalidInput(f"cache keys are hook names or (site, layer[, sublayer type]) tuples such as "
                               f"('pattern', 3) or ('scale', 3, 'ln1'), got {key!r}")
        if isinstance(key, tuple) and len(key) > 1 and key[1] is not None:
            # numpy integers and 0-d integer tensors (for layer in torch.arange(n)) are layers too; True is not layer 1
            layer = key[1]
            if isinstance(layer, torch.Tensor) and layer.ndim == 0 and not layer.is_floating_point() \
                    and not layer.is_complex() and layer.dtype != torch.bool:
                key = (key[0], int(layer), *key[2:])
            if not is_integer(key[1]):
                raise InvalidLocation(f"the layer in cache key {key!r} must be an integer in "
                                      f"{self.model.cfg.layer_range()} (or -{self.model.cfg.n_layers}..-1 from the end), "
                                      f"got {key[1]!r}")
            key = (key[0], self._layer_index(int(key[1])), *key[2:])
        if isinstance(key, tuple) and key and key[0] == "scale":
            key = _scale_name(*key[1:])
        elif isinstance(key, tuple):
            key = get_act_name(*key)
        if not isinstance(key, str):
            raise InvalidInput(f"cache keys are hook names or (site, layer) tuples, got {key!r}")
        return key

    def _layer_index(self, layer: int) -> int:
        n = self.model.cfg.n_layers
        if not -n <= layer < n:
            raise InvalidLocation(f"layer {layer} out of range: {self.model.cfg.name} has {self.model.cfg.layer_range()} "
                                  f"(or -{n}..-1 from the end)")
        return layer + n if layer < 0 else layer

    def __getitem__(self, key) -> torch.Tensor:
        name = self._key(key)
        if name not in self.cache_dict:
            point = self.model.hook_dict.get(name)
            k = self.stopped_at
            if k is not None and point is not None and not_reached(point, k):
                raise InvalidLocation(
                    f"{name!r} is not in this cache: the pass stopped at layer {k} (stop_at_layer={k}: it ran "
                    f"{blocks_run(k)}, not the later blocks nor the final norm; the last stream is "
                    f"blocks.{k}.hook_resid_pre). Run without stop_at_layer (or with a later one) to read it"
                )
            raise InvalidLocation(
                f"{name!r} is not in this cache{missing_name_hint(name) or did_you_mean(name, self.cache_dict)}; it holds "
                f"{len(self.cache_dict)} names (pass names_filter= to run_with_cache to choose what is cached)"
            )
        return self.cache_dict[name]

    def __contains__(self, key) -> bool:
        return self._key(key) in self.cache_dict

    def __len__(self) -> int:
        return len(self.cache_dict)

    def __iter__(self) -> Iterator[str]:
        return iter(self.cache_dict)

    def keys(self):
        return self.cache_dict.keys()

    def values(self):
        return self.cache_dict.values()

    def items(self):
        return self.cache_dict.items()

    def __repr__(self) -> str:
        return f"ActivationCache with keys {list(self.cache_dict)}"

    @property
    def has_embed(self) -> bool:
        return "hook_embed" in self.cache_dict

    @property
    def has_pos_embed(self) -> bool:
        return "hook_pos_embed" in self.cache_dict

    # -- reshaping --------------------------------------------------------------------------

    def to(self, device, move_model: bool = False) -> ActivationCache:
        """The cache on ``device`` (``move_model=True`` moves the model there too, as in TransformerLens)."""
        device = check_device(device, "ActivationCache.to")
        if move_model:
            self.model.to(device)
        return ActivationCache({k: v.to(device) for k, v in self.cache_dict.items()}, self.model,
                               has_batch_dim=self.has_batch_dim, stopped_at=self.stopped_at)

    def remove_batch_dim(self) -> ActivationCache:
        """Drop the batch axis of a one-row cache."""
        if not self.has_batch_dim:
            return self
        sizes = {v.shape[0] for v in self.cache_dict.values()}
        if sizes - {1}:
            raise InvalidInput(f"remove_batch_dim needs a batch of 1, this cache has batch size {sorted(sizes)}")
        return ActivationCache({k: v[0] for k, v in self.cache_dict.items()}, self.model, has_batch_dim=False,
                               stopped_at=self.stopped_at)

    def apply_slice_to_batch_dim(self, batch_slice) -> ActivationCache:
        """Keep some rows (an int keeps one row and drops the batch axis)."""
        if not self.has_batch_dim:
            raise InvalidInput("this cache has no batch axis")
        sliced = {k: apply_slice(v, batch_slice, 0, "batch_slice") for k, v in self.cache_dict.items()}
        # one row (a Python or numpy int, a 0-d integer tensor) drops the axis: the result must say so
        dropped = any(v.ndim < self.cache_dict[k].ndim for k, v in sliced.items())
        return ActivationCache(sliced, self.model, has_batch_dim=not dropped, stopped_at=self.stopped_at)

    def stack_activation(self, activation_name: str, layer: int | None = -1, sublayer_type: str | None = None) -> torch.Tensor:
        """``[layer, ...]``: one site of every layer up to ``layer`` (exclusive; -1 or None: all) stacked."""
        n_layers = self.model.cfg.n_layers
        if layer is not None and (not is_integer(layer) or not (layer == -1 or 1 <= layer <= n_layers)):
            raise InvalidLocation(f"stack_activation stacks the layers before `layer`: it must be an integer in "
                                  f"1..{n_layers}, or -1 or None for all {n_layers}, got {layer!r}")
        n = n_layers if layer is None or layer == -1 else int(layer)
        return torch.stack([self[get_act_name(activation_name, i, sublayer_type)] for i in range(n)], dim=0)


def _scale_name(layer: int | None = None, norm: str | None = None) -> str:
    """TransformerLens' ``get_act_name("scale", layer, "ln1")``; no layer: the final norm's scale."""
    if layer is None:
        return scale_name(norm_path(None, norm or "ln_final"))
    if norm not in BLOCK_NORMS:
        raise InvalidLocation(f"a block's scale needs its norm: ('scale', {layer}, 'ln1' | 'ln2' | 'ln1_post' | 'ln2_post')")
    return scale_name(norm_path(layer, norm))
