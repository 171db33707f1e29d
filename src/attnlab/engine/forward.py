"""The one forward path: every forward pass attnlab makes goes through :func:`run`.

One call does, in one place, what every feature needs around the HF model: the attention
mask and position ids for either padding side, the per-row token positions that
position-addressed edits use, reading named hook points, applying interventions and hook
functions, resuming from a cached prefix, and the LM head only where it is read:

* ``logits="all"``: every position (``[batch, pos, vocab]``);
* ``logits="last"``: each row's last real token (``[batch, vocab]``), whatever the padding;
* ``logits=<[batch, k] token positions>``: those positions of each row (``[batch, k, vocab]``);
* ``logits=None``: no LM head at all (attention and hidden-state readers). Such a pass
  without ``hidden=True`` stops after the last layer where a hook acts or whose output is
  kept (:mod:`attnlab.engine.stop`): the later layers' results would be thrown away.
  ``stop_at_layer=k`` stops after block ``k - 1`` and returns the residual stream there in
  ``Output.hidden`` (TransformerLens' ``stop_at_layer``).

``vocab=<[k] token ids>`` keeps only those vocabulary entries (last dimension ``k``). A
logit difference needs two of Gemma-3's 262k rows of the unembedding, so where the head is
a plain ``nn.Linear`` of a causal LM (whose forward only rescales the head's output entry by
entry, e.g. Gemma's soft-capping) only those rows are computed; elsewhere (BERT's MLM head,
other heads) the full logits are computed at the positions and indexed: same numbers.

On a 262k-word vocabulary (Gemma-3) the LM head costs as much as all the layers together,
so reading logits at one position instead of all of them roughly halves a forward pass.
The head runs at the chosen positions by gathering its input rows just before it, so
whatever the model does after the head (Gemma's logit soft-capping) still applies.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import nn

from attnlab.engine.finite import all_finite
from attnlab.engine.hooks import scoped_module_hook
from attnlab.engine.precision import check_precision, computing_dtype, full_precision, reduced_linears
from attnlab.engine.prefix import Prefix, capture_layer_outputs, resumed
from attnlab.engine.state import ForwardState, check_row_keys, current_state, forward_state, root_calls
from attnlab.engine.stop import StopForward, check_keep_layers, check_reached, check_stop_at_layer, last_layer_in_use, stop_at
from attnlab.engine.tokens import Tokens
from attnlab.errors import InvalidInput, InvalidSpec

__all__ = ["blame_specs", "Output", "Resume", "run", "token_logprobs", "as_specs"]

LogitsAt = str | torch.Tensor | None

#: ``run(vocab=...)`` computes only the asked rows of a plain linear LM head. False: the full
#: logits are computed and indexed instead (the same numbers, slower): for tests and benchmarks.
SUBSET_HEAD = True


@dataclass(frozen=True)
class Resume:
    """Start the forward at layer ``start``, layers before it returning ``prefix``'s kept outputs."""

    prefix: Prefix
    start: int
    times: int = 1  # copies of the prefix rows stacked in the batch


@dataclass
class Output:
    """What :func:`run` returns: logits where asked, the final hidden states if asked, read hook points."""

    tokens: Tokens
    logits: torch.Tensor | None = None  # last dimension: the vocabulary, or the k ids of ``vocab``
    hidden: Float[torch.Tensor, "batch pos d_model"] | None = None
    cache: dict[str, torch.Tensor] = field(default_factory=dict)
    prefix: Prefix | None = None  # layer outputs kept for resuming (when keep_layers was given)


def _validate_logits_at(logits: LogitsAt, tokens: Tokens) -> LogitsAt:
    if logits is None or (isinstance(logits, str) and logits in ("all", "last")):
        return logits
    if isinstance(logits, torch.Tensor):
        if logits.ndim != 2 or logits.shape[0] != tokens.n_rows or logits.dtype not in (torch.long, torch.int, torch.int32):
            raise InvalidInput(f"logits positions must be an integer tensor [batch={tokens.n_rows}, k], got {tuple(logits.shape)}")
        bad = (logits < 0) | (logits >= tokens.lengths[:, None].to(logits.device))
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0])
            raise InvalidInput(
                f"logits position {int(logits[bad][0])} out of range for row {row}, which has positions 0..{int(tokens.lengths[row]) - 1}"
            )
        return logits
    raise InvalidInput(f"logits must be 'all', 'last', None or a [batch, k] tensor of positions, got {logits!r}")


def _validate_vocab(model, vocab: Int[torch.Tensor, " k"] | None, logits: LogitsAt) -> Int[torch.Tensor, " k"] | None:
    if vocab is None:
        return None
    if logits is None:
        raise InvalidInput("vocab= selects entries of the logits, so it needs logits='all', 'last' or positions, not None")
    if not isinstance(vocab, torch.Tensor) or vocab.ndim != 1 or vocab.dtype not in (torch.long, torch.int, torch.int32) or not vocab.numel():
        raise InvalidInput(f"vocab must be a non-empty 1-d integer tensor of token ids, got {vocab!r}")
    n_vocab = model.cfg.d_vocab
    if n_vocab and bool(((vocab < 0) | (vocab >= n_vocab)).any()):
        raise InvalidInput(f"vocab ids must be in 0..{n_vocab - 1}, got {vocab.tolist()}")
    return vocab.long()


def _subset_head(model) -> bool:
    """Whether the LM head can compute only some vocabulary rows and give exactly the full logits' entries.

    A plain ``nn.Linear`` computes each output entry from its own weight row, and a causal
    LM's forward only rescales the head's output entry by entry (Gemma's soft-capping);
    BERT's MLM head and any other module compute the full logits instead.
    """
    head = model.layout.unembed
    return SUBSET_HEAD and type(head) is nn.Linear and model.cfg.is_causal and model.layout.head_transform is None


@contextmanager
def _lm_head_at(
    model, columns: Int[torch.Tensor, "batch k"] | None, n_cols: int, vocab: Int[torch.Tensor, " v"] | None = None
) -> Iterator[list[bool]]:
    """Inside the block, the LM head sees only ``columns`` of each row (all if None) and, with ``vocab``, computes only those rows.

    With ``vocab`` the head's own call runs on zero positions and a hook returns
    ``F.linear(x, W[vocab], b[vocab])`` in its place, so what the model does after the head
    still applies. Scoped hooks: another thread using the model sees the full head, and so
    does a nested run (its own forward state) or a call of the HF model a hook makes during
    the pass (no state: :func:`root_calls`). Yields a list that holds True once the subset was computed.
    """
    head = model.layout.unembed
    state = current_state()
    rows = None if columns is None else torch.arange(columns.shape[0], device=columns.device)[:, None]
    kept: list[torch.Tensor] = []
    done: list[bool] = []

    def gather(module, args, kwargs):
        if current_state() is not state:
            return None
        hidden = args[0] if args else None
        if not (isinstance(hidden, torch.Tensor) and hidden.ndim == 3 and hidden.shape[1] == n_cols):
            return None
        if columns is not None:
            hidden = hidden[rows, columns.to(hidden.device)]
        if vocab is not None:
            kept.append(hidden)
            hidden = hidden[:, :0]  # the Linear itself computes nothing
        return (hidden, *args[1:]), kwargs

    def subset(module, args, output):
        if not kept:
            return None
        ids = vocab.to(module.weight.device)
        bias = module.bias[ids] if module.bias is not None else None
        done.append(True)
        with full_precision(module.weight.device):  # a few rows: no reason to round them under autocast
            return F.linear(kept.pop().to(module.weight.dtype), module.weight[ids], bias)

    with ExitStack() as stack:
        stack.enter_context(scoped_module_hook(head, gather, kind="pre"))
        if vocab is not None:
            stack.enter_context(scoped_module_hook(head, subset))
        yield done


def _model_kwargs(model, tokens: Tokens, extra: dict[str, Any]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"input_ids": tokens.ids, "attention_mask": tokens.mask, **extra}
    if tokens.side == "left" and model._accepts("position_ids"):
        kwargs["position_ids"] = tokens.position_ids
    if model.cfg.is_causal and model._accepts("use_cache"):
        kwargs["use_cache"] = False
    return kwargs


def as_specs(interventions) -> tuple:
    """``interventions`` as a tuple of specs: one spec (as ``effect()`` takes), a list of them, or None (none).

    Each item is checked by ``model.intervene``; anything that is not a spec or a list is an ``InvalidInput``.
    """
    if interventions is None:
        return ()
    if hasattr(interventions, "validate") and hasattr(interventions, "prepare"):
        return (interventions,)
    if isinstance(interventions, (str, bytes, Mapping)) or not isinstance(interventions, Iterable):
        raise InvalidInput(f"interventions must be an intervention spec or a list of them, got "
                           f"{type(interventions).__name__}: {interventions!r}")
    return tuple(interventions)


def run(
    model,
    tokens: Tokens,
    *,
    logits: LogitsAt = "all",
    vocab: Int[torch.Tensor, " k"] | None = None,
    hidden: bool = False,
    read: Sequence[str] | Callable[[str], bool] = (),
    hooks: Sequence[tuple[Any, Callable]] = (),
    interventions: Sequence = (),
    resume: Resume | None = None,
    keep_layers: set[int] | None = None,
    grad: bool = False,
    precision: str | torch.dtype | None = None,
    stop_at_layer: int | None = None,
    stop_early: bool = True,
    model_kwargs: dict[str, Any] | None = None,
    row_keys: Int[torch.Tensor, " row"] | None = None,
) -> Output:
    """Run ``model`` on ``tokens`` once. See the module docstring for ``logits`` and ``vocab``.

    ``read``: hook names (or a predicate on names) whose values to return in ``Output.cache``.
    ``hooks``: ``(name, fn)`` pairs active for this call; ``interventions``: specs.
    ``resume``: start at a later layer from a kept prefix; ``keep_layers``: keep the outputs of
    these decoder layers (``Output.prefix``, keyed by layer from 0; negative layers count from the end)
    for later resumes. ``grad``: build the autograd
    graph (attribution patching); otherwise the pass runs under ``torch.no_grad()``.
    ``precision``: ``torch.bfloat16`` / ``torch.float16`` (or their names): the blocks' linear
    layers multiply in that precision (:mod:`attnlab.engine.precision`: for estimates, not exact effects).
    ``stop_at_layer``: run blocks ``0 .. k-1`` only, ``Output.hidden`` the residual stream entering block ``k``
    (needs ``logits=None``). ``stop_early=False``: a ``logits=None`` pass runs every layer even when
    no attnlab hook acts after some layer (for plain PyTorch hooks on the HF modules).
    ``row_keys``: which prompt each row is (``[row]``), when the rows are a chunk or stacked
    copies of a larger set (what the hooks' ``row_keys`` give; default: the row index).
    """
    interventions = as_specs(interventions)
    stop = check_stop_at_layer(stop_at_layer, model.cfg.n_layers)
    keep_layers = check_keep_layers(keep_layers, model.cfg.n_layers)
    if stop is not None and logits is not None:
        raise InvalidInput(f"stop_at_layer={stop_at_layer} returns the residual stream, not logits: pass logits=None")
    if stop is not None and resume is not None and stop < resume.start:
        raise InvalidInput(f"stop_at_layer={stop_at_layer} stops before layer {resume.start}, where the resumed pass starts: "
                           f"the stream there is the prefix's (read it from the prefix) or resume earlier")
    if stop is not None and keep_layers and max(keep_layers) >= stop:
        raise InvalidInput(f"keep_layers={sorted(keep_layers)} asks for layers that stop_at_layer={stop_at_layer} does not run "
                           f"(valid: below {stop})")
    if logits is not None and not model.cfg.has_lm_head:
        raise InvalidInput(f"{model.cfg.name} has no LM head, so it has no logits to read: pass logits=None "
                           "(hidden=True for the final hidden state)")
    logits = _validate_logits_at(logits, tokens)
    precision = check_precision(precision)
    vocab = _validate_vocab(model, vocab, logits)
    tokens = tokens.to(model.device)
    cache: dict[str, torch.Tensor] = {}
    names = model._resolve_names(read, what="read") if read else []
    entering = None if stop is None else f"blocks.{stop}.hook_resid_pre"  # block k's input: the stream returned
    if not callable(read):  # names asked one by one must all come back (a predicate picks among what runs)
        check_reached(model, names, stop, "read", stop_at_layer)

    def store(x, hook):
        cache[hook.name] = x if grad else x.detach()

    state = ForwardState(
        n_rows=tokens.n_rows,
        pad_left=tokens.pad_left if tokens.side == "left" else None,
        n_positions=tokens.n_positions,  # a measurement's chunk: its prompts' longest, not the chunk's
        lengths=tokens.lengths.cpu(),
        row_keys=check_row_keys(row_keys, tokens.n_rows),
    )
    kwargs = _model_kwargs(model, tokens, model_kwargs or {})
    result = Output(tokens=tokens)
    model.ensure_routed()
    with ExitStack() as stack:
        stack.enter_context(torch.enable_grad() if grad else torch.no_grad())
        stack.enter_context(forward_state(state))
        if interventions:
            stack.enter_context(model.intervene(*interventions))
        all_hooks = [*hooks, *((n, store) for n in names)]
        if all_hooks:
            stack.enter_context(model.hooks(fwd_hooks=all_hooks))
        if resume is not None:
            stack.enter_context(resumed(model.decoder_layers(), resume.prefix, resume.start, resume.times))
        if keep_layers:
            kept = stack.enter_context(capture_layer_outputs(model.decoder_layers(), keep_layers))
        stack.enter_context(reduced_linears(model, precision))  # None too: a nested run in a hook asks for itself
        root = model.layout.body if logits is None else model.hf_model
        stack.enter_context(root_calls(root))  # a hook's own call of the HF model: a plain call, not this pass
        if logits is None:
            blocks = model.decoder_layers()
            if stop is None and stop_early and not hidden and blocks:  # nothing is read after the last hooked or kept layer
                last = last_layer_in_use(model, keep_layers)
                stop = last + 1 if last is not None and last + 1 < len(blocks) else None
            if stop is not None:
                stack.enter_context(stop_at(blocks, stop))
            try:
                out = model.layout.body(**kwargs)
                result.hidden = out.last_hidden_state if hidden else None
            except StopForward as stopped:
                result.hidden = stopped.resid if stop_at_layer is not None else None
                if stop_at_layer is not None and entering in names:  # block k's hooks did not run; its input is this
                    cache[entering] = stopped.resid if grad else stopped.resid.detach()
        else:
            last = isinstance(logits, str) and logits == "last"
            columns = None if isinstance(logits, str) and logits == "all" else (
                tokens.last[:, None] if last else tokens.columns(logits.to(tokens.ids.device))
            )
            subset = vocab is not None and _subset_head(model)
            done: list[bool] = []
            if columns is not None or subset:
                done = stack.enter_context(_lm_head_at(model, columns, tokens.ids.shape[1], vocab if subset else None))
            if hidden:
                kwargs["output_hidden_states"] = True
            out = model.hf_model(**kwargs)
            result.logits = out.logits[:, 0] if last else out.logits
            if vocab is not None and not done:  # full logits: index them
                result.logits = result.logits[..., vocab.to(result.logits.device)]
            if hidden:
                result.hidden = out.hidden_states[-1]
        if keep_layers:
            result.prefix = Prefix(dict(kept), tokens.n_rows)
    result.cache = cache
    specs = (*interventions, *model.acting_interventions())
    produced = result.logits if result.logits is not None else result.hidden
    if (specs or hooks) and produced is not None and not all_finite(produced.detach()):  # hooks: a sweep's variants
        blame_specs(model, specs, kwargs, state)
    return result


def blame_specs(model, specs: Sequence, kwargs: dict[str, Any], state: ForwardState) -> None:
    """The output holds inf or NaN under ``specs``: an ``InvalidSpec`` naming them, if the unedited model's is finite.

    The attention function already refuses a non-finite head output; a value a spec writes
    can also be finite there and overflow further on (a residual stream of 1e38 squared in
    the next norm), which returned NaN logits without a word. Runs only on that failure: one
    clean forward of the HF model with ``kwargs`` decides whom to blame (a model that overflows
    by itself is not the specs' doing; it is not checked again on the same weights and input, as a
    sweep runs one input under many variants).
    """
    ids, mask = kwargs["input_ids"], kwargs.get("attention_mask")
    key = (model.weights_stamp(), tuple(ids.shape), hashlib.sha1(ids.cpu().numpy().tobytes() + (
        b"" if mask is None else mask.cpu().numpy().tobytes())).hexdigest())
    known: OrderedDict = model.__dict__.setdefault("_overflows_by_itself", OrderedDict())
    if key in known:
        return
    with torch.no_grad(), model.clean(), forward_state(state):
        out = model.hf_model(**kwargs)
    clean = getattr(out, "logits", None)
    clean = out[0] if clean is None else clean
    if not all_finite(clean):  # the model overflows by itself on this input (Gemma in float16, long texts)
        known[key] = True
        while len(known) > 64:
            known.popitem(last=False)
        return
    shown = ", ".join(map(repr, specs[:3])) + (f" and {len(specs) - 3} more" if len(specs) > 3 else "")
    raise InvalidSpec(f"with {shown or 'the edits of this pass'} the model's output holds inf or NaN, though the "
                      "unedited model's is finite: a value the interventions write overflowed further on (e.g. in a "
                      "norm); use values of the size of the model's own activations")


def token_logprobs(logits: Float[torch.Tensor, "batch pos vocab"], tokens: Tokens) -> Float[torch.Tensor, "batch pos"]:
    """``log p(token t | tokens < t)`` in column ``t`` of each row (0 where t is padding or the first token).

    The one per-token log-probability every loss, perplexity and continuation score uses.
    """
    logp = logits[:, :-1].to(computing_dtype(logits.dtype)).log_softmax(dim=-1)
    target = tokens.ids[:, 1:].to(logp.device)
    picked = logp.gather(-1, target[..., None])[..., 0]  # [batch, pos-1]: predicts column 1..
    valid = (tokens.mask[:, 1:] * tokens.mask[:, :-1]).to(picked.device).bool()
    out = torch.zeros(logits.shape[:2], dtype=picked.dtype, device=picked.device)
    out[:, 1:] = picked.masked_fill(~valid, 0.0)
    return out
