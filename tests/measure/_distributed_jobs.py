"""Jobs the distributed tests run on 2 gloo processes (importable: spawned processes import them).

``everything`` runs every split entry point once per launch (the launcher's start-up is
the cost), and returns what each process got, so the tests compare both processes with a
one-process run made in the test itself.
"""

from __future__ import annotations

import contextlib
import io
from unittest import mock

import torch.distributed as dist
from tqdm.auto import tqdm

import attnlab.measure._batched
import attnlab.measure.distributed

from attnlab.analysis.context import attention_by_distance
from attnlab.errors import InvalidInput
from attnlab.interventions import AblateHead
from attnlab.measure import KL, LogitDiff, attribute, effect, score, sweep_heads, sweep_interventions
from attnlab.measure.distributed import current, map_units
from attnlab.testing import tiny_model

PROMPTS = ["the nurse said that", "the doctor said that he was", "a man", "the king told the queen that", "she left"]
COUNTERFACTUALS = ["the man said that", "the nurse said that she was", "a woman", "the queen told the king that", "he left"]
CORPUS = ["the nurse said that she left .", "a dog ran", "the king told the queen that he was happy .", "she sat", "the car"]


def one_run(model_llama, model_gemma) -> dict:
    """Every measured quantity; the same function makes the one-process reference."""
    metric = LogitDiff(" she", " he")
    out = {}
    zero = sweep_heads(model_llama, PROMPTS, "zero", metric, batch_size=10, n_boot=50, progress=False)
    out["sweep_zero"] = zero.per_prompt[["layer", "head", "intervened", "effect"]].to_numpy()
    out["sweep_zero_table"] = zero.table[["effect", "ci_low", "ci_high"]].to_numpy()
    # several chunks of rows (2 prompts each, the last one short), with per-chunk patch sources
    chunks = sweep_heads(model_llama, PROMPTS, "zero", metric, batch_size=2, n_boot=50, progress=False)
    out["sweep_chunks"] = chunks.per_prompt["intervened"].to_numpy()
    patch = sweep_heads(model_gemma, PROMPTS, "patch", KL(), counterfactuals=COUNTERFACTUALS, batch_size=2, n_boot=50,
                        progress=False)
    out["sweep_patch"] = patch.per_prompt[["layer", "head", "intervened"]].to_numpy()
    tied = {"rows 0 and 2": [AblateHead(1, 0, rows=[0, 2])], "head 0.1": [AblateHead(0, 1)]}  # one chunk of all rows
    out["sweep_rows_tied"] = sweep_interventions(model_llama, PROMPTS, tied, metric, batch_size=10, n_boot=50,
                                                 progress=False).per_prompt["intervened"].to_numpy()
    variants = {"layer 0": [AblateHead(0)], "heads 1.0+1.3": [AblateHead(1, 0), AblateHead(1, 3)], "head 0.2": [AblateHead(0, 2)]}
    out["sweep_interventions"] = sweep_interventions(model_llama, PROMPTS, variants, metric, batch_size=5, n_boot=50,
                                                     progress=False).per_prompt["intervened"].to_numpy()
    # fewer work units than processes: one variant, one chunk of prompts
    out["one_variant"] = sweep_interventions(model_llama, PROMPTS, {"only": [AblateHead(1, 1)]}, metric, n_boot=50,
                                             progress=False).per_prompt["intervened"].to_numpy()
    out["score"] = score(model_llama, PROMPTS, metric, batch_size=2)
    out["score_one_chunk"] = score(model_llama, PROMPTS, metric, batch_size=64)
    eff = effect(model_llama, PROMPTS, [AblateHead(1, 2)], metric, batch_size=2, n_boot=50, progress=False)
    out["effect"] = eff.per_prompt[["clean", "intervened"]].to_numpy()
    # a result object crosses the process boundary whole (an AttributionResult holds the model: not pickled)
    out["attribution"] = attribute(model_llama, PROMPTS, metric, method="mean", batch_size=2, n_boot=50, progress=False)
    prof = attention_by_distance(model_gemma, CORPUS, batch_size=2, progress=False)
    out["distance_mass"], out["distance_sink"] = prof.mass, prof.sink
    return out


def _forwards(model, call) -> int:
    """How many forward passes ``call()`` makes in this process (the embedding runs once per pass)."""
    calls = []
    handle = model.hf_model.get_input_embeddings().register_forward_hook(lambda *_: calls.append(1))
    try:
        call()
    finally:
        handle.remove()
    return len(calls)


def forward_counts(model_llama, model_gemma) -> dict[str, int]:
    """Forward passes of a sweep, a score and a corpus analysis, each with several work units."""
    metric = LogitDiff(" she", " he")
    return {
        "sweep": _forwards(model_llama, lambda: sweep_heads(model_llama, PROMPTS, "zero", metric, batch_size=4, n_boot=10,
                                                             progress=False)),
        "score": _forwards(model_llama, lambda: score(model_llama, PROMPTS, metric, batch_size=1)),
        "corpus": _forwards(model_gemma, lambda: attention_by_distance(model_gemma, CORPUS, batch_size=1, progress=False)),
    }


def progress_bars(model) -> dict[str, list[tuple[str, int, int, bool]]]:
    """The bars ``score`` / ``effect`` / a sweep create, with several chunks each: ``(desc, total, n, disabled)``."""
    metric = LogitDiff(" she", " he")
    calls = {
        "score": lambda: score(model, PROMPTS, metric, batch_size=1, progress=True),
        "effect": lambda: effect(model, PROMPTS, metric, [AblateHead(1, 2)], batch_size=1, n_boot=10, progress=True),
        "sweep": lambda: sweep_heads(model, PROMPTS, metric, "zero", batch_size=2, n_boot=10, progress=True),
    }
    out = {}
    for name, call in calls.items():
        made = []

        class Recorded(tqdm):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                made.append((self, kwargs.get("desc", ""), self.disable))  # close() sets disable

        with mock.patch.object(attnlab.measure._batched, "tqdm", Recorded), \
                mock.patch.object(attnlab.measure.distributed, "tqdm", Recorded), \
                contextlib.redirect_stderr(io.StringIO()):
            call()
        out[name] = [(desc, bar.total, bar.n, disabled) for bar, desc, disabled in made]
    return out


def _error_of(compute) -> tuple[str, str]:
    try:
        compute()
    except Exception as err:
        return type(err).__name__, str(err)
    return "none", ""


def _fail_on_rank_1(error: Exception):
    def compute(unit):
        if current().rank == 1:
            raise error
        return unit

    return lambda: list(map_units(compute, range(4)))


def everything() -> list[dict]:
    """On each of the processes: the measured quantities, what the progress bars printed, the errors seen."""
    out = one_run(tiny_model("llama"), tiny_model("gemma3", n_layers=3))
    out["forwards"] = forward_counts(tiny_model("llama"), tiny_model("gemma3", n_layers=3))
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        sweep_heads(tiny_model("llama"), PROMPTS[:2], "zero", LogitDiff(" she", " he"), n_boot=10, progress=True)
        score(tiny_model("llama"), PROMPTS, LogitDiff(" she", " he"), batch_size=2, progress=True)
    out["stderr"] = stderr.getvalue()
    out["bars"] = progress_bars(tiny_model("llama"))
    out["typed_error"] = _error_of(_fail_on_rank_1(InvalidInput("no such occupation 'nurze'")))
    out["other_error"] = _error_of(_fail_on_rank_1(ValueError("a bug")))
    out["rank"], out["size"] = current().rank, current().size
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, out)
    return everyone


def fail_on_rank_1(model) -> str:
    """Rank 1 fails outside any gather, while rank 0 waits in the next one."""
    if current().rank == 1:
        raise InvalidInput("cannot read the prompts file")
    score(model, ["the nurse said that"], LogitDiff(" she", " he"))
    return "not reached"


def interrupt_on_rank_1() -> str:
    """Rank 1 is interrupted (KeyboardInterrupt), rank 0 finishes."""
    if current().rank == 1:
        raise KeyboardInterrupt
    return "rank 0 done"


def exit_on_rank_1(code) -> str:
    """Rank 1 ends its process with sys.exit(code), rank 0 finishes."""
    import sys

    if current().rank == 1:
        sys.exit(code)
    return "rank 0 done"


def unpicklable_result():
    """Returns what cannot travel back to the caller (a lock)."""
    import threading

    return threading.Lock()


def vanish_on_rank_1() -> str:
    """Rank 1 ends without a Python error (as a kill or a crash in native code would); rank 0 waits in a gather."""
    import os

    if current().rank == 1:
        os._exit(3)
    list(map_units(lambda unit: unit, range(4)))
    return "not reached"


def disagree_then_leave() -> dict:
    """The ranks make different calls; then rank 1 fails before a gather, handles it and leaves the group."""
    model = tiny_model("llama")
    mine = PROMPTS[:4] if current().rank == 0 else PROMPTS[:2]
    seen = {"disagree": _error_of(lambda: score(model, mine, LogitDiff(" she", " he")))}
    layers = [0] if current().rank == 0 else [99]
    seen["left"] = _error_of(lambda: sweep_heads(model, PROMPTS[:2], LogitDiff(" she", " he"), "zero", layers=layers))
    return seen


def sleep_everywhere() -> str:
    """Every rank sleeps (the caller is interrupted meanwhile)."""
    import time

    time.sleep(60)
    return "not interrupted"


def disagree_on_what() -> dict:
    """The ranks give the same rows but other specs (same labels), another metric, another model."""
    from attnlab.measure import TopKChange

    rank = current().rank
    model = tiny_model("llama")
    metric = LogitDiff(" she", " he")
    seen = {"specs": _error_of(lambda: sweep_interventions(model, PROMPTS[:2], {"the head": [AblateHead(1, rank)]}, metric,
                                                           n_boot=10, progress=False)),
            "score_specs": _error_of(lambda: score(model, PROMPTS[:2], metric, [AblateHead(0, rank)])),
            "metric": _error_of(lambda: effect(model, PROMPTS[:2], [AblateHead(1, 2)], TopKChange(k=1 + 4 * rank),
                                               n_boot=10, progress=False)),
            "model": _error_of(lambda: score(tiny_model("llama", seed=rank), PROMPTS[:2], metric)),
            "corpus_model": _error_of(lambda: attention_by_distance(tiny_model("gemma3", seed=rank), CORPUS[:2],
                                                                    progress=False)),
            "rows": _error_of(lambda: score(model, PROMPTS[rank : rank + 2], metric))}
    # and a sweep whose specs are equal but built apart in each process still runs
    seen["equal"] = sweep_interventions(model, PROMPTS[:2], {frozenset({"a", "b"}): [AblateHead(1, 0)]}, metric, n_boot=10,
                                        progress=False).table["effect"].tolist()
    return seen


def auto_batch_sizes_differ() -> list[dict]:
    """batch_size="auto" picks 4 rows on rank 0 and 2 on rank 1 (as GPUs with different free memory would)."""
    import attnlab.measure.batch_size

    rank = current().rank
    chunks = []
    split = attnlab.measure._batched.split_variants

    def spy(*args, **kwargs):
        chunks.append((kwargs["chunk"], kwargs["copies"]))
        return split(*args, **kwargs)

    model, metric = tiny_model("llama"), LogitDiff(" she", " he")
    with mock.patch.object(attnlab.measure.batch_size, "auto_batch_size", lambda *a, **k: (4, 2)[rank]), \
            mock.patch.object(attnlab.measure._batched, "split_variants", spy):
        out = {"sweep": sweep_heads(model, PROMPTS, "zero", metric, batch_size="auto", n_boot=10,
                                    progress=False).per_prompt["intervened"].to_numpy(),
               "score": score(model, PROMPTS, metric, batch_size="auto"),
               "effect": effect(model, PROMPTS, [AblateHead(1, 2)], metric, batch_size="auto", n_boot=10,
                                progress=False).per_prompt["intervened"].to_numpy()}
    out["chunks"] = chunks
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, out)
    return everyone


def sigterm_on_rank_1(in_a_gather: bool) -> str:
    """Rank 1 is stopped by a SIGTERM from outside; rank 0 computes (sleeps) or waits for it in a gather."""
    import os
    import signal
    import time

    if current().rank == 1:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(60)
    if in_a_gather:
        list(map_units(lambda unit: unit, range(4)))
    else:
        time.sleep(60)
    return "not reached"


def mark_then_sleep(folder: str) -> str:
    """Every rank says it runs (a file in ``folder``), then sleeps (the caller is interrupted meanwhile)."""
    import time
    from pathlib import Path

    (Path(folder) / f"running-{current().rank}").touch()
    time.sleep(60)
    return "not interrupted"
