"""Parallel runs: attnlab's work split over processes by ``torch.distributed``.

When a process group is up (started by ``torchrun`` or ``accelerate launch`` and joined
with :func:`process_group`, or started from Python by :func:`run_parallel`), the sweeps,
``score()``, ``effect()`` and the corpus analyses split their work units between the
processes and gather the results with ``all_gather_object``:

* sweeps deal out whole batches of variants, the very batches a one-process run makes, so
  every number is the one a single process computes;
* ``score()`` / ``effect()`` deal out chunks of prompts, corpus analyses batches of sentences.

Every process receives every result, so the code after a call is the same everywhere;
print and write only where ``current().is_main``. All processes must make the same calls
in the same order (they meet at each gather). An error on one process is raised on all of
them, naming the rank it came from.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from attnlab import errors
from attnlab.errors import AttnlabError, DistributedError, InvalidInput, ProcessLeft, is_integer

__all__ = ["Group", "current", "local", "process_group", "map_units", "split_variants", "head_cost_in_layers", "BACKENDS"]

BACKENDS = ("gloo", "nccl")

Unit = TypeVar("Unit")
Value = TypeVar("Value")

_LOCAL: ContextVar[bool] = ContextVar("attnlab_local", default=False)
_OBJECT_GROUPS: dict[int, Any] = {}  # default group -> the gloo group objects travel on


@dataclass(frozen=True)
class Group:
    """Where this process stands: its ``rank`` among ``size`` processes and the device it should use."""

    rank: int
    size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that prints and writes."""
        return self.rank == 0


def _device(rank: int) -> torch.device:
    if not torch.cuda.is_available():
        return torch.device("cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def current() -> Group:
    """The process group attnlab splits work over (rank 0 of 1 outside one, or inside :func:`local`)."""
    if _LOCAL.get() or not (dist.is_available() and dist.is_initialized()):
        return Group(0, 1, _device(0))
    rank = dist.get_rank()
    return Group(rank, dist.get_world_size(), _device(rank))


@contextmanager
def local() -> Iterator[None]:
    """Run attnlab's work in this process alone, even inside a process group (e.g. on rank 0 only)."""
    token = _LOCAL.set(True)
    try:
        yield
    finally:
        _LOCAL.reset(token)


def _check_threads(threads) -> None:
    if threads is not None and (not is_integer(threads) or threads < 1):
        raise InvalidInput(f"threads must be a positive integer or None (leave torch's setting), got {threads!r}")


def _check_backend(backend) -> str:
    if backend is None:
        return "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in BACKENDS:
        raise InvalidInput(f"unknown backend {backend!r}{errors.did_you_mean(backend, BACKENDS)} (valid: {', '.join(BACKENDS)})")
    if backend == "nccl" and not torch.cuda.is_available():
        raise InvalidInput("backend 'nccl' needs CUDA GPUs and none is visible; use 'gloo' on CPUs")
    return backend


@contextmanager
def process_group(backend: str | None = None, *, threads: int | None = 1, timeout_s: float = 1800.0) -> Iterator[Group]:
    """Join the processes that ``torchrun`` / ``accelerate launch`` started; one process without them.

    >>> from attnlab.measure.distributed import process_group
    >>> with process_group() as group:  # run as `torchrun --nproc-per-node 2 script.py`
    ...     group.rank, group.size      # started plainly: one process, nothing to join
    (0, 1)

    ``backend``: ``"gloo"`` (CPUs) or ``"nccl"`` (GPUs; the default when CUDA is visible,
    each process then uses GPU ``LOCAL_RANK``). ``threads``: torch threads per process (1:
    several processes share the cores; None keeps torch's setting). A group already set up
    (e.g. by ``accelerate.Accelerator()``) is used as it is and left open.
    """
    _check_threads(threads)
    backend = _check_backend(backend)
    if not isinstance(timeout_s, (int, float)) or isinstance(timeout_s, bool) or not 0 < timeout_s < float("inf"):
        raise InvalidInput(f"timeout_s must be a positive number of seconds (default 1800), got {timeout_s!r}")
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    owns = launched and dist.is_available() and not dist.is_initialized()
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if owns and missing:  # torch's own error is a ValueError from deep inside its rendezvous
        raise InvalidInput(
            f"RANK and WORLD_SIZE are set but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not: start "
            "the processes with torchrun or accelerate launch (they set all four), or unset RANK and WORLD_SIZE to run "
            "in one process")
    if owns:
        _check_rank_env()
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        if owns:
            if backend == "nccl":
                torch.cuda.set_device(_device(int(os.environ["RANK"])))
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
            # every process holds all its connections before any goes on: one that finished its share at once and
            # left closed a connection another was still opening (its init failed: "Gloo connectFullMesh failed
            # ... Connection closed by peer", seen under load, and was reported as that process's error)
            dist.barrier(**({"device_ids": [torch.cuda.current_device()]} if backend == "nccl" else {}))
        yield current()
    finally:
        if owns and dist.is_initialized():
            _OBJECT_GROUPS.clear()
            dist.destroy_process_group()
        torch.set_num_threads(before)


def _check_rank_env() -> None:
    """RANK in 0..WORLD_SIZE-1, both whole numbers: a RANK past the last waited out the whole timeout for
    processes that never come, and WORLD_SIZE="x" was torch's bare ValueError."""
    values = {}
    for name in ("RANK", "WORLD_SIZE"):
        text = os.environ[name].strip()
        if not text.isdigit():
            raise InvalidInput(f"environment variable {name} must be a whole number >= 0, got {os.environ[name]!r}")
        values[name] = int(text)
    if values["WORLD_SIZE"] < 1 or values["RANK"] >= values["WORLD_SIZE"]:
        raise InvalidInput(f"environment variable RANK={values['RANK']} must lie in 0..WORLD_SIZE-1 with WORLD_SIZE >= 1 "
                           f"(WORLD_SIZE={values['WORLD_SIZE']}); torchrun and accelerate launch set both")


# -- gathering, with errors travelling to every process -----------------------------------


@dataclass
class _Outcome:
    """What one process computed for its share: a value, or the error it hit (as plain data)."""

    value: Any = None
    error: dict | None = None


def error_record(err: BaseException, group: Group) -> dict:
    """An exception as plain data (type, message, traceback, rank), to send or write as JSON.

    ``knock_on``: the error only says that another process left (its own error is the cause).
    """
    return {
        "rank": group.rank, "size": group.size, "module": type(err).__module__, "name": type(err).__name__,
        "message": str(err), "traceback": "".join(traceback.format_exception(err)),
        "knock_on": isinstance(err, ProcessLeft),
    }


def rebuild_error(record: dict) -> Exception:
    """The exception a record stands for, named by the rank it came from.

    attnlab's own errors keep their type (an ``InvalidInput`` on rank 1 is an ``InvalidInput``
    everywhere); anything else becomes a :class:`DistributedError` carrying the traceback.
    """
    where = f"rank {record['rank']} of {record['size']}"
    cls = getattr(errors, record["name"], None) if record["module"] == errors.__name__ else None
    if isinstance(cls, type) and issubclass(cls, AttnlabError):
        message = record["message"]
        return cls(message if _names_a_rank(message) else f"{where}: {message}")
    return DistributedError(f"{where} raised {record['name']}: {record['message']}\n{record['traceback']}".rstrip())


def _names_a_rank(message: str) -> bool:
    import re

    return re.search(r"\brank \d+ of \d+\b", message) is not None


def _attempt(compute: Callable[[], Any], group: Group) -> _Outcome:
    try:
        return _Outcome(value=compute())
    except Exception as err:  # sent to every process and raised there, naming this rank
        return _Outcome(error=error_record(err, group))


def _object_group():
    """Objects travel over gloo (CPU memory) even when the model's group is NCCL."""
    if dist.get_backend() == "gloo":
        return None
    key = id(dist.group.WORLD)
    if key not in _OBJECT_GROUPS:
        _OBJECT_GROUPS[key] = dist.new_group(backend="gloo")
    return _OBJECT_GROUPS[key]


def _all_gather(value: Any, group: Group) -> list:
    """``value`` from every process, in rank order; a process that left the group is named as such.

    A process that raised before a gather (or was killed) closes its connections: the others
    got gloo's raw "Connection closed by peer" from deep inside torch.
    """
    values: list = [None] * group.size
    try:
        dist.all_gather_object(values, value, group=_object_group())
    except RuntimeError as err:  # gloo / NCCL errors (DistBackendError is a RuntimeError)
        raise ProcessLeft(
            f"rank {group.rank} of {group.size}: another process left the group before this gather, or did not "
            f"reach it within the group's timeout (it raised an "
            f"error or was stopped; its own error is the cause: see its output, or what run_parallel raises). "
            f"The backend said: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    return values


#: what each named part of a fingerprint covers, for the error that names the parts that differ
PARTS = {
    "the call": "which call each process makes",
    "rows": "the prompts' token ids, masks and row data",
    "units": "the work units (e.g. the sentences of a corpus pass)",
    "specs": "the interventions: each variant's specs and start layer",
    "batching": "the chunks of rows and batches of variants (batch size)",
    "metric": "the metric's type and settings",
    "model": "the model's config, parameter shapes and sampled parameter values",
}


def agree(call: str, inputs: str | Mapping[str, str], group: Group) -> None:
    """Check that every process makes the same call on the same inputs, before its units are dealt out.

    The processes meet at each gather, so a rank scoring other prompts, or fewer, got the
    others' numbers filled in with zeros, and one making another call waited out the group's
    timeout (30 minutes by default). ``inputs``: fingerprints by name (``{"rows": ...,
    "specs": ..., "metric": ..., "model": ...}``; one string: ``{"inputs": ...}``). Raises
    the same ``InvalidInput`` on every process, naming what differs.
    """
    mine = _Meeting(call, dict(inputs) if isinstance(inputs, Mapping) else {"inputs": inputs})
    everyone = _all_gather(mine, group)
    if any(other != mine for other in everyone):
        raise InvalidInput(_disagreement(everyone, group))


@dataclass(frozen=True)
class _Meeting:
    """What a process sends when the processes check that they make the same call (``value``: to combine)."""

    call: str
    parts: dict
    value: Any = None

    def short(self) -> str:
        return hashlib.sha1(repr(sorted(self.parts.items())).encode()).hexdigest()[:10]


def _disagreement(everyone: list, group: Group) -> str:
    """The message of an ``InvalidInput``: each rank's call, then the named parts of the inputs that differ."""
    meetings = [m for m in everyone if isinstance(m, _Meeting)]
    calls = "; ".join(
        f"rank {rank} of {group.size}: {m.call} (inputs {m.short()})" if isinstance(m, _Meeting)
        else f"rank {rank} of {group.size}: another step of a call" for rank, m in enumerate(everyone))
    differs = ["the call"] if len({m.call for m in meetings}) > 1 or len(meetings) < len(everyone) else []
    names = dict.fromkeys(name for m in meetings for name in m.parts)
    differs += [name for name in names if len({m.parts.get(name) for m in meetings}) > 1]
    what = "; ".join(f"{name} ({PARTS.get(name, 'as named')})" for name in differs) or "the inputs"
    return (f"the processes made different calls or gave different inputs ({calls}); what differs: {what}: every "
            "process must make the same attnlab calls, on the same inputs, in the same order")


def smallest(call: str, value: int, group: Group | None = None) -> int:
    """The smallest of the processes' ``value`` (e.g. each one's ``batch_size="auto"``), on every process.

    One small gather, like :func:`agree`: the processes must make the same ``call``; one
    making another call gets the same ``InvalidInput`` as there.
    """
    group = group or current()
    if group.size == 1:
        return value
    mine = _Meeting(call, {}, value)
    everyone = _all_gather(mine, group)
    if any(not isinstance(m, _Meeting) or (m.call, m.parts) != (call, {}) for m in everyone):
        raise InvalidInput(_disagreement(everyone, group))
    return min(m.value for m in everyone)


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    """A tensor's raw bytes, whatever its dtype (bfloat16 has no NumPy type)."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def digest(*parts: Any) -> str:
    """A short fingerprint of work units (tensors by their bytes, anything else by its repr)."""
    h = hashlib.sha1()
    for part in parts:
        if isinstance(part, torch.Tensor):
            h.update(str((part.dtype, tuple(part.shape))).encode())
            h.update(_tensor_bytes(part))
        else:
            h.update(repr(part).encode())
    return h.hexdigest()


def fingerprint(value: Any) -> str:
    """A digest of specs, metrics and their settings that is the same in every process for equal values.

    Tensors and arrays count by their bytes; attnlab's intervention specs and metrics, and
    dataclasses, by their type and public fields; containers by their items (sets and dicts
    sorted, so hash order does not matter); functions by module and qualified name. A lambda
    is known by where it is defined (``make_metric.<locals>.<lambda>``), not by its code or
    the values it closes over, and another object by its type (and its ``repr`` when its class
    writes one without a memory address): two such objects that differ only inside are taken
    as equal.
    """
    return hashlib.sha1(repr(_plain(value, 0)).encode()).hexdigest()


_DEPTH = 8
_ATOMS = frozenset({type(None), bool, int, float, complex, str, bytes})
_FIELDED: tuple[type, ...] = ()  # attnlab's specs and metrics, known by their public attributes (set on first use)


def _plain(value: Any, depth: int) -> Any:
    """``value`` as nested tuples of plain values that ``repr`` writes the same in every process."""
    kind = type(value)
    if kind in _ATOMS:
        return value
    if kind is tuple or kind is list:
        if all(type(v) in _ATOMS for v in value):  # the usual case (heads, positions, prompts): no recursion
            return (kind.__name__, *value)
        return (kind.__name__, *(_plain(v, depth + 1) for v in value)) if depth < _DEPTH else ("deep", kind.__name__)
    if isinstance(value, _fielded()):
        items = vars(value).items()
        return (kind.__module__, kind.__qualname__,
                tuple((k, v if type(v) in _ATOMS else _plain(v, depth + 1)) for k, v in items if k[0] != "_"))
    if isinstance(value, np.ndarray) and value.dtype.kind not in "biufc":  # strings, objects: no tensor of them
        return ("array", str(value.dtype), value.shape, _plain(value.tolist(), depth + 1))
    if isinstance(value, (torch.Tensor, np.ndarray)):
        tensor = torch.as_tensor(value) if isinstance(value, np.ndarray) else value
        return ("tensor", str(tensor.dtype), tuple(tensor.shape), hashlib.sha1(_tensor_bytes(tensor)).hexdigest())
    if isinstance(value, (bool, int, float, complex, str, bytes)):  # subclasses (an IntEnum): by value and type
        return (kind.__qualname__, repr(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value)
    if depth > _DEPTH:
        return ("deep", kind.__qualname__)
    if isinstance(value, Mapping):
        return ("dict", tuple(sorted((repr(_plain(k, depth + 1)), _plain(v, depth + 1)) for k, v in value.items())))
    if isinstance(value, (list, tuple)):
        return (kind.__name__, *(_plain(v, depth + 1) for v in value))
    if isinstance(value, (set, frozenset)):
        return ("set", *sorted(repr(_plain(v, depth + 1)) for v in value))
    if isinstance(value, functools.partial):
        return ("partial", _plain(value.func, depth + 1), _plain(value.args, depth + 1), _plain(value.keywords, depth + 1))
    if isinstance(value, torch.nn.Module):
        return ("module", kind.__module__, kind.__qualname__)
    if callable(value) and hasattr(value, "__qualname__"):  # functions, methods, classes
        return ("function", getattr(value, "__module__", None), value.__qualname__)
    if dataclasses.is_dataclass(value):
        return (kind.__module__, kind.__qualname__,
                tuple((f.name, _plain(getattr(value, f.name), depth + 1)) for f in dataclasses.fields(value)))
    shown = repr(value) if kind.__repr__ is not object.__repr__ else ""
    return (kind.__module__, kind.__qualname__, "" if " at 0x" in shown else shown)


def _fielded() -> tuple[type, ...]:
    """Intervention specs and metrics: what they do is in their public attributes."""
    global _FIELDED
    if not _FIELDED:
        from attnlab.interventions import Intervention
        from attnlab.measure.metrics import Metric

        _FIELDED = (Intervention, Metric)
    return _FIELDED


def model_fingerprint(model: Any) -> str:
    """A digest of a model: its type, its config and the engine's cheap digest of its weights
    (:meth:`~attnlab.engine.model.HookedModel.weights_digest`: shapes, dtypes and sampled values)."""
    weights = model.weights_digest() if hasattr(model, "weights_digest") else None
    return digest(type(model).__qualname__, _plain(getattr(model, "cfg", None), 0), weights)


def gather(outcome: _Outcome, group: Group) -> list[_Outcome]:
    """Every process's outcome, in rank order, on every process; raises the first error found."""
    outcomes = _all_gather(outcome, group)
    if not all(isinstance(found, _Outcome) for found in outcomes):  # a process is checking a call's inputs
        raise InvalidInput(_disagreement(outcomes, group))
    for found in outcomes:
        if found.error is not None:
            raise rebuild_error(found.error)
    return outcomes


# -- splitting work units ------------------------------------------------------------------


def map_units(
    compute: Callable[[Unit], Value],
    units: Iterable[Unit],
    *,
    progress: bool = False,
    desc: str = "",
    size: Callable[[Unit], int] | None = None,
    leave: bool = False,
    same: Callable[[], Mapping[str, str]] | None = None,
) -> Iterator[Value]:
    """``compute(unit)`` for every unit, yielded in order; in a process group, unit ``i`` runs on rank ``i % size``.

    Units are dealt in rounds of one per process; each round ends with one gather, so memory
    holds at most one round of results. One progress bar, on the main process, advancing by
    ``size(unit)`` (default 1) per unit. ``compute`` must return CPU values. ``same()``:
    more fingerprints the processes must agree on (e.g. ``{"model": ...}``), computed only
    in a process group.
    """
    units = list(units)
    group = current()
    if group.size > 1:
        agree(f"{desc or 'a corpus pass'} over {len(units)} units", {"units": digest(units), **(same() if same else {})},
              group)
    weigh = size or (lambda unit: 1)
    total = sum(weigh(u) for u in units)
    with tqdm(total=total, desc=desc, disable=not progress or not group.is_main, leave=leave) as bar:
        if group.size == 1:
            for unit in units:
                value = compute(unit)
                bar.update(weigh(unit))
                yield value
            return
        for first in range(0, len(units), group.size):
            mine = first + group.rank
            outcome = _attempt(lambda: compute(units[mine]), group) if mine < len(units) else _Outcome()
            outcomes = gather(outcome, group)
            for unit, found in zip(units[first : first + group.size], outcomes):
                bar.update(weigh(unit))
                yield found.value


def variant_blocks(starts: Sequence[int], copies: int) -> list[tuple[int, list[int]]]:
    """The batches of a sweep: ``(start layer, variant indices)``, ``copies`` variants of one start each.

    The same grouping as the runner's (by start layer in order of appearance, then
    consecutive runs of ``copies``), so any union of blocks re-forms the same batches.
    """
    by_start: dict[int, list[int]] = {}
    for i, start in enumerate(starts):
        by_start.setdefault(int(start), []).append(i)
    return [(start, idx[g : g + copies]) for start, idx in by_start.items() for g in range(0, len(idx), copies)]


def partition(costs: Sequence[float], n_procs: int) -> list[int]:
    """The process of each job of a sequence, cut into ``n_procs`` consecutive runs of about equal cost.

    Job ``j`` goes to process ``floor(n_procs * (cost before j + half its cost) / total)``:
    consecutive jobs stay together (a process touches few chunks of rows, so few clean
    forwards are repeated), and each process's share is within one job of ``total / n_procs``.
    """
    total = float(sum(costs))
    if total <= 0:
        return [min(n_procs - 1, j * n_procs // max(1, len(costs))) for j in range(len(costs))]
    owner, before = [], 0.0
    for cost in costs:
        owner.append(min(n_procs - 1, int(n_procs * (before + cost / 2) / total)))
        before += cost
    return owner


def _offset(chunk_setup, first_row: int):
    """``chunk_setup`` for rows cut from row ``first_row`` on: its slices count from the full rows."""
    if chunk_setup is None:
        return None
    return lambda part, sl: chunk_setup(part, slice(sl.start + first_row, sl.stop + first_row))


RunShare = Callable[[Any, list, int, Any, Any], tuple[np.ndarray, np.ndarray]]  # the last: a tqdm bar


def head_cost_in_layers(layer_params: int, head_params: int, tokens_per_row: float, head_positions_per_row: float) -> float:
    """What the LM head costs per row, in layers: it decides how the work is balanced between processes.

    A layer multiplies each token by its parameters; the head multiplies only the positions
    it reads. On Gemma-3-270m (a 262k-word head, one position read per prompt of ~7 tokens)
    the head costs about four layers: counting it as one sent the late-layer batches, whose
    cost is mostly the head, to one process and left the other idle at the end.
    """
    if layer_params <= 0 or tokens_per_row <= 0:
        return 1.0
    return max(head_params * head_positions_per_row / (layer_params * tokens_per_row), 0.0)


def split_variants(
    run_share: RunShare,
    rows,
    variants: Sequence[tuple[int, Any]],
    *,
    chunk: int,
    copies: int,
    n_layers: int,
    head_layers: float = 1.0,
    chunk_setup=None,
    progress: bool,
    desc: str = "",
    same: Mapping[str, str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The batched runner over the process group: processes share ``(chunk of rows, batch of variants)`` units.

    ``run_share(rows, variants, batch_size, chunk_setup, bar)`` is the one-process
    runner (baseline ``[prompt, ...]``, intervened ``[variant, prompt, ...]``) advancing
    ``bar`` by one per forward instead of drawing its own; each process
    calls it once per chunk it holds, on that chunk's rows and its batches of variants, with
    a batch size that makes the runner form the very batches of a one-process run (same
    rows, same variants together), so the numbers are the same. With no variants (scores)
    the units are the chunks. The work is cut by :func:`partition` in chunk order, a batch
    resuming at layer ``s`` costing about ``rows x variants x (n_layers - s + 1)`` (the +1:
    the LM head) and a chunk's clean forward ``rows x (n_layers + 1)``; a process holding
    batches of a chunk also runs that chunk's clean forward (its prefix).

    One bar, on the main process, for the whole call: it counts the main process's own
    forwards (labelled ``[rank 0's share]``); the others' progress would cost a message
    per forward, and a bar per chunk showed many partial bars.

    Before anything runs, the processes check that they agree on the rows, the variants'
    start layers, the batching and ``same`` (more fingerprints by name: the specs, the
    metric, the model; see :func:`agree`).
    """
    group = current()
    agree(f"a batched run over {rows.n_rows} rows x {len(variants)} variants", {
        "rows": digest(rows.input_ids, rows.attention_mask, *(rows.data[name] for name in sorted(rows.data)),
                       sorted(rows.data)),
        "specs": digest([start for start, _ in variants]),  # not labels: a frozenset's repr differs per process
        "batching": digest(chunk, copies), **(same or {})}, group)
    k = rows.per_prompt
    firsts = list(range(0, rows.n_rows, chunk))
    sizes = [min(chunk, rows.n_rows - f) for f in firsts]
    blocks = variant_blocks([start for start, _ in variants], copies)
    # the work in order, chunk by chunk: its clean forward, then its batches of variants
    jobs = []
    for c, n in enumerate(sizes):
        jobs.append((c, None, n * (n_layers + head_layers)))
        jobs.extend((c, b, n * len(idx) * (n_layers - start + head_layers)) for b, (start, idx) in enumerate(blocks))
    held: dict[int, list[int]] = {}
    forwards = 0  # this process's: a clean forward per chunk held, one per batch of variants (a block)
    for (c, b, _), proc in zip(jobs, partition([cost for _, _, cost in jobs], group.size)):
        if proc == group.rank and (b is not None or not blocks):  # a clean forward alone: only for scores
            forwards += (c not in held) + (b is not None)
            held.setdefault(c, []).extend(blocks[b][1] if b is not None else [])

    def mine():
        done = []
        with local(), tqdm(total=forwards, desc=f"{desc} [rank 0's share]", disable=not progress or not group.is_main,
                           leave=False) as bar:
            for c, idx in sorted(held.items()):
                idx = sorted(idx)
                part = rows.select(slice(firsts[c], firsts[c] + sizes[c]))
                clean, inter = run_share(part, [variants[i] for i in idx], copies * sizes[c],
                                         _offset(chunk_setup, firsts[c]), bar)
                done.append((c, idx, clean, inter))
        return done

    outcomes = gather(_attempt(mine, group), group)
    pieces = [piece for found in outcomes for piece in found.value]
    _, _, first_clean, first_inter = pieces[0]
    clean = np.zeros((rows.n_rows // k, *first_clean.shape[1:]))
    inter = np.zeros((len(variants), rows.n_rows // k, *first_inter.shape[2:]))
    for c, idx, clean_c, inter_c in pieces:
        prompts = slice(firsts[c] // k, (firsts[c] + sizes[c]) // k)
        clean[prompts] = clean_c
        inter[idx, prompts] = inter_c
    return clean, inter
