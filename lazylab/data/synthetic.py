"""Synthetic inputs and teacher networks."""

from __future__ import annotations

import torch
from torch import Tensor


def _gen(seed: int | torch.Generator) -> torch.Generator:
    return seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))


def sphere(n: int, d: int, radius: float = 1.0, seed: int | torch.Generator = 0,
           dtype: torch.dtype = torch.float32) -> Tensor:
    """``n`` points uniform on the sphere of radius ``radius`` in R^d, shape (n, d)."""
    if n < 1 or d < 1:
        raise ValueError(f"n and d must be >= 1, got n={n}, d={d}")
    x = torch.randn(n, d, generator=_gen(seed), dtype=torch.float64)
    return (radius * x / x.norm(dim=1, keepdim=True)).to(dtype)


def gaussian(n: int, d: int, seed: int | torch.Generator = 0,
             dtype: torch.dtype = torch.float32) -> Tensor:
    """``n`` standard Gaussian points in R^d, shape (n, d)."""
    if n < 1 or d < 1:
        raise ValueError(f"n and d must be >= 1, got n={n}, d={d}")
    return torch.randn(n, d, generator=_gen(seed), dtype=torch.float64).to(dtype)


def teacher_two_layer(
    d: int, m0: int = 3, seed: int | torch.Generator = 0, signs: str = "random",
    output_scale: float = 1.0,
):
    """A ReLU teacher ``f*(x) = output_scale * sum_{j<m0} a_j relu(<b_j, x>)`` with unit-norm rows
    ``b_j`` and ``a_j = +-1`` (Chizat et al.'s ``test_vs_scale.jl``; ``signs="positive"`` gives all
    ``a_j = 1``). Returns ``(f, B, a)`` with ``f: (N, d) -> (N,)``."""
    g = _gen(seed)
    B = torch.randn(m0, d, generator=g, dtype=torch.float64)
    B = B / B.norm(dim=1, keepdim=True)
    if signs == "random":
        a = torch.where(torch.rand(m0, generator=g) < 0.5, -1.0, 1.0).double()
    elif signs == "positive":
        a = torch.ones(m0, dtype=torch.float64)
    else:
        raise ValueError(f"signs must be 'random' or 'positive', got {signs!r}")

    def f(x: Tensor) -> Tensor:
        z = torch.relu(x.to(torch.float64) @ B.T.to(x.device)) @ a.to(x.device)
        return (output_scale * z).to(x.dtype)

    return f, B, a
