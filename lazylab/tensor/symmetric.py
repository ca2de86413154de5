"""Symmetric order-l tensors in CP form, ``T = sum_i c_i u_i^{(x)l}``, and random ground truths.

Everything is computed through inner products, never through the d^l entries:

    <a^{(x)l}, b^{(x)l}>_F = <a, b>^l,
    <T, S>_F = sum_{i,j} c_i s_j <u_i, v_j>^l           (cost O(m n d) for m and n components).

``SymCP.dense()`` materialises the d^l array for small d only (tests, the entry-wise forward).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

__all__ = ["SymCP", "dim_sym", "random_ground_truth", "symmetrize", "cp_inner", "MAX_DENSE"]

#: refuse to materialise tensors with more entries than this
MAX_DENSE = 20_000_000


def dim_sym(d: int, order: int) -> int:
    """Dimension of Sym^l(R^d): ``C(d + l - 1, l)`` (number of multisets of size l from d)."""
    if not isinstance(d, int) or d < 1:
        raise ValueError(f"d must be a positive int, got {d!r}")
    if not isinstance(order, int) or order < 1:
        raise ValueError(f"order must be a positive int, got {order!r}")
    return math.comb(d + order - 1, order)


def _check_order(order: int) -> None:
    if not isinstance(order, int) or isinstance(order, bool) or order < 2:
        raise ValueError(f"order must be an int >= 2, got {order!r}")


def cp_inner(c1: torch.Tensor, u1: torch.Tensor, c2: torch.Tensor, u2: torch.Tensor,
             order: int) -> torch.Tensor:
    """Frobenius inner product of two CP tensors: ``sum_ij c1_i c2_j <u1_i, u2_j>^l``.

    Shapes: c1 (m,), u1 (m, d), c2 (n,), u2 (n, d). Cost O(m n d). Differentiable.
    """
    if u1.shape[-1] != u2.shape[-1]:
        raise ValueError(f"vectors must share d, got {tuple(u1.shape)} and {tuple(u2.shape)}")
    g = u1 @ u2.T
    return c1 @ g.pow(order) @ c2


@dataclass
class SymCP:
    """A symmetric tensor ``sum_i coefs[i] * vectors[i]^{(x)order}``.

    Attributes: ``coefs`` (m,), ``vectors`` (m, d), ``order`` l >= 2.
    """

    coefs: torch.Tensor
    vectors: torch.Tensor
    order: int

    def __post_init__(self) -> None:
        _check_order(self.order)
        if self.vectors.dim() != 2:
            raise ValueError(f"vectors must have shape (m, d), got {tuple(self.vectors.shape)}")
        if self.coefs.shape != self.vectors.shape[:1]:
            raise ValueError(
                f"coefs must have shape ({self.vectors.shape[0]},), got {tuple(self.coefs.shape)}")

    @property
    def d(self) -> int:
        return self.vectors.shape[1]

    @property
    def rank(self) -> int:
        return self.vectors.shape[0]

    def inner(self, other: SymCP) -> torch.Tensor:
        """``<self, other>_F`` in O(m n d)."""
        if other.order != self.order:
            raise ValueError(f"orders differ: {self.order} vs {other.order}")
        return cp_inner(self.coefs, self.vectors, other.coefs, other.vectors, self.order)

    def norm_sq(self) -> torch.Tensor:
        """``||T||_F^2 = sum_ij c_i c_j <u_i, u_j>^l`` in O(m^2 d)."""
        return self.inner(self)

    def evaluate(self, x: torch.Tensor) -> torch.Tensor:
        """Polynomial ``T(x, ..., x) = sum_i c_i <u_i, x>^l`` for x (n, d) -> (n,)."""
        return (x @ self.vectors.T).pow(self.order) @ self.coefs

    def dense(self) -> torch.Tensor:
        """The d^l array (small d only; raises ValueError above ``MAX_DENSE`` entries)."""
        n = self.d ** self.order
        if n > MAX_DENSE:
            raise ValueError(f"refusing to materialise d^l = {n} entries (> {MAX_DENSE})")
        m, d = self.vectors.shape
        t = self.coefs
        for k in range(self.order):
            t = t.unsqueeze(-1) * self.vectors.reshape(m, *([1] * k), d)
        return t.sum(0)

    def to(self, *args, **kwargs) -> SymCP:
        return SymCP(self.coefs.to(*args, **kwargs), self.vectors.to(*args, **kwargs), self.order)


def symmetrize(t: torch.Tensor) -> torch.Tensor:
    """Average of a dense (d,)*l array over all l! index permutations (small l, d only)."""
    perms = list(itertools.permutations(range(t.dim())))
    return sum(t.permute(p) for p in perms) / len(perms)


def random_ground_truth(d: int, rank: int, order: int = 3, kind: str = "orthogonal",
                        coefs: str | float = "ones", *, generator: torch.Generator | None = None,
                        dtype: torch.dtype = torch.float32,
                        device: torch.device | str | None = None) -> SymCP:
    """Random rank-r target ``T* = sum_k c*_k u*_k^{(x)l}`` with unit vectors u*_k.

    kind: ``"orthogonal"`` (u*_k orthonormal, from a QR of a Gaussian d x r matrix; needs r <= d)
    or ``"general"`` (independent uniform unit vectors: general position almost surely).
    coefs: ``"ones"`` (c*_k = 1), ``"uniform"`` (c*_k ~ U[1, 2]) or a float (all equal to it).
    """
    _check_order(order)
    if not isinstance(d, int) or d < 1:
        raise ValueError(f"d must be a positive int, got {d!r}")
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive int, got {rank!r}")
    g = torch.randn(d, rank, generator=generator, dtype=torch.float64)
    if kind == "orthogonal":
        if rank > d:
            raise ValueError(f"orthogonal ground truth needs rank <= d, got rank={rank}, d={d}")
        q, _ = torch.linalg.qr(g)
        vecs = q.T
    elif kind == "general":
        vecs = (g / g.norm(dim=0, keepdim=True)).T
    else:
        raise ValueError(f"kind must be 'orthogonal' or 'general', got {kind!r}")
    if coefs == "ones":
        c = torch.ones(rank, dtype=torch.float64)
    elif coefs == "uniform":
        c = 1.0 + torch.rand(rank, generator=generator, dtype=torch.float64)
    elif isinstance(coefs, (int, float)) and not isinstance(coefs, bool):
        c = torch.full((rank,), float(coefs), dtype=torch.float64)
    else:
        raise ValueError(f"coefs must be 'ones', 'uniform' or a number, got {coefs!r}")
    return SymCP(c.to(dtype=dtype, device=device), vecs.contiguous().to(dtype=dtype, device=device),
                 order)
