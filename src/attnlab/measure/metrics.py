"""Downstream metrics: numbers read from a clean and an intervened run of the same rows.

Every metric works in three steps, so the same object serves :func:`effect` (one
intervention) and the sweeps (thousands of interventions, batched):

1. ``rows(model, prompts)`` tokenizes the prompts (and continuations) into :class:`Rows`;
2. ``reduce(out, rows)`` keeps the small per-row statistic it needs from the model output
   (a log-prob, the top-k ids, a log-distribution);
3. ``compare(stats, clean, rows)`` turns the intervened statistic (and the clean one, for
   comparative metrics such as KL) into one number per row, and ``combine`` folds the rows
   of a prompt into one number per prompt.

Scoring text is here too: continuation log-probabilities (:class:`LogitDiff`,
:class:`TokenProb`, :class:`LogProbs`), per-token loss (:class:`Loss`) and the difference
of two texts' log-probabilities (:class:`PairLogRatio`) all rest on one per-token
log-probability, :func:`attnlab.engine.forward.token_logprobs`.

The next-token position of a prompt is its last real token, whatever the padding.
Exact formulas: ``docs/measure.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from jaxtyping import Float, Int

from attnlab.engine.forward import token_logprobs
from attnlab.errors import InvalidInput, InvalidSpec, check_flag, check_positive_int, did_you_mean
from attnlab.measure._rows import Rows, check_prompts, continuation_ids, encode_prompts, per_prompt_list

__all__ = [
    "Metric",
    "LogitDiff",
    "TokenProb",
    "LogProbs",
    "PairLogRatio",
    "KL",
    "Loss",
    "TopKChange",
    "HiddenShift",
    "GenerationDiff",
    "continuation_logprob",
    "metric_from_name",
]

READ_AT = ("last", "mask")


class Metric:
    """Base class. Subclasses set ``name`` and ``output`` and implement ``rows`` and ``reduce``."""

    name: str = "metric"
    output: str = "logits"  # "logits" (needs an LM head) or "hidden" (final hidden states)
    comparative: bool = False  # compare() needs the clean statistic (clean value is then 0)
    generation: bool = False  # scored on generated text, not on one forward pass
    vector: bool = False  # several numbers per prompt (score() only, no effect or sweep)
    causal: str | None = None  # why the metric needs a causal LM (None: any model)

    def check_model(self, model) -> None:
        if self.output == "logits" and not model.cfg.has_lm_head:
            raise InvalidInput(
                f"{self.name} reads vocabulary logits but {model.cfg.name} has no LM head; "
                "use a hidden-state metric such as HiddenShift()"
            )
        if self.causal and not model.cfg.is_causal:
            raise InvalidInput(f"{type(self).__name__} {self.causal}, so it needs a causal LM; {model.cfg.name} is bidirectional")

    def rows(self, model, prompts: Sequence[str]) -> Rows:
        raise NotImplementedError

    def vocab(self, rows: Rows) -> Int[torch.Tensor, " k"] | None:
        """The vocabulary ids ``reduce`` reads, or None for all of them.

        With ids, ``out`` holds only their logits (in this order), so the LM head computes
        ``k`` rows instead of the whole vocabulary: a normaliser such as ``logsumexp`` needs
        every id, hence the default.
        """
        return None

    def reduce(self, out: torch.Tensor, rows: Rows) -> torch.Tensor:
        """The per-row statistic kept from ``out`` ([row, vocab] at the read position, or [row, pos, ...])."""
        raise NotImplementedError

    def compare(self, stats: torch.Tensor, clean: torch.Tensor, rows: Rows) -> Float[torch.Tensor, " row"]:
        """One number per row; non-comparative metrics ignore ``clean``."""
        return stats.float()

    def combine(self, values: Float[torch.Tensor, "prompt per_prompt"]) -> Float[torch.Tensor, " prompt"]:
        return values[:, 0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


# -- shared pieces --------------------------------------------------------------------------



def _read_rows(model, prompts, read_at: str) -> Rows:
    """Prompt rows read at one position: the last real token, or the tokenizer's mask token."""
    if read_at not in READ_AT:
        raise InvalidSpec(f"unknown read_at {read_at!r}{did_you_mean(read_at, READ_AT)} (valid: {', '.join(READ_AT)})")
    prompts = check_prompts(prompts)
    tokens = model.pad(encode_prompts(model, prompts), padding_side="right")
    ids = tokens.ids
    if read_at == "last":
        read = tokens.lengths - 1
    else:
        mask_id = getattr(model.tokenizer, "mask_token_id", None)
        if mask_id is None:
            raise InvalidInput(f"read_at='mask' needs a tokenizer with a mask token; {model.cfg.name}'s has none")
        hits = ids == mask_id
        counts = hits.sum(dim=1)
        bad = [i for i, c in enumerate(counts.tolist()) if c != 1]
        if bad:
            raise InvalidInput(
                f"read_at='mask': prompt {bad[0]} has {int(counts[bad[0]])} {model.tokenizer.mask_token} tokens; "
                "every prompt needs exactly one"
            )
        read = hits.float().argmax(dim=1)
    return Rows(tokens, 1, "read", {"read": read})


def _continuation_rows(model, prompts, continuations: list[list[list[int]]]) -> Rows:
    """Rows prompt + continuation j for every prompt (``continuations[i][j]`` = token ids)."""
    encoded = encode_prompts(model, prompts)
    token_rows, start, length = [], [], []
    for prompt_ids, conts in zip(encoded, continuations):
        for cont in conts:
            token_rows.append(prompt_ids + cont)
            start.append(len(prompt_ids))
            length.append(len(cont))
    k = len(continuations[0])
    return Rows(model.pad(token_rows, padding_side="right"), k, "all", {"start": torch.tensor(start), "length": torch.tensor(length)})


def continuation_logprob(logits: Float[torch.Tensor, "row pos vocab"], rows: Rows) -> Float[torch.Tensor, " row"]:
    """Teacher-forced ``sum_j log p(c_j | prompt, c_<j)`` of each row's continuation.

    The continuation occupies token positions ``start .. start + length - 1``; token ``t`` is
    predicted by the logits at position ``t - 1`` (:func:`attnlab.engine.forward.token_logprobs`,
    the one per-token log-probability).
    """
    logp = token_logprobs(logits, rows.tokens)  # [row, column]: log p of the token in that column
    cols = torch.arange(logp.shape[1], device=logp.device)[None, :]
    start = rows.tokens.columns(rows.data["start"][:, None]).to(logp.device)
    length = rows.data["length"][:, None].to(logp.device)
    inside = (cols >= start) & (cols < start + length)
    return (logp * inside).sum(dim=1)


def _ids_per_prompt(model, value, n, what, single) -> list[list[int]]:
    texts = per_prompt_list(value, n, what)
    ids = {s: continuation_ids(model, s, what, single=single) for s in dict.fromkeys(texts)}  # one call per distinct text
    return [list(ids[s]) for s in texts]


class _Continuations(Metric):
    """Candidate continuations scored after each prompt (shared by LogitDiff, TokenProb, LogProbs).

    If every candidate is one token, each prompt is one row read at one position (the LM
    head runs only there); otherwise every (prompt, candidate) is a row ``prompt +
    candidate``, scored teacher-forced by :func:`continuation_logprob`.
    """

    read_at: str = "last"
    single_token: bool = False
    plural: str = "candidates"  # what the candidates are called in errors

    def candidates(self) -> list[tuple[str | Sequence[str], str]]:
        """``(strings, what)`` per candidate: one string for all prompts or one per prompt."""
        raise NotImplementedError

    def rows(self, model, prompts) -> Rows:
        prompts = check_prompts(prompts)
        n = len(prompts)
        single = self.single_token or self.read_at == "mask"
        ids = [_ids_per_prompt(model, value, n, what, single) for value, what in self.candidates()]  # [candidate][prompt]
        self.check_ids(model, prompts, ids)
        if all(len(x) == 1 for per_prompt in ids for x in per_prompt):
            rows = _read_rows(model, prompts, self.read_at)
            rows.data["candidates"] = torch.tensor([[c[i][0] for c in ids] for i in range(n)])  # [row, candidate]
            return rows
        if not model.cfg.is_causal:
            raise InvalidInput(f"multi-token {self.plural} need a causal LM; {model.cfg.name} is bidirectional")
        return _continuation_rows(model, prompts, [[c[i] for c in ids] for i in range(n)])

    def check_ids(self, model, prompts: list[str], ids: list[list[list[int]]]) -> None:
        """Refuse candidates whose token ids (``ids[candidate][prompt]``) cannot give a meaningful number."""

    def logprobs(self, out: torch.Tensor, rows: Rows) -> torch.Tensor:
        """``[row, candidate]`` log-probabilities at the read position, or ``[row]`` for continuation rows."""
        if rows.positions == "read":
            out = out.float()
            return out.gather(1, rows.data["candidates"].to(out.device)) - out.logsumexp(dim=-1, keepdim=True)
        return continuation_logprob(out, rows)


# -- metrics --------------------------------------------------------------------------------


class LogitDiff(_Continuations):
    """``log p(target) - log p(foil)`` after each prompt (the logit difference for single tokens).

    ``target``/``foil``: one string for all prompts or a list with one per prompt. Strings
    are tokenized without special tokens; multi-token strings are scored teacher-forced
    (sum of the log-probs of their tokens). ``single_token=True`` refuses multi-token
    strings; ``read_at="mask"`` reads a masked LM at its ``[MASK]`` token (single tokens only).

    >>> from attnlab.testing import tiny_model
    >>> model = tiny_model("gpt2")
    >>> LogitDiff(" she", " he").rows(model, ["the nurse said that"]).data["candidates"].tolist()
    [[18, 17]]
    """

    name = "logit_diff"
    plural = "targets"

    def __init__(self, target: str | Sequence[str], foil: str | Sequence[str], *, single_token: bool = False,
                 read_at: str = "last"):
        if isinstance(target, str) and target == foil:
            raise InvalidSpec(f"LogitDiff: target and foil are the same text {target!r}, so the difference is 0 whatever "
                              "the model does; give two different continuations")
        self.target, self.foil = target, foil
        self.single_token = check_flag(single_token, "single_token", error=InvalidSpec)
        self.read_at = read_at

    def candidates(self):
        return [(self.target, "target"), (self.foil, "foil")]

    def check_ids(self, model, prompts, ids):
        """A target and foil that are the same tokens (``" she"`` twice, or texts tokenizing alike) always differ by 0."""
        n = len(prompts)
        texts = zip(per_prompt_list(self.target, n, "target"), per_prompt_list(self.foil, n, "foil"))
        for i, (target, foil, (target_text, foil_text)) in enumerate(zip(*ids, texts)):
            if target == foil:
                raise InvalidInput(
                    f"LogitDiff: the target and foil of prompt {i} ({target_text!r} and {foil_text!r}) are the same tokens "
                    f"for {model.cfg.name} ({model.tokenizer.convert_ids_to_tokens(target)}), so their difference is 0 "
                    "whatever the model does; give two different continuations"
                )

    def vocab(self, rows):
        """Single tokens: only the targets' and foils' logits (the softmax normaliser cancels)."""
        return rows.data["candidates"].unique() if rows.positions == "read" else None

    def reduce(self, out, rows):
        if rows.positions == "read":  # out: [row, vocab] or [row, k] (the ids of self.vocab(rows))
            ids = rows.data["candidates"].to(out.device)
            vocab = self.vocab(rows)
            if out.shape[-1] == vocab.numel():  # sorted unique ids: if k == vocab size they are 0..vocab-1
                ids = torch.searchsorted(vocab.to(out.device), ids)
            picked = out.float().gather(1, ids)
            return picked[:, 0] - picked[:, 1]
        return continuation_logprob(out, rows)

    def combine(self, values):
        return values[:, 0] if values.shape[1] == 1 else values[:, 0] - values[:, 1]

    def __repr__(self) -> str:
        return f"LogitDiff(target={self.target!r}, foil={self.foil!r})"


class TokenProb(_Continuations):
    """Probability (or ``log=True`` log-probability) of a continuation after each prompt.

    Multi-token continuations are scored teacher-forced: ``p = prod_j p(c_j | prompt, c_<j)``.
    """

    name = "prob"
    plural = "continuations"

    def __init__(self, token: str | Sequence[str], *, log: bool = False, single_token: bool = False,
                 read_at: str = "last"):
        self.token = token
        self.log = check_flag(log, "log", error=InvalidSpec)
        self.single_token = check_flag(single_token, "single_token", error=InvalidSpec)
        self.read_at = read_at
        self.name = "logprob" if self.log else "prob"

    def candidates(self):
        return [(self.token, "token")]

    def reduce(self, out, rows):
        logp = self.logprobs(out, rows)
        logp = logp[:, 0] if logp.ndim == 2 else logp
        return logp if self.log else logp.exp()

    def __repr__(self) -> str:
        return f"TokenProb({self.token!r}{', log=True' if self.log else ''})"


class LogProbs(_Continuations):
    """``log p(c | prompt)`` of several candidate continuations: ``[prompt, candidate]``, for :func:`score`.

    The parts of a :class:`LogitDiff` side by side (``log p(she)``, ``log p(he)``) from one
    forward pass. Several numbers per prompt, so it is scored, not compared: ``effect()``
    and the sweeps refuse it.

    >>> from attnlab.testing import tiny_model
    >>> from attnlab.measure import score
    >>> score(tiny_model("gpt2"), ["the nurse said that"], LogProbs([" she", " he"])).shape
    (1, 2)
    """

    name = "logprobs"
    vector = True

    def __init__(self, candidates: Sequence[str | Sequence[str]], *, single_token: bool = False, read_at: str = "last"):
        if isinstance(candidates, str) or not list(candidates):
            raise InvalidSpec(f"candidates must be a non-empty list of continuations, got {candidates!r}")
        self.candidate_list = list(candidates)
        self.single_token = check_flag(single_token, "single_token", error=InvalidSpec)
        self.read_at = read_at

    def candidates(self):
        return [(c, "candidate") for c in self.candidate_list]

    def reduce(self, out, rows):
        return self.logprobs(out, rows)

    def combine(self, values):
        return values[:, 0] if values.ndim == 3 else values  # [prompt, 1, candidate] (read) or [prompt, candidate]

    def __repr__(self) -> str:
        return f"LogProbs({self.candidate_list!r})"


PAIR_SCORES = ("sentence", "pronoun")


def _first_difference(a: Sequence[int], b: Sequence[int]) -> int:
    """Index of the first token where ``a`` and ``b`` differ (the shorter length if one starts the other)."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


class PairLogRatio(Metric):
    """``log p(prompt) - log p(other)`` for two texts that differ after a shared start (> 0: the prompt is likelier).

    The tokens before the first token where the two differ are the same in both texts and
    cancel, so only what follows is scored: ``score="sentence"`` scores every token from the
    first difference on (exactly the difference of the two texts' log-probabilities);
    ``score="pronoun"`` only the first differing token, ``log p(token | shared prefix)``.
    ``others``: one text per prompt (WinoBias anti-stereotyped twins, he-variants, ...).

    >>> from attnlab.testing import tiny_model
    >>> from attnlab.measure import score
    >>> gap = score(tiny_model("gpt2"), ["the nurse said that she left"], PairLogRatio(["the nurse said that he left"]))
    >>> gap.shape
    (1,)
    """

    name = "pair_log_ratio"
    causal = "scores texts left to right"

    def __init__(self, others: str | Sequence[str], *, score: str = "sentence"):
        if score not in PAIR_SCORES:
            raise InvalidSpec(f"unknown score {score!r}{did_you_mean(score, PAIR_SCORES)} (valid: {', '.join(PAIR_SCORES)})")
        self.others, self.score = others, score

    def rows(self, model, prompts) -> Rows:
        prompts = check_prompts(prompts)
        others = per_prompt_list(self.others, len(prompts), "other text")
        token_rows, start, length = [], [], []
        for a, b in zip(encode_prompts(model, prompts), encode_prompts(model, others)):
            first = max(_first_difference(a, b), 1)  # the first token is never predicted
            for ids in (a, b):
                token_rows.append(ids)
                start.append(first)
                length.append(0 if first >= len(ids) else 1 if self.score == "pronoun" else len(ids) - first)
        data = {"start": torch.tensor(start), "length": torch.tensor(length)}
        return Rows(model.pad(token_rows, padding_side="right"), 2, "all", data)

    def reduce(self, out, rows):
        return continuation_logprob(out, rows)

    def combine(self, values):
        return values[:, 0] - values[:, 1]

    def __repr__(self) -> str:
        return f"PairLogRatio(score={self.score!r})"


class KL(Metric):
    """``KL(clean || intervened)`` of the next-token distribution, in nats (clean value 0)."""

    name = "kl"
    comparative = True

    def __init__(self, *, read_at: str = "last"):
        self.read_at = read_at

    def rows(self, model, prompts) -> Rows:
        return _read_rows(model, prompts, self.read_at)

    def reduce(self, out, rows):
        return out.float().log_softmax(dim=-1)

    def compare(self, stats, clean, rows):
        return (clean.exp() * (clean - stats)).sum(dim=-1)


class Loss(Metric):
    """Mean next-token cross-entropy of each prompt's own tokens (``perplexity=True``: its exp)."""

    name = "loss"
    causal = "is a next-token loss"

    def __init__(self, *, perplexity: bool = False):
        self.perplexity = check_flag(perplexity, "perplexity", error=InvalidSpec)
        self.name = "perplexity" if self.perplexity else "loss"

    def rows(self, model, prompts) -> Rows:
        prompts = check_prompts(prompts)
        encoded = encode_prompts(model, prompts)
        short = [i for i, r in enumerate(encoded) if len(r) < 2]
        if short:
            raise InvalidInput(f"Loss needs at least 2 tokens per text; text {short[0]} has {len(encoded[short[0]])}")
        tokens = model.pad(encoded, padding_side="right")
        # score every token after the first: start 1, length n - 1
        return Rows(tokens, 1, "all", {"start": torch.ones(len(encoded), dtype=torch.long), "length": tokens.lengths - 1})

    def reduce(self, out, rows):
        mean_nll = -continuation_logprob(out, rows) / rows.data["length"].float()
        return mean_nll.exp() if self.perplexity else mean_nll


TOPK_MEASURES = ("jaccard", "overlap", "top1")


class TopKChange(Metric):
    """How much the top-k next tokens change (clean value 0).

    ``measure="jaccard"``: ``1 - |A & B| / |A | B|``; ``"overlap"``: ``1 - |A & B| / k``;
    ``"top1"``: 1 if the most likely token changed, else 0.
    """

    comparative = True

    def __init__(self, k: int = 10, *, measure: str = "jaccard", read_at: str = "last"):
        check_positive_int(k, "k", error=InvalidSpec)
        k = int(k)
        if measure not in TOPK_MEASURES:
            raise InvalidSpec(f"unknown measure {measure!r}{did_you_mean(measure, TOPK_MEASURES)} (valid: {', '.join(TOPK_MEASURES)})")
        self.k, self.measure, self.read_at = k, measure, read_at
        self.name = f"top{k}_{measure}_change" if measure != "top1" else "top1_changed"

    def rows(self, model, prompts) -> Rows:
        vocab = model.cfg.d_vocab if model.cfg.has_lm_head else 0
        if self.k > vocab:
            raise InvalidSpec(f"k={self.k} exceeds the vocabulary of {model.cfg.name} ({vocab} tokens)")
        return _read_rows(model, prompts, self.read_at)

    def reduce(self, out, rows):
        k = 1 if self.measure == "top1" else self.k
        return out.float().topk(k, dim=-1).indices  # [row, k], most likely first

    def compare(self, stats, clean, rows):
        if self.measure == "top1":
            return (stats[:, 0] != clean[:, 0]).float()
        inter = (stats[:, :, None] == clean[:, None, :]).any(dim=-1).sum(dim=-1).float()
        if self.measure == "overlap":
            return 1.0 - inter / self.k
        return 1.0 - inter / (2 * self.k - inter)

    def __repr__(self) -> str:
        return f"TopKChange(k={self.k}, measure={self.measure!r})"


class HiddenShift(Metric):
    """Mean over real tokens of ``||h_intervened - h_clean||_2`` of the final hidden states.

    Works on every model, encoders without an LM head included (clean value 0).
    """

    name = "hidden_shift"
    output = "hidden"
    comparative = True

    def rows(self, model, prompts) -> Rows:
        prompts = check_prompts(prompts)
        return Rows(model.pad(encode_prompts(model, prompts), padding_side="right"), 1, "all", {})

    def reduce(self, out, rows):
        return out.float()

    def compare(self, stats, clean, rows):
        dist = (stats - clean).norm(dim=-1)  # [row, pos]
        mask = rows.attention_mask.to(dist.dtype)
        return (dist * mask).sum(dim=1) / mask.sum(dim=1)


GENERATION_MEASURES = ("match", "equal")


class GenerationDiff(Metric):
    """Compare greedy continuations with and without the interventions (``effect`` only).

    ``measure="match"``: number of leading generated tokens that agree with the clean
    continuation (clean value: its length); ``"equal"``: 1 if the continuations are identical.
    """

    generation = True
    comparative = True
    causal = "generates text"

    def __init__(self, max_new_tokens: int = 10, *, measure: str = "match"):
        check_positive_int(max_new_tokens, "max_new_tokens", error=InvalidSpec)
        max_new_tokens = int(max_new_tokens)
        if measure not in GENERATION_MEASURES:
            raise InvalidSpec(
                f"unknown measure {measure!r}{did_you_mean(measure, GENERATION_MEASURES)} "
                f"(valid: {', '.join(GENERATION_MEASURES)})"
            )
        self.max_new_tokens, self.measure = max_new_tokens, measure
        self.name = "generation_match" if measure == "match" else "generation_equal"

    def generate(self, model, prompts: Sequence[str], interventions=(), *, first: int = 0) -> list[list[int]]:
        """Greedy new token ids per prompt (left-padded batch, KV cache, interventions active).

        ``first``: the number of the first prompt, when these are a chunk (per-prompt draws).
        """
        tok = model.tokenizer
        new = model.generate(list(prompts), max_new_tokens=self.max_new_tokens, interventions=interventions,
                             return_type="tokens", row_keys=torch.arange(first, first + len(prompts))).tolist()
        stops = {tok.eos_token_id, model.pad_token_id} - {None}
        cut = []
        for row in new:
            end = next((j for j, t in enumerate(row) if t in stops), len(row))
            cut.append(row[:end])
        return cut

    def score(self, clean: list[int], intervened: list[int]) -> tuple[float, float]:
        """``(clean value, intervened value)`` for one prompt."""
        if self.measure == "equal":
            return 1.0, float(clean == intervened)
        match = 0
        for a, b in zip(clean, intervened):
            if a != b:
                break
            match += 1
        if clean == intervened:
            match = len(clean)
        return float(len(clean)), float(match)

    def __repr__(self) -> str:
        return f"GenerationDiff(max_new_tokens={self.max_new_tokens}, measure={self.measure!r})"


def metric_from_name(name: str, **options) -> Metric:
    """Build a metric from a short name (the CLI's spelling): logit_diff, prob, kl, loss, topk, hidden, generation."""
    table = {"logit_diff": LogitDiff, "prob": TokenProb, "kl": KL, "loss": Loss, "topk": TopKChange,
             "hidden": HiddenShift, "generation": GenerationDiff}
    if name not in table:
        raise InvalidSpec(f"unknown metric {name!r}{did_you_mean(name, table)} (valid: {', '.join(table)})")
    try:
        return table[name](**options)
    except TypeError as err:
        raise InvalidSpec(f"metric {name!r}: {err}") from None
