"""What makes a forward pass random: dropout that acts because a module is in training mode.

HF models drop in two ways: ``nn.Dropout`` modules (GPT-2's ``attn_dropout``,
``resid_dropout``, BERT's every ``dropout``) and a probability handed to the attention
function (``dropout=self.attention_dropout if self.training else 0.0``: Llama, Gemma,
Mistral read ``config.attention_dropout``; BART-like models keep a float ``dropout`` on the
module and call ``F.dropout``). :func:`active_dropout` finds both, on modules in training
mode only; the engine itself runs a train-mode model as it is (training with hooks is
legitimate), and the measure floor refuses one whose dropout acts.
"""

from __future__ import annotations

from torch import nn

from attnlab.errors import InvalidInput

__all__ = ["active_dropout", "check_deterministic"]

# float attributes or config fields that hold a dropout probability: "attention_dropout", "attn_pdrop",
# "hidden_dropout_prob", "dropout", "dropout_rate", ...
_PROBABILITY_WORDS = ("dropout", "pdrop", "drop_prob")


def _is_probability_name(name: str) -> bool:
    name = name.lower()
    return any(word in name for word in _PROBABILITY_WORDS)


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def active_dropout(model: nn.Module) -> list[str]:
    """Where ``model`` would drop at random in a forward pass now (empty: the pass is deterministic).

    Each entry names one part, e.g. ``"transformer.h.0.attn.attn_dropout (Dropout, p=0.1)"``,
    ``"model.layers.0.self_attn.attention_dropout=0.1"`` or ``"config.attention_dropout=0.1"``:
    a dropout module with ``p > 0``, or a dropout probability ``> 0`` kept on a module, on a
    module in training mode; a config's attention dropout ``> 0`` while the model is in
    training mode. A model in eval mode, or in training mode whose probabilities are all 0,
    gives ``[]``.

    >>> from attnlab.testing import tiny_hf_model
    >>> gpt2 = tiny_hf_model("gpt2")
    >>> active_dropout(gpt2)
    []
    >>> active_dropout(gpt2.train())[0]
    'transformer.drop (Dropout, p=0.1)'
    >>> active_dropout(tiny_hf_model("llama").train())  # attention_dropout=0.0: nothing drops
    []
    """
    parts: list[str] = []
    for name, module in model.named_modules():
        if not module.training:
            continue
        where = name or type(module).__name__
        if isinstance(module, nn.modules.dropout._DropoutNd):  # Dropout, Dropout1d/2d/3d, AlphaDropout, ...
            if _positive(module.p):
                parts.append(f"{where} ({type(module).__name__}, p={module.p:g})")
            continue
        for attr, value in vars(module).items():
            if not attr.startswith("_") and _is_probability_name(attr) and _positive(value):
                parts.append(f"{where}.{attr}={value:g}")
        for child_name, child in module.named_children():  # GPT-2's attention passes its eval-mode child's p on
            if not child.training and isinstance(child, nn.modules.dropout._DropoutNd) and _positive(child.p):
                parts.append(f"{where}.{child_name}.p={child.p:g} (read by the training-mode {type(module).__name__})")
    config = getattr(model, "config", None)
    if model.training and config is not None:
        fields = config.to_dict() if hasattr(config, "to_dict") else vars(config)
        for key, value in fields.items():
            if "att" in key.lower() and _is_probability_name(key) and _positive(value):
                parts.append(f"config.{key}={value:g}")
    return parts


def check_deterministic(model) -> None:
    """Refuse a model whose forward passes are random: in training mode with dropout that acts.

    What the measure floor, the analyses and the views call before their passes. Every
    measurement compares forward passes (clean and intervened, a sweep's resumed prefix, a
    gradient's estimate with its exact check), and an analysis averages them, so dropout would
    make each number random. Runs before anything else, so the model is left as it was (its mode, no hooks, no
    cached reference). A model in training mode whose dropout probabilities are all 0 (the
    Llama and Gemma configs) passes: its forward is the eval-mode one.
    """
    parts = active_dropout(getattr(model, "hf_model", model))
    if parts:
        shown = ", ".join(parts[:3]) + (f" and {len(parts) - 3} more" if len(parts) > 3 else "")
        raise InvalidInput(
            f"{model.cfg.name} is in training mode and its dropout acts ({shown}), so every forward pass drops at "
            "random and measurements would not repeat; call model.eval() first (or set those probabilities to 0)"
        )
