"""Weights by TransformerLens names (``W_Q``, ``W_O``, ``W_U``, ``W_in`` ...), as views of the HF weights.

TransformerLens stores its own copies in its own layout; attnlab keeps the Hugging Face
model's parameters and reshapes them on access. Per layer (``model.blocks[L].attn.W_Q``,
``model.blocks[L].mlp.W_in``) every matrix is a *view*: it shares memory with the HF
parameter, so a write through either is seen by the other. Two things cannot be views:

* the stacked ``model.W_Q`` ... ``[n_layers, ...]`` (the layers live in separate tensors):
  rebuilt on every access, so it always shows the current weights, but writing into it
  changes nothing;
* ``W_K``/``W_V`` under grouped-query attention, one per *query* head like the hook points
  (``hook_k[:, :, h]`` is what head ``h`` uses): each kv head's matrix is repeated for the
  heads sharing it. ``_W_K``/``_W_V`` are the views, one per kv head.

A bias the model does not have is a zero tensor, as in TransformerLens' HookedTransformer
(so ``x @ W_Q + b_Q`` works on every model); it is tied to nothing. ``QK`` and ``OV`` are
:class:`~attnlab.engine.factored.FactoredMatrix` objects (``.AB``, ``.eigenvalues``, ``[layer, head]``). A matrix the model does
not have (``W_pos`` on a rotary model, ``W_gate`` on an ungated MLP) raises UnsupportedModel.
"""

from __future__ import annotations

import dataclasses

import torch
from einops import rearrange
from jaxtyping import Float
from torch import nn

from attnlab.engine.factored import FactoredMatrix
from attnlab.engine.layout import BlockLayout
from attnlab.errors import InvalidInput, UnsupportedModel, is_integer

__all__ = ["AttentionWeights", "MlpWeights", "ModelWeights", "head_out_weight", "in_out", "structure_config"]


def in_out(module: nn.Module) -> torch.Tensor:
    """A linear layer's weight as ``[in, out]`` (a view): ``x @ in_out(m) + bias == m(x)``."""
    weight = module.weight
    return weight if type(module).__name__ == "Conv1D" else weight.T  # GPT-2's Conv1D stores [in, out]


def head_out_weight(out_proj: nn.Module, n_heads: int) -> Float[torch.Tensor, "head d_head d_model"]:
    """The output projection as ``[head, d_head, d_model]`` (a view of the model's weight)."""
    return rearrange(in_out(out_proj), "(h d) m -> h d m", h=n_heads)


def _zeros_like_out(weight: torch.Tensor, *shape: int) -> torch.Tensor:
    return torch.zeros(*shape, dtype=weight.dtype, device=weight.device)


class AttentionWeights:
    """``W_Q``, ``W_K``, ``W_V``, ``W_O`` and biases of one layer (mixed into its hook holder).

    Needs ``self.block_layout`` (a :class:`BlockLayout`) and ``self.n_heads``.
    """

    block_layout: BlockLayout
    n_heads: int

    def _qkv(self, which: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``[d_model, heads * d_head]`` weight and ``[heads * d_head]`` bias of q, k or v (views)."""
        b = self.block_layout
        separate = {"q": b.q_proj, "k": b.k_proj, "v": b.v_proj}[which]
        if separate is not None:
            return in_out(separate), getattr(separate, "bias", None)
        if b.qkv_proj is not None and type(b.qkv_proj).__name__ == "Conv1D":  # GPT-2: [d_model, 3 * d_model]
            width = b.qkv_proj.weight.shape[1] // 3
            part = slice("qkv".index(which) * width, ("qkv".index(which) + 1) * width)
            bias = getattr(b.qkv_proj, "bias", None)
            return b.qkv_proj.weight[:, part], bias[part] if bias is not None else None
        raise UnsupportedModel(f"layer {b.index}: attnlab does not know where this model's {which} projection is")

    @property
    def d_head(self) -> int:
        return self._qkv("q")[0].shape[1] // self.n_heads

    def _per_head(self, which: str) -> tuple[torch.Tensor, torch.Tensor]:
        weight, bias = self._qkv(which)
        d = self.d_head
        heads = rearrange(weight, "m (h d) -> h m d", d=d)
        bias = rearrange(bias, "(h d) -> h d", d=d) if bias is not None else _zeros_like_out(weight, heads.shape[0], d)
        return heads, bias

    def _per_query_head(self, tensor: torch.Tensor) -> torch.Tensor:
        group = self.n_heads // tensor.shape[0]
        return tensor if group == 1 else tensor.repeat_interleave(group, dim=0)  # head h uses kv head h // group

    @property
    def W_Q(self) -> Float[torch.Tensor, "head d_model d_head"]:
        return self._per_head("q")[0]

    @property
    def _W_K(self) -> Float[torch.Tensor, "kv_head d_model d_head"]:
        return self._per_head("k")[0]

    @property
    def _W_V(self) -> Float[torch.Tensor, "kv_head d_model d_head"]:
        return self._per_head("v")[0]

    @property
    def W_K(self) -> Float[torch.Tensor, "head d_model d_head"]:
        return self._per_query_head(self._W_K)

    @property
    def W_V(self) -> Float[torch.Tensor, "head d_model d_head"]:
        return self._per_query_head(self._W_V)

    @property
    def b_Q(self) -> Float[torch.Tensor, "head d_head"]:
        return self._per_head("q")[1]

    @property
    def _b_K(self) -> Float[torch.Tensor, "kv_head d_head"]:
        return self._per_head("k")[1]

    @property
    def _b_V(self) -> Float[torch.Tensor, "kv_head d_head"]:
        return self._per_head("v")[1]

    @property
    def b_K(self) -> Float[torch.Tensor, "head d_head"]:
        return self._per_query_head(self._b_K)

    @property
    def b_V(self) -> Float[torch.Tensor, "head d_head"]:
        return self._per_query_head(self._b_V)

    @property
    def W_O(self) -> Float[torch.Tensor, "head d_head d_model"]:
        out = self.block_layout.out_proj
        if out is None:
            raise UnsupportedModel(f"layer {self.block_layout.index}: attnlab does not know this model's output projection")
        return head_out_weight(out, self.n_heads)

    @property
    def QK(self) -> FactoredMatrix:
        """``W_Q @ W_K.T`` per head, ``[head, d_model, d_model]`` (biases, q/k norms and rotary left out)."""
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    @property
    def OV(self) -> FactoredMatrix:
        """``W_V @ W_O`` per head, ``[head, d_model, d_model]`` (biases and Gemma's post-attention norm left out)."""
        return FactoredMatrix(self.W_V, self.W_O)

    @property
    def b_O(self) -> Float[torch.Tensor, "d_model"]:
        out = self.block_layout.out_proj
        bias = getattr(out, "bias", None)
        return bias if bias is not None else _zeros_like_out(out.weight, in_out(out).shape[1])


class MlpWeights:
    """``W_in``, ``W_gate``, ``W_out`` and biases of one layer's MLP (mixed into its hook holder).

    TransformerLens' names for gated MLPs: ``hook_pre = x @ W_gate`` (the gate, before the
    activation), ``hook_pre_linear = x @ W_in`` (the up projection), ``hook_post`` = their
    product; for plain MLPs ``hook_pre = x @ W_in + b_in``.
    """

    block_layout: BlockLayout

    def _module(self, which: str) -> nn.Module:
        b = self.block_layout
        module = {
            "in": b.mlp_in_linear if b.gated else b.mlp_in,
            "gate": b.mlp_in if b.gated else None,
            "out": b.mlp_down,
        }[which]
        if module is None:
            if which == "gate":
                raise UnsupportedModel(f"layer {b.index}: this MLP has no gate (W_gate exists only for gated MLPs)")
            raise UnsupportedModel(f"layer {b.index}: attnlab does not know this model's MLP layout")
        return module

    def _bias(self, which: str) -> torch.Tensor:
        module = self._module(which)
        bias = getattr(module, "bias", None)
        return bias if bias is not None else _zeros_like_out(module.weight, in_out(module).shape[1])

    @property
    def W_in(self) -> Float[torch.Tensor, "d_model d_mlp"]:
        return in_out(self._module("in"))

    @property
    def W_gate(self) -> Float[torch.Tensor, "d_model d_mlp"]:
        return in_out(self._module("gate"))

    @property
    def W_out(self) -> Float[torch.Tensor, "d_mlp d_model"]:
        return in_out(self._module("out"))

    @property
    def b_in(self) -> Float[torch.Tensor, "d_mlp"]:
        return self._bias("in")

    @property
    def b_gate(self) -> Float[torch.Tensor, "d_mlp"]:
        return self._bias("gate")

    @property
    def b_out(self) -> Float[torch.Tensor, "d_model"]:
        return self._bias("out")


class ModelWeights:
    """Model-level weights and the layers' weights stacked (mixed into :class:`HookedModel`).

    ``W_E``, ``W_pos``, ``W_U`` are views; the stacked ``[n_layers, ...]`` ones are rebuilt on
    every access (see the module docstring).
    """

    def _stack(self, name: str, part: str) -> torch.Tensor:
        return torch.stack([getattr(getattr(block, part), name) for block in self.blocks], dim=0)

    W_Q = property(lambda self: self._stack("W_Q", "attn"), doc="[n_layers, head, d_model, d_head] (a stacked copy)")
    W_K = property(lambda self: self._stack("W_K", "attn"), doc="[n_layers, head, d_model, d_head], one per query head")
    W_V = property(lambda self: self._stack("W_V", "attn"), doc="[n_layers, head, d_model, d_head], one per query head")
    W_O = property(lambda self: self._stack("W_O", "attn"), doc="[n_layers, head, d_head, d_model]")
    b_Q = property(lambda self: self._stack("b_Q", "attn"), doc="[n_layers, head, d_head]")
    b_K = property(lambda self: self._stack("b_K", "attn"), doc="[n_layers, head, d_head]")
    b_V = property(lambda self: self._stack("b_V", "attn"), doc="[n_layers, head, d_head]")
    b_O = property(lambda self: self._stack("b_O", "attn"), doc="[n_layers, d_model]")
    W_in = property(lambda self: self._stack("W_in", "mlp"), doc="[n_layers, d_model, d_mlp]")
    W_gate = property(lambda self: self._stack("W_gate", "mlp"), doc="[n_layers, d_model, d_mlp] (gated MLPs)")
    W_out = property(lambda self: self._stack("W_out", "mlp"), doc="[n_layers, d_mlp, d_model]")
    b_in = property(lambda self: self._stack("b_in", "mlp"), doc="[n_layers, d_mlp]")
    b_out = property(lambda self: self._stack("b_out", "mlp"), doc="[n_layers, d_model]")

    @property
    def QK(self) -> FactoredMatrix:
        """The QK circuits ``W_Q @ W_K.T``, ``[n_layers, head, d_model, d_model]``, kept factored.

        ``x_q @ QK[L, h] @ x_k`` is the bilinear part of head h's score between two normalised
        streams, before the scale; the q/k biases, q/k norms (Gemma) and the rotary embedding
        are not in it.
        """
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    @property
    def OV(self) -> FactoredMatrix:
        """The OV circuits ``W_V @ W_O``, ``[n_layers, head, d_model, d_model]``, kept factored.

        ``x @ OV[L, h]`` is what head h writes for a normalised stream ``x`` it attends to fully,
        less the value bias (``b_V @ W_O``) and, on Gemma, before the post-attention norm.
        """
        return FactoredMatrix(self.W_V, self.W_O)

    @property
    def W_E(self) -> Float[torch.Tensor, "d_vocab d_model"]:
        """The token embedding (a view). On Gemma ``hook_embed`` is ``W_E[token] * sqrt(d_model)``."""
        embed = self.layout.embed
        if embed is None:
            raise UnsupportedModel(f"{self.cfg.name}: attnlab does not know this model's token embedding")
        return embed.weight

    @property
    def W_pos(self) -> Float[torch.Tensor, "n_ctx d_model"]:
        """Learned absolute position embeddings (GPT-2, BERT), a view."""
        pos = self.layout.pos_embed
        if pos is None:
            kind = "rotary positions" if self.cfg.rotary else "no learned position embedding"
            raise UnsupportedModel(f"{self.cfg.name} has {kind}: W_pos exists only for learned absolute positions")
        return pos.weight

    @property
    def W_U(self) -> Float[torch.Tensor, "d_model d_vocab"]:
        """The unembedding (LM head) as ``[d_model, d_vocab]``, a view of the head's weight."""
        return in_out(self._unembed())

    @property
    def b_U(self) -> Float[torch.Tensor, "d_vocab"]:
        head = self._unembed()
        bias = getattr(head, "bias", None)
        return bias if bias is not None else _zeros_like_out(head.weight, in_out(head).shape[1])

    def _unembed(self) -> nn.Module:
        head = self.layout.unembed
        if head is None or not self.cfg.has_lm_head:
            raise UnsupportedModel(f"{self.cfg.name} has no LM head, so no W_U / b_U")
        return head

    def tokens_to_residual_directions(self, tokens) -> Float[torch.Tensor, "*tokens d_model"]:
        """The direction in the *normalised* final residual stream that reads out each token's logit.

        ``W_U[:, token]`` times the final norm's weight (``1 + w`` on Gemma): what
        TransformerLens returns on a model whose norms are folded (``fold_ln=True``), so a
        stack passed through :meth:`ActivationCache.apply_ln_to_stack` and dotted with it gives
        each component's share of the logit (before the unembedding bias and the final
        norm's bias). ``tokens``: a one-token string, an int, or an integer tensor.
        """
        if self.layout.head_transform is not None:
            raise UnsupportedModel(
                f"{self.cfg.name}'s LM head applies a dense layer, an activation and a LayerNorm before the "
                "unembedding, so logits are not linear in the residual stream: no residual directions"
            )
        W_U = self.W_U
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        if is_integer(tokens):
            tokens = int(tokens)
        if isinstance(tokens, bool) or not isinstance(tokens, (int, torch.Tensor)):
            raise InvalidInput(f"tokens must be a one-token string, an int or an integer tensor, got {tokens!r}")
        index = torch.as_tensor(tokens, device=W_U.device)
        if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool or (index.numel() and not 0 <= int(index.min()) <= int(index.max()) < W_U.shape[1]):
            raise InvalidInput(f"token ids must be integers in 0..{W_U.shape[1] - 1}, got {tokens!r}")
        directions = W_U[:, index]  # [d_model, *tokens]
        directions = directions.movedim(0, -1) if index.ndim else directions
        final = self.tree.norms.get("ln_final")
        if self.layout.final_norm is not None:
            if final is None:
                raise UnsupportedModel(f"{self.cfg.name}: the final norm is neither a LayerNorm nor an RMSNorm")
            weight = final.effective_weight()
            if weight is not None:
                directions = directions * weight.to(directions.dtype)
        return directions


def structure_config(cfg, hf_config, tree) -> object:
    """``cfg`` with the MLP width, activation and normalisation of the model (TransformerLens' fields).

    ``d_mlp`` is read from the MLP's own weights where attnlab knows the layout (else from the
    config); ``normalization_type`` is "LN" or "RMS" (None if the norms are neither or mixed);
    ``norm_weight_offset`` is 1.0 where the norms multiply by ``1 + w`` (Gemma), else 0.0.
    """
    text = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    kinds = {(n.kind, n.weight_offset) for n in tree.norms.values()}
    kind, offset = next(iter(kinds)) if len(kinds) == 1 else (None, 0.0)
    try:
        d_mlp = int(tree.blocks[0].mlp.W_in.shape[1]) if len(tree.blocks) else None
    except UnsupportedModel:
        d_mlp = next((getattr(text, a) for a in ("intermediate_size", "n_inner", "ffn_dim") if isinstance(getattr(text, a, None), int)), None)
    act = next((getattr(text, a) for a in ("hidden_activation", "hidden_act", "activation_function") if isinstance(getattr(text, a, None), str)), None)
    return dataclasses.replace(cfg, d_mlp=d_mlp, act_fn=act, normalization_type=kind, norm_weight_offset=offset)
