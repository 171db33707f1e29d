"""Parallel runs: 2 gloo processes give the one-process numbers; errors travel typed, with their rank.

The launches start real processes with torch's launcher (several seconds each on a busy
machine), so one launch serves every equality test (``_distributed_jobs.everything``).
"""

from __future__ import annotations

import os
import pickle
import re
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from attnlab.errors import DistributedError, InvalidInput, ProcessLeft
from attnlab.measure import run_parallel
from attnlab.measure.distributed import (
    Group,
    current,
    error_record,
    local,
    map_units,
    partition,
    process_group,
    rebuild_error,
    variant_blocks,
)
from attnlab.testing import tiny_model
from tests.measure import _distributed_jobs as jobs

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def two_processes() -> list[dict]:
    """What each of 2 gloo processes returned from one launch."""
    return run_parallel(jobs.everything, 2, backend="gloo")


@pytest.fixture(scope="module")
def one_process() -> dict:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return jobs.one_run(tiny_model("llama"), tiny_model("gemma3", n_layers=3))
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_process_bars() -> dict:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return jobs.progress_bars(tiny_model("llama"))
    finally:
        torch.set_num_threads(before)


KEYS = ["sweep_zero", "sweep_zero_table", "sweep_chunks", "sweep_patch", "sweep_rows_tied", "sweep_interventions", "one_variant", "score",
        "score_one_chunk", "effect", "distance_mass", "distance_sink"]


def test_an_attribution_result_comes_back_whole(two_processes, one_process):
    expected = one_process["attribution"]
    for got in two_processes:
        pd.testing.assert_frame_equal(got["attribution"].table, expected.table, atol=1e-6, rtol=0)
        assert got["attribution"].meta == expected.meta
        with pytest.raises(InvalidInput, match="a pickled or loaded result keeps its tables, not the model"):
            got["attribution"].verify(2)


@pytest.mark.parametrize("key", KEYS)
def test_two_processes_equal_one(two_processes, one_process, key):
    expected = np.asarray(one_process[key], dtype=float)
    for got in two_processes:  # every process receives every result
        value = np.asarray(got[key], dtype=float)
        assert value.shape == expected.shape
        assert np.abs(value - expected).max() <= 1e-6, f"{key} on rank {got['rank']}"


@pytest.mark.parametrize("call", ["sweep", "score", "corpus"])
def test_the_work_is_divided(two_processes, call):
    alone = jobs.forward_counts(tiny_model("llama"), tiny_model("gemma3", n_layers=3))[call]
    counts = [got["forwards"][call] for got in two_processes]
    assert max(counts) < alone <= sum(counts), (alone, counts)  # each process ran part of it, all of it was run


def test_the_processes_formed_a_group(two_processes):
    assert [(g["rank"], g["size"]) for g in two_processes] == [(0, 2), (1, 2)]


def test_one_progress_bar_on_the_main_process(two_processes):
    main, other = two_processes
    assert "sweep heads (zero)" in main["stderr"] and "score (logit_diff" in main["stderr"]
    assert other["stderr"] == ""


@pytest.mark.parametrize("call", ["score", "effect", "sweep"])
def test_one_bar_for_the_whole_call_counting_the_main_process_share(two_processes, one_process_bars, call):
    """Rank 0 drew one bar per chunk it held (two 0/1 bars for a score of 4 prompts at batch size 1)."""
    alone = one_process_bars[call]
    assert len(alone) == 1
    main, other = (got["bars"][call] for got in two_processes)
    drawn = [bar for bar in main if not bar[3]]
    assert len(drawn) == 1, main
    desc, total, n, _ = drawn[0]
    assert desc == f"{alone[0][0]} [rank 0's share]"
    assert 0 < total < alone[0][1] and n == total  # a part of the units, all of them done
    assert all(bar[3] for bar in other) and len(other) == 1  # rank 1 draws nothing
    if call != "sweep":  # chunks are not shared: the two shares add up to the whole (a sweep repeats clean forwards)
        assert total + other[0][1] == alone[0][1] == {"score": 5, "effect": 10}[call]


def test_an_attnlab_error_on_one_rank_is_raised_on_all_with_its_type_and_rank(two_processes):
    for got in two_processes:
        name, message = got["typed_error"]
        assert name == "InvalidInput"
        assert message == "rank 1 of 2: no such occupation 'nurze'"


def test_another_error_on_one_rank_becomes_a_distributed_error_with_its_traceback(two_processes):
    for got in two_processes:
        name, message = got["other_error"]
        assert name == "DistributedError"
        assert message.startswith("rank 1 of 2 raised ValueError: a bug")
        assert "Traceback" in message and "_distributed_jobs.py" in message


def test_a_rank_failing_outside_a_gather_surfaces_in_the_caller():
    with pytest.raises(InvalidInput, match=r"^rank 1 of 2: cannot read the prompts file$"):
        run_parallel(jobs.fail_on_rank_1, 2, model=partial(tiny_model, "gpt2"), backend="gloo")


# -- without launching ----------------------------------------------------------------------


def test_blocks_are_the_runner_batches():
    starts = [0, 0, 0, 1, 1, 0, 2]
    assert variant_blocks(starts, 2) == [(0, [0, 1]), (0, [2, 5]), (1, [3, 4]), (2, [6])]
    assert variant_blocks(starts, 10) == [(0, [0, 1, 2, 5]), (1, [3, 4]), (2, [6])]


def test_partition_cuts_the_work_in_consecutive_runs_of_about_equal_cost():
    assert partition([1, 1, 1, 1], 2) == [0, 0, 1, 1]
    assert partition([2, 5, 5, 2, 5, 5], 2) == [0, 0, 0, 1, 1, 1]  # two chunks: one each, no clean forward repeated
    costs = [19, 18, 18, 17, 17, 16, 3, 2, 1]
    owner = partition(costs, 2)
    assert owner == sorted(owner)  # consecutive
    loads = [sum(c for c, o in zip(costs, owner) if o == p) for p in range(2)]
    assert abs(loads[0] - loads[1]) <= max(costs)
    assert partition([0, 0, 0], 2) == [0, 0, 1]  # no cost known: split by count
    assert partition([5], 3) == [1]  # more processes than jobs: the others get nothing


def test_outside_a_group_everything_runs_here():
    assert current().size == 1 and current().rank == 0 and current().is_main
    calls = []
    assert list(map_units(lambda u: calls.append(u) or u * 2, [3, 1, 2])) == [6, 2, 4]
    assert calls == [3, 1, 2]
    with pytest.raises(ZeroDivisionError):  # one process: errors pass unchanged
        list(map_units(lambda u: 1 / u, [1, 0]))


def test_process_group_without_a_launcher_is_one_process(monkeypatch):
    import torch

    monkeypatch.delenv("RANK", raising=False)
    before = torch.get_num_threads()
    with process_group(threads=1) as group:
        assert group == Group(0, 1, group.device) and torch.get_num_threads() == 1
        with local():
            assert current().size == 1
    assert torch.get_num_threads() == before


def test_process_group_names_a_half_set_environment(monkeypatch):
    """RANK and WORLD_SIZE without MASTER_ADDR gave torch's raw ValueError from inside its rendezvous."""
    import torch

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setenv("MASTER_PORT", "29500")
    before = torch.get_num_threads()
    with pytest.raises(InvalidInput, match=r"^RANK and WORLD_SIZE are set but MASTER_ADDR is not: start the processes "
                                           r"with torchrun or accelerate launch"):
        with process_group(threads=before + 1):
            pass
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("rank, world, shown", [("2", "2", r"RANK=2 must lie in 0\.\.WORLD_SIZE-1 with WORLD_SIZE >= 1 "
                                                            r"\(WORLD_SIZE=2\)"),
                                              ("0", "0", r"RANK=0 must lie in 0\.\.WORLD_SIZE-1"),
                                              ("0", "x", r"WORLD_SIZE must be a whole number >= 0, got 'x'"),
                                              ("-1", "2", r"RANK must be a whole number >= 0, got '-1'")])
def test_process_group_names_a_rank_the_group_cannot_have(monkeypatch, rank, world, shown):
    """RANK=2 of WORLD_SIZE=2 waited out the whole timeout for processes that never came; WORLD_SIZE="x" was
    torch's bare ValueError."""
    import torch

    for name, value in (("RANK", rank), ("WORLD_SIZE", world), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500")):
        monkeypatch.setenv(name, value)
    before = torch.get_num_threads()
    with pytest.raises(InvalidInput, match=rf"^environment variable {shown}"):
        with process_group(threads=before + 1, timeout_s=5):  # without the check: a 5 s wait, then torch's error
            pass
    assert torch.get_num_threads() == before and not torch.distributed.is_initialized()


@pytest.mark.parametrize("timeout_s", [0, -5, float("nan"), float("inf"), "30", True])
def test_process_group_refuses_a_bad_timeout_even_without_a_launcher(timeout_s):
    import torch

    before = torch.get_num_threads()
    with pytest.raises(InvalidInput, match=r"timeout_s must be a positive number of seconds \(default 1800\), got"):
        with process_group(timeout_s=timeout_s):
            pass
    assert torch.get_num_threads() == before


def test_rebuilt_errors_keep_attnlab_types_and_name_the_rank():
    group = Group(1, 4, None)
    err = rebuild_error(error_record(InvalidInput("bad prompt 3"), group))
    assert type(err) is InvalidInput and str(err) == "rank 1 of 4: bad prompt 3"
    again = rebuild_error({**error_record(err, Group(0, 4, None))})  # already names its rank: not named twice
    assert str(again) == "rank 1 of 4: bad prompt 3"
    other = rebuild_error(error_record(KeyError("x"), group))
    assert isinstance(other, DistributedError) and isinstance(other, RuntimeError)
    assert str(other).startswith("rank 1 of 4 raised KeyError: 'x'")
    assert pickle.loads(pickle.dumps(error_record(KeyError("x"), group)))["name"] == "KeyError"


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: run_parallel(print, 0), r"n_procs must be an integer from 1 to \d+ \(one process per CPU core of this machine\), got 0"),
        (lambda: run_parallel(print, -2), r"n_procs must be an integer from 1 to \d+ .*got -2"),
        (lambda: run_parallel(print, 2.0), r"n_procs must be an integer from 1 to \d+ .*got 2.0"),
        (lambda: run_parallel(print, 2, threads=0), r"threads must be a positive integer or None"),
        (lambda: run_parallel(print, 2, backend="glo"), r"unknown backend 'glo'; did you mean 'gloo'\? \(valid: gloo, nccl\)"),
        (lambda: run_parallel(print, 2, model=tiny_model("gpt2")), r"model= takes what attnlab.load\(\) takes .* not a HookedModel"),
        (lambda: run_parallel(lambda: 1, 2), r"cannot be pickled"),
        (lambda: run_parallel(print, 2, lambda: 1), r"sends the arguments to new processes but they cannot be pickled"),
    ],
)
def test_bad_calls_are_refused_before_any_process_starts(call, message):
    with pytest.raises(InvalidInput, match=message):
        call()


@pytest.mark.parametrize("n_procs", [1, 2])
def test_a_function_that_is_not_callable_is_refused_before_any_process_starts(n_procs):
    """run_parallel(5, 1) raised "'int' object is not callable"; with 2 it started both processes to fail in each."""
    with pytest.raises(InvalidInput, match=r"^run_parallel runs fn\(\*args, \*\*kwargs\) in each process: fn must be "
                                           r"a function \(defined at module level\), got int: 5$"):
        run_parallel(5, n_procs)


def test_more_processes_than_cores_are_refused_before_any_starts():
    import os

    cores = os.cpu_count()
    with pytest.raises(InvalidInput, match=rf"n_procs must be an integer from 1 to {cores} .*, got {cores + 1}$"):
        run_parallel(print, cores + 1)
    with pytest.raises(InvalidInput, match=r"got 100000$"):  # was: tried to start them and hung
        run_parallel(print, 100_000)


def test_an_unpicklable_result_is_named_not_taken_for_a_crash():
    with pytest.raises(InvalidInput, match=r"^rank 0 of 2: run_parallel returns what the function returns on the main "
                                           r"process, but its lock cannot be pickled to be sent back"):
        run_parallel(jobs.unpicklable_result, 2, backend="gloo")


@pytest.mark.parametrize("code", [0, 3])
def test_sys_exit_in_the_function_is_an_error_not_a_missing_result(code):
    """sys.exit(0) used to end the rank "successfully" and run_parallel returned None."""
    with pytest.raises(DistributedError, match=rf"^rank 1 of 2: the function called sys.exit\({code}\); run_parallel "
                                               r"returns what the function returns"):
        run_parallel(jobs.exit_on_rank_1, 2, code, backend="gloo")


def _python(code_or_script, cwd, *args) -> subprocess.CompletedProcess:
    """Run Python in a new process (a hang fails the test instead of blocking it)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *code_or_script, *args], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env=env)


def test_a_keyboard_interrupt_on_one_rank_fails_the_run_instead_of_hanging(tmp_path):
    out = _python(["-c", "from attnlab.measure import run_parallel\n"
                         "from tests.measure import _distributed_jobs as jobs\n"
                         "run_parallel(jobs.interrupt_on_rank_1, 2, backend='gloo')"], tmp_path)
    assert out.returncode == 1, out.stderr[-2000:]
    assert "attnlab.errors.DistributedError: rank 1 of 2 raised KeyboardInterrupt" in out.stderr


def _launch_state():
    names = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")
    return {name: signal.getsignal(getattr(signal, name)) for name in names}, os.environ.get("TORCHELASTIC_SIGNALS_TO_HANDLE")


def test_a_rank_that_vanishes_is_named_with_its_exit_code_and_the_caller_keeps_its_signals():
    """Rank 1's os._exit(3) was reported as rank 0's gloo "Connection reset by peer"; and torch's launcher left its
    handlers on SIGINT/SIGTERM/SIGHUP/SIGQUIT, so Ctrl-C raised an Exception that `except Exception:` swallowed."""
    before = _launch_state()
    # rank 0's own knock-on record may or may not be written before the launcher stops it: rank 1 is named either way
    with pytest.raises(DistributedError, match=r"rank 1 (of 2 exited with|exit) code 3"):
        run_parallel(jobs.vanish_on_rank_1, 2, backend="gloo")
    assert _launch_state() == before
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ranks_that_disagree_or_leave_early_get_a_clear_error_not_zeros_or_a_raw_backend_error():
    """Rank 1 scoring 2 prompts where rank 0 scored 4 gave rank 0 zeros for the missing ones; a rank that failed
    before a gather left the others with gloo's raw "Connection closed by peer"."""
    seen = run_parallel(jobs.disagree_then_leave, 2, backend="gloo")
    kind, message = seen["disagree"]
    assert kind == "InvalidInput"
    assert re.search(r"the processes made different calls or gave different inputs \(rank 0 of 2: a batched run over "
                     r"4 rows x 0 variants .*rank 1 of 2: a batched run over 2 rows x 0 variants", message)
    kind, message = seen["left"]
    assert kind == "ProcessLeft" and issubclass(ProcessLeft, DistributedError)
    assert "rank 0 of 2: another process left the group before this gather" in message


def test_ctrl_c_in_the_caller_is_a_keyboard_interrupt(tmp_path):
    """Ctrl-C while the processes run was torch's SignalException (the CLI printed three tracebacks and exited 1)."""
    script = ("import os, signal, threading\n"
              "from attnlab.measure import run_parallel\n"
              "from tests.measure import _distributed_jobs as jobs\n"
              "if __name__ == '__main__':\n"
              "    threading.Timer(8, lambda: os.kill(os.getpid(), signal.SIGINT)).start()\n"
              "    try:\n"
              "        run_parallel(jobs.sleep_everywhere, 2, backend='gloo')\n"
              "    except KeyboardInterrupt:\n"
              "        print('KeyboardInterrupt', signal.getsignal(signal.SIGINT) is signal.default_int_handler)\n")
    (tmp_path / "interrupted.py").write_text(script)
    out = _python([str(tmp_path / "interrupted.py")], tmp_path)
    assert out.stdout.strip() == "KeyboardInterrupt True", (out.stdout, out.stderr[-2000:])


def test_a_script_without_a_main_guard_is_told_so(tmp_path):
    script = tmp_path / "sweep.py"
    script.write_text("from attnlab.measure import run_parallel\nfrom tests.measure import _distributed_jobs as jobs\n"
                      "print(run_parallel(jobs.interrupt_on_rank_1, 2, backend='gloo'))\n")
    out = _python([str(script)], tmp_path)
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("attnlab.errors.DistributedError: a process of 2 exited without reporting"), last
    assert 'a script must call run_parallel under `if __name__ == "__main__":`' in last
    # and each new process says why it stopped, in attnlab's words rather than multiprocessing's
    assert "InvalidInput: run_parallel was called while a new process was importing the main script" in out.stderr


def test_nccl_needs_gpus():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has GPUs")
    with pytest.raises(InvalidInput, match=r"backend 'nccl' needs CUDA GPUs"):
        run_parallel(print, 2, backend="nccl")


def test_one_process_runs_here_with_the_model_loaded_from_its_spec():
    from attnlab.measure import LogitDiff, sweep_heads

    res = run_parallel(sweep_heads, 1, ["the nurse said that"], "zero", LogitDiff(" she", " he"),
                       model=partial(tiny_model, "llama"), progress=False)
    direct = sweep_heads(tiny_model("llama"), ["the nurse said that"], "zero", LogitDiff(" she", " he"), progress=False)
    assert np.array_equal(res.table["effect"].to_numpy(), direct.table["effect"].to_numpy())


@pytest.fixture(scope="module")
def disagreements() -> dict:
    return run_parallel(jobs.disagree_on_what, 2, backend="gloo")


@pytest.mark.parametrize("call, part", [("specs", "specs"), ("score_specs", "specs"), ("metric", "metric"),
                                        ("model", "model"), ("corpus_model", "model"), ("rows", "rows")])
def test_ranks_that_differ_in_specs_metric_or_model_are_told_what_differs(disagreements, call, part):
    """Other specs under the same labels, another metric or another model were run and their numbers mixed."""
    kind, message = disagreements[call]
    assert kind == "InvalidInput", message
    assert "the processes made different calls or gave different inputs (rank 0 of 2: " in message
    differs = message.split("what differs: ", 1)[1].split(": every process must", 1)[0]
    assert [item.split(" (", 1)[0] for item in differs.split("; ")] == [part], message


def test_equal_specs_built_apart_in_each_process_agree(disagreements):
    alone = jobs.sweep_interventions(tiny_model("llama"), jobs.PROMPTS[:2], {frozenset({"a", "b"}): [jobs.AblateHead(1, 0)]},
                                     jobs.LogitDiff(" she", " he"), n_boot=10, progress=False)
    assert np.abs(np.array(disagreements["equal"]) - alone.table["effect"].to_numpy()).max() <= 1e-6


def test_auto_batch_sizes_that_differ_between_ranks_use_the_smallest():
    """batch_size="auto" picked per process (GPUs with different free memory) was refused as a disagreement."""
    import torch

    got = run_parallel(jobs.auto_batch_sizes_differ, 2, backend="gloo")
    model, metric = tiny_model("llama"), jobs.LogitDiff(" she", " he")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = {"sweep": jobs.sweep_heads(model, jobs.PROMPTS, "zero", metric, batch_size=2, n_boot=10,
                                           progress=False).per_prompt["intervened"].to_numpy(),
                 "score": jobs.score(model, jobs.PROMPTS, metric, batch_size=2),
                 "effect": jobs.effect(model, jobs.PROMPTS, [jobs.AblateHead(1, 2)], metric, batch_size=2, n_boot=10,
                                       progress=False).per_prompt["intervened"].to_numpy()}
    finally:
        torch.set_num_threads(before)
    for rank, out in enumerate(got):
        assert out["chunks"] == [(2, 1)] * 3, out["chunks"]  # rank 0's 4 rows and rank 1's 2: both cut batches of 2
        for key, expected in alone.items():
            assert np.abs(np.asarray(out[key], dtype=float) - expected).max() <= 1e-6, (key, rank)


def test_a_rank_stopped_by_sigterm_from_outside_is_named():
    """A SIGTERM exit was taken for the launcher stopping the rest: rank 1 went unnamed."""
    with pytest.raises(DistributedError, match=r"^rank 1 of 2 died of SIGTERM \(exit code -15\), sent from outside "
                                               r"run_parallel, without reporting a Python error"):
        run_parallel(jobs.sigterm_on_rank_1, 2, False, backend="gloo")
    # rank 0 waiting in a gather reports that another process left; the launcher may see either rank fail first
    with pytest.raises(DistributedError, match=r"^rank 1 of 2 (died of SIGTERM \(exit code -15\)|left the group "
                                               r"without reporting a Python error)"):
        run_parallel(jobs.sigterm_on_rank_1, 2, True, backend="gloo")


def _children_importing_torch(pid: int) -> int:
    """How many processes ``pid`` started with multiprocessing's spawn are importing torch (read from /proc)."""
    found = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid and b"spawn_main" in (stat.parent / "cmdline").read_bytes() and \
                    "libtorch" in (stat.parent / "maps").read_text():  # its native library is loaded: Python runs
                found += 1
        except (OSError, IndexError, ValueError):
            continue
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; process groups")
@pytest.mark.parametrize("when", ["starting", "running"])
def test_ctrl_c_stops_the_processes_quietly(tmp_path, when):
    """Ctrl-C while the new processes still imported torch printed a KeyboardInterrupt traceback from each."""
    import time

    script = tmp_path / "interrupted.py"
    script.write_text("from attnlab.measure import run_parallel\n"
                      "from tests.measure import _distributed_jobs as jobs\n"
                      "if __name__ == '__main__':\n"
                      "    try:\n"
                      f"        run_parallel(jobs.mark_then_sleep, 2, {str(tmp_path)!r}, backend='gloo')\n"
                      "    except KeyboardInterrupt:\n"
                      "        print('interrupted')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # its own group, as a terminal's
    try:
        while proc.poll() is None:  # "starting": both processes import torch (for seconds); "running": both run
            if (_children_importing_torch(proc.pid) == 2) if when == "starting" else len(list(tmp_path.glob("running-*"))) == 2:
                break
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: every process of the group
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert out.strip() == "interrupted", (out, err[-3000:])
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]


def test_fingerprint_reads_arrays_of_strings_and_objects():
    """A custom metric holding a string array fingerprints like any other (it raised a raw TypeError under run_parallel)."""
    from attnlab.measure.distributed import fingerprint

    words = np.array(["she", "he"])
    assert fingerprint(words) == fingerprint(np.array(["she", "he"]))
    assert fingerprint(words) != fingerprint(np.array(["he", "she"]))
    assert fingerprint(np.array([("a", 1)], dtype=object)) != fingerprint(np.array([("a", 2)], dtype=object))
    assert fingerprint(np.array([1.0, 2.0])) != fingerprint(np.array(["1.0", "2.0"]))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd") or not hasattr(signal, "pthread_sigmask"),
                    reason="signal masks are POSIX; open files read from /proc")
@pytest.mark.parametrize("fails", ["set_wakeup_fd", "pthread_sigmask", "body"])
def test_ctrl_c_guard_hands_everything_back_when_a_step_fails(fails, monkeypatch, tmp_path):
    """Whatever step fails, the guard leaves no thread, no open pipe, SIGINT unblocked and the caller's wakeup fd."""
    import threading
    from multiprocessing import resource_tracker

    from attnlab.measure import launch

    real = getattr(signal, fails, None)

    def refused(*args, **kwargs):
        raise OSError(f"{fails} refused")

    resource_tracker.ensure_running()  # its own pipe, once per process
    open_before = len(os.listdir("/proc/self/fd"))
    previous = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(previous)
    if fails != "body":
        monkeypatch.setattr(launch.signal, fails, refused)
    with pytest.raises(OSError, match="refused"), launch._children_start_deaf_to_ctrl_c(str(tmp_path)):
        raise OSError("body refused")
    if real is not None:
        monkeypatch.setattr(launch.signal, fails, real)
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    assert signal.set_wakeup_fd(previous) == previous
    assert not [t for t in threading.enumerate() if t.name == "attnlab-run-parallel-ctrl-c"]
    assert len(os.listdir("/proc/self/fd")) == open_before
