"""AtP*'s QK fix: the softmax of a patched query or key is recomputed exactly, not linearised.

Plain attribution patching multiplies ``q' - q`` by ``dM/dq``; through a saturated softmax
that gradient is close to 0 even when the patched query would move the attention a lot
(a false negative). The fix (Kramar et al. 2024, section 3.1.1) recomputes the attention
probabilities of the one head exactly with the patched query (or key) and linearises only
from the probabilities on: ``effect ~= sum_{query, key} (A' - A) * dM/dA``.

Units here are single q/k dimensions of one head: editing dimension ``d`` moves every score
by ``delta[s, t] = scaling * (q'_sd - q_sd) * k_td`` (queries) or ``scaling * q_sd * (k'_td - k_td)``
(keys). Masked scores (causal, padding, sliding window) stay masked.

Before the rotary embedding (``q_pre_rotary`` / ``k_pre_rotary``) a dimension's change reaches
the scores through the rotation: changing pre-rotary dim ``e`` at position ``p`` moves the
rotated vector's dim ``e`` by ``cos`` and its rotary partner by ``+-sin`` (the angles of ``p``),
so ``delta`` gets the partner's term too (:func:`rotary_coefficients`).
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float

from attnlab.engine.attention import masked

__all__ = ["qk_fixed", "check_scores_are_dot_products", "rotary_coefficients"]

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


def rotary_coefficients(
    cos: Float[torch.Tensor, "batch pos rotary_dim"],
    sin: Float[torch.Tensor, "batch pos rotary_dim"],
    d_head: int,
) -> tuple[Float[torch.Tensor, "batch pos d_head"], Float[torch.Tensor, "batch pos d_head"], torch.Tensor]:
    """How a change of one pre-rotary dimension moves the rotated vector: ``(own, partner_coef, partner)``.

    A change ``x`` of dim ``e`` moves dim ``e`` after the rotation by ``own[..., e] * x`` and dim
    ``partner[e]`` by ``partner_coef[..., e] * x`` (transformers' ``rotate_half``: ``out[e] = x[e] cos[e] -
    x[e+h] sin[e]`` and ``out[e+h] = x[e+h] cos[e+h] + x[e] sin[e+h]`` for ``e < h``; dims from
    ``rotary_dim`` on are not rotated: own 1, partner themselves with 0).
    """
    cos, sin = cos.float(), sin.float()
    r = cos.shape[-1]
    h = r // 2
    own = torch.ones(*cos.shape[:-1], d_head, device=cos.device)
    partner_coef = torch.zeros_like(own)
    own[..., :r] = cos
    partner_coef[..., :h] = sin[..., h:r]
    partner_coef[..., h:r] = -sin[..., :h]
    partner = torch.arange(d_head, device=cos.device)
    partner[:h] += h
    partner[h:r] -= h
    return own, partner_coef, partner


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
    rotation: tuple | None = None,
) -> Float[torch.Tensor, "batch unit position"]:
    """QK-fixed estimate of every (head, dim) unit: ``[batch, heads*dims, pos or 1]``.

    ``delta`` is ``patched - clean`` at the unit's own site (``q`` or ``k``). Per position,
    a query unit is one query row and a key unit is one key column (whose change of the
    softmax normaliser is exact in closed form). ``rotation``: :func:`rotary_coefficients` of the
    positions of ``delta`` when it was taken before the rotary embedding (``q``/``k`` are after it).
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
            shift = _score_shift(site, q[:, :, h], k[:, :, h], delta[:, :, h], ds, rotation) * scaling
            if site == "k" and per_position:
                est = _one_key_column(base, g_h, hid_h, shift, rows)  # [batch, dims, key]
            else:
                new = torch.softmax(torch.where(hid_h[:, None], s_h[:, None], s_h[:, None] + shift), dim=-1)
                per_query = ((new - base[:, None]) * g_h[:, None]).sum(-1) * rows[:, None, :]  # [batch, dims, query]
                est = per_query if per_position else per_query.sum(-1, keepdim=True)
            out.append(est)
    return torch.cat(out, dim=1)


def _score_shift(
    site: str,
    q: Float[torch.Tensor, "batch pos d_head"],
    k: Float[torch.Tensor, "batch pos d_head"],
    delta: Float[torch.Tensor, "batch pos d_head"],
    dims: list[int],
    rotation: tuple | None,
) -> Float[torch.Tensor, "batch dim query key"]:
    """``q'.k - q.k`` (or ``q.k' - q.k``) of every query/key pair when one of ``dims`` alone changes by ``delta``."""
    if rotation is None:  # delta[b, d, s, t] = dq[b, s, d] * k[b, t, d]  (queries)
        if site == "q":
            return torch.einsum("bsd,btd->bdst", delta[..., dims], k[..., dims])
        return torch.einsum("bsd,btd->bdst", q[..., dims], delta[..., dims])
    own, partner_coef, partner = rotation
    moved, moved_partner = delta[..., dims] * own[..., dims], delta[..., dims] * partner_coef[..., dims]
    across = partner[dims]
    if site == "q":
        return (torch.einsum("bsd,btd->bdst", moved, k[..., dims])
                + torch.einsum("bsd,btd->bdst", moved_partner, k[..., across]))
    return (torch.einsum("bsd,btd->bdst", q[..., dims], moved)
            + torch.einsum("bsd,btd->bdst", q[..., across], moved_partner))


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
