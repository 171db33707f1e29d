"""Helpers for the intervention tests: where each architecture keeps its output projection."""

from __future__ import annotations

import torch
from einops import rearrange

ARCHS = ("gpt2", "bert", "llama", "gemma3")
TEXT = "the nurse said that she was happy"
OTHER = "the doctor said that he was sad"  # same number of tokens as TEXT


def output_projection(model, layer: int) -> torch.nn.Module:
    """The module that maps the concatenated head outputs z to the residual stream."""
    hf, arch = model.hf_model, model.cfg.architecture
    if arch == "gpt2":
        return hf.transformer.h[layer].attn.c_proj
    if arch == "bert":
        return hf.encoder.layer[layer].attention.output.dense
    return hf.model.layers[layer].self_attn.o_proj


def project_by_hand(proj: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    """``z`` [batch, pos, head, d_head] through the projection's raw weights."""
    flat = rearrange(z, "b p h d -> b p (h d)")
    if type(proj).__name__ == "Conv1D":  # GPT-2 stores the weight as [in, out]
        out = flat @ proj.weight
    else:
        out = flat @ proj.weight.T
    return out + proj.bias if proj.bias is not None else out


def scaling(model) -> float:
    hf_cfg = model.hf_model.config
    pre = getattr(hf_cfg, "query_pre_attn_scalar", None)
    return (pre if pre is not None else model.cfg.d_head) ** -0.5
