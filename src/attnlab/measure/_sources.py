"""Patch sources that follow the prompts: one source text per prompt, run once per chunk.

``Patch(layer, head, site=..., source=[text 0, text 1, ...])`` with one source text per
prompt pairs source ``i`` with prompt ``i`` (a counterfactual prompt, Vig et al.'s x'); a
single source text is shared by every prompt (it is paired with each, so a metric with
several rows per prompt, prompt + continuation, gets matching source rows).
The batched runner cuts the prompts into chunks and stacks copies of a chunk, so the
source is cut the same way: the source texts are tokenised exactly like the prompts
(``metric.rows``, so metrics with several rows per prompt get matching rows), checked for
equal token counts, and run once per chunk from the unedited model, reading every hook
point the specs patch. Each spec is rebuilt for that chunk with the chunk's tensor as its
source, and its ``rows=`` (rows of the whole prompt list) moved to the chunk's own rows, so
memory and batching do not depend on the number of prompts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from attnlab.engine.forward import run
from attnlab.errors import InvalidInput, InvalidLocation
from attnlab.interventions import Patch
from attnlab.measure._rows import Rows

__all__ = ["RowSources", "addresses_rows", "follows_prompts", "one_batch", "outer_rows", "paired_rows"]


def addresses_rows(spec) -> bool:
    """Specs tied to batch rows (``rows=``, a source or pattern/score tensor with one row per prompt) fix which rows
    share a batch."""
    return row_tie(spec) is not None


def row_tie(spec) -> str | None:
    """What ties ``spec`` to batch rows, for messages (``"rows="``, ``"source of 2 rows"``), or None."""
    if getattr(spec, "rows", None) is not None:
        return "rows="
    source = getattr(spec, "source", None)
    if isinstance(source, list):
        return f"source of {len(source)} rows" if len(source) > 1 else None
    shape = getattr(source, "shape", None)
    if shape is not None and len(shape) == 4 and shape[0] > 1:
        return f"source of {shape[0]} rows"
    # a SetPattern / EditScores tensor with one row per batch row: [batch, query, key] or [batch, head, query, key]
    for name in ("pattern", "add", "replace"):
        t = getattr(spec, name, None)
        if isinstance(t, torch.Tensor) and t.ndim >= 3 and t.shape[0] > 1:
            return f"{name} of {t.shape[0]} rows"
    return None


def follows_prompts(spec, n_prompts: int) -> bool:
    """A Patch whose source is text: one per prompt, or one shared by every prompt."""
    return isinstance(spec, Patch) and isinstance(spec.source, list) and len(spec.source) in (1, n_prompts)


def one_batch(specs: Iterable, n_prompts: int) -> bool:
    """Whether ``specs`` need every row in one batch: tied to batch rows in a way chunks cannot follow."""
    return any(addresses_rows(s) and not follows_prompts(s, n_prompts) for s in specs)


def outer_rows(model) -> bool:
    """An outer ``model.intervene(...)`` spec acting here is tied to batch rows: its rows are rows of the whole
    prompt list only when every row runs in one batch, one variant at a time."""
    return any(addresses_rows(s) for s in model.acting_interventions())


def _source_texts(spec, n_prompts: int) -> tuple[str, ...]:
    """The source text of each prompt (a single text is every prompt's)."""
    return tuple(spec.source) * n_prompts if len(spec.source) == 1 else tuple(spec.source)


class RowSources:
    """The per-prompt text sources among ``specs``, ready to be run and patched chunk by chunk."""

    def __init__(self, model, metric, prompts: Sequence[str], rows: Rows, specs: Iterable):
        self.model, self.n_prompts = model, len(prompts)
        self.rows: dict[tuple[str, ...], Rows] = {}  # source texts -> their rows, aligned with the prompts' rows
        self.names: dict[tuple[str, ...], set[str]] = {}  # source texts -> hook points read from them
        for spec in specs:
            if not self.follows(spec):
                continue
            bad = [r for r in spec.rows or () if r >= rows.n_rows]
            if bad:
                raise InvalidLocation(f"row {bad[0]} out of range: these prompts have batch rows 0..{rows.n_rows - 1}")
            texts = _source_texts(spec, self.n_prompts)
            if texts not in self.rows:
                self.rows[texts] = paired_rows(model, metric, prompts, rows, texts)
            self.names.setdefault(texts, set()).add(spec.hook_name)

    def follows(self, spec) -> bool:
        return follows_prompts(spec, self.n_prompts)

    def __bool__(self) -> bool:
        return bool(self.rows)

    def setup(self, part: Rows, index: slice) -> tuple[dict[tuple[str, ...], dict], slice]:
        """Run the source rows of one chunk (unedited model) and keep the hook points patched from them."""
        out = {}
        with self.model.clean():
            for texts, rows in self.rows.items():
                out[texts] = run(self.model, rows.select(index).tokens, logits=None, read=sorted(self.names[texts])).cache
        return out, index

    def build(self, specs: Iterable, chunk: tuple[dict, slice] | None) -> list:
        """``specs`` for one chunk: text sources replaced by the chunk's tensors, ``rows=`` moved to its rows."""
        out = []
        for spec in specs:
            if chunk is None or not self.follows(spec):
                out.append(spec)
                continue
            caches, index = chunk
            rows = spec.rows
            if rows is not None:  # rows of the whole prompt list -> rows of this chunk (none here: no edit)
                rows = [r - index.start for r in rows if index.start <= r < index.stop]
                if not rows:
                    continue
            out.append(Patch(spec.layer, spec.heads, site=spec.site, source=caches[_source_texts(spec, self.n_prompts)],
                             positions=spec.positions, rows=rows))
        return out


def paired_rows(model, metric, prompts: Sequence[str], rows: Rows, counterfactuals: Sequence[str]) -> Rows:
    """The counterfactual texts as metric rows: one per prompt, each exactly as long as the prompt row it pairs with."""
    if len(counterfactuals) != len(prompts):
        raise InvalidInput(f"mismatched prompt pairs: {len(prompts)} prompts but {len(counterfactuals)} counterfactuals")
    source = metric.rows(model, list(counterfactuals))
    bad = (source.lengths != rows.lengths).nonzero()
    if len(bad):
        row = int(bad[0, 0])
        i = row // rows.per_prompt
        raise InvalidInput(
            f"mismatched prompt pair {i}: {prompts[i]!r} has {int(rows.lengths[row])} tokens but counterfactual "
            f"{counterfactuals[i]!r} has {int(source.lengths[row])}; activations can only be patched between equal lengths"
        )
    return source
