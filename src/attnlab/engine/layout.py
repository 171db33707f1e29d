"""Where things are inside an HF model: decoder layers, attention, MLP, norms, embeddings.

attnlab reaches attention generically (every transformers 5 attention layer calls
``AttentionInterface``), but the block edges (residual stream, attention and MLP outputs,
MLP neurons) and the TransformerLens weight names need to know a block's parts. Three block
shapes cover the supported families, found by the parts' attribute names, not by class:

* ``pre_norm`` (GPT-2, Llama, Mistral, Qwen2, ...): ``x + attn(ln1(x))``, then ``+ mlp(ln2(.))``;
* ``sandwich`` (Gemma 2/3): as pre-norm, with a second norm after the attention and after the
  MLP (``post_attention_layernorm``, ``post_feedforward_layernorm``) before each residual add;
* ``post_norm`` (BERT and its relatives): ``ln_attn(x + attn(x))``, then ``ln_out(. + mlp(.))``.

A model whose blocks match none of these still gets the attention sites and the residual
stream at layer edges (``hook_resid_pre``/``hook_resid_post``), just not the parts inside.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from attnlab.engine.adapters import find_attention_modules

__all__ = ["BlockLayout", "ModelLayout", "model_layout", "decoder_layers"]

BLOCK_KINDS = ("pre_norm", "sandwich", "post_norm", "unknown")


def _child(module: nn.Module | None, *names: str) -> nn.Module | None:
    """The first of ``names`` (dotted paths allowed) that ``module`` has."""
    if module is None:
        return None
    for name in names:
        found = module
        for part in name.split("."):
            found = getattr(found, part, None) if isinstance(found, nn.Module) else None
        if isinstance(found, nn.Module):
            return found
    return None


@dataclass(frozen=True)
class BlockLayout:
    """The parts of one block. Modules are the model's own (nothing is copied)."""

    index: int
    kind: str  # one of BLOCK_KINDS
    layer: nn.Module  # input: resid_pre; output: the block's output
    attention: nn.Module  # the module that calls the attention function
    q_proj: nn.Module | None = None  # separate q/k/v projections (Llama, Gemma, BERT)
    k_proj: nn.Module | None = None
    v_proj: nn.Module | None = None
    qkv_proj: nn.Module | None = None  # fused projection (GPT-2's c_attn, a Conv1D)
    out_proj: nn.Module | None = None  # z [.., head * d_head] -> d_model
    attn_out: nn.Module | None = None  # its output is what the block adds after attention
    mlp: nn.Module | None = None
    mlp_in: nn.Module | None = None  # first linear (gate for gated MLPs): output = mlp.hook_pre
    mlp_in_linear: nn.Module | None = None  # up projection of gated MLPs: output = mlp.hook_pre_linear
    mlp_act: nn.Module | None = None
    mlp_down: nn.Module | None = None  # last linear: input = mlp.hook_post
    mlp_out: nn.Module | None = None  # its output is what the block adds after the MLP
    ln1: nn.Module | None = None  # pre-norm: before attention; post-norm: after attention + residual
    ln2: nn.Module | None = None  # pre-norm: before the MLP; post-norm: after MLP + residual
    ln1_post: nn.Module | None = None  # sandwich: after attention, before the residual add
    ln2_post: nn.Module | None = None  # sandwich: after the MLP, before the residual add

    @property
    def gated(self) -> bool:
        return self.mlp_in_linear is not None

    @property
    def score_softcap(self) -> float | None:
        """The soft cap on this layer's scores (``cap * tanh(s / cap)``, Gemma 2), or None.

        Read from the attention module, which hands it to the attention function: what the model
        really does, for code that recomputes scores from q and k.
        """
        value = getattr(self.attention, "attn_logit_softcapping", None)
        return float(value) if value else None


@dataclass(frozen=True)
class ModelLayout:
    """Model-level parts and one :class:`BlockLayout` per attention layer."""

    blocks: list[BlockLayout]
    embed: nn.Module | None = None  # token embedding (Gemma's includes its sqrt(d_model) scale)
    pos_embed: nn.Module | None = None  # learned absolute positions (GPT-2, BERT)
    token_type_embed: nn.Module | None = None  # BERT segments
    embed_ln: nn.Module | None = None  # BERT: LayerNorm over the summed embeddings
    final_norm: nn.Module | None = None  # ln_f / norm (none in BERT)
    unembed: nn.Module | None = None  # LM head (Linear)
    head_transform: nn.Module | None = None  # BERT MLM: dense + act + LayerNorm before the decoder
    body: nn.Module | None = None  # the model without its LM head
    extras: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.blocks[0].kind if self.blocks else "unknown"


def decoder_layers(hf_model: nn.Module, attention_modules: list[nn.Module] | None = None) -> list[nn.Module] | None:
    """The decoder/encoder layer module of every attention layer, or None if not found.

    For each attention module: its outermost ancestor that is an element of an
    ``nn.ModuleList`` (``model.layers.3`` for ``model.layers.3.self_attn``). All layers must
    live in the same list. A wrapped model is accepted too (its HF model is used).
    """
    hf_model = getattr(hf_model, "hf_model", hf_model)
    modules = dict(hf_model.named_modules())
    names = {id(m): n for n, m in modules.items()}
    layers, parents = [], set()
    for attn in attention_modules or find_attention_modules(hf_model):
        parts = names[id(attn)].split(".")
        found = None
        for i in range(1, len(parts)):
            parent = modules.get(".".join(parts[: i - 1]) if i > 1 else "")
            if isinstance(parent, nn.ModuleList):
                found = modules[".".join(parts[:i])]
                parents.add(id(parent))
                break
        if found is None:
            return None
        layers.append(found)
    if len(parents) != 1 or len({id(layer) for layer in layers}) != len(layers):
        return None
    return layers


def _block(index: int, layer: nn.Module, attention: nn.Module) -> BlockLayout:
    bert_out = _child(layer, "attention.output")
    if bert_out is not None and _child(layer, "intermediate.dense") is not None:  # BERT family
        return BlockLayout(
            index, "post_norm", layer, attention,
            q_proj=_child(attention, "query"), k_proj=_child(attention, "key"), v_proj=_child(attention, "value"),
            out_proj=_child(bert_out, "dense"), attn_out=_child(bert_out, "dense"),
            mlp_in=_child(layer, "intermediate.dense"), mlp_act=_child(layer, "intermediate.intermediate_act_fn"),
            mlp_down=_child(layer, "output.dense"), mlp_out=_child(layer, "output.dense"),
            ln1=_child(bert_out, "LayerNorm"), ln2=_child(layer, "output.LayerNorm"),
        )
    mlp = _child(layer, "mlp", "feed_forward")
    ln1 = _child(layer, "input_layernorm", "ln_1")
    if mlp is None or ln1 is None:
        return BlockLayout(index, "unknown", layer, attention)
    sandwich = _child(layer, "pre_feedforward_layernorm") is not None and _child(layer, "post_feedforward_layernorm") is not None
    gate = _child(mlp, "gate_proj", "w1")
    parts = dict(
        q_proj=_child(attention, "q_proj"), k_proj=_child(attention, "k_proj"), v_proj=_child(attention, "v_proj"),
        qkv_proj=_child(attention, "c_attn"), out_proj=_child(attention, "o_proj", "c_proj", "out_proj", "dense"),
        mlp=mlp, mlp_in=gate or _child(mlp, "c_fc", "fc1", "fc_in"), mlp_in_linear=_child(mlp, "up_proj", "w3") if gate else None,
        mlp_act=_child(mlp, "act_fn", "act"), mlp_down=_child(mlp, "down_proj", "c_proj", "fc2", "fc_out", "w2"), ln1=ln1,
    )
    if sandwich:
        post_attn, post_mlp = _child(layer, "post_attention_layernorm"), _child(layer, "post_feedforward_layernorm")
        return BlockLayout(
            index, "sandwich", layer, attention, attn_out=post_attn, mlp_out=post_mlp,
            ln2=_child(layer, "pre_feedforward_layernorm"), ln1_post=post_attn, ln2_post=post_mlp, **parts,
        )
    return BlockLayout(
        index, "pre_norm", layer, attention, attn_out=attention, mlp_out=mlp,
        ln2=_child(layer, "post_attention_layernorm", "ln_2"), **parts,
    )


def model_layout(hf_model: nn.Module, attention_modules: list[nn.Module] | None = None) -> ModelLayout:
    """Find the parts of ``hf_model`` (blocks of kind ``unknown`` where they do not fit)."""
    attention_modules = attention_modules or find_attention_modules(hf_model)
    layers = decoder_layers(hf_model, attention_modules)
    if layers is None:
        return ModelLayout(blocks=[])
    blocks = [_block(i, layer, attn) for i, (layer, attn) in enumerate(zip(layers, attention_modules))]
    body = getattr(hf_model, "base_model", None) or hf_model
    embeddings = _child(body, "embeddings")  # BERT
    get_in = getattr(hf_model, "get_input_embeddings", None)
    get_out = getattr(hf_model, "get_output_embeddings", None)
    unembed = get_out() if callable(get_out) else None
    return ModelLayout(
        blocks=blocks,
        embed=get_in() if callable(get_in) else None,
        pos_embed=_child(body, "wpe", "embed_positions", "embeddings.position_embeddings"),
        token_type_embed=_child(embeddings, "token_type_embeddings"),
        embed_ln=_child(embeddings, "LayerNorm"),
        final_norm=_child(body, "ln_f", "norm", "final_layernorm", "final_layer_norm"),
        unembed=unembed,
        head_transform=_child(hf_model, "cls.predictions.transform"),
        body=body,
    )
