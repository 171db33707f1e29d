"""TransformerLens' residual-stream analyses on attnlab's cache: decompositions, frozen norms, logit attributions.

Every method splits a residual stream into components that **sum to it exactly** (up to
float rounding), on each block shape:

* pre-norm (GPT-2, Llama): the stream is a plain sum of the embeddings and every attention
  and MLP output, as in TransformerLens;
* sandwich (Gemma): ``hook_attn_out``/``hook_mlp_out`` are already after the post-norms, so
  layer-level decompositions are plain sums too; per-head and per-neuron components go
  through the post-attention / post-MLP RMSNorm with its scale *frozen* (the scale the
  forward pass computed, cached at ``blocks.L.ln1_post.hook_scale``): ``r_h / s * (1 + w)``;
* post-norm (BERT): each LayerNorm rescales the whole stream, so every component is carried
  through every LayerNorm after it with that LayerNorm's scale frozen
  (``w * (c - mean(c)) / s``), and the LayerNorms' biases are one more component,
  ``"bias"``.

Targets (``layer`` in ``0..n_layers``, as in TransformerLens): ``resid_pre[layer]``
(``resid_mid[layer]`` with ``mlp_input=True``), and for ``layer == n_layers``
``resid_post[n_layers - 1]`` — on BERT the last block's sum *before* its output LayerNorm,
TransformerLens' ``hook_resid_post``.

``apply_ln_to_stack`` is TransformerLens': centre (LayerNorm) and divide by the scale of the
norm that reads the target, cached or recomputed from the cached input; the norm's weight is
not applied (TransformerLens folds it into the next weights; attnlab's weights are the HF
ones, so :meth:`HookedModel.tokens_to_residual_directions` multiplies it into ``W_U``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float

from attnlab.engine.locations import hook_name, norm_path, scale_name
from attnlab.engine.norms import Norm
from attnlab.engine.precision import computing_dtype
from attnlab.errors import InvalidInput, InvalidLocation, UnsupportedModel, is_integer

__all__ = ["ResidualAnalyses", "apply_slice"]

SliceLike = None | int | tuple | slice | Sequence[int] | torch.Tensor

_EMBEDS = (("embed", "hook_embed"), ("pos_embed", "hook_pos_embed"), ("token_type_embed", "hook_token_type_embed"))


def apply_slice(tensor: torch.Tensor, index: SliceLike, dim: int, what: str = "slice") -> torch.Tensor:
    """TransformerLens' ``Slice``: None keeps all, an int drops the axis, a tuple is ``slice(*t)``, a list picks.

    Checked against the axis it indexes: an index out of range, a float or a mask of the wrong
    length is refused naming ``what`` (``pos_slice``, ``batch_slice``, ``neuron_slice``) and the valid range.
    """
    if index is None:
        return tensor
    size = tensor.shape[dim]
    valid = f"{what} indexes an axis of size {size}: give None, an int in {-size}..{size - 1}, a slice, a (start, stop[, step]) tuple, a list of ints or an integer / bool tensor"
    if isinstance(index, torch.Tensor) and index.ndim == 0 and not index.is_floating_point() and not index.is_complex() \
            and index.dtype != torch.bool:
        index = int(index)
    if isinstance(index, tuple):
        if not 1 <= len(index) <= 3 or not all(i is None or is_integer(i) for i in index):
            raise InvalidInput(f"{valid}; got the tuple {index!r}")
        index = slice(*(None if i is None else int(i) for i in index))
    elif isinstance(index, (list, range)):
        if not all(is_integer(i) for i in index):
            raise InvalidInput(f"{valid}; got {index!r}")
        index = torch.as_tensor([int(i) for i in index], dtype=torch.long)
    if is_integer(index):
        if not -size <= index < size:
            raise InvalidInput(f"{valid}; got {index!r}, out of range")
        index = int(index)
    elif isinstance(index, slice):
        if not all(i is None or is_integer(i) for i in (index.start, index.stop, index.step)) or (index.step or 1) < 1:
            raise InvalidInput(f"{valid} (slices need integer bounds and a positive step); got {index!r}")
    elif isinstance(index, torch.Tensor):
        if index.dtype == torch.bool:
            if index.ndim != 1 or index.shape[0] != size:
                raise InvalidInput(f"{valid}; got a bool mask of shape {tuple(index.shape)}")
        elif index.is_floating_point() or index.is_complex() or index.ndim > 1:
            raise InvalidInput(f"{valid}; got a {index.dtype} tensor of shape {tuple(index.shape)}")
        elif index.numel() and not (-size <= int(index.min()) and int(index.max()) < size):
            raise InvalidInput(f"{valid}; got {index.tolist()}, out of range")
        index = index.to(tensor.device)
    else:
        raise InvalidInput(f"{valid}; got {index!r}")
    parts: list = [slice(None)] * tensor.ndim
    parts[dim] = index
    return tensor[tuple(parts)]


class _Groups:
    """Components of the stream being built, by category, each a ``[k, ..., d_model]`` stack with labels."""

    def __init__(self):
        self.items: list[tuple[str, list[str], torch.Tensor]] = []
        self.bias: torch.Tensor | None = None  # biases that are not anyone's component (b_O, b_out, LN biases)

    def add(self, category: str, labels: list[str], stack: torch.Tensor) -> None:
        self.items.append((category, labels, stack))

    def add_bias(self, value: torch.Tensor) -> None:
        self.bias = value if self.bias is None else self.bias + value

    def freeze(self, norm: Norm, scale: torch.Tensor) -> None:
        """Carry everything through ``norm`` with its scale frozen; its bias joins ``bias``."""
        self.items = [(c, labels, _frozen(norm, stack, scale)) for c, labels, stack in self.items]
        if self.bias is not None:
            self.bias = _frozen(norm, self.bias, scale)
        if norm.bias is not None:
            self.add_bias(norm.bias.to(computing_dtype(norm.bias.dtype)))

    def select(self, *categories: str) -> tuple[list[str], list[torch.Tensor]]:
        labels, stacks = [], []
        for category in categories:
            for c, names, stack in self.items:
                if c == category:
                    labels += names
                    stacks.append(stack)
        return labels, stacks


def _frozen(norm: Norm, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``norm``'s linear part with a frozen scale: centre (LayerNorm), divide, multiply by the weight."""
    return norm.weigh(norm.normalize(x, scale), bias=False)


class ResidualAnalyses:
    """The analysis methods of :class:`~attnlab.engine.cache.ActivationCache` (mixed into it)."""

    cache_dict: dict[str, torch.Tensor]
    has_batch_dim: bool

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def _n(self) -> int:
        return self.model.cfg.n_layers

    def _kind(self, what: str) -> str:
        kind = self.model.layout.kind
        if kind == "unknown":
            raise UnsupportedModel(f"{what}: attnlab does not know the block layout of {self.model.cfg.name}")
        return kind

    def _layer(self, layer: int | None, what: str) -> int:
        n = self._n
        if layer is None or layer == -1:
            return n
        if not is_integer(layer) or not 0 <= layer <= n:
            raise InvalidLocation(f"{what}: layer must be in 0..{n} (or -1/None for the final stream), got {layer!r}")
        return int(layer)

    def _need(self, name: str, what: str) -> torch.Tensor:
        if name not in self.cache_dict:
            stopped = getattr(self, "stopped_at", None)
            if stopped is not None:
                raise InvalidLocation(
                    f"{what} needs {name!r}, which this cache does not hold: it comes from run_with_cache(..., "
                    f"stop_at_layer={stopped}), so blocks {stopped}.. and what follows them did not run; ask for a layer "
                    f"below {stopped} or run without stop_at_layer")
            raise InvalidLocation(
                f"{what} needs {name!r}, which this cache does not hold; run run_with_cache without names_filter "
                "(or include that name)"
            )
        return self.cache_dict[name]

    def _stream(self, name: str, pos_slice: SliceLike, what: str) -> torch.Tensor:
        return apply_slice(self._need(name, what), pos_slice, -2, "pos_slice")

    def _norm_at(self, path: str, what: str) -> Norm:
        norm = self.model.tree.norms.get(path)
        if norm is None:
            raise UnsupportedModel(f"{what}: {self.model.cfg.name}'s norm {path} is neither a LayerNorm nor an RMSNorm")
        return norm

    def _scale_input(self, path: str, what: str) -> torch.Tensor:
        """The tensor the norm at ``path`` normalised, rebuilt from the cache (when its scale is not cached)."""
        kind, n = self.model.layout.kind, self._n
        if path == "ln_final":
            return self._need(hook_name(n - 1, "resid_post"), what)
        if path == "embed_ln":
            return sum(self._need(hook, what) for _, hook in _EMBEDS if hook in self.model.hook_dict)
        _, layer, ln = path.split(".")
        layer = int(layer)
        post_norm = kind == "post_norm"
        sources = {"ln1": "resid_mid" if post_norm else "resid_pre", "ln2": "resid_post" if post_norm else "resid_mid"}
        if ln in sources:
            return self._need(hook_name(layer, sources[ln]), what)
        if ln == "ln1_post":  # the output projection's output
            return self._head_results(layer, None, what).sum(dim=-2) + self.model.blocks[layer].attn.b_O
        mlp = self.model.blocks[layer].mlp  # ln2_post: the down projection's output
        return self._need(hook_name(layer, "post"), what) @ mlp.W_out + mlp.b_out

    def _scale(self, path: str, pos_slice: SliceLike, what: str) -> Float[torch.Tensor, "... 1"]:
        """The scale of the norm at ``path`` from this forward pass: cached, else recomputed from its cached input."""
        cached = self.cache_dict.get(scale_name(path))
        if cached is None:
            cached = self._norm_at(path, what).scale(self._scale_input(path, what))
        return apply_slice(cached, pos_slice, -2, "pos_slice")

    def _reader_norm(self, layer: int, mlp_input: bool) -> str | None:
        """Path of the norm that reads the target stream of ``layer`` (None: the stream is read as it is)."""
        kind, n = self.model.layout.kind, self._n
        if kind == "post_norm":
            if layer == n:
                return norm_path(n - 1, "ln2")
            return norm_path(layer, "ln1") if mlp_input else None
        if layer == n:
            return "ln_final" if self.model.layout.final_norm is not None else None
        return norm_path(layer, "ln2" if mlp_input else "ln1")

    def _head_results(self, layer: int, pos_slice: SliceLike, what: str) -> Float[torch.Tensor, "... pos head d_model"]:
        name = hook_name(layer, "result")
        result = self.cache_dict.get(name)
        if result is None:  # z through each head's slice of W_O
            z = self._need(hook_name(layer, "z"), what)
            W_O = self.model.blocks[layer].attn.W_O
            result = torch.einsum("...hd,hdm->...hm", z, W_O.to(z.dtype))
        return apply_slice(result, pos_slice, -3, "pos_slice")

    def _neuron_results(self, layer: int, pos_slice: SliceLike, neuron_slice: SliceLike, what: str):
        post = apply_slice(self._need(hook_name(layer, "post"), what), pos_slice, -2, "pos_slice")  # [..., d_mlp]
        W_out = self.model.blocks[layer].mlp.W_out  # [d_mlp, d_model]
        neurons = torch.arange(W_out.shape[0])
        if neuron_slice is not None:
            neurons = apply_slice(neurons, neuron_slice, 0, "neuron_slice").reshape(-1)
            post, W_out = post[..., neurons], W_out[neurons]
        return post[..., None] * W_out.to(post.dtype), neurons.tolist()  # [..., neuron, d_model]

    def _target(self, layer: int, mlp_input: bool, pos_slice: SliceLike, what: str) -> torch.Tensor:
        if layer == self._n:
            return self._stream(hook_name(layer - 1, "resid_post"), pos_slice, what)
        return self._stream(hook_name(layer, "resid_mid" if mlp_input else "resid_pre"), pos_slice, what)

    def _walk(self, layer: int, mlp_input: bool, *, attn: str | None, mlp: str | None, embeds: bool,
              pos_slice: SliceLike, what: str, neuron_slice: SliceLike = None) -> _Groups:
        """The stream's components from the embeddings to the target of ``layer``, carried through every norm on the way.

        ``attn``/``mlp``: ``"layer"`` (one component per layer), ``"heads"``/``"neurons"``, or None (left out).
        """
        kind, n = self._kind(what), self._n
        post_norm = kind == "post_norm"
        groups = _Groups()

        def freeze(path: str) -> None:
            groups.freeze(self._norm_at(path, what), self._scale(path, pos_slice, what))

        if embeds:
            for label, hook in _EMBEDS:
                if hook in self.model.hook_dict:
                    groups.add("embed", [label], self._stream(hook, pos_slice, what)[None])
        if post_norm and self.model.layout.embed_ln is not None:
            freeze("embed_ln")
        for L in range(min(layer + (1 if mlp_input else 0), n)):
            block = self.model.blocks[L]
            if attn == "layer":
                groups.add("attn", [f"{L}_attn_out"], self._stream(hook_name(L, "attn_out"), pos_slice, what)[None])
            elif attn == "heads":
                heads = self._head_results(L, pos_slice, what).movedim(-2, 0)  # [head, ..., d_model]
                bias = block.attn.b_O.to(heads.dtype)
                if kind == "sandwich":  # Gemma: each head through the post-attention norm, scale frozen
                    path = norm_path(L, "ln1_post")
                    norm, scale = self._norm_at(path, what), self._scale(path, pos_slice, what)
                    heads, bias = _frozen(norm, heads, scale), _frozen(norm, bias, scale)
                groups.add("attn", [f"L{L}H{h}" for h in range(heads.shape[0])], heads)
                groups.add_bias(bias)
            if L == layer:  # mlp_input: the target is resid_mid of this layer
                break
            if post_norm:
                freeze(norm_path(L, "ln1"))
            if mlp == "layer":
                groups.add("mlp", [f"{L}_mlp_out"], self._stream(hook_name(L, "mlp_out"), pos_slice, what)[None])
            elif mlp == "neurons":
                results, neurons = self._neuron_results(L, pos_slice, neuron_slice, what)
                results, bias = results.movedim(-2, 0), block.mlp.b_out.to(results.dtype)
                if kind == "sandwich":
                    path = norm_path(L, "ln2_post")
                    norm, scale = self._norm_at(path, what), self._scale(path, pos_slice, what)
                    results, bias = _frozen(norm, results, scale), _frozen(norm, bias, scale)
                groups.add("mlp", [f"L{L}N{i}" for i in neurons], results)
                groups.add_bias(bias)
            if post_norm and L < n - 1:
                freeze(norm_path(L, "ln2"))
        return groups

    def _finish(self, labels: list[str], stacks: list[torch.Tensor], template: torch.Tensor, *, apply_ln: bool,
                layer: int, mlp_input: bool, pos_slice: SliceLike, return_labels: bool):
        dtype = template.dtype
        stacks = [s.to(dtype).expand(s.shape[0], *template.shape) for s in stacks]
        stack = torch.cat(stacks, dim=0) if stacks else template.new_zeros((0, *template.shape))
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def _bias_stack(self, groups: _Groups, template: torch.Tensor) -> torch.Tensor:
        bias = groups.bias if groups.bias is not None else torch.zeros(template.shape[-1])
        return bias.to(device=template.device, dtype=template.dtype).expand(template.shape)[None]

    # -- TransformerLens' methods -----------------------------------------------------------

    def apply_ln_to_stack(
        self,
        residual_stack: Float[torch.Tensor, "component *batch_pos d_model"],
        layer: int | None = None,
        mlp_input: bool = False,
        pos_slice: SliceLike = None,
        batch_slice: SliceLike = None,
        has_batch_dim: bool = True,
        recompute_ln: bool = False,
    ) -> Float[torch.Tensor, "component *batch_pos d_model"]:
        """Treat each component as the input of the norm reading ``layer``'s stream, with that norm's scale frozen.

        Centres (LayerNorm) and divides by the scale this forward pass computed; the norm's
        weight and bias are not applied (as in TransformerLens). ``recompute_ln=True`` at the
        final layer applies the whole final norm to each component on its own (logit lens).
        On BERT the attention input of a block is read without a norm (the stack is returned
        as it is); the final stream is read by the last block's output LayerNorm.
        """
        what = "apply_ln_to_stack"
        layer = self._layer(layer, what)
        self._kind(what)
        d_model = self.model.cfg.d_model
        if not isinstance(residual_stack, torch.Tensor) or not residual_stack.is_floating_point() \
                or residual_stack.ndim < 2 or residual_stack.shape[-1] != d_model:
            got = f"a {residual_stack.dtype} tensor of shape {tuple(residual_stack.shape)}" \
                if isinstance(residual_stack, torch.Tensor) else type(residual_stack).__name__
            raise InvalidInput(f"{what}: residual_stack must be a float tensor [component, *batch_pos, d_model={d_model}], "
                               f"got {got}")
        if has_batch_dim and batch_slice is not None:
            residual_stack = apply_slice(residual_stack, batch_slice, 1, "batch_slice")
        path = self._reader_norm(layer, mlp_input)
        if path is None:
            return residual_stack
        norm = self._norm_at(path, what)
        if recompute_ln and layer == self._n:
            return norm.output_with_scale(residual_stack, norm.scale(residual_stack))
        scale = self._scale(path, pos_slice, what)
        if has_batch_dim and batch_slice is not None:
            scale = apply_slice(scale, batch_slice, 0, "batch_slice")
        expected = (*scale.shape[:-1], d_model)
        if tuple(residual_stack.shape[1:]) != expected:
            raise InvalidInput(f"{what}: residual_stack has shape {tuple(residual_stack.shape)}, but the norm's scale for this "
                               f"cache{' and these slices' if pos_slice is not None or batch_slice is not None else ''} is "
                               f"{tuple(scale.shape)}: give [component, {', '.join(map(str, expected))}] (the same "
                               "pos_slice / batch_slice the stack was made with)")
        return norm.normalize(residual_stack, scale).to(residual_stack.dtype)

    def accumulated_resid(self, layer: int | None = None, incl_mid: bool = False, apply_ln: bool = False,
                          pos_slice: SliceLike = None, mlp_input: bool = False, return_labels: bool = False):
        """The residual stream at the start of each layer up to ``layer`` (``[layer + 1, ..., d_model]``), for logit lens."""
        what = "accumulated_resid"
        layer = self._layer(layer, what)
        labels, stacks = [], []
        for L in range(layer + 1):
            if L == self._n:
                stacks.append(self._stream(hook_name(L - 1, "resid_post"), pos_slice, what))
                labels.append("final_post")
                continue
            stacks.append(self._stream(hook_name(L, "resid_pre"), pos_slice, what))
            labels.append(f"{L}_pre")
            if (incl_mid and L < layer) or (mlp_input and L == layer):
                stacks.append(self._stream(hook_name(L, "resid_mid"), pos_slice, what))
                labels.append(f"{L}_mid")
        stack = torch.stack(stacks, dim=0)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input, pos_slice=pos_slice, recompute_ln=layer == self._n)
        return (stack, labels) if return_labels else stack

    def decompose_resid(self, layer: int | None = None, mlp_input: bool = False, mode: str = "all",
                        apply_ln: bool = False, pos_slice: SliceLike = None, incl_embeds: bool = True,
                        return_labels: bool = False):
        """The stream at ``layer`` split into embeddings and each layer's attention and MLP output.

        On BERT each part is carried through the LayerNorms after it (scales frozen) and a
        last ``"bias"`` component holds the LayerNorms' biases, so the parts still sum to the
        stream.
        """
        what = "decompose_resid"
        if mode not in ("all", "attn", "mlp"):
            raise InvalidInput(f"decompose_resid: mode must be 'all', 'attn' or 'mlp', got {mode!r}")
        layer = self._layer(layer, what)
        groups = self._walk(layer, mlp_input, attn=None if mode == "mlp" else "layer", mlp=None if mode == "attn" else "layer",
                            embeds=incl_embeds, pos_slice=pos_slice, what=what)
        template = self._target(layer, mlp_input, pos_slice, what)
        labels, stacks = [], []
        for category, names, stack in groups.items:
            labels += names
            stacks.append(stack)
        if self.model.layout.kind == "post_norm" and mode == "all":
            labels.append("bias")
            stacks.append(self._bias_stack(groups, template))
        return self._finish(labels, stacks, template, apply_ln=apply_ln, layer=layer, mlp_input=mlp_input,
                            pos_slice=pos_slice, return_labels=return_labels)

    def compute_head_results(self) -> None:
        """Fill ``blocks.L.attn.hook_result`` from the cached ``hook_z`` and ``W_O`` where it is missing."""
        for L in range(self._n):
            name = hook_name(L, "result")
            if name not in self.cache_dict:
                self.cache_dict[name] = self._head_results(L, None, "compute_head_results")

    def stack_head_results(self, layer: int = -1, return_labels: bool = False, incl_remainder: bool = False,
                           pos_slice: SliceLike = None, apply_ln: bool = False):
        """Each head's contribution to the stream at ``layer`` (heads of the layers before it), ``[layer * n_heads, ..., d_model]``.

        A head's contribution is ``hook_result`` where the stream is a plain sum (GPT-2,
        Llama); on Gemma it is passed through the post-attention norm, and on BERT through
        every LayerNorm after it, scales frozen. ``incl_remainder`` adds the rest of the stream.
        """
        return self._stack_units("stack_head_results", "attn", layer, dict(attn="heads", mlp=None), pos_slice=pos_slice,
                                 return_labels=return_labels, incl_remainder=incl_remainder, apply_ln=apply_ln)

    def get_neuron_results(self, layer: int, neuron_slice: SliceLike = None,
                           pos_slice: SliceLike = None) -> Float[torch.Tensor, "*batch_pos neuron d_model"]:
        """Each neuron's output ``post[n] * W_out[n]`` of one layer (before Gemma's post-MLP norm)."""
        if not is_integer(layer) or not 0 <= layer < self._n:
            raise InvalidLocation(f"get_neuron_results: layer must be in 0..{self._n - 1}, got {layer!r}")
        return self._neuron_results(int(layer), pos_slice, neuron_slice, "get_neuron_results")[0]

    def stack_neuron_results(self, layer: int, pos_slice: SliceLike = None, neuron_slice: SliceLike = None,
                             return_labels: bool = False, incl_remainder: bool = False, apply_ln: bool = False):
        """Each MLP neuron's contribution to the stream at ``layer`` (neurons of the layers before it)."""
        return self._stack_units("stack_neuron_results", "mlp", layer, dict(attn=None, mlp="neurons", neuron_slice=neuron_slice),
                                 pos_slice=pos_slice, return_labels=return_labels, incl_remainder=incl_remainder,
                                 apply_ln=apply_ln)

    def _stack_units(self, what: str, group: str, layer, walk: dict, *, pos_slice, return_labels, incl_remainder, apply_ln):
        """One group of units (heads or neurons) of the layers before ``layer``, plus the remainder if asked."""
        layer = self._layer(layer, what)
        groups = self._walk(layer, False, embeds=False, pos_slice=pos_slice, what=what, **walk)
        labels, stacks = groups.select(group)
        target = self._target(layer, False, pos_slice, what)
        if incl_remainder:
            total = sum(s.sum(dim=0) for s in stacks) if stacks else torch.zeros_like(target)
            labels, stacks = labels + ["remainder"], stacks + [(target - total)[None]]
        return self._finish(labels, stacks, target, apply_ln=apply_ln, layer=layer, mlp_input=False,
                            pos_slice=pos_slice, return_labels=return_labels)

    def get_full_resid_decomposition(self, layer: int | None = None, mlp_input: bool = False, expand_neurons: bool = True,
                                     apply_ln: bool = False, pos_slice: SliceLike = None, return_labels: bool = False):
        """The stream at ``layer`` as every head, every neuron (or MLP layer), the embeddings and the biases.

        Order as in TransformerLens: heads, neurons or ``L_mlp_out``, ``embed``, ``pos_embed``
        (``token_type_embed`` on BERT), ``bias`` (every ``b_O``, the ``b_out`` of expanded
        MLPs and, on BERT, the LayerNorm biases). The components sum to the stream.
        """
        what = "get_full_resid_decomposition"
        layer = self._layer(layer, what)
        groups = self._walk(layer, mlp_input, attn="heads", mlp="neurons" if expand_neurons else "layer", embeds=True,
                            pos_slice=pos_slice, what=what)
        labels, stacks = groups.select("attn", "mlp", "embed")
        template = self._target(layer, mlp_input, pos_slice, what)
        labels.append("bias")
        stacks.append(self._bias_stack(groups, template))
        return self._finish(labels, stacks, template, apply_ln=apply_ln, layer=layer, mlp_input=mlp_input,
                            pos_slice=pos_slice, return_labels=return_labels)

    def tokens_to_residual_directions(self, tokens) -> Float[torch.Tensor, "*tokens d_model"]:
        """See :meth:`attnlab.engine.model.HookedModel.tokens_to_residual_directions`."""
        return self.model.tokens_to_residual_directions(tokens)

    def logit_attrs(self, residual_stack: Float[torch.Tensor, "component *batch_pos d_model"], tokens,
                    incorrect_tokens=None, pos_slice: SliceLike = None, batch_slice: SliceLike = None,
                    has_batch_dim: bool = True) -> Float[torch.Tensor, "component *batch_pos"]:
        """Each component's direct contribution to the logit of ``tokens`` (minus ``incorrect_tokens``'), final norm frozen.

        The components of a full decomposition sum to the logit (difference) less the
        unembedding bias and the final norm's bias.
        """
        directions = self.model.tokens_to_residual_directions(tokens)
        if incorrect_tokens is not None:
            wrong = self.model.tokens_to_residual_directions(incorrect_tokens)
            if wrong.shape != directions.shape:
                raise InvalidInput(
                    f"tokens and incorrect_tokens must have the same shape, got {tuple(directions.shape[:-1])} "
                    f"and {tuple(wrong.shape[:-1])}"
                )
            directions = directions - wrong
        scaled = self.apply_ln_to_stack(residual_stack, -1, pos_slice=pos_slice, batch_slice=batch_slice,
                                        has_batch_dim=has_batch_dim)
        token_shape = tuple(directions.shape[:-1])
        batch_kept = not (isinstance(batch_slice, int) or (isinstance(batch_slice, torch.Tensor) and batch_slice.ndim == 0))
        if has_batch_dim and batch_kept and scaled.ndim == 4 and directions.ndim == 2 and directions.shape[0] == scaled.shape[1]:
            directions = directions[:, None]  # one direction per batch row, shared by its positions
        try:
            fits = tuple(torch.broadcast_shapes(scaled.shape, directions.shape)) == tuple(scaled.shape)
        except RuntimeError:
            fits = False
        if not fits:
            raise InvalidInput(
                f"logit_attrs: tokens of shape {token_shape} do not fit the stack's "
                f"{tuple(scaled.shape[1:-1])} (its *batch_pos axes after the slices): give one token, one per batch "
                "row, or one per (row, position) of the stack")
        return (scaled * directions.to(scaled.dtype)).sum(dim=-1)
