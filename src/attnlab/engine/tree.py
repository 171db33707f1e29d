"""The named tree of hook points of one HF model: attention sites and block edges.

One tree per HF model, stored on the model itself, so wrapping the same model twice gives
two wrappers over the same hook points (both work; an edit made through either applies to
forwards of that model in the block's context).

Attention sites (``blocks.L.attn.hook_q`` ... ``hook_z``) are called by attnlab's attention
function. Block edges sit on the HF model's own modules; each has a dispatcher (a PyTorch
hook on that module) registered only while some block uses the point (see
:class:`~attnlab.engine.hooks.OnDemand`). Each norm has a ``hook_scale`` point
(``blocks.L.ln1.hook_scale``, ``ln_final.hook_scale``, ...): the divisor the norm applies,
which TransformerLens-style analyses freeze. What each point holds per architecture is
listed in ``docs/concepts.md``.

The holders double as TransformerLens' per-layer weight views: ``blocks[L].attn.W_Q``,
``blocks[L].mlp.W_in``, ``blocks[L].ln1.w`` (see :mod:`attnlab.engine.weights`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch
from einops import einsum, rearrange
from torch import nn

from attnlab.engine.attention import AttentionHooks, _left_behind, attach, capture_rotary
from attnlab.engine.hooks import Hook, HookPoint, OnDemand, Plumbing
from attnlab.engine.layout import BlockLayout, ModelLayout
from attnlab.engine.locations import norm_path
from attnlab.engine.norms import Norm, describe_norm
from attnlab.engine.state import current_state
from attnlab.engine.weights import AttentionWeights, MlpWeights, head_out_weight
from attnlab.errors import UnsupportedModel

__all__ = ["HookTree", "tree_of", "EDGE_SITES", "SPLIT_INPUTS", "NORM_POINTS", "head_out_weight"]

_TREE_ATTR = "_attnlab_tree"
_MAX_NESTING = 32  # passes started by hooks inside a block, one inside another

#: Block-edge hook names (after ``blocks.L.``) and model-level ones, in forward order.
EDGE_SITES = (
    "hook_resid_pre", "hook_q_input", "hook_k_input", "hook_v_input", "attn.hook_q_pre_norm", "attn.hook_k_pre_norm",
    "attn.hook_result", "hook_attn_out", "hook_resid_mid", "mlp.hook_pre", "mlp.hook_pre_linear",
    "hook_mlp_in", "mlp.hook_post", "hook_mlp_out", "hook_resid_post", "hook_normalized_resid_post",
)
#: Per-head copies of the stream that only one head's q, k or v reads (TransformerLens' split inputs).
SPLIT_INPUTS = ("hook_q_input", "hook_k_input", "hook_v_input")
MODEL_SITES = ("hook_embed", "hook_pos_embed", "hook_token_type_embed", "ln_final.hook_normalized")

#: Norms with a ``hook_scale`` point: per block (after ``blocks.L.``) and model-level.
NORM_POINTS = ("ln1", "ln2", "ln1_post", "ln2_post", "ln_final", "embed_ln")


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _with_first(output, value):
    return (value, *output[1:]) if isinstance(output, tuple) else value


class _Tap(torch.autograd.Function):
    """The identity, keeping the gradient that flows back through it in ``box``.

    A zero-valued term that lets a hook see a gradient must not send it on upstream as well:
    the tensor upstream takes exactly that part out again (and nothing else that reaches it).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, box: list) -> torch.Tensor:
        ctx.box = box
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        ctx.box[:] = [grad]
        return grad, None


def _call(point: HookPoint, x: torch.Tensor) -> torch.Tensor:
    """Run ``point`` on a ``[batch, pos, ...]`` tensor at the block edges."""
    if not point._forward_hooks:
        return x
    state = current_state()
    past = state.past if state is not None else 0
    return point(x, info=Hook(point, q_col=past, q_len=x.shape[1], k_col=past, k_len=x.shape[1], state=state))


class _Attn(AttentionWeights, AttentionHooks):
    """The attention hook points of one layer, and its weights by TransformerLens names."""

    def __init__(self, layout: BlockLayout, n_heads: int):
        super().__init__(layout.index)
        self.block_layout = layout
        self.n_heads = n_heads


class _Mlp(MlpWeights, nn.Module):
    """The MLP hook points of one layer, and its weights by TransformerLens names."""

    def __init__(self, layout: BlockLayout):
        super().__init__()
        self.block_layout = layout


class _Norm(nn.Module):
    """A norm's ``hook_scale`` and ``hook_normalized`` points, with its weight ``w`` and bias ``b`` (views; Gemma multiplies by ``1 + w``)."""

    def __init__(self, norm: Norm | None):
        super().__init__()
        self.norm = norm  # None: a norm attnlab cannot describe (it still gets ln_final.hook_normalized)

    @property
    def w(self) -> torch.Tensor | None:
        return self.norm.weight if self.norm is not None else None

    @property
    def b(self) -> torch.Tensor | None:
        return self.norm.bias if self.norm is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The norm applied to ``x`` (weight and bias included), computed aside: no hook fires."""
        if self.norm is None:
            raise UnsupportedModel("this norm is neither a LayerNorm nor an RMSNorm, so attnlab cannot apply it")
        return self.norm.output_with_scale(x, self.norm.scale(x))


class _Block(nn.Module):
    def __init__(self, layout: BlockLayout, n_heads: int):
        super().__init__()
        self.attn = _Attn(layout, n_heads)
        self.mlp = _Mlp(layout)


class HookTree(nn.Module):
    """Every hook point of one HF model, named like TransformerLens, with its dispatchers."""

    def __init__(self, layout: ModelLayout, attention_modules: list[nn.Module], n_heads: int):
        super().__init__()
        self.layout = layout
        self.n_heads = n_heads
        blocks = layout.blocks or [BlockLayout(i, "unknown", module, module) for i, module in enumerate(attention_modules)]
        self.blocks = nn.ModuleList([_Block(b, n_heads) for b in blocks])
        self.norms: dict[str, Norm] = self._describe_norms()  # before any dispatcher exists: probes run clean
        for block, module in zip(self.blocks, attention_modules):
            attach(module, block.attn)
            # the pre-rotary sites need the call's rotary embedding: a pre-hook on the module, while they are hooked
            capture = OnDemand(lambda m=module, a=block.attn: m.register_forward_pre_hook(
                Plumbing(capture_rotary(a)), with_kwargs=True))
            block.attn.hook_q_pre_rotary._needs = [capture]
            block.attn.hook_k_pre_rotary._needs = [capture]
        self._needs: dict[str, list[OnDemand]] = {}
        # {(thread, layer): [(the call's kwargs, resid_pre), ...]}: the block calls running now that resid_mid
        # edits need (see _build_block)
        self._resid_pre: dict[tuple[int, int], list] = {}
        self._build_edges()
        self.hook_dict: dict[str, HookPoint] = {}
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name
                self.hook_dict[name] = module

    def __reduce__(self):
        # Hook points belong to one model (locks, handles, dispatchers registered on its modules):
        # a deep copy or pickle of the HF model holds None instead, and wrapping the copy builds its own.
        return (_left_behind, ())

    # -- building ---------------------------------------------------------------------------

    def _point(self, parent: nn.Module, attr: str, layer: int | None, needs: list[OnDemand]) -> HookPoint:
        point = HookPoint(layer, attr.removeprefix("hook_"))
        parent.add_module(attr, point)
        point._needs = needs
        return point

    def _on_output(self, module: nn.Module, fn: Callable, *, prepend: bool = False) -> OnDemand:
        """A dispatcher replacing ``module``'s output (its first element for tuples).

        ``prepend``: run before the module's other forward hooks (a norm's scale dispatcher
        recomputes the norm's output, which the edge dispatchers on the same module must see).
        """

        def hook(mod, args, output):
            new = fn(_first(output), args)
            return None if new is None or new is _first(output) else _with_first(output, new)

        return OnDemand(lambda: module.register_forward_hook(Plumbing(hook), prepend=prepend))

    def _on_input(self, module: nn.Module, fn: Callable) -> OnDemand:
        """A dispatcher replacing ``module``'s first input (positional or ``hidden_states=``)."""

        def hook(mod, args, kwargs):
            if args:
                new = fn(args[0])
                return None if new is args[0] else ((new, *args[1:]), kwargs)
            if "hidden_states" in kwargs:
                new = fn(kwargs["hidden_states"])
                return None if new is kwargs["hidden_states"] else (args, {**kwargs, "hidden_states": new})
            return None

        return OnDemand(lambda: module.register_forward_pre_hook(Plumbing(hook), with_kwargs=True))

    def _build_edges(self) -> None:
        layout = self.layout
        top = [("hook_embed", layout.embed), ("hook_pos_embed", layout.pos_embed), ("hook_token_type_embed", layout.token_type_embed)]
        for attr, module in top:
            if module is not None:
                self._edge_output(self, attr, None, module, per_row=attr == "hook_pos_embed")
        if layout.final_norm is not None:
            self.ln_final = _Norm(self.norms.get("ln_final"))
            self._edge_output(self.ln_final, "hook_normalized", None, layout.final_norm)
        for b in layout.blocks:
            self._build_block(self.blocks[b.index], b)
        self._build_scales()

    def _norm_modules(self) -> dict[str, nn.Module]:
        """Every norm attnlab can name, by TransformerLens' path (``blocks.3.ln1``, ``ln_final``)."""
        found = {"embed_ln": self.layout.embed_ln, "ln_final": self.layout.final_norm}
        for b in self.layout.blocks:
            for attr in ("ln1", "ln2", "ln1_post", "ln2_post"):
                found[norm_path(b.index, attr)] = getattr(b, attr)
        return {k: v for k, v in found.items() if v is not None}

    def _describe_norms(self) -> dict[str, Norm]:
        described = {path: describe_norm(module) for path, module in self._norm_modules().items()}
        return {path: norm for path, norm in described.items() if norm is not None}

    def _build_scales(self) -> None:
        # ln_final's output point is built with the edges (a norm attnlab cannot describe has it too); Gemma's
        # post-norms give hook_attn_out / hook_mlp_out, which a second point on the same output would race with
        edge_modules = [m for b in self.layout.blocks for m in (b.attn_out, b.mlp_out) if m is not None]
        for path, norm in self.norms.items():
            parent: nn.Module = self
            *parents, attr = path.split(".")
            for part in parents:
                parent = parent[int(part)] if isinstance(parent, nn.ModuleList) else getattr(parent, part)
            holder = getattr(parent, attr, None)  # ln_final exists already (it holds hook_normalized)
            if holder is None:
                holder = _Norm(norm)
                parent.add_module(attr, holder)
            layer = int(parents[1]) if parents else None
            self._point(holder, "hook_scale", layer, [self._on_output(norm.module, self._scale_dispatch(holder, norm), prepend=True)])
            if path != "ln_final" and not any(norm.module is m for m in edge_modules):
                self._edge_output(holder, "hook_normalized", layer, norm.module)  # after the scale dispatcher: sees its edit

    def _scale_dispatch(self, holder: nn.Module, norm: Norm) -> Callable:
        """The norm's scale ``[batch, pos, 1]`` through ``hook_scale``; an edited scale recomputes the norm's output."""

        def dispatch(output, args):
            point = holder.hook_scale
            if not point._forward_hooks or not args:
                return None
            x = args[0]
            scale = norm.scale(x)
            given = scale.clone()  # the hook's to edit, in place too; scale stays as the norm computed it
            new = _call(point, given)
            if new is not given or not torch.equal(new, scale):
                return norm.output_with_scale(x, new)
            if new.requires_grad and any(t._backward_hooks or t.retains_grad for t in (new, given)):
                # someone reads the gradient of an unedited scale: a term of value 0 through the scale only, so
                # they see d(output)/d(scale), taken out again where it would reach x (the norm's own path has it)
                box: list = []
                scale.register_hook(lambda g: g - box[0] if box else g)
                tapped, steady = _Tap.apply(new, box), x.detach()
                return output + (norm.output_with_scale(steady, tapped) - norm.output_with_scale(steady, tapped.detach()))
            return None

        return dispatch

    def _edge_output(self, parent, attr, layer, module, *, per_row: bool = False) -> HookPoint:
        """``per_row``: an output computed once for the whole batch (HF's position embeddings, ``[1, pos, d]`` for
        ids it made itself) is given to the hook as one writable row per prompt, so an edit of a row stays in it."""
        holder: list[HookPoint] = []

        def dispatch(x, args):
            state = current_state()
            if per_row and holder[0]._forward_hooks and x.shape[0] == 1 and state is not None and (state.n_rows or 1) > 1:
                x = x.expand(state.n_rows, *x.shape[1:]).clone()
            return _call(holder[0], x)

        needs = [self._on_output(module, dispatch)]
        holder.append(self._point(parent, attr, layer, needs))
        return holder[0]

    def _edge_input(self, parent, attr, layer, module, *, copy: bool = False) -> HookPoint:
        """``copy``: the hook gets a copy (the module's input is also the residual the block adds to)."""
        holder: list[HookPoint] = []
        needs = [self._on_input(module, lambda x: _call(holder[0], x.clone() if copy and holder[0]._forward_hooks else x))]
        holder.append(self._point(parent, attr, layer, needs))
        return holder[0]

    def _build_block(self, block: _Block, b: BlockLayout) -> None:
        i, stacks = b.index, self._resid_pre

        # resid_mid edits need the resid_pre of their own block call. Each call (per thread) pushes it,
        # tagged with the call's kwargs dict, on entry and pops its own entry on exit, also when it raises
        # (a pass a hook starts inside the block pushes and pops above the outer one; a call that raised
        # before pushing pops nothing). When the last resid_mid block closes, every thread's entries of
        # this layer go: a call another thread's block was running in meanwhile left its entry behind.
        def keep_resid_pre(mod, args, kwargs):
            x = args[0] if args else kwargs.get("hidden_states")
            if x is None:
                return None
            new = _call(block.hook_resid_pre, x)
            if popping.active:  # the exit hook is on the layer: this call's entry is popped when it ends
                stack = stacks.setdefault((threading.get_ident(), i), [])
                del stack[:-_MAX_NESTING]
                stack.append((kwargs, new))
            if new is x:
                return None
            return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})

        def pop_resid_pre(module, args, kwargs, output):
            stack = stacks.get((threading.get_ident(), i))
            if stack and stack[-1][0] is kwargs:
                stack.pop()

        def forget_layer():
            for key in [k for k in list(stacks) if k[1] == i]:
                stacks.pop(key, None)

        popping = OnDemand(lambda: b.layer.register_forward_hook(Plumbing(pop_resid_pre), with_kwargs=True, always_call=True),
                           on_remove=forget_layer)
        resid_pre_input = OnDemand(lambda: b.layer.register_forward_pre_hook(Plumbing(keep_resid_pre), with_kwargs=True))
        self._point(block, "hook_resid_pre", i, [resid_pre_input])
        if b.kind == "unknown":
            self._edge_output(block, "hook_resid_post", i, b.layer)
            return
        if b.out_proj is not None:
            self._point(block.attn, "hook_result", i, [self._on_output(b.out_proj, self._result_dispatch(block, b))])
        if b.kind == "post_norm":
            self._edge_output(block, "hook_attn_out", i, b.attn_out)
            self._edge_input(block, "hook_resid_mid", i, b.ln1)
            self._edge_output(block, "hook_mlp_out", i, b.mlp_out)
            self._edge_input(block, "hook_resid_post", i, b.ln2)
            self._edge_output(block, "hook_normalized_resid_post", i, b.layer)
        else:
            def attn_out(x, args):
                x = _call(block.hook_attn_out, x)
                stack = stacks.get((threading.get_ident(), i))
                if stack and block.hook_resid_mid.is_hooked():  # in this context (another thread's hook: not ours)
                    resid_pre = stack[-1][1]
                    mid = resid_pre + x  # what the block computes next
                    new_mid = _call(block.hook_resid_mid, mid)
                    again = resid_pre + x  # the block's sum, whatever the hook did to mid in place
                    if new_mid is not mid or not torch.equal(new_mid, again):  # the block adds x to resid_pre: shift x
                        x = x + (new_mid - again)
                    elif mid._backward_hooks:  # a gradient hook on resid_mid: let the gradient pass through mid
                        x = x + ((mid - mid.detach()) - (again - again.detach()))  # same value and graph: they cancel
                return x

            attn_dispatch = self._on_output(b.attn_out, attn_out)
            self._point(block, "hook_attn_out", i, [attn_dispatch])
            self._point(block, "hook_resid_mid", i, [popping, resid_pre_input, attn_dispatch])
            self._edge_output(block, "hook_mlp_out", i, b.mlp_out)
            self._edge_output(block, "hook_resid_post", i, b.layer)
        mlp_reads = b.mlp_in if b.kind == "post_norm" else b.ln2  # BERT's MLP reads the normalised stream
        if mlp_reads is not None:
            self._edge_input(block, "hook_mlp_in", i, mlp_reads, copy=True)  # an in-place edit must not reach the stream
        self._build_split_inputs(block, b, [popping, resid_pre_input])
        if b.mlp_in is not None:
            self._edge_output(block.mlp, "hook_pre", i, b.mlp_in)
        if b.mlp_in_linear is not None:
            self._edge_output(block.mlp, "hook_pre_linear", i, b.mlp_in_linear)
        if b.mlp_down is not None:
            self._edge_input(block.mlp, "hook_post", i, b.mlp_down)

    def _build_split_inputs(self, block: _Block, b: BlockLayout, keep_resid_pre: list[OnDemand]) -> None:
        """``hook_q_input`` / ``hook_k_input`` / ``hook_v_input``: ``resid_pre`` copied once per head (kv head for k, v).

        TransformerLens' split inputs, for path patching into one head's query, key or value
        only. The copies are made only while a point is hooked; a head whose copy comes back
        edited gets its q (k, v) projected from it (through ``ln1``'s own computation, so
        edits at ``ln1.hook_scale`` / ``hook_normalized`` do not reach it), and every other
        head keeps the model's own value. With gradients on, an unedited head's gradient
        reaches ``resid_pre`` and the weights by the model's own path (through ``ln1`` and any
        edit of it), so watching changes no gradient; its copy gets its gradient from a side
        branch of value zero, as seen through the unedited ``ln1`` with frozen weights. An
        edited head's gradient goes through its copy.
        """
        i, stacks, attn = b.index, self._resid_pre, block.attn
        norm = b.ln1 if b.kind in ("pre_norm", "sandwich") else None  # BERT's attention reads resid_pre itself
        described = self.norms.get(norm_path(i, "ln1")) if norm is not None else None
        try:
            for which in "qkv":
                attn._per_head(which)
        except UnsupportedModel:
            return  # a projection attnlab cannot slice per head: no split inputs

        def project(which: str, part: torch.Tensor) -> torch.Tensor:
            point = getattr(block, f"hook_{which}_input")
            stack = stacks.get((threading.get_ident(), i))
            if not stack or not point.is_hooked():
                return part
            resid_pre = stack[-1][1]
            weight, bias = attn._per_head(which)  # [group, d_model, d_head], [group, d_head]
            spread = resid_pre.unsqueeze(2).expand(-1, -1, weight.shape[0], -1)
            given = spread.clone(memory_format=torch.contiguous_format)  # a copy even for one kv head
            new = _call(point, given)
            edited = (new != resid_pre.unsqueeze(2)).any(dim=-1).flatten(0, 1).any(dim=0)  # [group]; in-place edits too
            if given.requires_grad and not new.requires_grad:  # a detached copy cuts every head's gradient
                edited = torch.ones_like(edited)
            grad = torch.is_grad_enabled() and new.requires_grad
            if not grad and not bool(edited.any()):
                return part
            own = rearrange(part, "b p (g d) -> b p g d", g=weight.shape[0])
            split = per_head(new, weight, bias, norm.forward if norm is not None else None)
            if grad:  # the copies' own gradients: a side branch of value 0 that no weight sees, taken out of
                # resid_pre's gradient again for unedited heads (they reach it by the model's own path)
                box: list = []
                unedited = (~edited)[:, None]
                spread.register_hook(lambda g: g - box[0] * unedited.to(g.dtype) if box else g)
                side = per_head(_Tap.apply(new, box), weight.detach(), bias.detach(),
                                frozen_norm if norm is not None else None)
                own = own + (side - side.detach())
            return rearrange(torch.where(edited[:, None], split.to(own.dtype), own), "b p g d -> b p (g d)")

        def frozen_norm(x: torch.Tensor) -> torch.Tensor:
            """ln1 as the model computes it, unedited, with its weights out of the graph (no module call: no hooks)."""
            if described is None:  # a norm attnlab cannot describe: its weights see the side branch too
                return norm.forward(x)
            normalized = described.normalize(x, described.scale(x))  # float32 at least, float64 stays float64
            return described.weigh(normalized, frozen=True).to(x.dtype)

        def per_head(x, weight, bias, normalize):
            """Each head's q (k, v) from its own copy of the stream."""
            if normalize is not None:
                x = normalize(x)
            return einsum(x, weight.to(x.dtype), "b p g m, g m d -> b p g d") + bias.to(x.dtype)

        if b.qkv_proj is not None and b.q_proj is None:  # GPT-2's fused c_attn: [q | k | v]
            def fused(output, args):
                parts = output.chunk(3, dim=-1)
                new = [project(which, part) for which, part in zip("qkv", parts)]
                return None if all(n is p for n, p in zip(new, parts)) else torch.cat(new, dim=-1)

            dispatch = self._on_output(b.qkv_proj, fused)
            for which in "qkv":
                self._point(block, f"hook_{which}_input", i, [*keep_resid_pre, dispatch])
            return
        for which in "qkv":
            module = getattr(b, f"{which}_proj")
            pre_norm = self._pre_norm(block, b, which) if which in "qk" else None

            def on_output(output, args, which=which, pre_norm=pre_norm):
                out = project(which, output)
                return out if pre_norm is None else pre_norm(out)

            dispatch = self._on_output(module, on_output)
            self._point(block, f"hook_{which}_input", i, [*keep_resid_pre, dispatch])
            if pre_norm is not None:
                self._point(block.attn, f"hook_{which}_pre_norm", i, [dispatch])

    def _pre_norm(self, block: _Block, b: BlockLayout, which: str) -> Callable | None:
        """``attn.hook_q_pre_norm`` / ``hook_k_pre_norm``: the projection's output per (kv) head, before the model's q/k norm.

        Only where the attention normalises q and k itself (``q_norm`` / ``k_norm``: Gemma-3,
        Qwen3, OLMo-2); TransformerLens' ``hook_q`` / ``hook_k`` are read here on those models.
        Elsewhere the projection's output is ``hook_q_pre_rotary`` already. The point runs in the same dispatcher as
        the split inputs, after them: an edited ``hook_q_input`` reaches it, as in the forward order.
        """
        if not isinstance(getattr(b.attention, f"{which}_norm", None), nn.Module):
            return None
        name, d_head = f"hook_{which}_pre_norm", block.attn._per_head(which)[0].shape[-1]

        def pre_norm(output: torch.Tensor) -> torch.Tensor:
            point = getattr(block.attn, name)
            if not point.is_hooked():
                return output
            given = rearrange(output, "b p (h d) -> b p h d", d=d_head).clone()  # a copy: the output is the model's own
            return rearrange(_call(point, given), "b p h d -> b p (h d)")

        return pre_norm

    def _result_dispatch(self, block: _Block, b: BlockLayout) -> Callable:
        """Per-head outputs of the output projection, ``[batch, pos, head, d_model]``, only when hooked.

        Each head's z times its slice of the output projection; the heads plus the bias sum
        to the projection's output, so an unedited hook changes nothing (up to rounding).
        """

        def dispatch(output, args):
            point = block.attn.hook_result
            if not point.is_hooked():  # hooks of other threads' blocks: this context keeps the model's own output
                return None
            heads = rearrange(args[0], "b p (h d) -> b p h d", h=self.n_heads)
            weight = head_out_weight(b.out_proj, self.n_heads).to(heads.dtype)  # [head, d_head, d_model]
            result = _call(point, einsum(heads, weight, "b p h d, h d m -> b p h m"))
            bias = getattr(b.out_proj, "bias", None)
            total = result.sum(dim=2)
            return total + bias if bias is not None else total

        return dispatch

    # -- using ------------------------------------------------------------------------------

    def needs(self, name: str) -> list[OnDemand]:
        return getattr(self.hook_dict[name], "_needs", [])


def tree_of(hf_model: nn.Module, build: Callable[[], HookTree]) -> HookTree:
    """The hook tree stored on ``hf_model``, built on first use."""
    tree = hf_model.__dict__.get(_TREE_ATTR)
    if tree is None:
        tree = build()
        object.__setattr__(hf_model, _TREE_ATTR, tree)
    return tree
