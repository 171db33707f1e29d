"""``batch_size="auto"``: how many rows one forward pass of a sweep carries, picked from the device.

On a CPU the arithmetic is the bottleneck and 64 rows already keep the cores busy, so
"auto" is 64. On a GPU a forward pass of a small batch costs mostly fixed per-call
overhead (kernel launches, Python), so bigger batches are nearly free until memory runs
out (an H200 sweep was 2.8x faster than a per-head loop at 64 rows, 4.5x at 512). There
"auto" is the largest batch whose estimated activations fit in ``MEMORY_SHARE`` of the free
memory, at most ``MAX_ROWS``::

    rows = clamp(floor(MEMORY_SHARE * free_bytes / row_bytes), 1, MAX_ROWS)

``row_bytes`` (see :func:`row_bytes`) adds up, for one row of ``T`` positions, the hidden
states a resumed sweep keeps (one per layer), one block's working set (residual, norms,
q/k/v, MLP), the attention scores and pattern (float32) and the logits the metric reads
(float32, with their log-softmax and the clean copy compared against; only the
vocabulary entries the metric reads, e.g. two for a logit difference). It overestimates
on purpose; ``free_bytes`` is the least free memory over the GPUs holding the model.
"""

from __future__ import annotations

import numbers

import torch

from attnlab.errors import InvalidInput
from attnlab.measure.distributed import smallest

__all__ = ["AUTO", "CPU_ROWS", "MAX_ROWS", "MEMORY_SHARE", "check_batch_size", "row_bytes", "rows_that_fit",
           "auto_batch_size", "resolve_batch_size", "metric_batch_size", "BACKWARD_CPU_ROWS", "backward_batch_size"]

AUTO = "auto"
CPU_ROWS = 64  # CPUs: arithmetic-bound; more rows per call buy nothing
MAX_ROWS = 512  # GPUs: the largest batch measured (H200: 4.5x over a per-head loop); larger is untested
BACKWARD_CPU_ROWS = 32  # attribution on CPUs: a forward and a backward of 32 rows already keep the cores busy
MEMORY_SHARE = 0.7  # of the free GPU memory; the rest is headroom for the allocator and the model's own buffers


def check_batch_size(batch_size, *, auto: bool = True) -> int | str:
    """A positive integer, or ``"auto"`` where the caller can pick one (``auto=True``)."""
    if auto and batch_size == AUTO and isinstance(batch_size, str):
        return batch_size
    if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) or batch_size < 1:
        valid = "a positive integer or 'auto'" if auto else "a positive integer"
        raise InvalidInput(f"batch_size must be {valid}, got {batch_size!r}")
    return int(batch_size)  # numpy integers too (a batch size read from a table or a grid)


def row_bytes(
    *,
    n_positions: int,
    n_layers: int,
    d_model: int,
    n_heads: int,
    d_head: int,
    d_mlp: int,
    output_width: int,
    output_positions: int,
    dtype_bytes: int,
) -> int:
    """Estimated memory (bytes) one batch row needs in a sweep's resumed forward pass.

    ``output_width`` / ``output_positions``: what the metric reads per row, e.g. the
    vocabulary at one position (``LogitDiff``), at every position (``Loss``), or ``d_model``
    at every position (``HiddenShift``).
    """
    T = n_positions
    width = max(d_model, n_heads * d_head)
    hidden = dtype_bytes * T * (n_layers * d_model + 8 * width + 3 * d_mlp)  # kept prefix + one block's working set
    attention = 4 * 3 * n_heads * T * T  # scores, float32 softmax, pattern
    output = 4 * 3 * output_positions * output_width  # float32 output, its log-softmax, the clean copy compared against
    return hidden + attention + output


def rows_that_fit(free_bytes: int, per_row: int, *, share: float = MEMORY_SHARE, cap: int = MAX_ROWS) -> int:
    """``clamp(floor(share * free_bytes / per_row), 1, cap)``."""
    if per_row <= 0:
        raise InvalidInput(f"bytes per row must be positive, got {per_row}")
    return int(max(1, min(cap, (share * max(0, free_bytes)) // per_row)))


def _d_mlp(model) -> int:
    """The MLP width from the first block's input projection (4 x d_model when the layout has none)."""
    blocks = model.layout.blocks
    first = blocks[0].mlp_in if blocks else None
    weight = getattr(first, "weight", None)
    return int(weight.numel() // model.cfg.d_model) if weight is not None else 4 * model.cfg.d_model


def _dtype_bytes(model) -> int:
    embed = model.layout.embed
    weight = getattr(embed, "weight", None)
    return weight.element_size() if weight is not None else 4


def _free_cuda_bytes(model) -> int:
    """The least free memory over the GPUs holding the model's blocks (one GPU, or several with device_map)."""
    devices = {model.device}
    for block in model.layout.blocks:
        devices.update(p.device for p in block.layer.parameters())
    cuda = sorted({d.index or 0 for d in devices if d.type == "cuda"})
    return min(torch.cuda.mem_get_info(i)[0] for i in cuda)


def auto_batch_size(model, rows, output: str = "logits", *, vocab_width: int | None = None,
                    device: torch.device | None = None, free_bytes: int | None = None) -> int:
    """The "auto" rule for a sweep of ``rows`` (an ``attnlab.measure._rows.Rows``) on ``model``.

    ``output``: what the metric reads, ``"logits"`` or ``"hidden"`` (``Metric.output``);
    ``vocab_width``: how many vocabulary entries the LM head computes (``Metric.vocab``),
    None for all of them.

    ``device`` / ``free_bytes`` default to the model's device and its free memory (given,
    they let the rule be checked without a GPU).
    """
    device = torch.device(device) if device is not None else model.device
    if device.type != "cuda":
        return CPU_ROWS
    cfg = model.cfg
    T = int(rows.tokens.ids.shape[1])
    if output == "hidden":
        width, positions = cfg.d_model, T
    else:
        width = vocab_width if vocab_width is not None else cfg.d_vocab or cfg.d_model
        positions = 1 if rows.positions == "read" else T
    per_row = row_bytes(
        n_positions=T, n_layers=cfg.n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads, d_head=cfg.d_head,
        d_mlp=_d_mlp(model), output_width=width, output_positions=positions, dtype_bytes=_dtype_bytes(model),
    )
    free = free_bytes if free_bytes is not None else _free_cuda_bytes(model)
    return rows_that_fit(free, per_row)


def resolve_batch_size(model, rows, batch_size: int | str, output: str = "logits", *, vocab_width: int | None = None) -> int:
    """An explicit integer as given; ``"auto"`` by :func:`auto_batch_size`."""
    checked = check_batch_size(batch_size)
    return auto_batch_size(model, rows, output, vocab_width=vocab_width) if checked == AUTO else checked


def metric_batch_size(model, rows, batch_size: int | str, metric) -> int:
    """:func:`resolve_batch_size` for ``metric``: what it reads and how many vocabulary entries it needs.

    In a process group (a parallel sweep, ``score`` or ``effect``) ``"auto"`` is the smallest
    of the processes' own picks (GPUs with different free memory pick different sizes), so
    every process cuts the work into the same batches.
    """
    vocab = metric.vocab(rows) if metric.output == "logits" else None
    size = resolve_batch_size(model, rows, batch_size, metric.output,
                              vocab_width=None if vocab is None else int(vocab.numel()))
    if batch_size == AUTO:
        size = smallest(f"batch_size='auto' for {metric.name} on {rows.n_rows} rows", size)
    return size


def backward_batch_size(model, rows, batch_size: int | str, *, vocab_width: int | None = None,
                        device: torch.device | None = None, free_bytes: int | None = None) -> int:
    """``batch_size`` for a grad-enabled pass (attribution): an integer as given, ``"auto"`` from the device.

    A backward pass keeps every layer's working set (not one block's, as a resumed sweep
    does), so one row costs about ``n_layers`` times a one-layer row of :func:`row_bytes`.
    CPUs: ``BACKWARD_CPU_ROWS``.
    """
    checked = check_batch_size(batch_size)
    if checked != AUTO:
        return checked
    device = torch.device(device) if device is not None else model.device
    if device.type != "cuda":
        return BACKWARD_CPU_ROWS
    cfg = model.cfg
    T = int(rows.tokens.ids.shape[1])
    one_layer = row_bytes(
        n_positions=T, n_layers=1, d_model=cfg.d_model, n_heads=cfg.n_heads, d_head=cfg.d_head, d_mlp=_d_mlp(model),
        output_width=0, output_positions=0, dtype_bytes=_dtype_bytes(model),
    )
    width = vocab_width if vocab_width is not None else cfg.d_vocab or cfg.d_model
    logits = 4 * 3 * (1 if rows.positions == "read" else T) * width
    free = free_bytes if free_bytes is not None else _free_cuda_bytes(model)
    return rows_that_fit(free, cfg.n_layers * one_layer + logits)
