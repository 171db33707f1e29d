"""The one attention function attnlab registers with transformers.

transformers 5 routes every attention layer through ``AttentionInterface``: the layer
computes q, k, v (after rotary embedding) and hands them to a registered function. attnlab
registers two names, ``attnlab_sdpa`` and ``attnlab_eager`` (each with the mask function
of its parent, so padding masks keep working), and the function below does one of two
things per layer:

* no hook is attached to this layer: call the fused fast path (sdpa) or eager as before;
* some hook is attached: compute attention explicitly, passing q, k, v, scores, pattern
  and z through the layer's :class:`AttentionHooks` so they can be read or overwritten.

The explicit path does the same arithmetic as transformers' eager attention (bit-exact
for identity edits); the fast path is exactly the model's own sdpa call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import nullcontext

import torch
from einops import rearrange, repeat
from jaxtyping import Float
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask, sdpa_mask

from attnlab.engine.finite import all_finite
from attnlab.engine.hooks import Hook, HookPoint
from attnlab.engine.locations import SITES
from attnlab.engine.precision import computing_dtype, full_precision
from attnlab.engine.state import current_state
from attnlab.errors import InvalidSpec, NotSupported

__all__ = ["AttentionHooks", "IMPLEMENTATIONS", "register_attention", "attach", "detach", "hooks_of", "masked"]

#: Our implementation name for each original one (flash/flex kernels fall back to sdpa).
IMPLEMENTATIONS = {"sdpa": "attnlab_sdpa", "eager": "attnlab_eager"}

_ATTR = "_attnlab_hooks"


def masked(scores: torch.Tensor) -> torch.Tensor:
    """True where a score is masked (causal, padding, sliding window).

    The mask writes the dtype's minimum; anything at or below half of it counts as masked,
    so an edit that adds to the scores cannot bring a masked key back into play.
    """
    return scores <= torch.finfo(scores.dtype).min / 2


class AttentionHooks(nn.Module):
    """The hook points of one attention layer (``hook_q_pre_rotary`` ... ``hook_z``)."""

    def __init__(self, layer: int):
        super().__init__()
        self.layer_index = layer
        for site in SITES:
            self.add_module(f"hook_{site}", HookPoint(layer, site))
        self.rotary_seen = threading.local()  # this thread's last call's rotary embedding (see capture_rotary)

    def points(self) -> list[HookPoint]:
        return [getattr(self, f"hook_{site}") for site in SITES]

    def __reduce__(self):
        # A deep copy or pickle of the HF model leaves its hook points behind: the copy gets None
        # here, and a HookedModel built on it attaches fresh points (see HookTree.__reduce__).
        return (_left_behind, ())

    def any_hooked(self) -> bool:
        """Some hook acts on this layer in the current context (then it runs explicitly)."""
        return any(p._forward_hooks for p in self.points()) and any(p.is_hooked() for p in self.points())


def capture_rotary(hooks: AttentionHooks) -> Callable:
    """A pre-hook for the attention module: keep the call's rotary embedding for the pre-rotary sites.

    Rotary layers get ``position_embeddings=(cos, sin)`` and rotate q and k before the attention
    function sees them; the pre-rotary sites undo that rotation with the same ``cos``/``sin``. While
    generating with a KV cache, the cached keys were rotated in earlier calls: each call's
    ``cos``/``sin`` are appended to a record kept on the cache object, so every key column has its own.
    """

    def capture(module, args, kwargs):
        embedding = kwargs.get("position_embeddings", args[1] if len(args) > 1 else None)
        if not (isinstance(embedding, (tuple, list)) and len(embedding) == 2):
            hooks.rotary_seen.value = (None, None)  # no rotary embedding: pre-rotary = post-rotary
            return None
        cos, sin = embedding
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is None:
            hooks.rotary_seen.value = ((cos, sin), (cos, sin))
            return None
        record = cache.__dict__.setdefault("_attnlab_rotary", {})
        before = record.get(hooks.layer_index)
        if before is not None:
            rows = max(before[0].shape[0], cos.shape[0])
            cos, sin = (torch.cat([old.expand(rows, *old.shape[1:]), new.expand(rows, *new.shape[1:])], dim=-2)
                        for old, new in zip(before, (cos, sin)))
        record[hooks.layer_index] = (cos, sin)
        hooks.rotary_seen.value = (embedding, (cos, sin))
        return None

    return capture


def _rotate(x: Float[torch.Tensor, "batch head pos d_head"], cos: torch.Tensor, sin: torch.Tensor, *,
            inverse: bool = False) -> torch.Tensor:
    """Rotate the first ``cos.shape[-1]`` dims of ``x`` as transformers' ``rotate_half`` convention does (or undo it).

    ``cos``/``sin``: ``[batch or 1, pos, rotary_dim]``. The inverse divides by ``cos^2 + sin^2``, so a
    scaled rotary embedding (``attention_scaling``) is undone too. Computed in float32 at least.
    """
    dtype = computing_dtype(x.dtype)
    c, s = cos[:, None].to(dtype), sin[:, None].to(dtype)
    r = c.shape[-1]
    xr, rest = x[..., :r].to(dtype), x[..., r:]
    half = torch.cat([-xr[..., r // 2:], xr[..., : r // 2]], dim=-1)  # rotate_half
    out = (xr * c - half * s) / (c * c + s * s) if inverse else xr * c + half * s
    return torch.cat([out.to(x.dtype), rest], dim=-1)


def _check_rotate_half(cos: torch.Tensor, d_head: int, layer: int) -> None:
    r = cos.shape[-1]
    if r > d_head or r % 2 or not torch.equal(cos[..., : r // 2], cos[..., r // 2:]):
        raise NotSupported(
            f"layer {layer}: the pre-rotary q/k sites undo transformers' rotate_half rotary embedding (cos repeated "
            f"over both halves of the rotary dims); this model's rotary embedding ({r} dims of {d_head}) is laid out "
            "otherwise. Use hook_q / hook_k (after the rotary embedding)"
        )


def _through_pre_rotary(point: HookPoint, x: Float[torch.Tensor, "batch head pos d_head"], rotation, n_cols: int,
                        info: Hook, layer: int) -> torch.Tensor:
    """``x`` (after the rotary embedding) with the edit ``point``'s hooks make before it.

    The hook sees ``x`` rotated back. Only the edit's difference is rotated forward and added, so
    unedited entries (an identity hook, positions left alone) keep the model's own values bit for bit.
    """
    if rotation is None:  # no rotary embedding: before = after
        pre = x
    else:
        cos, sin = (t[..., -n_cols:, :] for t in rotation)
        if cos.shape[-2] != n_cols:
            raise NotSupported(
                f"{point.name}: {n_cols} key columns but the rotary embedding of only {cos.shape[-2]} was seen; the "
                "pre-rotary keys of a KV cache need the hook attached before the cache was filled (before generate())"
            )
        _check_rotate_half(cos, x.shape[-1], layer)
        pre = _rotate(x, cos, sin, inverse=True)
        info.rotary = (cos, sin)
    given = _copy_per_position(pre)
    edited = rearrange(_run(point, given, info), "b p h d -> b h p d")
    if not edited.requires_grad and torch.equal(edited, pre):  # with gradients, the hook's tensor stays in the graph
        return x
    delta = edited - pre
    return x + (delta if rotation is None else _rotate(delta, cos, sin)).to(x.dtype)


def _left_behind() -> None:
    """What a deep copy or pickle of an HF model holds where attnlab kept its hook points."""
    return None


def attach(attention_module: nn.Module, hooks: AttentionHooks) -> None:
    """Tie ``hooks`` to an HF attention module without registering them as its submodule.

    A module that is a view of another (see :mod:`attnlab.engine.bridge`) ties its source too,
    so edits land whichever of the two runs.
    """
    object.__setattr__(attention_module, _ATTR, hooks)
    source = attention_module.__dict__.get("_attnlab_source")
    if source is not None:
        attach(source, hooks)


def detach(attention_module: nn.Module) -> None:
    if _ATTR in attention_module.__dict__:
        object.__delattr__(attention_module, _ATTR)
    source = attention_module.__dict__.get("_attnlab_source")
    if source is not None:
        detach(source)


def hooks_of(attention_module: nn.Module) -> AttentionHooks | None:
    return attention_module.__dict__.get(_ATTR)


def _causal_bool_mask(q_len: int, k_len: int, device: torch.device) -> torch.Tensor:
    """``[1, 1, q, k]`` True where query i (absolute k_len - q_len + i) may see key j."""
    q_abs = torch.arange(k_len - q_len, k_len, device=device)[:, None]
    return (q_abs >= torch.arange(k_len, device=device)[None, :])[None, None]


def _first_query_column(q_len: int, k_len: int, position_ids, sliding_window) -> int:
    """Column of the first query row when the engine did not say (a plain HF call).

    Normally the keys are the whole text so far (offset ``k_len - q_len``). A sliding-window
    layer decoding with a KV cache only gets the last keys, so there the position ids tell
    (the largest over rows: the unpadded row's ids are plain column indices).
    """
    if sliding_window is not None and isinstance(position_ids, torch.Tensor) and position_ids.numel():
        return int(position_ids.reshape(-1, position_ids.shape[-1])[:, 0].max())
    return k_len - q_len


def _run(point: HookPoint, x: torch.Tensor, info: Hook) -> torch.Tensor:
    # Calling a point with no hook costs a module call; skip it on the hot path.
    return point(x, info=info) if point._forward_hooks else x


def _copy_per_position(x: Float[torch.Tensor, "batch head pos d_head"]) -> Float[torch.Tensor, "batch pos head d_head"]:
    """A writable copy, laid out ``[batch, pos, head, d_head]``."""
    return rearrange(x, "b h p d -> b p h d").clone(memory_format=torch.contiguous_format)


def _in_layout_of(original: torch.Tensor, hooked: Float[torch.Tensor, "batch pos head d_head"]) -> torch.Tensor:
    """The hooked copy back as ``[batch, head, pos, d_head]``, contiguous where the model's own tensor was.

    Matrix products may round differently for other strides (MKL on AVX2 CPUs does), so an identity hook
    keeps the model's arithmetic bit for bit only if the layout comes back too.
    """
    back = rearrange(hooked, "b p h d -> b h p d")
    return back.contiguous() if original.is_contiguous() else back


def explicit_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    hooks: AttentionHooks | None,
    *,
    dropout: float = 0.0,
    scaling: float | None = None,
    softcap: float | None = None,
    is_causal: bool | None = None,
    position_ids: torch.Tensor | None = None,
    sliding_window: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention with a hook point at every site.

    Shapes in: query ``[batch, head, q_pos, d_head]``, key/value ``[batch, kv_head, k_pos, d_head]``.
    Shapes out: z ``[batch, q_pos, head, d_head]`` (what the HF layer expects), pattern
    ``[batch, head, q_pos, k_pos]``.
    """
    n_heads, q_len, k_len = query.shape[1], query.shape[2], key.shape[2]
    received = (query, key, value)  # as the layer gave them, before any hook (hooks get copies)
    group = n_heads // key.shape[1]
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    if group > 1:  # one key/value per *query* head, so an edit at head h touches head h only
        key = repeat(key, "b kvh k d -> b (kvh g) k d", g=group)
        value = repeat(value, "b kvh k d -> b (kvh g) k d", g=group)

    infos = {}
    if hooks is not None:
        state = current_state()
        q_col = state.past if state is not None else _first_query_column(q_len, k_len, position_ids, sliding_window)
        geometry = dict(q_col=q_col, q_len=q_len, k_col=q_col + q_len - k_len, k_len=k_len, state=state)
        infos = {site: Hook(point, **geometry) for site, point in zip(SITES, hooks.points())}
        if hooks.hook_q_pre_rotary._forward_hooks or hooks.hook_k_pre_rotary._forward_hooks:
            seen = getattr(hooks.rotary_seen, "value", None)
            hooks.rotary_seen.value = None  # one call's: a later call without the capture must not read it
            if seen is None:
                raise NotSupported(f"layer {hooks.layer_index}: a pre-rotary hook was attached while the layer ran, so "
                                   "its rotary embedding was not seen; attach it before the forward pass")
            if hooks.hook_q_pre_rotary._forward_hooks:
                query = _through_pre_rotary(hooks.hook_q_pre_rotary, query, seen[0], q_len, infos["q_pre_rotary"],
                                            hooks.layer_index)
            if hooks.hook_k_pre_rotary._forward_hooks:
                key = _through_pre_rotary(hooks.hook_k_pre_rotary, key, seen[1], k_len, infos["k_pre_rotary"],
                                          hooks.layer_index)
        # q, k and v go to the hook as copies: the model's own may be a view of a fused projection (GPT-2: not
        # writable in place with gradients on), the KV cache's stored tensor (an in-place edit would be applied
        # again at every later step) or one kv head expanded to several (not writable in place at all)
        if hooks.hook_q._forward_hooks:
            query = _in_layout_of(query, _run(hooks.hook_q, _copy_per_position(query), infos["q"]))
        if hooks.hook_k._forward_hooks:
            key = _in_layout_of(key, _run(hooks.hook_k, _copy_per_position(key), infos["k"]))
        if hooks.hook_v._forward_hooks:
            value = _in_layout_of(value, _run(hooks.hook_v, _copy_per_position(value), infos["v"]))

    # Edited scores are computed in float32 in a half-precision model: adding a constant of
    # 1e4 to fp16 scores loses the scores themselves (and 7e4 overflows to inf).
    # A caller's torch.autocast would compute them in its reduced dtype whatever the inputs: switched off here.
    upcast = hooks is not None and bool(hooks.hook_attn_scores._forward_hooks) and (
        query.dtype in (torch.float16, torch.bfloat16) or torch.is_autocast_enabled(query.device.type))
    with full_precision(query.device) if upcast else nullcontext():
        if upcast:
            query, key = query.float(), key.float()
        scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # [batch, head, q_pos, k_pos]
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            mask = attention_mask[..., :k_len]
            scores = scores + mask.to(scores.dtype)
            if mask.dtype != scores.dtype:  # upcast scores: keep masked entries at float32's minimum
                scores = scores.masked_fill(masked(mask), torch.finfo(scores.dtype).min)
    else:
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        if causal and q_len > 1:
            allowed = _causal_bool_mask(q_len, k_len, scores.device)
            scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    if hooks is not None:
        scores = _run(hooks.hook_attn_scores, scores, infos["attn_scores"])

    # float32 at least, never below the scores: a float64 model's masked scores hold float64's minimum (-inf in
    # float32, and a fully masked row, padding or a sliding window, would give NaN); its precision is kept too
    pattern = nn.functional.softmax(scores, dim=-1, dtype=computing_dtype(scores.dtype)).to(value.dtype)
    if hooks is not None:
        # with gradients on, the softmax backward needs its output as it was: an in-place edit gets a copy
        pattern = _run(hooks.hook_pattern, pattern.clone() if pattern.requires_grad else pattern, infos["pattern"])
    if dropout and module.training:
        pattern = nn.functional.dropout(pattern, p=dropout, training=True)

    z = torch.matmul(pattern, value).transpose(1, 2)  # [batch, q_pos, head, d_head]
    if hooks is not None:
        z = _run(hooks.hook_z, z, infos["z"])
        if not all_finite(z) and _finite_unedited(module, received, attention_mask, scaling, softcap, is_causal,
                                                  position_ids, sliding_window):  # an edit overflowed
            raise InvalidSpec(
                f"the edits at layer {hooks.layer_index} gave non-finite attention output (inf or NaN) in "
                f"{z.dtype}: an edit's values are too large for this model's precision"
            )
    return z.contiguous(), pattern


def _finite_unedited(module, received, attention_mask, scaling, softcap, is_causal, position_ids, sliding_window) -> bool:
    """Whether this layer's attention output is finite without the hooks (run only when it is not with them).

    A model whose own weights or inputs hold NaN gives non-finite attention with or without
    edits: that is not the edits' doing, and a hook that only reads must not be blamed for it.
    """
    with torch.no_grad():
        z, _ = explicit_attention(module, *received, attention_mask, None, scaling=scaling, softcap=softcap,
                                  is_causal=is_causal, position_ids=position_ids, sliding_window=sliding_window)
    return all_finite(z)


def _attnlab_attention(fast_path):
    def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        hooks = hooks_of(module)
        if hooks is None or not hooks.any_hooked():
            if fast_path is None:
                return explicit_attention(
                    module, query, key, value, attention_mask, None,
                    dropout=dropout, scaling=scaling, softcap=kwargs.get("softcap"), is_causal=kwargs.get("is_causal"),
                )
            return fast_path(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
        return explicit_attention(
            module, query, key, value, attention_mask, hooks,
            dropout=dropout, scaling=scaling, softcap=kwargs.get("softcap"), is_causal=kwargs.get("is_causal"),
            position_ids=kwargs.get("position_ids"), sliding_window=kwargs.get("sliding_window"),
        )

    return attention


_registered = False


def register_attention() -> None:
    """Register ``attnlab_sdpa`` and ``attnlab_eager`` (idempotent).

    Each name also gets its parent's mask function: without it transformers builds no
    padding mask for an unknown name, and padded rows silently come out wrong.
    """
    global _registered
    if _registered:
        return
    AttentionInterface.register("attnlab_sdpa", _attnlab_attention(sdpa_attention_forward))
    AttentionInterface.register("attnlab_eager", _attnlab_attention(None))
    ALL_MASK_ATTENTION_FUNCTIONS.register("attnlab_sdpa", sdpa_mask)
    ALL_MASK_ATTENTION_FUNCTIONS.register("attnlab_eager", eager_mask)
    _registered = True
