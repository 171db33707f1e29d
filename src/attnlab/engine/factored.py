"""``FactoredMatrix``: a product ``A @ B`` kept as its two factors, for QK and OV circuits.

``model.QK[L, h]`` is ``W_Q[L, h] @ W_K[L, h].T`` and ``model.OV[L, h]`` is
``W_V[L, h] @ W_O[L, h]`` (``[d_model, d_model]`` each, of rank at most ``d_head``), as in
TransformerLens. Keeping the factors makes the stacked ``[n_layers, n_heads, d_model, d_model]``
object cheap on large models; ``.AB`` builds the dense product when asked.
"""

from __future__ import annotations

import torch

from attnlab.errors import InvalidInput, ShapeMismatch

__all__ = ["FactoredMatrix"]


class FactoredMatrix:
    """``A @ B`` with ``A: [..., m, k]`` and ``B: [..., k, n]`` (same leading axes, e.g. layer and head)."""

    def __init__(self, A: torch.Tensor, B: torch.Tensor):
        if A.ndim < 2 or B.ndim < 2 or A.shape[-1] != B.shape[-2] or A.shape[:-2] != B.shape[:-2]:
            raise ShapeMismatch(f"FactoredMatrix needs A [..., m, k] and B [..., k, n], got {tuple(A.shape)} and {tuple(B.shape)}")
        self.A, self.B = A, B

    @property
    def AB(self) -> torch.Tensor:
        """The dense product ``[..., m, n]``."""
        return self.A @ self.B

    @property
    def BA(self) -> torch.Tensor:
        """``B @ A``, ``[..., k, k]`` (square matrices only): same non-zero eigenvalues as ``AB``."""
        if self.A.shape[-2] != self.B.shape[-1]:
            raise ShapeMismatch(f"BA needs a square product, this one is {tuple(self.shape[-2:])}")
        return self.B @ self.A

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.A.shape[:-1], self.B.shape[-1]))

    @property
    def ndim(self) -> int:
        return self.A.ndim

    @property
    def T(self) -> FactoredMatrix:
        return FactoredMatrix(self.B.transpose(-2, -1), self.A.transpose(-2, -1))

    def __getitem__(self, index) -> FactoredMatrix:
        """Index the leading axes (``QK[layer, head]``); rows and columns need ``.AB[...]``."""
        parts = index if isinstance(index, tuple) else (index,)
        if len(parts) > self.A.ndim - 2 or any(p is Ellipsis for p in parts):
            raise InvalidInput(
                f"index only the leading axes {tuple(self.A.shape[:-2])} of a FactoredMatrix (e.g. QK[layer, head]); "
                "for rows or columns index the dense product .AB"
            )
        try:
            return FactoredMatrix(self.A[parts], self.B[parts])
        except (IndexError, TypeError) as err:
            raise InvalidInput(f"a FactoredMatrix's leading axes {tuple(self.A.shape[:-2])} cannot be indexed by {index!r}: "
                               f"{err}") from None

    def _check_operand(self, other, side: str) -> None:
        """``other`` multiplies this matrix from ``side``: a tensor (or FactoredMatrix) whose inner size matches."""
        if not isinstance(other, (torch.Tensor, FactoredMatrix)):
            raise InvalidInput(f"a FactoredMatrix multiplies tensors and FactoredMatrix objects, got {type(other).__name__}")
        if other.ndim < 1:
            raise ShapeMismatch("a FactoredMatrix cannot be multiplied by a 0-d tensor")
        inner, size = (self.shape[-1], other.shape[0 if other.ndim == 1 else -2]) if side == "right" \
            else (self.shape[-2], other.shape[-1])
        if inner != size:
            shown = f"{tuple(self.shape)} @ {tuple(other.shape)}" if side == "right" else f"{tuple(other.shape)} @ {tuple(self.shape)}"
            raise ShapeMismatch(f"FactoredMatrix product {shown}: the inner sizes {inner} and {size} differ")

    def __matmul__(self, other):
        self._check_operand(other, "right")
        if isinstance(other, FactoredMatrix):
            return FactoredMatrix(self.A, (self.B @ other.A) @ other.B)
        if isinstance(other, torch.Tensor) and other.ndim == 1:
            return self.A @ (self.B @ other)
        return FactoredMatrix(self.A, self.B @ other)

    def __rmatmul__(self, other):
        self._check_operand(other, "left")
        if isinstance(other, torch.Tensor) and other.ndim == 1:
            return (other @ self.A) @ self.B
        return FactoredMatrix(other @ self.A, self.B)

    @property
    def eigenvalues(self) -> torch.Tensor:
        """The ``k`` eigenvalues of ``AB`` that can be non-zero (those of the small ``BA``), complex."""
        return torch.linalg.eigvals(self.BA)

    def norm(self) -> torch.Tensor:
        """Frobenius norm of ``AB`` without building it: ``sqrt(trace(A^T A B B^T))``."""
        gram_a = self.A.transpose(-2, -1) @ self.A
        gram_b = self.B @ self.B.transpose(-2, -1)
        return (gram_a * gram_b).sum(dim=(-2, -1)).clamp_min(0).sqrt()

    def svd(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``U [..., m, k], S [..., k], Vh [..., k, n]`` with ``AB = U @ diag(S) @ Vh`` (torch's convention)."""
        q_a, r_a = torch.linalg.qr(self.A)
        q_b, r_b = torch.linalg.qr(self.B.transpose(-2, -1))
        u, s, vh = torch.linalg.svd(r_a @ r_b.transpose(-2, -1))
        return q_a @ u, s, vh @ q_b.transpose(-2, -1)

    def __repr__(self) -> str:
        return f"FactoredMatrix(shape={tuple(self.shape)}, inner={self.A.shape[-1]})"
