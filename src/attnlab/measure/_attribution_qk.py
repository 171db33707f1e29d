"""AtP*'s QK fix: the softmax of a patched query or key is recomputed exactly, not linearised.

Plain attribution patching multiplies ``q' - q`` by ``dM/dq``; through a saturated softmax
that gradient is close to 0 even when the patched query would move the attention a lot
(a false negative). The fix (Kramar et al. 2024, section 3.1.1) recomputes the attention
probabilities of the one head exactly with the patched query (or key) and linearises only
from the probabilities on: ``effect ~= sum_{query, key} (A' - A) * dM/dA``.

Units here are single q/k dimensions of one head: editing dimension ``d`` moves every score
by ``delta[s, t] = scaling * (q'_sd - q_sd) * k_td`` (queries) or ``scaling * q_sd * (k'_td - k_td)``
(keys). Masked scores (causal, padding, sliding window) stay masked.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float

from attnlab.engine.attention import masked

__all__ = ["qk_fixed", "check_scores_are_dot_products"]

_CHUNK_ELEMENTS = 1 << 24  # bound on the [batch, dims, query, key] temporaries (64 MiB in float32)


def check_scores_are_dot_products(
    q: Float[torch.Tensor, "batch pos head d_head"],
    k: Float[torch.Tensor, "batch pos head d_head"],
    scores: Float[torch.Tensor, "batch head query key"],
    scaling: float,
) -> float:
    """Largest gap between the model's scores and ``scaling * q.k`` where scores are not masked.

    The fix adds ``delta`` to the scores, which is exact only when scores are plain scaled dot
    products (no logit soft-capping or other transform between q.k and the softmax).
    """
    recomputed = torch.einsum("bshd,bthd->bhst", q.float(), k.float()) * scaling
    keep = ~masked(scores)
    gap = (recomputed - scores.float()).abs().masked_fill(~keep, 0.0)
    scale = scores.float().abs().masked_fill(~keep, 0.0).amax().clamp_min(1.0)
    return float(gap.amax() / scale)


def qk_fixed(
    site: str,
    q: Float[torch.Tensor, "batch pos head d_head"],
    k: Float[torch.Tensor, "batch pos head d_head"],
    delta: Float[torch.Tensor, "batch pos head d_head"],
    scores: Float[torch.Tensor, "batch head query key"],
    grad_pattern: Float[torch.Tensor, "batch head query key"],
    valid: Bool[torch.Tensor, "batch pos"],
    heads: list[int],
    dims: list[int],
    scaling: float,
    per_position: bool,
) -> Float[torch.Tensor, "batch unit position"]:
    """QK-fixed estimate of every (head, dim) unit: ``[batch, heads*dims, pos or 1]``.

    ``delta`` is ``patched - clean`` at the unit's own site (``q`` or ``k``). Per position,
    a query unit is one query row and a key unit is one key column (whose change of the
    softmax normaliser is exact in closed form).
    """
    q, k, delta = q.float(), k.float(), delta.float()
    scores, grad_pattern = scores.float(), grad_pattern.float()
    b, n_pos = q.shape[0], q.shape[1]
    hidden = masked(scores)  # [batch, head, query, key]
    rows = valid.to(q.device).float()  # queries that are real tokens
    chunk = max(1, _CHUNK_ELEMENTS // max(1, b * n_pos * scores.shape[-1]))
    out = []
    for h in heads:
        s_h, g_h, hid_h = scores[:, h], grad_pattern[:, h], hidden[:, h]  # [batch, query, key]
        base = torch.softmax(s_h, dim=-1)
        for d0 in range(0, len(dims), chunk):
            ds = dims[d0 : d0 + chunk]
            if site == "q":  # delta[b, d, s, t] = scaling * dq[b, s, d] * k[b, t, d]
                shift = torch.einsum("bsd,btd->bdst", delta[:, :, h, ds], k[:, :, h, ds]) * scaling
            else:
                shift = torch.einsum("bsd,btd->bdst", q[:, :, h, ds], delta[:, :, h, ds]) * scaling
            if site == "k" and per_position:
                est = _one_key_column(base, g_h, hid_h, shift, rows)  # [batch, dims, key]
            else:
                new = torch.softmax(torch.where(hid_h[:, None], s_h[:, None], s_h[:, None] + shift), dim=-1)
                per_query = ((new - base[:, None]) * g_h[:, None]).sum(-1) * rows[:, None, :]  # [batch, dims, query]
                est = per_query if per_position else per_query.sum(-1, keepdim=True)
            out.append(est)
    return torch.cat(out, dim=1)


def _one_key_column(
    base: Float[torch.Tensor, "batch query key"],
    grad: Float[torch.Tensor, "batch query key"],
    hidden: Bool[torch.Tensor, "batch query key"],
    shift: Float[torch.Tensor, "batch dim query key"],
    rows: Float[torch.Tensor, "batch query"],
) -> Float[torch.Tensor, "batch dim key"]:
    """Each key column t moved alone by ``shift[..., t]``: the exact new row, linearised from there on.

    With ``a = A[s, t]`` and ``D = 1 - a + a e^shift``: ``A'[s, t] = a e^shift / D`` and every
    other entry of row s is divided by ``D``. Computed in log space so that saturated rows
    (``a`` near 1) and large shifts stay finite.
    """
    a = base[:, None]  # [batch, 1, query, key]
    g = grad[:, None]
    log_a = torch.log(a)  # -inf where a == 0 (masked): those entries contribute nothing
    log_d = torch.logaddexp(torch.log1p(-a.clamp(max=1.0)), log_a + shift)
    new_t = torch.exp(log_a + shift - log_d)
    rest = (base * grad).sum(-1)[:, None, :, None] - a * g  # sum over the other keys of A * g
    est = (torch.exp(-log_d) - 1.0) * rest + (new_t - a) * g
    est = est.masked_fill(hidden[:, None], 0.0) * rows[:, None, :, None]
    return est.sum(dim=2)  # over queries: [batch, dim, key]
