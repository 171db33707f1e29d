"""``HookedModel``: a Hugging Face model with TransformerLens hook points everywhere that matters.

The wrapper owns the HF model and a tree of hook points named exactly like TransformerLens
(``blocks.L.attn.hook_pattern``, ``blocks.L.hook_resid_pre``, ``blocks.L.mlp.hook_post``),
so ``run_with_hooks``, ``run_with_cache`` and ``hooks()`` behave as TL users expect. Every
forward pass goes through :func:`attnlab.engine.forward.run`. Hooks exist only inside
``with`` blocks and act only in the context (thread) that opened them: PyTorch hooks are
global state, and a forgotten or shared one silently changes every later result.
"""

from __future__ import annotations

import hashlib
import inspect
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol

import torch
from jaxtyping import Float, Int
from torch import nn

from attnlab.engine.adapters import (
    attention_configs,
    find_attention_modules,
    is_causal_model,
    reroute,
    restore_implementation,
    switch_implementation,
)
from attnlab.engine.attention import detach
from attnlab.engine.bridge import check_unprocessed
from attnlab.engine.caller import user_stacklevel
from attnlab.engine.cache import ActivationCache, check_device
from attnlab.engine.config import ModelConfig, config_from_hf
from attnlab.engine.dropout import active_dropout
from attnlab.engine.forward import Output, as_specs, run, token_logprobs
from attnlab.engine.generate import decode, eos_ids
from attnlab.engine.hooks import _GLOBAL, HookFn, HookPoint, OnDemand, Plumbing, acting_owners, clean_context, hook_frame, user_frame
from attnlab.engine.layout import ModelLayout, model_layout
from attnlab.engine.locations import ALL_SITES, missing_name_hint, parse_hook_name
from attnlab.engine.precision import forget_rounded_weights
from attnlab.engine.state import check_row_keys, current_state
from attnlab.engine.stop import check_reached, check_stop_at_layer
from attnlab.engine.tokens import Tokens, check_padding_side, check_texts, pad_rows
from attnlab.engine.tree import SPLIT_INPUTS, HookTree, tree_of
from attnlab.engine.weights import ModelWeights, structure_config
from attnlab.errors import (AttnlabError, InvalidInput, InvalidLocation, NotSupported, UnsupportedModel, check_flag,
    check_positive_int, did_you_mean, is_integer)

__all__ = ["HookedModel", "Intervention", "Text", "RETURN_TYPES"]

Text = str | Sequence[str]

#: What calling the model can return (TransformerLens' options plus attnlab's two).
RETURN_TYPES = ("logits", "loss", "both", None, "hidden", "outputs")

_PREPARED_CACHE_SIZE = 32
#: The ``intervene()`` blocks open in this context, outermost first: (hook tree id, block owner, specs).
_INTERVENING: ContextVar[tuple[tuple[int, int, tuple], ...]] = ContextVar("attnlab_intervening", default=())

_FOLDING = ("attnlab keeps the model's own weights (nothing folded or centred); apply_ln_to_stack and "
            "tokens_to_residual_directions account for the norms' weights instead")
#: TransformerLens attributes attnlab does not provide, and what to use instead
_TL_MODEL_HINTS = {
    "embed": "the token embedding matrix is model.W_E; cache['hook_embed'] holds what the model adds (times sqrt(d_model) on Gemma)",
    "pos_embed": "learned positions are model.W_pos; cache['hook_pos_embed'] holds what the model adds",
    "hook_embed": "the hook point is model.hook_dict['hook_embed'] (hook it by name)",
    "input_to_embed": "run the model with names_filter='blocks.0.hook_resid_pre' to read the first block's input",
    "fold_layer_norm": _FOLDING,
    "fold_value_biases": _FOLDING,
    "center_writing_weights": _FOLDING,
    "center_unembed": _FOLDING,
    "process_weights_": _FOLDING,
    "refactor_factored_attn_matrices": _FOLDING,
    "from_pretrained": "use attnlab.load(name) (or attnlab.load(hf_model, tokenizer=...))",
    "from_pretrained_no_processing": "use attnlab.load(name)",
    "load_and_process_state_dict": "load the weights into the HF model (model.hf_model) instead",
    "accumulated_bias": "cache.get_full_resid_decomposition(...) has the biases as its 'bias' component",
    "loss_fn": "use model(tokens, return_type='loss') or model.loss(logits, model.tokens(tokens))",
    "W_pos_embed": "use model.W_pos",
    # a property that raises an AttributeError lands here: its message is this one
    "ln_final": "this model has no final norm before its unembedding (BERT's LayerNorms close each block)",
}


def _check_direction(value, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise InvalidInput(f"{what} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


class Intervention(Protocol):
    """Anything ``model.intervene`` accepts: it checks itself, then prepares its hooks."""

    def validate(self, cfg: ModelConfig) -> None: ...

    def prepare(self, model: HookedModel) -> Any: ...


def _is_real(value) -> bool:
    """A real number of any kind (Python, numpy), but not a bool."""
    import numbers

    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _placement(model: nn.Module) -> list[tuple[nn.Module, str, str, torch.dtype, torch.device]]:
    """Where each parameter and buffer of ``model`` lives, for :func:`_put_back`."""
    return [(module, store, key, tensor.dtype, tensor.device) for module in model.modules()
            for store in ("_parameters", "_buffers") for key, tensor in getattr(module, store).items()
            if tensor is not None]


def _put_back(placement) -> None:
    """Return every tensor that ``.to()`` already converted to its recorded dtype and device.

    ``.to()`` swaps a parameter's ``.data`` and replaces a buffer: an upcast or a device move
    comes back bit for bit (a downcast that failed half-way cannot give back the lost bits).
    """
    with torch.no_grad():
        for module, store, key, dtype, device in placement:
            tensor = getattr(module, store)[key]
            if tensor is None or (tensor.dtype, tensor.device) == (dtype, device):
                continue
            if store == "_parameters":
                tensor.data = tensor.data.to(device=device, dtype=dtype)
            else:
                module._buffers[key] = tensor.to(device=device, dtype=dtype)


class _Handles:
    """Several PyTorch hook handles removed as one (what :class:`OnDemand` keeps)."""

    def __init__(self, handles: list):
        self.handles = handles

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _route_guard(tree: HookTree, roots: list[nn.Module]) -> weakref.WeakSet:
    """The wrappers of ``tree``'s HF model; a direct call of the HF model checks their routing first.

    A plain ``model.hf_model(...)`` call inside a ``hooks()`` or ``intervene()`` block (or while
    an ``add_hook`` hook persists) bypasses attnlab's passes, which re-route a switched attention
    implementation and refuse replaced or compiled layers: every read and edit at an attention site
    then missed without a word. So every hook point needs a pre-hook on the HF model (and on its
    base model, ``layout.body``) that calls ``ensure_routed()`` of each wrapper still alive. Like the
    block-edge dispatchers it exists only while some hook does (:class:`OnDemand`): a model with
    no hook carries none, and a call outside any block costs nothing. Inside an attnlab pass
    (a forward state is set) it does nothing: the pass checked when it started.
    """
    wrappers = tree.__dict__.get("_attnlab_wrappers")
    if wrappers is not None:
        return wrappers
    wrappers = weakref.WeakSet()

    def check(module, args, kwargs):
        if current_state() is None:
            for wrapper in list(wrappers):
                wrapper.ensure_routed(direct=True)
        return None

    def register() -> _Handles:
        return _Handles([root.register_forward_pre_hook(Plumbing(check), with_kwargs=True, prepend=True) for root in roots])

    guard = OnDemand(register)
    for point in tree.hook_dict.values():
        point._needs = [*getattr(point, "_needs", ()), guard]
    tree.__dict__["_attnlab_wrappers"] = wrappers
    return wrappers


#: The pre-rotary points (equal to hook_q / hook_k on a model without a rotary embedding).
_PRE_ROTARY = ("attn.hook_q_pre_rotary", "attn.hook_k_pre_rotary")


class HookedModel(ModelWeights, nn.Module):
    """A wrapped HF model whose attention (and residual stream, and MLPs) can be read and overwritten.

    Build one with :func:`attnlab.load`. Calling it on text or token ids returns logits
    (hidden states for encoders without an LM head).
    """

    def __init__(self, hf_model: nn.Module, tokenizer: Any, *, name: str | None = None, bridge: Any = None,
                 dtype: torch.dtype | None = None, device: Any = None):
        """Wrap ``hf_model``; ``dtype`` and ``device`` convert it only once it has been found wrappable,
        so a model attnlab refuses is handed back exactly as it came (weights, dtype, device, modes)."""
        super().__init__()
        attention_modules = find_attention_modules(hf_model)
        modes = [(module, module.training) for module in hf_model.modules()]
        placement = _placement(hf_model) if dtype is not None or device is not None else []
        self.original_attn_implementation = switch_implementation(hf_model)
        fresh = hf_model.__dict__.get("_attnlab_tree") is None  # a copy of a wrapped model holds None there
        try:
            self._build(hf_model, tokenizer, attention_modules, name=name, bridge=bridge)
            self._check_bridge()  # the weights' traces tell, so only once the weight views exist
            if fresh:
                self._check_every_layer_is_reached()
            if dtype is not None or device is not None:
                hf_model.to(device=device, dtype=dtype)
        except BaseException:
            for module, training in modes:
                module.training = training
            _put_back(placement)  # a conversion that failed half-way (out of memory)
            if fresh:  # a model we cannot wrap is handed back exactly as it came
                restore_implementation(hf_model, self.original_attn_implementation)
                for module in attention_modules:
                    detach(module)
                hf_model.__dict__.pop("_attnlab_tree", None)
            raise
        self.__dict__["_loaded"] = True  # from here on a compiled module was compiled after wrapping
        if tokenizer is not None and tokenizer.pad_token is None:  # only now: a refused model leaves it alone too
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token

    def _build(self, hf_model, tokenizer, attention_modules, *, name, bridge) -> None:
        self.hf_model = hf_model.eval()
        self.tokenizer = tokenizer
        self._attention_configs = attention_configs(hf_model)
        wanted = {id(m) for m in attention_modules}
        self._attention_paths = [(path, m) for path, m in hf_model.named_modules() if id(m) in wanted]
        edges: dict[tuple[int, str], tuple[nn.Module, str, nn.Module]] = {}
        for path, _ in self._attention_paths:  # every (parent, name, child) link from the model to its attention modules
            parent = hf_model
            for part in path.split("."):
                child = parent._modules[part]
                edges[(id(parent), part)] = (parent, part, child)
                parent = child
        self._attention_links = list(edges.values())  # all still in place: every path leads to the same module
        self.bridge = bridge
        name = name or getattr(hf_model.config, "_name_or_path", "") or type(hf_model).__name__
        has_lm_head = hasattr(hf_model, "get_output_embeddings") and hf_model.get_output_embeddings() is not None
        self.cfg = config_from_hf(
            hf_model.config,
            name=str(name),
            n_layers=len(attention_modules),
            is_causal=is_causal_model(hf_model, attention_modules),
            has_lm_head=has_lm_head,
            rotary=any("rotary" in type(m).__name__.lower() for m in hf_model.modules()),
            scaling=getattr(attention_modules[0], "scaling", None),
        )
        self.tree = tree_of(hf_model, lambda: HookTree(model_layout(hf_model, attention_modules), attention_modules, self.cfg.n_heads))
        self.cfg = structure_config(self.cfg, hf_model.config, self.tree)  # d_mlp, act_fn, normalization_type
        object.__setattr__(self.cfg, "_model_of", weakref.ref(self))  # cfg.device (TransformerLens reads it)
        self.blocks = self.tree.blocks
        self.hook_dict: dict[str, HookPoint] = self.tree.hook_dict
        body = self.tree.layout.body
        roots = [hf_model] + ([body] if isinstance(body, nn.Module) and body is not hf_model else [])
        _route_guard(self.tree, roots).add(self)
        # compiled code never calls attnlab's hooks: ensure_routed refuses a model in which any module was compiled
        self._modules_at_load = [(module, module.__dict__) for module in hf_model.modules()]
        self._cache_split_inputs = False  # run_with_cache() without names_filter leaves the per-head input copies out
        self.mod_dict: dict[str, nn.Module] = dict(self.tree.named_modules())
        self.padding_side = "right"
        self._prepared: OrderedDict[Any, Any] = OrderedDict()
        self._forward_params = set(inspect.signature(hf_model.forward).parameters)
        self.eval()  # the wrapper and its hook points too (TransformerLens' tools check every submodule)

    # -- structure ------------------------------------------------------------------------

    @property
    def layout(self) -> ModelLayout:
        return self.tree.layout

    def decoder_layers(self) -> list[nn.Module] | None:
        """The HF module of every block (what prefix reuse skips), or None if not found."""
        blocks = self.layout.blocks
        return [b.layer for b in blocks] if blocks else None

    def _accepts(self, param: str) -> bool:
        return param in self._forward_params

    @property
    def device(self) -> torch.device:
        return self.hf_model.get_input_embeddings().weight.device

    def hook_point(self, layer: int, site: str) -> HookPoint:
        from attnlab.engine.locations import hook_name

        self.check_layer(layer)
        name = hook_name(layer, site)
        if name not in self.hook_dict:
            raise InvalidLocation(f"{self.cfg.name} has no hook point {name!r}: {self._kinds_message()}")
        return self.hook_dict[name]

    def check_layer(self, layer: int) -> int:
        if not is_integer(layer):  # 1.0 or True is no layer index: "layer 1.0 out of range" misled
            raise InvalidLocation(f"layer must be a whole number (an int), got {layer!r} ({type(layer).__name__}); "
                                  f"{self.cfg.name} has {self.cfg.layer_range()}")
        if not 0 <= layer < self.cfg.n_layers:
            raise InvalidLocation(f"layer {layer!r} out of range: {self.cfg.name} has {self.cfg.layer_range()}")
        return int(layer)

    def check_head(self, head: int) -> int:
        if not is_integer(head):
            raise InvalidLocation(f"head must be a whole number (an int), got {head!r} ({type(head).__name__}); "
                                  f"{self.cfg.name} has {self.cfg.head_range()}")
        if not 0 <= head < self.cfg.n_heads:
            raise InvalidLocation(f"head {head!r} out of range: {self.cfg.name} has {self.cfg.head_range()}")
        return int(head)

    # -- hook names -----------------------------------------------------------------------

    def _kinds_message(self) -> str:
        kinds = []
        for name in self.hook_dict:
            try:
                site = parse_hook_name(name).site
            except AttnlabError:
                continue
            if site not in kinds:
                kinds.append(site)
        shown = sorted(kinds, key=ALL_SITES.index)
        return (
            f"names look like 'blocks.<0..{self.cfg.n_layers - 1}>.attn.hook_<q|k|v|attn_scores|pattern|z>'; "
            f"the kinds of hook point in this model are: {', '.join(shown)} (see docs/concepts.md)"
        )

    def _check_name(self, name: str) -> None:
        if name in self.hook_dict:
            return
        hint = missing_name_hint(name) or did_you_mean(name, self.hook_dict)
        raise InvalidLocation(f"no hook point {name!r} in {self.cfg.name}{hint}; {self._kinds_message()}")

    def _resolve_names(self, names, *, what: str = "hook names") -> list[str]:
        """A name, a list of names or a predicate on names -> the hook names it selects."""
        if names is None:  # every point, the per-head input copies only when asked for (set_use_split_qkv_input)
            # and q/k before the rotary embedding only where there is one (elsewhere they are hook_q/hook_k again)
            skip = (*(() if self._cache_split_inputs else SPLIT_INPUTS), *(() if self.cfg.rotary else _PRE_ROTARY))
            return [n for n in self.hook_dict if not n.endswith(skip)]
        if isinstance(names, str):
            names = [names]
        if callable(names):
            return [n for n in self.hook_dict if names(n)]
        if not isinstance(names, Iterable):
            raise InvalidInput(f"{what} must be a hook name, a list of hook names, a predicate on names (name -> bool) "
                               f"or None (every hook point), got {names!r}")
        names = list(names)
        for n in names:
            if not isinstance(n, str):
                raise InvalidInput(f"hook names must be strings, got {n!r}")
            self._check_name(n)
        return names

    def _expand(self, pairs, direction: str) -> list[tuple[HookPoint, HookFn, str]]:
        out = []
        for pair in pairs:
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise InvalidLocation(f"hooks must be (name or name filter, function) pairs, got {pair!r}")
            name, fn = pair
            if not (isinstance(name, str) or callable(name)) or not callable(fn):
                raise InvalidLocation(f"hooks must be (name or name filter, function) pairs, got ({name!r}, {fn!r})")
            for n in self._resolve_names(name):
                out.append((self.hook_dict[n], fn, direction))
        return out

    # -- hooks ----------------------------------------------------------------------------

    @contextmanager
    def hooks(self, fwd_hooks=(), bwd_hooks=(), reset_hooks_end: bool = True, clear_contexts: bool = False):
        """Attach ``(name or name filter, fn)`` hooks for the block; they act only in this context.

        Names are checked before anything is attached; every hook is removed in ``finally``.
        """
        check_flag(reset_hooks_end, "reset_hooks_end")
        check_flag(clear_contexts, "clear_contexts")
        if not reset_hooks_end:
            raise InvalidInput("attnlab removes a block's hooks when it ends; for hooks that persist use model.add_hook()")
        wanted = self._expand(list(fwd_hooks), "fwd") + self._expand(list(bwd_hooks), "bwd")
        if wanted:  # a direct hf_model(...) call in the block would run the compiled code, which skips every hook
            self._check_not_compiled()
        with hook_frame(user=True) as owner:
            points, needs = [], []
            try:
                for point, fn, direction in wanted:
                    point.add_hook(fn, direction, owner=owner)
                    points.append(point)
                    for need in getattr(point, "_needs", ()):
                        need.acquire()
                        needs.append(need)
                yield self
            finally:
                for point in points:
                    point.remove_hooks(owner)
                for need in needs:
                    need.release()
                if clear_contexts:
                    self._clear_contexts()

    def add_hook(self, name, fn: HookFn, dir: str = "fwd", is_permanent: bool = False, prepend: bool = False) -> None:
        """Attach a hook that persists: inside a ``hooks()`` block until it ends, outside until ``reset_hooks()``.

        A persistent hook added outside any block acts in every thread (TransformerLens'
        semantics); prefer ``with model.hooks(...)``, whose hooks belong to one context.
        ``is_permanent=True``: persistent even inside a block, and kept by ``reset_hooks()``
        unless ``including_permanent=True`` (TransformerLens').
        """
        _check_direction(dir, ("fwd", "bwd"), "dir")
        check_flag(is_permanent, "is_permanent")
        check_flag(prepend, "prepend")
        for point, f, direction in self._expand([(name, fn)], dir):
            point.add_hook(f, direction, prepend=prepend, is_permanent=is_permanent)  # the point picks the block

    def reset_hooks(self, clear_contexts: bool = True, direction: str = "both", including_permanent: bool = False) -> None:
        """Remove the persistent hooks added with ``add_hook`` (TransformerLens' arguments).

        ``direction``: only "fwd" or "bwd" hooks ("both": all); permanent hooks stay unless
        ``including_permanent``; ``clear_contexts`` empties every hook point's ``ctx``.
        """
        _check_direction(direction, ("fwd", "bwd", "both"), "direction")
        for point in self.hook_dict.values():  # also releases the dispatchers the removed hooks acquired
            point.remove_hooks(_GLOBAL, including_permanent=including_permanent, direction=direction)
        if clear_contexts:
            self._clear_contexts()

    def _clear_contexts(self) -> None:
        for point in self.hook_dict.values():
            point.ctx.clear()

    def count_hooks(self) -> int:
        """Hooks on attnlab's hook points that act in this context (0 outside ``with`` blocks)."""
        return sum(p.n_hooks(owners=acting_owners()) for p in self.hook_dict.values())

    @contextmanager
    def clean(self) -> Iterator[HookedModel]:
        """A block in which no hook or intervention acts (in this context): the unedited model."""
        with clean_context():
            yield self

    def run_with_hooks(self, *model_args, fwd_hooks=(), bwd_hooks=(), reset_hooks_end: bool = True,
                       clear_contexts: bool = False, **model_kwargs):
        """Run the model with ``fwd_hooks`` (and ``bwd_hooks``) attached for this one call."""
        with self.hooks(fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts):
            return self(*model_args, **model_kwargs)

    def run_with_cache(self, *model_args, names_filter=None, device=None, remove_batch_dim: bool = False,
                       incl_bwd: bool = False, return_cache_object: bool = True, **model_kwargs):
        """Run and cache the hook points ``names_filter`` selects (a name, a list, a predicate; None: all)."""
        names = self._resolve_names(names_filter, what="names_filter")
        for flag, value in (("remove_batch_dim", remove_batch_dim), ("incl_bwd", incl_bwd), ("return_cache_object", return_cache_object)):
            check_flag(value, flag)
        device = check_device(device, "run_with_cache")
        stopped = check_stop_at_layer(model_kwargs.get("stop_at_layer"), self.cfg.n_layers)
        if names_filter is not None and not callable(names_filter):  # named one by one: each must come back
            check_reached(self, names, stopped, "names_filter", model_kwargs.get("stop_at_layer"))
        cache: dict[str, torch.Tensor] = {}
        grad_cache: dict[str, torch.Tensor] = {}

        def store(x, hook):
            cache[hook.name] = x.detach() if device is None else x.detach().to(device)

        def store_grad(g, hook):
            grad_cache[hook.name + "_grad"] = g.detach() if device is None else g.detach().to(device)

        bwd = [(n, store_grad) for n in names] if incl_bwd else []
        with self.hooks(fwd_hooks=[(n, store) for n in names], bwd_hooks=bwd):
            out = self(*model_args, **model_kwargs)
            if incl_bwd:
                if isinstance(out, torch.Tensor) and out.numel() == 1 and not out.requires_grad:
                    raise InvalidInput("run_with_cache(incl_bwd=True) differentiates the model's output, so it needs "
                                       "autograd: it ran with gradients off (inside torch.no_grad() or "
                                       "torch.inference_mode(), or with the weights' requires_grad off); "
                                       "call it outside those blocks")
                if not isinstance(out, torch.Tensor) or out.numel() != 1:
                    raise InvalidInput("run_with_cache(incl_bwd=True) differentiates the model's output, which must be "
                                       "one number with a gradient: pass return_type='loss' (as in TransformerLens), "
                                       f"got {'a tensor of shape ' + str(tuple(out.shape)) if isinstance(out, torch.Tensor) else type(out).__name__}")
                out.backward()
        cache.update(grad_cache)
        entering = f"blocks.{stopped}.hook_resid_pre"
        if stopped is not None and entering in names:  # block k did not run, but the stream entering it is the answer
            cache[entering] = out.detach() if device is None else out.detach().to(device)
        if not return_cache_object:
            return out, cache
        result = ActivationCache(cache, self, stopped_at=stopped)
        return out, (result.remove_batch_dim() if remove_batch_dim else result)

    # -- interventions --------------------------------------------------------------------

    def prepared_source(self, key: Any, compute: Callable[[], Any]) -> Any:
        """What an intervention computes from this model (a mean, a patch source), cached by ``key``.

        Always computed from the unedited model (inside :meth:`clean`), whatever blocks are
        open, so a mean first used inside another edit is still the clean mean. Computed
        again after an in-place edit of a weight or a new ``Parameter`` (each parameter's
        identity and version counter are part of the entry; a write through ``.data``
        bypasses the counter: call :meth:`forget_prepared` after one). A model in training mode
        whose dropout acts computes a fresh value every time and keeps none: such a value is one
        random draw, and must not outlive ``model.eval()``.
        """
        if self.hf_model.training and active_dropout(self.hf_model):
            with self.clean():
                return compute()
        stamp = self.weights_stamp()
        kept = self._prepared.get(key)
        if kept is not None and kept[0] == stamp:
            self._prepared.move_to_end(key)
            return kept[1]
        with self.clean():
            value = compute()
        self._prepared[key] = (stamp, value)
        self._prepared.move_to_end(key)
        while len(self._prepared) > _PREPARED_CACHE_SIZE:
            self._prepared.popitem(last=False)
        return value

    def forget_prepared(self) -> None:
        """Drop what is kept on the model computed from its weights: cached means and patch sources, rounded
        weight copies of ``precision=`` runs (recomputed when next needed; for writes through ``.data``)."""
        self._prepared.clear()
        forget_rounded_weights(self)

    def ensure_routed(self, *, direct: bool = False) -> None:
        """Every pass starts here: layers switched to another attention function since load go back to attnlab's,
        and layers replaced since load (a TransformerLens bridge booted on this HF model) are refused, as are a
        bridge's weights processed since load (``enable_compatibility_mode()``) and compiled modules.

        ``direct``: called by the pre-hook a direct ``model.hf_model(...)`` call meets while some hook exists
        (see :func:`_route_guard`)."""
        if direct and torch.compiler.is_compiling():
            raise NotSupported(self._compiled_message("the HF model is being compiled (torch.compile(model.hf_model) "
                                                      "called inside a hooks() or intervene() block)"))
        self._check_not_compiled()
        self._check_bridge()
        replaced = any(parent._modules.get(name) is not child for parent, name, child in self._attention_links)
        for path, module in self._attention_paths if replaced else ():  # get_submodule: 300 us on 18 layers
            try:
                found = self.hf_model.get_submodule(path)
            except AttributeError:
                found = None
            if found is not module:
                raise NotSupported(
                    f"{self.cfg.name}: the HF model's module {path!r} was replaced after attnlab wrapped it (by a "
                    f"TransformerLens bridge booted on the same HF model?): its attention no longer runs through "
                    f"attnlab's hook points, so every read and edit would silently miss. Wrap the bridge instead "
                    f"(attnlab.load(bridge)) or load the HF model again"
                )
        switched = reroute(self._attention_configs)
        if switched is not None:
            self.original_attn_implementation = switched  # what the user asked for last, given back on unwrap
            warnings.warn(
                f"{self.cfg.name}: the HF model's attention implementation was switched to {switched!r} after "
                f"attnlab wrapped it (set_attn_implementation, or a TransformerLens bridge booted on it), which "
                f"would silence every hook at an attention site; attnlab routes it through "
                f"{self._attention_configs[0]._attn_implementation!r} again (the same math, with its hook points)",
                stacklevel=user_stacklevel(),
            )

    def _compiled_message(self, what: str) -> str:
        return (f"{self.cfg.name}: {what}. Compiled code replays the graph traced at its first call and never calls "
                "attnlab's hooks (PyTorch does not trace again when hooks are added), so every read and edit would "
                "silently do nothing. attnlab does not support compiled models: run the uncompiled model (load it "
                "again, and compile a copy you keep apart: copy.deepcopy(model.hf_model))")

    def _check_not_compiled(self) -> None:
        """``Module.compile()`` on the HF model or any of its modules since load: refused (~25 µs per pass for the
        313 modules of an 18-layer Gemma-3)."""
        for module, attributes in self._modules_at_load:
            if attributes.get("_compiled_call_impl") is not None:
                where = "the HF model" if module is self.hf_model else f"its module {type(module).__name__}"
                when = "after attnlab wrapped it" if self.__dict__.get("_loaded") else "before attnlab could wrap it"
                raise NotSupported(self._compiled_message(f"{where} was compiled (Module.compile()) {when}"))

    def _check_bridge(self) -> None:
        """Refuse a bridge whose weights TransformerLens processed (see :func:`~attnlab.engine.bridge.check_unprocessed`).

        Looking for the processing's traces reads every weight, so a verdict is kept while the weights stay
        the same (their stamp); a bridge TransformerLens never marked processed costs one attribute look-up.
        """
        bridge = self.bridge
        if bridge is None or not getattr(bridge, "_weights_processed", getattr(bridge, "compatibility_mode", False)):
            return
        stamp = self.weights_stamp()
        if self.__dict__.get("_unprocessed_stamp") == stamp:
            return
        check_unprocessed(bridge, self.cfg.name, self)
        self.__dict__["_unprocessed_stamp"] = stamp

    def weights_stamp(self) -> tuple:
        """Identity, version and storage of every parameter and buffer: equal stamps, same weights (unless
        written through ``.data`` in place; ``model.half()``, ``.to(device)`` swap the storage and are seen).
        Results computed from the model keep one to tell when they are stale.

        ~0.1 ms on Gemma-3-270m (walking ``parameters()`` costs 0.8 ms, so the modules that hold
        tensors are listed once)."""
        holders = self.__dict__.get("_tensor_holders")
        if holders is None:
            holders = self.__dict__["_tensor_holders"] = [m for m in self.hf_model.modules() if m._parameters or m._buffers]
        return tuple((id(t), t._version, t.data_ptr()) for m in holders for d in (m._parameters, m._buffers)
                     for t in d.values() if t is not None)

    def weights_digest(self) -> str:
        """A cheap digest of the weights for telling two processes' models apart: every parameter's shape and
        dtype, and 64 values sampled evenly from each of the first, middle and last parameter tensors.

        Two checkpoints of one architecture differ here; weights that differ only elsewhere (a fine-tune of
        some middle layers) are not seen. Kept while :meth:`weights_stamp` stays the same, so a run of
        parallel calls walks the parameters once.
        """
        stamp = self.weights_stamp()
        kept = self.__dict__.get("_weights_digest")
        if kept is not None and kept[0] == stamp:
            return kept[1]
        params = list(self.hf_model.parameters())
        parts: list = [type(self.hf_model).__qualname__, tuple((tuple(p.shape), str(p.dtype)) for p in params)]
        for p in dict.fromkeys(params[i] for i in (0, len(params) // 2, -1)) if params else ():
            if p.device.type != "meta":  # offloaded: its values exist only inside the module's call
                flat = p.detach().reshape(-1)
                parts.append(flat[:: max(1, flat.numel() // 64)][:64].float().cpu().tolist())
        digest = hashlib.sha1(repr(parts).encode()).hexdigest()
        self.__dict__["_weights_digest"] = (stamp, digest)
        return digest

    @contextmanager
    def intervene(self, *interventions: Intervention) -> Iterator[HookedModel]:
        """Apply interventions inside a ``with`` block; nestable, and always cleaned up.

        Every spec is validated before any hook is attached or any forward pass runs.
        """
        for spec in interventions:
            if not (hasattr(spec, "validate") and hasattr(spec, "prepare")):
                raise InvalidInput(f"intervene() takes intervention specs, got {type(spec).__name__}: {spec!r}")
            spec.validate(self.cfg)
        fwd: list[tuple[str, HookFn]] = []
        for spec in interventions:
            try:
                fwd.extend(spec.prepare(self).hooks())
            except AttnlabError as err:
                raise type(err)(f"while preparing {spec!r} on {self.cfg.name}: {err}") from None
        with self.hooks(fwd_hooks=fwd):
            # keyed by the hook tree: every wrapper of this HF model runs through these hooks
            entry = (id(self.tree), user_frame(), interventions)
            pushed = _INTERVENING.get() + (entry,)
            token = _INTERVENING.set(pushed)
            try:
                yield self
            finally:
                if _INTERVENING.get() is pushed:
                    _INTERVENING.reset(token)
                else:  # closed out of order: reset(token) would bring back the blocks closed since
                    _INTERVENING.set(tuple(e for e in _INTERVENING.get() if e is not entry))

    def acting_interventions(self) -> list[Intervention]:
        """The specs of the ``intervene()`` blocks acting here (none inside ``clean()``), outermost first.

        Batched measurements read them: an outer spec's ``rows=`` are rows of the batch it sees,
        so they decide how the prompts may be cut into batches.
        """
        owners = acting_owners()
        return [s for tree, owner, specs in _INTERVENING.get() if tree == id(self.tree) and owner in owners for s in specs]

    def _check_every_layer_is_reached(self) -> None:
        """One tiny forward pass proving that every layer calls attnlab's attention function."""
        seen: set[int] = set()

        def mark(tensor, hook):
            seen.add(hook.layer_index)

        probe = torch.zeros(1, 2, dtype=torch.long, device=self.device)
        with self.hooks(fwd_hooks=[(lambda name: name.endswith("hook_pattern"), mark)]), torch.no_grad():
            self.hf_model(input_ids=probe)
        missing = sorted(set(range(self.cfg.n_layers)) - seen)
        if missing:
            raise UnsupportedModel(
                f"{self.cfg.name}: layers {missing} do not route attention through transformers' "
                "AttentionInterface, so attnlab cannot read or edit them"
            )

    # -- tokens ---------------------------------------------------------------------------

    def _need_tokenizer(self):
        if self.tokenizer is None:
            raise InvalidInput(f"{self.cfg.name} was loaded without a tokenizer; pass token ids instead of text")
        return self.tokenizer

    @property
    def pad_token_id(self) -> int:
        tok = self.tokenizer
        for cand in (getattr(tok, "pad_token_id", None), getattr(tok, "eos_token_id", None), getattr(tok, "unk_token_id", None)):
            if cand is not None:
                return int(cand)
        return 0

    def _check_length(self, n: int, what: str = "input") -> None:
        n_ctx = self.cfg.n_ctx
        if n_ctx is not None and n > n_ctx:
            raise InvalidInput(f"{what} has {n} tokens but {self.cfg.name} handles at most {n_ctx}")

    def token_rows(self, text: Text, *, prepend_bos: bool | None = None, truncate: bool | None = None) -> list[list[int]]:
        """Token ids of each text alone (special tokens included unless ``prepend_bos=False``).

        A text longer than the model's context is refused; ``truncate=True`` cuts it to the
        context instead and ``truncate=False`` keeps it whole (TransformerLens' ``to_tokens``).
        """
        texts = check_texts(text)
        check_flag(prepend_bos, "prepend_bos", none=True)
        check_flag(truncate, "truncate", none=True)
        prepend_bos = None if prepend_bos is None else bool(prepend_bos)  # numpy's False is not False
        truncate = None if truncate is None else bool(truncate)
        tok = self._need_tokenizer()
        cut = {"truncation": True, "max_length": self.cfg.n_ctx} if truncate and self.cfg.n_ctx is not None else {}
        rows = tok(texts, add_special_tokens=prepend_bos is not False, **cut)["input_ids"]  # keeps a final [SEP]
        if prepend_bos is True and tok.bos_token_id is not None:
            rows = [r if r[:1] == [tok.bos_token_id] else [tok.bos_token_id, *r] for r in rows]
        for i, row in enumerate(rows):
            if not row:
                raise InvalidInput(f"text {i} ({texts[i]!r}) gives no tokens for {self.cfg.name}")
            if truncate is None:
                self._check_length(len(row), "input" if len(rows) == 1 else f"text {i}")
        n_ctx = self.cfg.n_ctx if truncate else None
        return [list(r[:n_ctx]) for r in rows]

    def pad(self, rows: Sequence[Sequence[int]], *, padding_side: str | None = None, check_length: bool = True) -> Tokens:
        """Pad token lists into :class:`Tokens` with this model's pad id (default side: ``model.padding_side``)."""
        side = check_padding_side(padding_side or self.padding_side)
        for i, row in enumerate(rows):
            if not len(row):
                raise InvalidInput(f"row {i} has no tokens")
            integers = (row.ndim == 1 and not (row.is_floating_point() or row.is_complex() or row.dtype == torch.bool)) \
                if isinstance(row, torch.Tensor) else all(is_integer(t) for t in row)
            if not integers:  # torch.as_tensor would cut 1.5 to 1 and read True as 1
                raise InvalidInput(f"row {i} must be a list of integer token ids, got {row!r}")
            if check_length:
                self._check_length(len(row), f"row {i}")
        tokens = pad_rows(rows, pad_id=self.pad_token_id, side=side)
        self._check_vocab(tokens.ids)
        return tokens

    def tokens(self, input: Text | torch.Tensor | Tokens, *, attention_mask: torch.Tensor | None = None,
               padding_side: str | None = None, prepend_bos: bool | None = None) -> Tokens:
        """Text(s) or token ids -> :class:`Tokens`, checked against the vocabulary and the context length."""
        if isinstance(input, Tokens):  # built by hand or by model.pad(): checked like ids
            self._check_vocab(input.ids)
            self._check_length(int(input.lengths.max()) if input.n_rows else 0)
            return input
        if isinstance(input, torch.Tensor):
            return self._id_tokens(input, attention_mask)
        if attention_mask is not None:
            raise InvalidInput("attention_mask goes with token ids; text is tokenized and masked by attnlab")
        return self.pad(self.token_rows(input, prepend_bos=prepend_bos), padding_side=padding_side)

    def _id_tokens(self, ids: torch.Tensor, attention_mask: torch.Tensor | None) -> Tokens:
        if ids.dtype not in (torch.long, torch.int, torch.int32, torch.int64, torch.int16, torch.uint8):
            raise InvalidInput(f"token ids must be an integer tensor, got {ids.dtype}")
        if ids.ndim not in (1, 2):
            raise InvalidInput(f"token ids must be [pos] or [batch, pos], got shape {tuple(ids.shape)}")
        ids = ids.reshape(1, -1) if ids.ndim == 1 else ids
        if ids.shape[0] == 0 or ids.shape[1] == 0:
            raise InvalidInput(f"token ids of shape {tuple(ids.shape)} hold no tokens; give at least one row of one token")
        self._check_vocab(ids)
        self._check_length(int(ids.shape[1]))
        ids = ids.long().to(self.device)
        if attention_mask is None:
            return Tokens(ids, torch.ones_like(ids), "right")
        if not isinstance(attention_mask, torch.Tensor):
            raise InvalidInput(f"attention_mask must be a tensor of 0s and 1s shaped like the ids {tuple(ids.shape)}, "
                               f"got {type(attention_mask).__name__}")
        if attention_mask.ndim == 1 and ids.shape[0] == 1:
            attention_mask = attention_mask.reshape(1, -1)  # goes with 1-D ids
        if attention_mask.shape != ids.shape:
            raise InvalidInput(f"attention_mask shape {tuple(attention_mask.shape)} != ids shape {tuple(ids.shape)}")
        # .long() would truncate 0.5 to 0 (a padded first token) and keep 2 or -1 (wrong lengths): only 0/1 mean something
        if attention_mask.is_complex():
            raise InvalidInput(f"attention_mask must hold only 0 and 1 as bool, integers or floats, got {attention_mask.dtype}")
        if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
            bad = attention_mask[(attention_mask != 0) & (attention_mask != 1)].unique()
            shown = ", ".join(str(v) for v in bad[:5].tolist()) + (", ..." if bad.numel() > 5 else "")
            raise InvalidInput(f"attention_mask must hold only 0 (padding) and 1 (a token), as bool, integers or floats; "
                               f"got {shown}")
        mask = attention_mask.to(self.device).long()
        if bool((mask.sum(dim=1) == 0).any()):
            raise InvalidInput("attention_mask has a row with no tokens (all zeros)")
        return Tokens.from_mask(ids, mask)

    def _check_vocab(self, ids: torch.Tensor) -> None:
        """Every id within the embedding (an id past it fails deep inside the embedding, on a GPU as a device assert)."""
        vocab = self.hf_model.get_input_embeddings().num_embeddings
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            bad = ids[(ids < 0) | (ids >= vocab)].unique()
            raise InvalidInput(f"token ids must lie in 0..{vocab - 1} for {self.cfg.name}, got {bad[:5].tolist()}")

    def _token_type_kwargs(self, token_type_ids, tokens: Tokens) -> dict[str, torch.Tensor]:
        """``{"token_type_ids": ...}`` for the HF call, checked: shaped like the ids, integers within the model's types."""
        if token_type_ids is None:
            return {}
        embed = self.layout.token_type_embed
        if embed is None:  # the HF model would ignore them (Llama) or fail deep inside
            raise InvalidInput(f"{self.cfg.name} has no token types (segments); token_type_ids are for BERT-style models")
        if not isinstance(token_type_ids, torch.Tensor):
            raise InvalidInput(f"token_type_ids must be an integer tensor shaped like the ids {tuple(tokens.ids.shape)}, "
                               f"got {type(token_type_ids).__name__}")
        if token_type_ids.dtype == torch.bool or token_type_ids.is_floating_point() or token_type_ids.is_complex():
            raise InvalidInput(f"token_type_ids must be an integer tensor, got {token_type_ids.dtype}")
        if token_type_ids.ndim == 1 and tokens.n_rows == 1:
            token_type_ids = token_type_ids.reshape(1, -1)  # goes with one row of ids
        if token_type_ids.shape != tokens.ids.shape:
            raise InvalidInput(f"token_type_ids shape {tuple(token_type_ids.shape)} != ids shape {tuple(tokens.ids.shape)}")
        n_types = embed.num_embeddings
        if int(token_type_ids.min()) < 0 or int(token_type_ids.max()) >= n_types:
            bad = token_type_ids[(token_type_ids < 0) | (token_type_ids >= n_types)].unique()
            raise InvalidInput(f"token_type_ids must lie in 0..{n_types - 1} for {self.cfg.name}, got {bad[:5].tolist()}")
        return {"token_type_ids": token_type_ids.long().to(self.device)}

    def tokenize(self, text: Text, *, padding_side: str | None = None, prepend_bos: bool | None = None) -> dict[str, torch.Tensor]:
        """``input_ids`` and ``attention_mask`` of one text or a batch (``model.padding_side`` by default)."""
        t = self.tokens(text, padding_side=padding_side, prepend_bos=prepend_bos).to(self.device)
        return {"input_ids": t.ids, "attention_mask": t.mask}

    def to_tokens(self, input: Text, prepend_bos: bool | None = None, padding_side: str | None = None,
                  move_to_device: bool = True, truncate: bool = True) -> Int[torch.Tensor, "batch pos"]:
        """Token ids ``[batch, pos]`` (TransformerLens' ``to_tokens``): a text longer than the model's context is
        cut to it (``truncate=True``, the default, as in TransformerLens) or kept whole (``truncate=False``)."""
        check_flag(truncate, "truncate")
        if isinstance(input, (torch.Tensor, Tokens)):
            t = self.tokens(input)
        else:
            rows = self.token_rows(input, prepend_bos=prepend_bos, truncate=truncate)
            t = self.pad(rows, padding_side=padding_side, check_length=truncate)
        return t.ids.to(self.device) if move_to_device else t.ids

    def to_str_tokens(self, input, prepend_bos: bool | None = None, padding_side: str | None = None):
        """Tokens as strings: a text or 1-D ids -> ``list[str]``; a list of texts or 2-D ids -> one list per row."""
        tok = self._need_tokenizer()
        if isinstance(input, str):
            return [tok.decode([i]) for i in self.token_rows(input, prepend_bos=prepend_bos)[0]]
        if isinstance(input, Sequence) and all(isinstance(t, str) for t in input):
            return [[tok.decode([i]) for i in row] for row in self.token_rows(list(input), prepend_bos=prepend_bos)]
        if not isinstance(input, (torch.Tensor, Sequence)) and not hasattr(input, "__array__"):
            raise InvalidInput(f"to_str_tokens takes a text, a list of texts or token ids, got {type(input).__name__}")
        ids = self._ids_to_decode(input, "to_str_tokens")
        ids = ids.squeeze(0) if ids.ndim == 2 and ids.shape[0] == 1 else ids
        if ids.ndim == 2:
            return [[tok.decode([i]) for i in row] for row in ids.tolist()]
        return [tok.decode([i]) for i in ids.reshape(-1).tolist()]

    def to_string(self, tokens) -> str | list[str]:
        """Decode ids back to text: 1-D ids (or a list of ints) -> str, 2-D ids -> one str per row."""
        tok = self._need_tokenizer()
        ids = self._ids_to_decode(tokens, "to_string")
        if ids.ndim == 2:
            return [tok.decode(row.tolist()) for row in ids]
        return tok.decode(ids.reshape(-1).tolist())

    def to_single_str_token(self, token: int) -> str:
        """The string of one token id (TransformerLens' ``to_single_str_token``)."""
        if isinstance(token, torch.Tensor) and token.numel() == 1:
            token = int(token)
        if not is_integer(token):
            raise InvalidInput(f"to_single_str_token takes one token id, got {token!r}")
        return self._need_tokenizer().decode(self._ids_to_decode([int(token)], "to_single_str_token").tolist())

    def _ids_to_decode(self, tokens, what: str) -> torch.Tensor:
        """``tokens`` (a tensor, an array, a list of ids or of rows of ids) as a 0-, 1- or 2-D tensor of ids within the
        vocabulary: the tokenizer turns an id past it into "" and a negative one into an OverflowError."""
        if isinstance(tokens, Tokens):
            tokens = tokens.ids
        if isinstance(tokens, torch.Tensor):
            ids = tokens
        else:
            try:
                ids = torch.as_tensor(tokens)
            except (TypeError, ValueError, RuntimeError, OverflowError):
                raise InvalidInput(f"{what} takes token ids (a tensor, or a list of ids or of equal-length rows of ids), "
                                   f"got {repr(tokens)[:80]}") from None
            if ids.numel() == 0:
                ids = ids.long()
        if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
            raise InvalidInput(f"{what} takes integer token ids, got {ids.dtype} values")
        if ids.ndim > 2:
            raise InvalidInput(f"{what} takes one id, a row [pos] or rows [batch, pos] of token ids, got shape {tuple(ids.shape)}")
        vocab = self.hf_model.get_input_embeddings().num_embeddings
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            bad = ids[(ids < 0) | (ids >= vocab)].unique()
            raise InvalidInput(f"{what}: token ids must lie in 0..{vocab - 1} for {self.cfg.name}, got {bad[:5].tolist()}")
        return ids

    def get_token_position(self, single_token: str | int, input: str | torch.Tensor, mode: str = "first",
                           prepend_bos: bool | None = None, padding_side: str | None = None) -> int:
        """Position of ``single_token`` in one text or one row of ids (``mode``: "first" or "last")."""
        if mode not in ("first", "last"):
            raise InvalidInput(f"mode must be 'first' or 'last', got {mode!r}")
        token = self.to_single_token(single_token) if isinstance(single_token, str) else single_token
        if not is_integer(token):
            raise InvalidInput(f"single_token must be a one-token string or a token id, got {single_token!r}")
        ids = self.to_tokens(input, prepend_bos=prepend_bos, padding_side=padding_side) if isinstance(input, str) \
            else torch.as_tensor(input)
        if ids.ndim == 2 and ids.shape[0] == 1:
            ids = ids[0]
        if ids.ndim != 1:
            raise InvalidInput(f"get_token_position takes one text or one row of ids, got shape {tuple(ids.shape)}")
        hits = (ids == token).nonzero().reshape(-1).tolist()
        if not hits:
            raise InvalidInput(f"token {token} ({self.to_single_str_token(token)!r}) does not occur in the input")
        return hits[0] if mode == "first" else hits[-1]

    def to_single_token(self, word: str) -> int:
        if not isinstance(word, str):
            raise InvalidInput(f"to_single_token takes a string, got {type(word).__name__}: {word!r}")
        ids = self._need_tokenizer()(word, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise InvalidInput(f"{word!r} is {len(ids)} tokens for {self.cfg.name}, not one: {ids}")
        return int(ids[0])

    # -- running --------------------------------------------------------------------------

    def run(self, input, **options) -> Output:
        """The engine's forward primitive on text, ids or :class:`Tokens` (see :func:`attnlab.engine.forward.run`)."""
        valid = [n for n in inspect.signature(run).parameters if n not in ("model", "tokens")] + ["padding_side", "prepend_bos"]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise InvalidInput(f"unknown keyword argument(s) {unknown} for model.run(); valid: {', '.join(valid)}")
        for flag in ("grad", "hidden", "stop_early"):  # grad="no" is truthy: it built a graph
            if flag in options:
                check_flag(options[flag], flag)
        tokens = self.tokens(input, padding_side=options.pop("padding_side", None), prepend_bos=options.pop("prepend_bos", None))
        return run(self, tokens, **options)

    def forward(
        self,
        input: Text | torch.Tensor,
        return_type: str | None = "logits",
        *,
        loss_per_token: bool = False,
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        stop_at_layer: int | None = None,
        **unknown: Any,
    ):
        """Logits for text or token ids; ``return_type``: "logits", "loss", "both", None, "hidden", "outputs".

        ``padding_side`` ("right"/"left", default ``model.padding_side``) decides where a
        batch of different lengths is padded: read ``[:, -1]`` only from a left-padded batch,
        or use :meth:`next_token_logits`. ``stop_at_layer=k`` (as in TransformerLens): run
        blocks ``0 .. k-1`` only and return the residual stream entering block ``k``
        (``[batch, pos, d_model]``; negative ``k`` counts from the end).
        """
        if unknown:
            raise InvalidInput(
                f"unknown keyword argument(s) {sorted(unknown)} for {self.cfg.name}(...); valid: return_type, "
                "loss_per_token, prepend_bos, padding_side, attention_mask, token_type_ids, stop_at_layer"
            )
        if return_type not in RETURN_TYPES:
            raise InvalidInput(f"unknown return_type {return_type!r}; valid: {', '.join(map(repr, RETURN_TYPES))}")
        check_flag(loss_per_token, "loss_per_token")
        check_flag(prepend_bos, "prepend_bos", none=True)
        if stop_at_layer is not None and return_type in ("loss", "both", "outputs"):
            raise InvalidInput(f"stop_at_layer returns the residual stream; return_type={return_type!r} needs the whole model")
        tokens = self.tokens(input, attention_mask=attention_mask, padding_side=padding_side, prepend_bos=prepend_bos)
        extra = self._token_type_kwargs(token_type_ids, tokens)
        grad = torch.is_grad_enabled()
        if stop_at_layer is not None:
            return run(self, tokens, logits=None, stop_at_layer=stop_at_layer, grad=grad, model_kwargs=extra).hidden
        if return_type == "outputs":
            from attnlab.engine.forward import _model_kwargs
            from attnlab.engine.state import ForwardState, forward_state

            state = ForwardState(n_rows=tokens.n_rows, pad_left=tokens.pad_left, n_positions=int(tokens.lengths.max()),
                                 lengths=tokens.lengths.cpu())
            self.ensure_routed()
            with forward_state(state):
                return self.hf_model(**_model_kwargs(self, tokens.to(self.device), extra))
        if return_type == "hidden" or not self.cfg.has_lm_head:
            if return_type in ("loss", "both"):
                raise InvalidInput(f"return_type={return_type!r} needs an LM head; {self.cfg.name} has none")
            out = run(self, tokens, logits=None, hidden=True, grad=grad, model_kwargs=extra) if not self.cfg.has_lm_head \
                else run(self, tokens, logits="all", hidden=True, grad=grad, model_kwargs=extra)
            return None if return_type is None else out.hidden
        if return_type is None:  # run for the hooks' sake: every layer, as plain PyTorch hooks may be anywhere
            run(self, tokens, logits=None, grad=grad, stop_early=False, model_kwargs=extra)
            return None
        out = run(self, tokens, logits="all", grad=grad, model_kwargs=extra)
        if return_type == "logits":
            return out.logits
        loss = self.loss(out.logits, tokens, per_token=loss_per_token)
        return loss if return_type == "loss" else (out.logits, loss)

    def loss(self, logits: Float[torch.Tensor, "batch pos vocab"], tokens: Tokens, *, per_token: bool = False):
        """Next-token cross-entropy over the real tokens (mean, or ``[batch, pos - 1]`` per token)."""
        if not self.cfg.is_causal:
            raise InvalidInput(f"next-token loss needs a causal LM; {self.cfg.name} is bidirectional")
        nll = -token_logprobs(logits, tokens)[:, 1:]  # column t predicts token t + 1
        if per_token:
            return nll
        counted = (tokens.mask[:, 1:] * tokens.mask[:, :-1]).to(nll.device)
        if int(counted.sum()) == 0:
            raise InvalidInput("the loss needs at least 2 tokens in some row")
        return (nll * counted).sum() / counted.sum()

    def next_token_logits(self, input: Text | torch.Tensor, *, attention_mask: torch.Tensor | None = None,
                          interventions: Intervention | Sequence[Intervention] = ()) -> Float[torch.Tensor, "batch vocab"]:
        """Logits after each prompt's last real token, ``[batch, vocab]``, whatever the padding.

        The safe way to read "the next token" from a batch of different lengths (reading
        ``model(prompts)[:, -1]`` from a right-padded batch reads padding).
        """
        tokens = self.tokens(input, attention_mask=attention_mask)
        return run(self, tokens, logits="last", interventions=interventions, grad=torch.is_grad_enabled()).logits

    @torch.no_grad()
    def generate(
        self,
        input: Text | torch.Tensor | Tokens,
        max_new_tokens: int = 20,
        *,
        interventions: Intervention | Sequence[Intervention] = (),
        fwd_hooks: Sequence = (),
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop_at_eos: bool = True,
        eos_token_id: int | Sequence[int] | torch.Tensor | None = None,
        return_type: str = "str",
        attention_mask: torch.Tensor | None = None,
        row_keys: torch.Tensor | Sequence[int] | None = None,
        **unknown: Any,
    ):
        """Continuation(s) of ``input`` with the KV cache, interventions and ``fwd_hooks`` active at every step.

        ``input``: text(s), token ids ``[batch, pos]`` (every column a token, as ``model(ids)``
        reads them, unless ``attention_mask`` marks padding) or :class:`Tokens`; padded rows are
        re-padded on the left, so the new tokens follow each prompt. Greedy unless ``do_sample=True``.
        ``eos_token_id``: one id or several (a row stops at any of them; default: the
        tokenizer's). Returns the new text per prompt (one string for one prompt), or the new
        token ids with ``return_type="tokens"``: the continuation only, without the prompt
        (TransformerLens returns the prompt followed by it). ``interventions``: one spec or a list of them.
        ``row_keys``: which prompt each row is, when these are a chunk of a larger set (per-prompt
        random draws such as resample ablation; default: the row index).
        """
        if unknown:
            raise InvalidInput(
                f"unknown keyword argument(s) {sorted(unknown)} for generate(); valid: max_new_tokens, interventions, "
                "fwd_hooks, do_sample, temperature, top_k, top_p, seed, stop_at_eos, eos_token_id, return_type, "
                "attention_mask, row_keys"
            )
        if not self.cfg.is_causal or not self.cfg.has_lm_head:
            raise UnsupportedModel(f"{self.cfg.name} is not a causal language model; generate() needs one")
        # numpy integers count as integers (is_integer); bools do not
        check_positive_int(max_new_tokens, "max_new_tokens")
        if return_type not in ("str", "tokens"):
            raise InvalidInput(f"return_type must be 'str' or 'tokens', got {return_type!r}" + (
                " (attnlab returns the new text or ids only, never the prompt with them as TransformerLens' "
                "'input' does: prepend the prompt yourself)" if return_type in ("input", "embeds") else ""))
        check_flag(do_sample, "do_sample")
        check_flag(stop_at_eos, "stop_at_eos")
        if not (_is_real(temperature) and 0 < temperature < float("inf")):
            raise InvalidInput(f"temperature must be a positive finite number, got {temperature!r}")
        if top_k is not None and (not is_integer(top_k) or top_k < 1):
            raise InvalidInput(f"top_k must be a positive integer or None, got {top_k!r}")
        if top_p is not None and not (_is_real(top_p) and 0 < top_p <= 1):
            raise InvalidInput(f"top_p must lie in (0, 1], got {top_p!r}")
        if seed is not None and not (is_integer(seed) and -(2**63) <= seed < 2**64):  # what torch's manual_seed takes
            raise InvalidInput(f"seed must be an integer in -2**63..2**64-1 or None, got {seed!r}")
        interventions = as_specs(interventions)
        tokens = self.tokens(input, attention_mask=attention_mask, padding_side="left")
        if tokens.side != "left" and not bool(tokens.mask.all()):  # right-padded Tokens: the new tokens follow each prompt
            tokens = self.pad([row[m.bool()].tolist() for row, m in zip(tokens.ids, tokens.mask)], padding_side="left")
        keys = check_row_keys(row_keys, tokens.n_rows)
        tok = self.tokenizer
        # the caller's ids are checked against the vocabulary; the tokenizer's default is taken as it is
        eos = eos_ids(eos_token_id, self.cfg.d_vocab_out) if eos_token_id is not None \
            else eos_ids(getattr(tok, "eos_token_id", None), None)
        with self.intervene(*interventions), self.hooks(fwd_hooks=fwd_hooks):
            new = decode(self, tokens, int(max_new_tokens), do_sample=do_sample, temperature=float(temperature),
                         top_k=None if top_k is None else int(top_k), top_p=top_p, seed=None if seed is None else int(seed),
                         stop_at_eos=stop_at_eos, eos_token_id=eos, pad_token_id=self.pad_token_id, row_keys=keys)
        if return_type == "tokens":
            return new
        decoded = [tok.decode(row.tolist(), skip_special_tokens=True) for row in new]
        return decoded[0] if isinstance(input, str) else decoded

    # -- TransformerLens' modules and switches ---------------------------------------------

    @property
    def ln_final(self) -> nn.Module:
        """The final norm as TransformerLens exposes it: ``model.ln_final(resid)``, weight and bias applied.

        ``model.unembed(model.ln_final(resid))`` gives the logits of a final residual stream.
        """
        holder = getattr(self.tree, "ln_final", None)
        if holder is None:
            raise NotSupported(f"{self.cfg.name} has no final norm before its unembedding (ln_final)")
        return holder  # (an AttributeError raised here is re-raised by __getattr__ with _TL_MODEL_HINTS' message)

    def unembed(self, residual: Float[torch.Tensor, "... d_model"]) -> Float[torch.Tensor, "... d_vocab"]:
        """``residual @ W_U + b_U`` (TransformerLens' ``model.unembed``); apply ``model.ln_final`` first."""
        if not isinstance(residual, torch.Tensor) or not residual.is_floating_point() or residual.ndim < 1 \
                or residual.shape[-1] != self.cfg.d_model:
            got = f"a {residual.dtype} tensor of shape {tuple(residual.shape)}" if isinstance(residual, torch.Tensor) \
                else type(residual).__name__
            raise InvalidInput(f"unembed takes a float residual stream [..., d_model={self.cfg.d_model}], got {got}")
        return residual @ self.W_U.to(residual.dtype) + self.b_U.to(residual.dtype)

    def all_head_labels(self) -> list[str]:
        """``["L0H0", "L0H1", ...]``, the labels ``stack_head_results`` uses."""
        return [f"L{L}H{h}" for L in range(self.cfg.n_layers) for h in range(self.cfg.n_heads)]

    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """Accepted for TransformerLens scripts: ``blocks.L.attn.hook_result`` is always available."""
        _check_switch("set_use_attn_result", use_attn_result)

    def _no_switch(self, name: str, value: bool, hint: str) -> None:
        _check_switch(name, value)
        if value:
            raise NotSupported(f"{name}(True): {hint}")

    def set_use_split_qkv_input(self, use_split_qkv_input: bool) -> None:
        """``blocks.L.hook_q_input`` / ``hook_k_input`` / ``hook_v_input`` always work when named; this switch (as in
        TransformerLens) only adds them to what ``run_with_cache()`` caches without ``names_filter``.

        They are left out by default because each is a copy of the stream per head (per kv head for k and v).
        """
        _check_switch("set_use_split_qkv_input", use_split_qkv_input)
        self._cache_split_inputs = use_split_qkv_input

    def set_use_attn_in(self, use_attn_in: bool) -> None:
        self._no_switch("set_use_attn_in", use_attn_in,
                        "attnlab has no hook_attn_in; hook blocks.L.hook_q_input, hook_k_input and hook_v_input")

    def set_use_hook_mlp_in(self, use_hook_mlp_in: bool) -> None:
        """Accepted for TransformerLens scripts: ``blocks.L.hook_mlp_in`` is always available."""
        _check_switch("set_use_hook_mlp_in", use_hook_mlp_in)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            hint = _TL_MODEL_HINTS.get(name)
            if hint is None:
                raise
            raise NotSupported(f"HookedModel has no {name!r} (a TransformerLens name): {hint}") from None

    def hook_points(self) -> list[HookPoint]:
        """Every hook point (TransformerLens' ``hook_points()``; ``hook_dict`` maps their names to them)."""
        return list(self.hook_dict.values())

    def __reduce__(self):
        """Deep copies and pickles rebuild the wrapper around a copy of the HF model and tokenizer.

        The hook tree is tied to one HF model (its dispatchers sit on that model's modules), so it
        is never copied: the copy gets its own, with no hook attached, like a freshly wrapped model,
        whatever blocks are open here or in other threads (a dispatcher copied with an HF module
        does nothing in the copy, see :class:`~attnlab.engine.hooks.Plumbing`).
        """
        if self.bridge is not None:
            raise NotSupported("a HookedModel over a TransformerBridge cannot be copied or pickled: copy the HF "
                               "model (copy.deepcopy(model.hf_model)) and wrap it again")
        return (_rewrapped, (self.hf_model, self.tokenizer, self.cfg.name, self.padding_side, self._cache_split_inputs))

    def __repr__(self) -> str:
        c = self.cfg
        return (
            f"HookedModel({c.name!r}: {c.architecture}, {c.n_layers} layers x {c.n_heads} heads "
            f"({c.n_kv_heads} kv), d_head={c.d_head}, {'causal' if c.is_causal else 'bidirectional'})"
        )


def _check_switch(name: str, value) -> None:
    """TransformerLens' ``set_use_*`` switches take a bool: ``set_use_attn_in("False")`` was refused as ``(True)``,
    ``set_use_attn_result("no")`` accepted."""
    if not isinstance(value, bool):
        raise InvalidInput(f"{name} takes True or False, got {value!r}")


def _rewrapped(hf_model: nn.Module, tokenizer: Any, name: str, padding_side: str, cache_split_inputs: bool) -> HookedModel:
    """A HookedModel rebuilt by ``copy.deepcopy`` or ``pickle`` (see ``HookedModel.__reduce__``)."""
    modes = [module.training for module in hf_model.modules()]  # wrapping sets eval mode; a copy keeps the original's
    model = HookedModel(hf_model, tokenizer, name=name)
    model.train(modes[0])
    for module, training in zip(hf_model.modules(), modes):
        module.training = training
    model.padding_side = padding_side
    model._cache_split_inputs = cache_split_inputs
    return model
