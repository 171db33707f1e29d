"""``run_parallel``: start N processes from Python (or the CLI) with torchrun's own engine.

The processes are started by :func:`torch.distributed.launcher.api.elastic_launch`, the
launcher behind ``torchrun``: the same environment (``RANK``, ``WORLD_SIZE``, ...), the
same rendezvous, fresh ``spawn`` processes (safe with CUDA and threads), and a failed
process stops the others instead of leaving them waiting. Each process joins the group
with :func:`attnlab.measure.distributed.process_group`, loads its own model (a model does
not travel cheaply between processes; its name does) and runs the function; attnlab's
sweeps, ``score()``, ``effect()`` and corpus analyses inside it split their work.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import numbers
import os
import pickle
import select
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import torch

from attnlab.errors import DistributedError, InvalidInput
from attnlab.measure.distributed import _check_backend, _check_threads, current, error_record, process_group, rebuild_error

__all__ = ["run_parallel"]

_NOISY_LOGGERS = ("torch.distributed.elastic", "torch.multiprocessing")


def run_parallel(
    fn: Callable[..., Any],
    n_procs: int,
    *args: Any,
    model: Any = None,
    backend: str | None = None,
    threads: int | None = 1,
    **kwargs: Any,
) -> Any:
    """``fn(*args, **kwargs)`` on ``n_procs`` processes; returns what it returns on the main process (rank 0).

    With ``model=`` (what :func:`attnlab.load` takes, a name or path, or a picklable
    function returning a model), each process loads its own model and runs
    ``fn(model, *args, **kwargs)``:

    >>> from functools import partial
    >>> from attnlab.testing import tiny_model
    >>> from attnlab.measure import LogitDiff, run_parallel, sweep_heads
    >>> res = run_parallel(sweep_heads, 2, ["the nurse said that"], LogitDiff(" she", " he"), "zero",
    ...                    model=partial(tiny_model, "llama"), progress=False)  # doctest: +SKIP
    >>> len(res.table)                                                         # doctest: +SKIP
    8

    ``fn`` and the arguments are sent to new processes, so ``fn`` must be importable (defined
    at module level) and the arguments picklable. ``threads``: torch threads per process
    (default 1, so N processes use N cores). ``backend``: ``"gloo"`` or ``"nccl"`` (default:
    NCCL when CUDA is visible, process ``i`` on GPU ``i``). ``n_procs``: 1 (runs in this process) up to
    the number of CPU cores. In a script, call it under ``if __name__ == "__main__":`` (the new
    processes import the script again).
    An error in any process is raised here, naming its rank; attnlab's own error types are kept.
    """
    n_procs = _check_n_procs(n_procs)
    if not callable(fn):  # else a TypeError here, or in every new process after they all started
        raise InvalidInput(f"run_parallel runs fn(*args, **kwargs) in each process: fn must be a function (defined at "
                           f"module level), got {type(fn).__name__}: {fn!r:.80}")
    _check_not_bootstrapping()
    _check_threads(threads)
    _check_backend(backend)
    _check_model_spec(model)
    if n_procs == 1:
        with process_group(backend, threads=threads) as group:
            return fn(*_with_model(model, group), *args, **kwargs)
    _check_sendable(fn, args, kwargs, model)
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    with tempfile.TemporaryDirectory(prefix="attnlab-parallel-") as error_dir, _quiet(_NOISY_LOGGERS), \
            _launcher_leaves_no_trace(), _children_start_deaf_to_ctrl_c(error_dir):
        config = LaunchConfig(
            min_nodes=1, max_nodes=1, nproc_per_node=n_procs, run_id=f"attnlab-{uuid.uuid4().hex}",
            rdzv_backend="c10d", rdzv_endpoint="localhost:0",  # as `torchrun --standalone`: a free local port
            max_restarts=0, monitor_interval=0.05, start_method="spawn",
            logs_specs=DefaultLogsSpecs(log_dir=os.path.join(error_dir, "launcher")),  # removed with the folder
        )
        try:
            results = elastic_launch(config, _worker)(fn, args, kwargs, model, backend, threads, error_dir)
        except ChildFailedError as failed:
            raise _failure(failed, Path(error_dir), n_procs) from None
    return results[0]


def max_procs() -> int:
    """The most processes :func:`run_parallel` starts: one per CPU core (each runs at least one thread)."""
    return max(1, os.cpu_count() or 1)


def _check_n_procs(n_procs) -> int:
    most = max_procs()
    if not isinstance(n_procs, numbers.Integral) or isinstance(n_procs, bool) or not 1 <= n_procs <= most:
        raise InvalidInput(
            f"n_procs must be an integer from 1 to {most} (one process per CPU core of this machine), got {n_procs!r}")
    return int(n_procs)


def _check_not_bootstrapping() -> None:
    """Refuse a call made while a new (spawned) process imports the calling script again.

    Without ``if __name__ == "__main__":`` the script's top-level ``run_parallel`` runs again
    in every new process; multiprocessing then fails there with a message about
    ``freeze_support`` and the launcher only sees a process that exited.
    """
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise InvalidInput(
            "run_parallel was called while a new process was importing the main script: new processes import it "
            "again (spawn), so call run_parallel under `if __name__ == \"__main__\":`"
        )


def _check_model_spec(model) -> None:
    if model is None or isinstance(model, (str, os.PathLike)) or (callable(model) and not isinstance(model, torch.nn.Module)):
        return
    raise InvalidInput(
        f"model= takes what attnlab.load() takes (a name or path) or a function returning a model, "
        f"not a {type(model).__name__}: each process loads its own copy"
    )


def _check_sendable(fn, args, kwargs, model) -> None:
    """Refuse early what spawned processes could not receive (instead of a failure deep in the launcher)."""
    if getattr(fn, "__module__", None) == "__main__" and not hasattr(__import__("__main__"), "__file__"):
        raise InvalidInput(
            f"{getattr(fn, '__qualname__', fn)!r} is defined in an interactive session; new processes cannot import it. "
            "Define it in a module (a .py file) and import it"
        )
    for what, value in (("function", fn), ("arguments", (args, kwargs)), ("model=", model)):
        try:
            pickle.dumps(value)
        except Exception as err:
            raise InvalidInput(
                f"run_parallel sends the {what} to new processes but they cannot be pickled ({err}); "
                "use a function defined at module level and plain arguments (names, lists, specs, metrics)"
            ) from None


def _with_model(model, group) -> tuple:
    """``(model,)`` loaded in this process (on its device), or ``()`` without ``model=``."""
    if model is None:
        return ()
    if callable(model):
        return (model(),)
    from attnlab.engine.loading import load

    return (load(model, device=group.device if group.device.type == "cuda" else None),)


def _worker(fn, args, kwargs, model, backend, threads, error_dir):
    """One process: join the group, load the model, run ``fn``; an error is written down for the parent.

    The error is written before the process leaves the group: leaving closes its
    connections, which makes the others fail too, and the first record must be the cause.
    """
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])

    def write(err: BaseException) -> None:
        path = Path(error_dir) / f"rank-{rank}.json"
        if not path.exists():
            record = {**error_record(err, current()), "rank": rank, "size": size, "time": time.time()}
            path.write_text(json.dumps(record))

    try:
        _hear_ctrl_c(error_dir)  # a Ctrl-C while this process started is raised here, as a KeyboardInterrupt
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # N loading bars say nothing; attnlab's own bar shows on rank 0
        with process_group(backend, threads=threads) as group:
            try:
                result = fn(*_with_model(model, group), *args, **kwargs)
            except SystemExit as err:  # even sys.exit(0): the process would end "successfully" with no result
                write(DistributedError(
                    f"the function called sys.exit({err.code!r}); run_parallel returns what the function returns on "
                    "the main process, so it must return (or raise an exception) instead"))
                raise SystemExit(1) from None
            except BaseException as err:
                write(err)
                raise
        if group.is_main:
            _check_result(result)
        return result if group.is_main else None
    except KeyboardInterrupt as err:
        # torch's process wrapper swallows KeyboardInterrupt and exits with status 0 without a
        # result, and the launcher then waits forever for it: exit with a failure instead
        write(err)
        raise SystemExit(130) from None
    except BaseException as err:
        write(err)
        raise
    finally:  # what is left (sending the result back) ends quietly on a Ctrl-C, without a traceback
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_DFL)


def _hear_ctrl_c(error_dir) -> None:
    """In a new process: say it has started, and take Ctrl-C again (held back while it imported)."""
    (Path(error_dir) / f"started-{os.getpid()}").touch()
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])


def _check_result(result) -> None:
    """The launcher sends rank 0's result back pickled; say so here rather than dying while sending it."""
    try:
        pickle.dumps(result)
    except Exception as err:
        raise InvalidInput(
            f"run_parallel returns what the function returns on the main process, but its {type(result).__name__} "
            f"cannot be pickled to be sent back ({err}); return plain data (tables, arrays, numbers, result objects)"
        ) from None


def _failure(failed, error_dir: Path, n_procs: int) -> Exception:
    """The error to raise for a failed launch: its cause, as well as the records and exit codes tell.

    First the earliest error a process wrote that is not a knock-on ("another process left the
    group"); else the process the launcher saw fail if it wrote nothing (``os._exit``, killed,
    a SIGTERM from outside included, out of memory: the others only saw it leave), with its
    exit code, when the others wrote that it left or it died of a signal; else, when every
    record is a knock-on, the one process that wrote none (it left first, and the launcher
    saw a knock-on before it); else the earliest record; else the codes.

    torch's launcher (its ``MultiprocessContext``) reports the first process it finds exited
    with a failure, and only then stops the others (SIGTERM): the process it reports was not
    stopped by it, so a SIGTERM exit there came from outside.
    """
    records = [json.loads(p.read_text()) for p in sorted(error_dir.glob("rank-*.json"))]
    first = lambda found: min(found, key=lambda r: (r["time"], r["rank"]))  # noqa: E731
    causes = [r for r in records if not r.get("knock_on")]
    if causes:
        return rebuild_error(first(causes))
    recorded = {r["rank"] for r in records}
    silent = {rank: f.exitcode for rank, f in sorted(failed.failures.items()) if rank not in recorded}
    rank, code = next(iter(silent.items()), (None, 0))
    if silent and (records or code < 0):  # else it may have failed while starting: the message below says how
        how = f"died of {_signal_name(-code)} (exit code {code})" if code < 0 else f"exited with code {code}"
        how += ", sent from outside run_parallel," if code == -signal.SIGTERM else ""
        then = f"; then {rebuild_error(first(records))}" if records else ""
        return DistributedError(
            f"rank {rank} of {n_procs} {how} without reporting a Python error (killed, out of memory, os._exit or a "
            f"crash in native code){then}")
    unrecorded = [rank for rank in range(n_procs) if rank not in recorded]
    if records and unrecorded:  # every record says another process left: one that wrote nothing left first
        who = f"rank {unrecorded[0]} of {n_procs}" if len(unrecorded) == 1 else \
            f"one of ranks {', '.join(map(str, unrecorded))} of {n_procs}"
        return DistributedError(
            f"{who} left the group without reporting a Python error (killed, a SIGTERM from outside included, out of "
            f"memory, os._exit or a crash in native code; its exit code is unknown: the launcher saw another process "
            f"fail first); then {rebuild_error(first(records))}")
    if records:
        return rebuild_error(first(records))
    codes = ", ".join(f"rank {rank} exit code {f.exitcode}" for rank, f in sorted(failed.failures.items()))
    return DistributedError(
        f"a process of {n_procs} exited without reporting a Python error from the function ({codes}): killed, out of "
        "memory, or failed while starting (its own error, if any, is printed above; a script must call run_parallel "
        "under `if __name__ == \"__main__\":`, since new processes import it again)"
    )


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


@contextmanager
def _launcher_leaves_no_trace():
    """Give the calling process back its signal handlers and environment, and Ctrl-C as ``KeyboardInterrupt``.

    torch's launcher installs its own handlers for SIGINT, SIGTERM, SIGHUP and SIGQUIT (and
    sets ``TORCHELASTIC_SIGNALS_TO_HANDLE``) and leaves them: after a run, Ctrl-C raised its
    ``SignalException``, an ``Exception`` that an ``except Exception:`` swallowed, Ctrl-C and
    SIGTERM included. A signal during the run is raised as Python raises it: ``KeyboardInterrupt``
    for SIGINT, ``SystemExit(128 + signal)`` for the others.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException

    names = [name for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT") if hasattr(signal, name)]
    main = threading.current_thread() is threading.main_thread()  # handlers belong to the main thread
    handlers = {name: signal.getsignal(getattr(signal, name)) for name in names} if main else {}
    env = os.environ.get(_SIGNALS_ENV)
    try:
        yield
    except SignalException as err:
        if err.sigval == signal.SIGINT:
            raise KeyboardInterrupt from None
        raise SystemExit(128 + int(err.sigval)) from None
    finally:
        for name, handler in handlers.items():
            if handler is not None:  # None: set from outside Python, cannot be put back
                signal.signal(getattr(signal, name), handler)
        if env is None:
            os.environ.pop(_SIGNALS_ENV, None)
        else:
            os.environ[_SIGNALS_ENV] = env


_SIGNALS_ENV = "TORCHELASTIC_SIGNALS_TO_HANDLE"


@contextmanager
def _children_start_deaf_to_ctrl_c(error_dir: str):
    """New processes hold Ctrl-C back until they run attnlab's code; one that comes earlier stops them quietly.

    A Ctrl-C reaches every process of the terminal's group: new processes still importing
    torch (seconds) printed a ``KeyboardInterrupt`` traceback each. SIGINT is blocked in this
    thread while the launcher starts them, so they start with it blocked (a signal mask
    survives ``spawn``), and :func:`_worker` unblocks it first thing (a held-back Ctrl-C is then
    a ``KeyboardInterrupt`` there, ending the process quietly with 130). This process still
    hears Ctrl-C: its other threads take the signal and the launcher's handler runs in the main
    thread as before; a thread here sees it (through ``signal.set_wakeup_fd``) and stops with
    SIGTERM (no traceback) the new processes that have not reached ``_worker``, which would
    otherwise hold the launcher until they finished importing. Only where signal masks exist
    (POSIX) and on the main thread.
    """
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()  # it unblocks SIGINT after starting itself: start it before blocking
    before = set(multiprocessing.active_children())
    heard, tell = os.pipe()
    os.set_blocking(heard, False)
    os.set_blocking(tell, False)
    stop = threading.Event()
    previous = -1

    def watch() -> None:
        with suppress(OSError, ValueError):  # the pipe closed under it (a second Ctrl-C while stopping): done
            _watch()

    def _watch() -> None:
        while not stop.is_set():
            if not select.select([heard], [], [], 0.1)[0]:
                continue
            with suppress(BlockingIOError):
                signals = os.read(heard, 512)
                if previous >= 0:  # a wakeup fd set before (asyncio's) still hears its signals
                    with suppress(OSError):
                        os.write(previous, signals)
                if signal.SIGINT in signals:
                    for child in set(multiprocessing.active_children()) - before:
                        if child.pid is not None and not (Path(error_dir) / f"started-{child.pid}").exists():
                            with suppress(ProcessLookupError):
                                os.kill(child.pid, signal.SIGTERM)

    watcher = threading.Thread(target=watch, name="attnlab-run-parallel-ctrl-c", daemon=True)
    replaced, mask = False, None
    try:
        watcher.start()  # before the block: a thread of this process that takes SIGINT
        previous = signal.set_wakeup_fd(tell, warn_on_full_buffer=False)
        replaced = True
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])
        yield
    finally:
        try:  # the caller's wakeup fd first: a Ctrl-C landing as SIGINT is unblocked reaches it, not our pipe
            if replaced:
                signal.set_wakeup_fd(previous)
            if mask is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        finally:  # a second Ctrl-C in here still stops the thread and closes the pipe
            stop.set()
            try:
                if watcher.is_alive():
                    watcher.join()
            finally:
                os.close(heard)
                os.close(tell)


@contextmanager
def _quiet(names):
    """Silence the launcher's own logging of a failure: the failure is raised here, with its rank."""
    known = list(logging.root.manager.loggerDict)  # torch sets each module's logger's own level: not inherited
    loggers = [logging.getLogger(name) for name in dict.fromkeys(
        [*names, *(n for n in known if any(n.startswith(f"{name}.") for name in names))])]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
