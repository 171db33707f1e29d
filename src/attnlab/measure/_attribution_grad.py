"""The one grad-enabled forward of attribution patching, and the backward passes over its graph.

The forward goes through the engine (``run(..., grad=True)`` via :func:`metric_output`) with
a hook on every hook point whose gradient is needed: the hook keeps the tensor that flows
on (a tensor that does not require grad, e.g. in a model whose weights are frozen, is
replaced by an equal leaf that does). The metric is evaluated with its own ``reduce`` /
``compare`` / ``combine`` on the grad-enabled output, so the estimate is of exactly the
number the exact sweeps report.

Backward passes use ``torch.autograd.grad`` with the captured activations as inputs:
weight gradients are never computed, so one backward costs about one forward.

GradDrop (AtP*, Kramar et al. 2024, section 3.1.2) needs, for every layer ``l``, the gradient
with layer ``l``'s residual-stream writes (``hook_attn_out`` and ``hook_mlp_out``) cut out.
Where a block is ``resid_post = resid_pre + attn_out + mlp_out`` (pre-norm and sandwich
blocks), cutting the writes leaves the identity, so that gradient is the backward of
``resid_pre`` of layer ``l`` with the cotangent ``dM/d resid_post`` of layer ``l`` (read in the
first backward): a backward through layers ``0 .. l-1`` only, about half a full backward on
average. Elsewhere (post-norm blocks, where the shortcut passes through a norm) a hook on
the writes zeroes their gradient in a full backward; the forward values are untouched.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from attnlab.engine.locations import hook_name
from attnlab.errors import InvalidInput
from attnlab.measure._forward import metric_output
from attnlab.measure._rows import Rows
from attnlab.measure.metrics import KL

__all__ = ["GradForward", "grad_forward", "has_residual_shortcut"]


@dataclass
class GradForward:
    """Activations captured in the graph, the metric per prompt, and the scalars to differentiate."""

    acts: dict[str, torch.Tensor]
    values: torch.Tensor  # [prompt] metric value of the clean run (detached)
    scalars: list[torch.Tensor]  # backward directions: [sum of the metric] or KL's random probes
    second_order: bool  # KL: the estimate is 1/2 * mean over probes of (a' - a).g_r squared
    shortcut: bool = False  # GradDrop through the residual shortcut (see the module docstring)
    n_layers: int = 0
    rotary: dict = field(default_factory=dict)  # pre-rotary point name -> the (cos, sin) its values were rotated by
    dropped: dict = field(default_factory=lambda: {"layer": None})  # read by the GradDrop hooks
    _post_grads: list = field(default_factory=list)  # per direction: {layer: dM/d resid_post}

    def gradients(self, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
        """For each direction, ``{name: dM/d(activation)}`` (kept: what GradDrop's passes start from)."""
        posts = [hook_name(l, "resid_post") for l in range(1, self.n_layers)] if self.shortcut else []
        self._post_grads = []
        for grads in self._backward(self.scalars, None, list(names) + posts):
            self._post_grads.append({l: grads[n] for l, n in enumerate(posts, start=1)})
            yield {n: grads[n] for n in names}

    def dropped_gradients(self, layer: int, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
        """For each direction, the gradients with layer ``layer``'s residual writes cut out of the graph."""
        if not self.shortcut:
            self.dropped["layer"] = layer
            try:
                yield from self._backward(self.scalars, None, list(names))
            finally:
                self.dropped["layer"] = None
            return
        start = self.acts[hook_name(layer, "resid_pre")]
        cotangents = [post[layer] for post in self._post_grads]
        yield from self._backward([start] * len(cotangents), cotangents, list(names))

    def _backward(self, outputs, cotangents, names) -> Iterator[dict[str, torch.Tensor]]:
        inputs = [self.acts[n] for n in names]
        for i, out in enumerate(outputs):
            grads = torch.autograd.grad(out, inputs, grad_outputs=None if cotangents is None else cotangents[i],
                                        retain_graph=True, allow_unused=True)
            yield {n: (g if g is not None else torch.zeros_like(a)) for n, g, a in zip(names, grads, inputs)}


def grad_forward(model, part: Rows, metric, names: Sequence[str], *, graddrop: bool, probes: int,
                 seed: int, precision: torch.dtype | None = None) -> GradForward:
    """One clean forward of ``part`` building the graph from the captured ``names`` to the metric."""
    acts: dict[str, torch.Tensor] = {}
    rotary: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    dropped: dict = {"layer": None}

    def capture(x, hook):
        if getattr(hook, "rotary", None) is not None:
            rotary[hook.name] = hook.rotary
        if not x.requires_grad:  # frozen weights: start the graph here
            x = x.detach().requires_grad_(True)
            acts[hook.name] = x
            return x
        acts[hook.name] = x
        return None

    def drop_gradient(x, hook):
        if x.requires_grad:
            layer = hook.layer_index
            x.register_hook(lambda g: torch.zeros_like(g) if dropped["layer"] == layer else None)

    n_layers = model.cfg.n_layers
    shortcut = graddrop and has_residual_shortcut(model)
    hooks = [(n, capture) for n in names]
    if shortcut:  # GradDrop's passes start at resid_pre of layer l with dM/d resid_post of layer l
        hooks += [(hook_name(l, site), capture) for l in range(1, n_layers) for site in ("resid_pre", "resid_post")]
    elif graddrop:
        for layer in range(n_layers):
            for site in ("attn_out", "mlp_out"):
                name = hook_name(layer, site)
                if name in model.hook_dict:
                    hooks.append((name, drop_gradient))
    out = metric_output(model, part, metric, hooks=hooks, grad=True, precision=precision)
    k = part.per_prompt
    if isinstance(metric, KL):
        scalars = _kl_probes(out, probes, seed, part)
        values = torch.zeros(part.n_rows // k)
        second = True
    else:
        stats = metric.reduce(out, part)
        per_prompt = metric.combine(metric.compare(stats, stats, part).reshape(-1, k))
        if not per_prompt.requires_grad:
            raise InvalidInput(f"{metric.name} gave a value with no gradient; attribution needs a differentiable metric")
        scalars, values, second = [per_prompt.sum()], per_prompt.detach().float().cpu(), False
    return GradForward(acts, values, scalars, second, shortcut, n_layers, rotary, dropped)


def has_residual_shortcut(model) -> bool:
    """Every block adds its attention and MLP outputs to a residual stream that skips them unchanged."""
    blocks = model.layout.blocks
    names = [hook_name(l, s) for l in range(1, model.cfg.n_layers) for s in ("resid_pre", "resid_post")]
    return bool(blocks) and all(b.kind in ("pre_norm", "sandwich") for b in blocks) and all(n in model.hook_dict for n in names)


def _kl_probes(logits: torch.Tensor, probes: int, seed: int, part: Rows) -> list[torch.Tensor]:
    """Random directions whose squared projections average to the second-order KL.

    To first order the logits move by ``dl``, and ``KL(p || softmax(l + dl)) ~= 1/2 Var_p(dl)``
    (the gradient of KL at the clean run is 0). With ``w = sqrt(p) * z - p * (sqrt(p) . z)``
    and ``z ~ N(0, I)``, ``E[(w . dl)^2] = Var_p(dl)``; ``w . dl ~= (a' - a) . d(w . l)/da``.
    Each row's ``z`` is drawn from ``(seed, probe, the row's tokens)``: a prompt gets the same
    probes whatever the batch size, the device's batch or the other prompts in the call.
    """
    logits = logits.float()  # [row, vocab]
    root = logits.detach().softmax(dim=-1)
    p = root
    root = root.sqrt()
    keys = [tuple(part.tokens.ids[r][part.tokens.mask[r].bool()].tolist()) for r in range(logits.shape[0])]
    out = []
    for probe in range(probes):
        z = torch.stack([torch.randn(logits.shape[-1], generator=torch.Generator().manual_seed(_probe_seed(seed, probe, key)))
                         for key in keys]).to(logits.device)
        w = root * z - p * (root * z).sum(dim=-1, keepdim=True)
        out.append((w * logits).sum())
    return out


def _probe_seed(seed: int, probe: int, key: tuple) -> int:
    digest = hashlib.blake2b(repr((seed, probe, key)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)
