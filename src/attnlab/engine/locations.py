"""Where in the model: sites and the TransformerLens hook names that print them.

A location is a structured value (layer, site); this module is the only place that turns
it into a hook name (``blocks.3.attn.hook_pattern``) and back. Sites are spelled as in
TransformerLens' ``utils.get_act_name``: ``"pattern"``, ``"resid_pre"``, ``"mlp_out"``,
``"result"``, ``"post"`` (MLP neurons after the activation), ...
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from attnlab.errors import InvalidLocation, did_you_mean

__all__ = [
    "SITES", "KEY_SITES", "SITE_SHAPES", "HEAD_MAJOR_SITES", "BLOCK_SITES", "MODEL_SITES", "ALL_SITES",
    "Location", "hook_name", "parse_hook_name", "get_act_name", "check_site", "BLOCK_NORMS", "norm_path", "scale_name",
    "missing_name_hint", "check_head_pair",
]

#: The attention sites, in the order the attention computation visits them. ``q_pre_rotary`` /
#: ``k_pre_rotary``: q and k before the rotary embedding (TransformerLens' ``hook_q`` / ``hook_k`` on Llama-style
#: models, ``hook_q_normed`` / ``hook_k_normed`` on Gemma); ``q`` / ``k``: after it, what the scores are computed
#: from (its ``hook_rot_q`` / ``hook_rot_k``).
SITES: tuple[str, ...] = ("q_pre_rotary", "k_pre_rotary", "q", "k", "v", "attn_scores", "pattern", "z")

#: Attention sites with one entry per *key* position (the others: one per query position).
KEY_SITES = frozenset({"k_pre_rotary", "k", "v"})

#: Block-edge sites of layer L and the name each gets (after ``blocks.L.``), in forward order.
#: ``q_pre_norm`` / ``k_pre_norm`` exist only on models that normalise q and k (Gemma-3, Qwen3, OLMo-2):
#: the projections' outputs before that norm (TransformerLens' ``hook_q`` / ``hook_k`` there).
BLOCK_SITES: dict[str, str] = {
    "resid_pre": "hook_resid_pre",
    "q_input": "hook_q_input",
    "k_input": "hook_k_input",
    "v_input": "hook_v_input",
    "q_pre_norm": "attn.hook_q_pre_norm",
    "k_pre_norm": "attn.hook_k_pre_norm",
    "result": "attn.hook_result",
    "attn_out": "hook_attn_out",
    "resid_mid": "hook_resid_mid",
    "mlp_in": "hook_mlp_in",
    "pre": "mlp.hook_pre",
    "pre_linear": "mlp.hook_pre_linear",
    "post": "mlp.hook_post",
    "mlp_out": "hook_mlp_out",
    "resid_post": "hook_resid_post",
    "normalized_resid_post": "hook_normalized_resid_post",
}

#: Sites outside the blocks and their names.
MODEL_SITES: dict[str, str] = {
    "embed": "hook_embed",
    "pos_embed": "hook_pos_embed",
    "token_type_embed": "hook_token_type_embed",
    "ln_final": "ln_final.hook_normalized",
}

ALL_SITES: tuple[str, ...] = (*SITES, *BLOCK_SITES, *MODEL_SITES)

#: The axes of the tensor each site carries (TransformerLens conventions).
SITE_SHAPES: dict[str, str] = {
    "q_pre_rotary": "batch pos head d_head",
    "k_pre_rotary": "batch pos head d_head",
    "q": "batch pos head d_head",
    "k": "batch pos head d_head",
    "v": "batch pos head d_head",
    "attn_scores": "batch head query key",
    "pattern": "batch head query key",
    "z": "batch pos head d_head",
    "result": "batch pos head d_model",
    "q_input": "batch pos head d_model",
    "k_input": "batch pos kv_head d_model",
    "v_input": "batch pos kv_head d_model",
    "q_pre_norm": "batch pos head d_head",
    "k_pre_norm": "batch pos kv_head d_head",
    "pre": "batch pos d_mlp",
    "pre_linear": "batch pos d_mlp",
    "post": "batch pos d_mlp",
    **{s: "batch pos d_model" for s in ("resid_pre", "attn_out", "resid_mid", "mlp_in", "mlp_out", "resid_post",
                                        "normalized_resid_post", "embed", "pos_embed", "token_type_embed", "ln_final")},
}

#: Sites whose head axis comes right after batch (``[batch, head, query, key]``).
HEAD_MAJOR_SITES = frozenset({"attn_scores", "pattern"})

_ALIASES = {
    "scores": "attn_scores", "attn_logits": "attn_scores", "attn": "pattern", "query": "q", "key": "k", "value": "v",
    "mlp_pre": "pre", "mlp_post": "post", "normalized": "ln_final",
    # attnlab's hook_q / hook_k are taken after the rotary embedding: TransformerLens' rot_q / rot_k
    "rot_q": "q", "rot_k": "k",
}


def check_site(site: str) -> str:
    """Return ``site`` (or its canonical spelling) if attnlab knows it, else raise with a hint."""
    site = _ALIASES.get(site, site)
    if site not in ALL_SITES:
        raise InvalidLocation(f"unknown site {site!r}{did_you_mean(str(site), ALL_SITES)} (valid sites: {', '.join(ALL_SITES)})")
    return site


@dataclass(frozen=True)
class Location:
    """One site, in one layer for sites inside the blocks: ``Location(3, "pattern")``."""

    layer: int | None
    site: str

    @property
    def name(self) -> str:
        return hook_name(self.layer, self.site)


def check_head_pair(value, what: str, n_layers: int, n_heads: int, owner: str) -> tuple[int, int]:
    """``value`` as a ``(layer, head)`` pair of integers within ``n_layers`` x ``n_heads``.

    For results that hold heads without a model (``owner``: who holds them, with its verb, e.g.
    ``"tiny-gpt2 has"``): -1 would read the last layer, and 1.5 or a triple fail far away.
    """
    from attnlab.errors import is_integer

    if not (isinstance(value, (tuple, list)) and len(value) == 2 and all(is_integer(v) for v in value)):
        raise InvalidLocation(f"{what} must be a (layer, head) pair of integers, got {value!r}")
    layer, head = value
    if not (0 <= layer < n_layers and 0 <= head < n_heads):
        raise InvalidLocation(f"{what} = ({layer}, {head}) out of range: {owner} layers 0..{n_layers - 1} and heads "
                              f"0..{n_heads - 1}")
    return int(layer), int(head)


def hook_name(layer: int | None, site: str) -> str:
    """``hook_name(3, "pattern") == "blocks.3.attn.hook_pattern"``; ``hook_name(None, "embed") == "hook_embed"``."""
    site = check_site(site)
    if site in MODEL_SITES:
        return MODEL_SITES[site]
    if layer is None:
        raise InvalidLocation(f"site {site!r} is inside a block; give its layer")
    layer = int(layer)
    if site in SITES:
        return f"blocks.{layer}.attn.hook_{site}"
    return f"blocks.{layer}.{BLOCK_SITES[site]}"


#: The norms inside a block, by TransformerLens' names (``ln1_post``/``ln2_post``: Gemma's extra norms).
BLOCK_NORMS = ("ln1", "ln2", "ln1_post", "ln2_post")
#: Norms outside the blocks.
MODEL_NORMS = ("ln_final", "embed_ln")


def norm_path(layer: int | None, norm: str) -> str:
    """Where a norm sits: ``norm_path(3, "ln1") == "blocks.3.ln1"``, ``norm_path(None, "ln_final") == "ln_final"``."""
    if layer is None:
        if norm not in MODEL_NORMS:
            raise InvalidLocation(f"unknown norm {norm!r} outside the blocks (valid: {', '.join(MODEL_NORMS)})")
        return norm
    if norm not in BLOCK_NORMS:
        raise InvalidLocation(f"unknown norm {norm!r}{did_you_mean(str(norm), BLOCK_NORMS)} (valid: {', '.join(BLOCK_NORMS)})")
    return f"blocks.{int(layer)}.{norm}"


def scale_name(path: str) -> str:
    """The hook name of a norm's scale: ``scale_name("blocks.3.ln1") == "blocks.3.ln1.hook_scale"``."""
    return f"{path}.hook_scale"


def get_act_name(name: str, layer: int | None = None, layer_type: str | None = None) -> str:
    """TransformerLens' ``utils.get_act_name``: ``get_act_name("pattern", 3)``, ``get_act_name("resid_pre", 0)``.

    A full hook name is returned unchanged; ``layer_type`` (``"attn"``, ``"mlp"``) is accepted for
    compatibility. TransformerLens' shorthand works too: ``get_act_name("k6")``,
    ``get_act_name("scale4ln1")``, and its aliases (``"attn"``, ``"attn_logits"``, ``"query"``,
    ``"key"``, ``"value"``; ``"rot_q"``/``"rot_k"`` are attnlab's ``q``/``k``, which are taken
    after the rotary embedding).
    """
    if name.startswith("blocks.") or name.startswith("hook_") or "." in name:
        return name
    short = _SHORTHAND.match(name)
    if short is not None and layer is None:  # TransformerLens' shorthand: "k6", "pre5", "scale4ln1"
        name, layer, rest = short.group(1), int(short.group(2)), short.group(3)
        layer_type = rest or layer_type
    if name in ("scale", "normalized") and layer_type is not None:  # norms: get_act_name("scale", 3, "ln1")
        return f"{norm_path(layer, layer_type)}.hook_{name}"
    if name == "scale" and layer is None:  # the final norm's
        return scale_name("ln_final")
    return hook_name(layer, name)


#: ``<site><layer><layer type>``, TransformerLens' shorthand ("k6", "resid_pre5", "scale4ln1", "z0a")
_SHORTHAND = re.compile(r"^([a-z_]+?)(\d+)([a-z][a-z0-9_]*)?$")


_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")
_BY_SUFFIX = {**{f"attn.hook_{s}": s for s in SITES}, **{v: k for k, v in BLOCK_SITES.items()}}
_BY_MODEL_NAME = {v: k for k, v in MODEL_SITES.items()}


def parse_hook_name(name: str) -> Location:
    """Inverse of :func:`hook_name`; raises :class:`InvalidLocation` for anything else."""
    if name in _BY_MODEL_NAME:
        return Location(None, _BY_MODEL_NAME[name])
    match = _BLOCK_RE.match(name)
    if match is None or match.group(2) not in _BY_SUFFIX:
        raise InvalidLocation(
            f"{name!r} is not a hook name attnlab knows; names look like 'blocks.<layer>.attn.hook_<site>', "
            f"'blocks.<layer>.hook_resid_pre', 'blocks.<layer>.mlp.hook_post' or 'hook_embed'"
        )
    return Location(int(match.group(1)), _BY_SUFFIX[match.group(2)])


#: TransformerLens hook names attnlab does not have (by their ending), and what to use instead
_TL_ONLY = {
    "ln1.hook_out": "a norm's output is blocks.L.ln1.hook_normalized in attnlab (weight and bias applied)",
    "ln2.hook_out": "a norm's output is blocks.L.ln2.hook_normalized in attnlab (weight and bias applied)",
    "ln_final.hook_out": "the final norm's output is ln_final.hook_normalized in attnlab (weight and bias applied)",
    "ln1.hook_in": "ln1's input is blocks.L.hook_resid_pre (BERT: hook_resid_mid)",
    "ln2.hook_in": "ln2's input is blocks.L.hook_resid_mid (BERT: hook_resid_post)",
    "ln1_post.hook_normalized": "the post-attention norm's output is blocks.L.hook_attn_out",
    "ln2_post.hook_normalized": "the post-MLP norm's output is blocks.L.hook_mlp_out",
    "attn.hook_rot_q": "attnlab's hook_q is already after the rotary embedding (TransformerLens' hook_rot_q); "
                       "before it: hook_q_pre_rotary",
    "attn.hook_rot_k": "attnlab's hook_k is already after the rotary embedding (TransformerLens' hook_rot_k); "
                       "before it: hook_k_pre_rotary",
    "attn.hook_q_normed": "q after its norm and before the rotary embedding is blocks.L.attn.hook_q_pre_rotary in attnlab "
                          "(before the norm: hook_q_pre_norm)",
    "attn.hook_k_normed": "k after its norm and before the rotary embedding is blocks.L.attn.hook_k_pre_rotary in attnlab "
                          "(before the norm: hook_k_pre_norm)",
    "attn.hook_q_pre_norm": "only models that normalise q and k (Gemma-3, Qwen3, OLMo-2) have it; without a q norm the "
                            "projection's output is blocks.L.attn.hook_q_pre_rotary",
    "attn.hook_k_pre_norm": "only models that normalise q and k (Gemma-3, Qwen3, OLMo-2) have it; without a k norm the "
                            "projection's output is blocks.L.attn.hook_k_pre_rotary",
    "attn.hook_q_input": "the query inputs are blocks.L.hook_q_input (TransformerLens' name, on the block)",
    "attn.hook_k_input": "the key inputs are blocks.L.hook_k_input (TransformerLens' name, on the block)",
    "attn.hook_v_input": "the value inputs are blocks.L.hook_v_input (TransformerLens' name, on the block)",
    "hook_attn_in": "attnlab has no hook_attn_in; hook blocks.L.hook_q_input, hook_k_input and hook_v_input",
    "mlp.hook_mid": "attnlab has no SoLU hook_mid; mlp.hook_post is the neurons",
}


def missing_name_hint(name: str) -> str:
    """``"; <what to use instead>"`` for a TransformerLens hook name attnlab lacks, else ``""``."""
    for ending, hint in _TL_ONLY.items():
        if str(name).endswith(ending):
            return f" ({hint})"
    return ""
