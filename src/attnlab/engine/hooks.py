"""Hook points: identity modules whose dotted names are the API (TransformerLens semantics).

A hook function ``fn(tensor, hook)`` attached to a hook point sees the tensor that flows
through it and may return a replacement. Three rules make hooks safe to use from scripts:

* **Hooks belong to the context that attached them.** ``with model.hooks(...)`` registers
  real PyTorch hooks, but each one only acts when the forward pass runs in the context
  (thread, or asyncio task) that opened the block, and only while the block is open. Other
  threads running the same model see a clean model; an inner block's exit removes only its
  own hooks. PyTorch hooks are global state; this is what keeps them from leaking.
* **Hooks live only inside ``with``**: attached on entry, removed in ``finally``.
  ``add_hook`` outside a block is the one exception (TransformerLens' persistent hooks):
  it acts in every thread until ``reset_hooks()``.
* **A replacement must fit**: a hook returning a tensor of another shape raises
  :class:`~attnlab.errors.ShapeMismatch` naming the hook point and both shapes (a wrong
  shape would otherwise broadcast silently over heads or positions). A replacement in another
  dtype or on another device is cast back to the site's (one that cannot be copied there, a
  ``meta`` tensor, is a ``ShapeMismatch`` naming the device). A replacement laid out
  differently in memory (an ``expand``, a transpose) is made contiguous before the model
  reads it.

``model.clean()`` opens a block in which no hook acts at all, for computing what an
intervention needs (means, patch sources) from the unedited model.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch import nn

from attnlab.errors import InvalidInput, InvalidLocation, ShapeMismatch

__all__ = ["Plumbing", "LeftBehind", "HookPoint", "Hook", "HookFn", "active_frames", "hook_frame", "user_frame", "at_frame_exit", "clean_context",
           "OnDemand"]

HookFn = Callable[..., Any]

#: Ids of the ``hooks()`` blocks open in this context, innermost last. ``None``: a clean block;
#: a tuple starting with ``_CLEAN``: blocks opened inside a clean one (only they act there).
_FRAMES: ContextVar[tuple[int, ...] | None] = ContextVar("attnlab_hook_frames", default=())
_frame_ids = itertools.count(1)
_GLOBAL = 0  # owner id of persistent hooks added with add_hook() outside a block
_CLEAN = -1  # first element of the frames of blocks opened inside clean()
#: The ``hooks()`` blocks (not the engine's own plumbing frames) open in this context, innermost last.
_USER: ContextVar[tuple[int, ...]] = ContextVar("attnlab_user_frames", default=())
#: What to undo when a frame closes: hooks ``add_hook`` attached inside it (whichever model's block it is).
_AT_EXIT: dict[int, list[Callable[[], None]]] = {}
_AT_EXIT_LOCK = threading.Lock()
#: Gradient hooks met while one hook point's forward hooks run; registered on its final output (see HookPoint.__call__).
_PENDING_GRAD_HOOKS: ContextVar[list | None] = ContextVar("attnlab_pending_grad_hooks", default=None)
#: Ids of every block open now, in any context (a set's add/discard are atomic).
_OPEN: set[int] = set()


def active_frames() -> tuple[int, ...] | None:
    return _FRAMES.get()


def acting_owners() -> tuple[int, ...]:
    """The owners whose hooks act in this context (persistent hooks' ``_GLOBAL`` unless in a clean block)."""
    frames = _FRAMES.get()
    if frames is None:  # inside clean(): nothing acts
        return ()
    if frames[:1] == (_CLEAN,):  # blocks opened inside clean() (e.g. the engine's own plumbing): only they act
        return frames[1:]
    return (_GLOBAL, *frames)


def _is_active(owner: int) -> bool:  # acting_owners() without building a tuple: it runs on every hook call
    frames = _FRAMES.get()
    if frames is None:
        return False
    if frames and frames[0] == _CLEAN:
        return owner != _GLOBAL and owner in frames
    return owner == _GLOBAL or owner in frames


@contextmanager
def hook_frame(*, user: bool = False) -> Iterator[int]:
    """Open a new hook block in this context; yields its owner id (a block opened inside clean() stays clean around it).

    ``user``: a ``hooks()`` block, which ``add_hook`` attaches to (the engine's own frames are not).
    Blocks may close in any order (two ``with`` blocks entered by hand, interleaved generators):
    closing one never brings back another that has closed.
    """
    frame = next(_frame_ids)
    parent = _FRAMES.get()
    _OPEN.add(frame)
    frames = ((_CLEAN,) if parent is None else parent) + (frame,)
    token = _FRAMES.set(frames)
    users = _USER.get() + (frame,) if user else None
    user_token = _USER.set(users) if user else None
    try:
        yield frame
    finally:
        with _AT_EXIT_LOCK:  # closed and its undo list taken at once: at_frame_exit() cannot add to it after
            _OPEN.discard(frame)
            undo = _AT_EXIT.pop(frame, [])
        if user_token is not None:
            _leave(_USER, user_token, users)
        _leave(_FRAMES, token, frames)
        for fn in reversed(undo):
            fn()


def _leave(var: ContextVar, token, pushed) -> None:
    """Undo ``var.set(pushed)`` without bringing back a block that closed since.

    In order (``var`` still holds ``pushed``) the value before comes back; otherwise a block
    opened later is still open and the current stack is kept. Either way, frames that have
    closed meanwhile (an outer block left before an inner one) are dropped: ``reset(token)``
    alone restores the value saved on entry, closed blocks and all.
    """
    if var.get() is pushed:
        var.reset(token)
    _drop_closed(var)


def _drop_closed(var: ContextVar) -> None:
    frames = var.get()
    if frames and any(f != _CLEAN and f not in _OPEN for f in frames):
        var.set(tuple(f for f in frames if f == _CLEAN or f in _OPEN))


def user_frame() -> int:
    """The innermost ``hooks()`` block open and acting in this context, else ``_GLOBAL`` (where ``add_hook`` attaches).

    Open: a context copied while a block was open may outlive the block. Acting: a block opened
    inside a ``clean()`` that has ended no longer acts (inside a ``clean()`` block itself, the
    blocks around it count: they act again when it ends).
    """
    frames = _FRAMES.get()
    for frame in reversed(_USER.get()):
        if frame in _OPEN and (frames is None or frame in frames):
            return frame
    return _GLOBAL


def at_frame_exit(frame: int, fn: Callable[[], None]) -> bool:
    """Run ``fn`` when ``frame`` closes (in ``finally``: also when the block raises).

    False, and ``fn`` is not kept, when ``frame`` has closed already (another thread closed it
    meanwhile): the caller undoes at once what it would have undone then.
    """
    with _AT_EXIT_LOCK:
        if frame not in _OPEN:
            return False
        _AT_EXIT.setdefault(frame, []).append(fn)
        return True


@contextmanager
def clean_context() -> Iterator[None]:
    """No hook of any block (nor a persistent one) acts inside this block, in this context."""
    token = _FRAMES.set(None)
    try:
        yield
    finally:
        _FRAMES.reset(token)  # also out of order: a block opened inside no longer acts once this one ends
        _drop_closed(_FRAMES)


class Hook:
    """What a hook function receives as ``hook``: the hook point plus where this call is.

    Attribute access falls through to the :class:`HookPoint` (``hook.name``,
    ``hook.layer()``, ``hook.ctx``). ``query_pos`` / ``key_pos`` are the absolute token
    positions of this call's columns, per batch row (``[batch, pos]``; ``[1, pos]``, broadcast, when
    they are the same for every row, as with right padding): with left padding or a KV cache they
    differ from the column index, and edits address tokens, not columns.
    ``generating`` is True inside ``generate()``, where positions not reached yet are not an
    error; ``decoding`` only in its steps after the first (the prompt's own step is checked
    as a forward pass over the prompt is). ``row_keys(n)`` says which prompt each row is when a
    measurement chunks or stacks them; ``row_lengths(n)`` how many tokens each row has.
    ``rotary``: at a pre-rotary point, the ``(cos, sin)`` (``[batch or 1, pos, rotary_dim]``,
    transformers' ``rotate_half`` layout) that rotate this call's values after the hook, so that
    a caller can map a change made here to the scores (AtP*'s QK fix does); None elsewhere.
    """

    __slots__ = ("point", "q_col", "q_len", "k_col", "k_len", "state", "rotary")

    def __init__(self, point: HookPoint, *, q_col: int = 0, q_len: int = 0, k_col: int = 0, k_len: int = 0, state=None):
        self.point = point
        self.q_col, self.q_len, self.k_col, self.k_len = q_col, q_len, k_col, k_len
        self.state = state  # attnlab.engine.state.ForwardState or None (a plain HF call)
        self.rotary = None

    def __getattr__(self, name: str):
        return getattr(self.point, name)

    def _positions(self, first_col: int, n: int) -> torch.Tensor:
        cols = torch.arange(first_col, first_col + n)[None, :]  # [1, pos]
        pad = getattr(self.state, "pad_left", None)
        return cols if pad is None else cols - pad[:, None].cpu()  # [batch, pos]

    @property
    def query_pos(self) -> torch.Tensor:
        return self._positions(self.q_col, self.q_len)

    @property
    def key_pos(self) -> torch.Tensor:
        return self._positions(self.k_col, self.k_len)

    @property
    def generating(self) -> bool:
        return bool(getattr(self.state, "generating", False))

    def row_keys(self, n_rows: int) -> torch.Tensor:
        """Which prompt each of this call's ``n_rows`` rows is (``[batch]``; its row index unless a measurement says)."""
        keys = getattr(self.state, "row_keys", None)
        if keys is None or keys.shape[0] != n_rows:
            return torch.arange(n_rows)
        return keys.cpu()

    @property
    def decoding(self) -> bool:
        """A KV-cached step of ``generate()`` after the prompt's: this call sees only the newest columns."""
        return self.generating and getattr(self.state, "past", 0) > 0

    def row_lengths(self, n_rows: int) -> torch.Tensor | None:
        """Each of this call's ``n_rows`` rows' own tokens (``[batch]``; in ``generate()`` its prompt's), or None when
        unknown: a short row's padding, or its generated tokens, lie at positions from its length on."""
        lengths = getattr(self.state, "lengths", None)
        if lengths is None or lengths.shape[0] != n_rows:
            return None
        return lengths.cpu()

    @property
    def n_positions(self) -> int | None:
        """Longest row of the input (tokens), for range checks; None when unknown."""
        return getattr(self.state, "n_positions", None)

    @property
    def query_offset(self) -> int:
        """Absolute position of the first query column of row 0."""
        return int(self.query_pos[0, 0]) if self.q_len else 0

    @property
    def key_offset(self) -> int:
        return int(self.key_pos[0, 0]) if self.k_len else 0

    def rows(self, index: slice) -> Hook:
        """The same call seen by a slice of the batch rows (sweeps give each copy its own hook)."""
        state = self.state.rows(index) if self.state is not None else None
        return Hook(self.point, q_col=self.q_col, q_len=self.q_len, k_col=self.k_col, k_len=self.k_len, state=state)

    def __repr__(self) -> str:
        return f"Hook({self.point.name!r})"


class HookPoint(nn.Module):
    """An identity module at one named place of the model (``blocks.3.attn.hook_pattern``).

    ``layer_index`` and ``site`` say where it is (``layer_index`` is ``None`` for points
    outside the blocks, such as ``hook_embed``).
    """

    def __init__(self, layer: int | None, site: str):
        super().__init__()
        self.name: str = ""
        self.layer_index = layer
        self.site = site
        self.ctx: dict = {}
        self._owned: dict[int, list[Any]] = {}  # owner -> PyTorch hook handles
        self._kind: dict[int, tuple[str, bool]] = {}  # handle id -> (direction, permanent), for reset_hooks' filters
        self._held: dict[int, list[OnDemand]] = {}  # handle id -> dispatchers its persistent add_hook acquired
        self._lock = threading.Lock()

    def forward(self, x: torch.Tensor, info: Hook | None = None) -> torch.Tensor:
        return x

    def __call__(self, *args, **kwargs):
        """A gradient hook sees the gradient of the point's final value, after every forward edit.

        Its forward-side half only collects it; it is registered once every forward hook has run,
        so an edit added after it (an inner block) cannot leave it with the gradient of the
        unedited value (TransformerLens' full backward hook on the point gives the final one too).
        """
        if not self._forward_hooks:
            return super().__call__(*args, **kwargs)
        pending: list = []
        token = _PENDING_GRAD_HOOKS.set(pending)
        try:
            out = super().__call__(*args, **kwargs)
        finally:
            _PENDING_GRAD_HOOKS.reset(token)
        if pending and isinstance(out, torch.Tensor) and out.requires_grad:
            for grad_hook in pending:
                out.register_hook(grad_hook)
        return out

    def layer(self) -> int:
        """TransformerLens' spelling of ``layer_index``."""
        if self.layer_index is None:
            raise InvalidLocation(f"{self.name} is not inside a block, so it has no layer (hook.layer_index is None)")
        return self.layer_index

    # -- attaching --------------------------------------------------------------------------

    def add_hook(self, fn: HookFn, dir: str = "fwd", is_permanent: bool = False, level: int | None = None,
                 prepend: bool = False, *, owner: int | None = None) -> None:
        """Attach ``fn(tensor, hook)``; it acts only in the block ``owner`` (default: the innermost open one).

        TransformerLens' signature: ``is_permanent`` makes it persistent whatever block is open,
        kept by ``reset_hooks()`` unless ``including_permanent=True``; ``level`` (TransformerLens'
        context level) is accepted and not used: a block's hooks end with the block.
        """
        if dir not in ("fwd", "bwd"):
            raise InvalidInput(f"dir must be 'fwd' or 'bwd', got {dir!r}")
        needs: list[OnDemand] = []
        if owner is None:  # TransformerLens' point.add_hook: the innermost hooks() block's until it ends, else persistent
            owner = _GLOBAL if is_permanent else user_frame()
            needs = list(getattr(self, "_needs", ()))  # a block edge's dispatcher on the HF module
            for need in needs:
                need.acquire()
            ends_with_block = owner != _GLOBAL
        else:
            ends_with_block = False
        point = self

        def forward_hook(module, args, *rest):
            # PyTorch adds the hook before it marks it as taking keyword arguments: a call running in
            # another thread at that moment passes (module, args, output). That call began before the
            # hook existed; it does not act there.
            if len(rest) != 2 or not _is_active(owner):
                return None
            kwargs, output = rest
            info = kwargs.get("info") or Hook(point)
            if dir == "bwd":
                pending = _PENDING_GRAD_HOOKS.get()
                grad_hook = lambda grad: _checked(fn, grad, info, "gradient")  # noqa: E731
                if pending is not None:  # registered on the final value by HookPoint.__call__
                    pending.append(grad_hook)
                elif output.requires_grad:
                    output.register_hook(grad_hook)
                return None
            return _checked(fn, output, info, "activation")

        handle = self.register_forward_hook(forward_hook, with_kwargs=True, prepend=prepend)
        with self._lock:
            self._owned.setdefault(owner, []).append(handle)
            self._kind[handle.id] = (dir, is_permanent)
            if owner == _GLOBAL and needs:
                self._held[handle.id] = needs  # released by remove_hooks() (model.reset_hooks())
        # registered after the handle, so a block closing now in another thread removes it either way
        if ends_with_block and not at_frame_exit(owner, lambda: self._release(owner, needs)):
            self._release(owner, needs)  # the block ended meanwhile: its hooks end with it

    def remove_hooks(self, owner: int | None = None, *, including_permanent: bool = True, direction: str = "both") -> None:
        """Remove the hooks of one owner, or all of them (``direction``: only "fwd" or "bwd" hooks; permanent ones
        only if ``including_permanent``)."""
        held: list[OnDemand] = []
        with self._lock:
            owners = list(self._owned) if owner is None else [owner]
            for o in owners:
                kept = []
                for handle in self._owned.pop(o, []):
                    hook_dir, permanent = self._kind.get(handle.id, ("fwd", False))
                    if (permanent and not including_permanent) or direction not in ("both", hook_dir):
                        kept.append(handle)
                        continue
                    handle.remove()
                    self._kind.pop(handle.id, None)
                    held += self._held.pop(handle.id, [])
                if kept:
                    self._owned[o] = kept
        for need in held:
            need.release()

    def _release(self, owner: int, needs: list[OnDemand]) -> None:
        self.remove_hooks(owner)
        for need in needs:
            need.release()

    def n_hooks(self, *, owners: Sequence[int] | None = None) -> int:
        with self._lock:
            return sum(len(h) for o, h in self._owned.items() if owners is None or o in owners)

    def is_hooked(self) -> bool:
        """True when some hook on this point acts in the current context."""
        if not self._forward_hooks:
            return False
        with self._lock:
            return any(_is_active(o) and h for o, h in self._owned.items())

    def __repr__(self) -> str:
        return f"HookPoint({self.name!r})"


def _checked(fn: HookFn, x: torch.Tensor, info: Hook, what: str):
    """Call ``fn``; a replacement must keep the shape (cast back to the site's dtype and device)."""
    out = fn(x, hook=info)
    if out is None:
        return None
    if not isinstance(out, torch.Tensor):
        raise ShapeMismatch(
            f"hook function {_fn_name(fn)} on {info.point.name} returned {type(out).__name__}; "
            f"it must return None or a tensor of shape {tuple(x.shape)}"
        )
    if out.shape != x.shape:
        raise ShapeMismatch(
            f"hook function {_fn_name(fn)} on {info.point.name} returned shape {tuple(out.shape)}, "
            f"but the {what} there has shape {tuple(x.shape)}; a hook must return a tensor of the same shape"
        )
    if out.device != x.device:
        try:
            out = out.to(device=x.device)
        except NotImplementedError as err:  # a meta tensor holds no values to copy
            raise ShapeMismatch(
                f"hook function {_fn_name(fn)} on {info.point.name} returned a tensor on {out.device}, which cannot be "
                f"copied to {x.device} ({err}); it must return a tensor of shape {tuple(x.shape)} on {x.device}, "
                f"the {what}'s device"
            ) from None
    if out.dtype != x.dtype:
        out = out.to(dtype=x.dtype)
    # A same-shape view with other strides (``x.mean(0, keepdim=True).expand_as(x)``, a transpose) breaks
    # the model's own ``.view`` calls after the site (GPT-2's Conv1D); copy it only then.
    if not out.is_contiguous() and out.stride() != x.stride():
        out = out.contiguous()
    return out


def _fn_name(fn) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


class Plumbing:
    """A hook attnlab puts on one of the HF model's own modules (a dispatcher, a reader of the LM head's input).

    A copy of the module (``copy.deepcopy``, ``pickle``) must not reach this model's hook
    points: it gets a :class:`LeftBehind` instead, which does nothing and takes itself off.
    """

    __slots__ = ("fn",)

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __reduce__(self):
        return (LeftBehind, ())


class LeftBehind:
    """Where a copied module had attnlab's hook: returns None and removes itself on its first call."""

    def __call__(self, module: nn.Module, *rest):
        for table in (module._forward_hooks, module._forward_pre_hooks):
            for key in [k for k, hook in table.items() if hook is self]:
                del table[key]
                for flags in (module._forward_hooks_with_kwargs, module._forward_hooks_always_called,
                              module._forward_pre_hooks_with_kwargs):
                    flags.pop(key, None)
        return None


class OnDemand:
    """A PyTorch hook on an HF module that exists only while some block needs it.

    Block-edge hook points (``hook_resid_pre``, ``hook_mlp_out``, ...) sit on the HF model's
    own modules. Their dispatcher is registered when the first block that hooks them opens
    and removed when the last one closes (a reference count, shared by threads), so a model
    with no open block carries no attnlab hook at all.
    """

    def __init__(self, register: Callable[[], Any], on_remove: Callable[[], None] | None = None):
        self._register = register
        self._on_remove = on_remove  # runs once the hook is off its module
        self._handle = None
        self._users = 0
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        """The hook is on its module now."""
        return self._handle is not None

    def acquire(self) -> None:
        with self._lock:
            if self._users == 0:
                self._handle = self._register()
            self._users += 1

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0 and self._handle is not None:
                self._handle.remove()
                self._handle = None
                if self._on_remove is not None:
                    self._on_remove()


@contextmanager
def scoped_module_hook(module: nn.Module, fn: Callable, *, kind: str = "forward", prepend: bool = False,
                       always_call: bool = False) -> Iterator[None]:
    """A PyTorch hook on ``module`` that acts only in this context, only inside the block.

    ``kind``: ``"forward"`` (``fn(module, args, output)``) or ``"pre"``
    (``fn(module, args, kwargs)``, with keyword arguments); ``prepend``: before the module's
    other hooks of that kind; ``always_call``: a forward hook that runs even when the module
    raises. The engine uses these for its own
    plumbing (reading the LM head's input, resuming from a cached prefix), so a forward pass
    running in another thread at the same time is not affected.
    """
    with hook_frame() as owner:

        def acting(*args):
            return fn(*args) if _is_active(owner) else None

        if kind == "forward":
            handle = module.register_forward_hook(Plumbing(acting), prepend=prepend, always_call=always_call)
        elif kind == "pre":
            handle = module.register_forward_pre_hook(Plumbing(acting), with_kwargs=True, prepend=prepend)
        else:
            raise ValueError(f"kind must be 'forward' or 'pre', got {kind!r}")
        try:
            yield
        finally:
            handle.remove()
