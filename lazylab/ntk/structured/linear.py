"""Layer rule for ``nn.Linear``: ``y = x W^T + b`` on inputs ``(N, ..., d_in)``.

Per example ``n`` and output ``o`` the weight gradient is ``J_W = sum_t G[n, o, :, t] (x) A[n, :, t]``
(outer product; ``t`` runs over the extra input dims, ``T = 1`` for plain ``(N, d_in)`` inputs,
``T`` = sequence positions for a Linear applied to ``(N, T, d)``, e.g. attention projections) and
the bias gradient ``sum_t G[n, o, :, t]``, with ``A`` the layer input and ``G = d f_o / d y`` the
output cotangent. The kernel block is thus ``sum_{t,t'} (G G'^T)_{tt'} (A A'^T + 1)_{tt'}``,
which for ``T = 1`` is the classic ``(G G'^T) * (A A'^T + 1)``.

The helpers here serve every "matmul" rule (Linear, convolutions, Hugging Face ``Conv1D``): the
layer input in rows ``A (N, d_in, T)``, the cotangent in rows ``G (N, O, d_out, T)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

KIND = "matmul"


def supports(module: nn.Module) -> bool:
    return type(module) is nn.Linear


def rows_in(module: nn.Module, x: Tensor) -> Tensor:
    """Layer input ``(N, ..., d_in)`` -> ``(N, d_in, T)`` (a view for plain ``(N, d_in)``)."""
    d_in = module.weight.shape[1]
    return x.reshape(x.shape[0], -1, d_in).transpose(1, 2)


def rows_out(module: nn.Module, g: Tensor) -> Tensor:
    """Output cotangent ``(N, O, ..., d_out)`` -> ``(N, O, d_out, T)``."""
    d_out = module.weight.shape[0]
    return g.reshape(g.shape[0], g.shape[1], -1, d_out).transpose(2, 3)


def weight_shape(module: nn.Module, gw: Tensor) -> Tensor:
    """A ``(d_out, d_in)`` weight gradient in the parameter's layout."""
    return gw.reshape(module.weight.shape)


# ---- shared by every matmul rule -----------------------------------------------------------

def dims(a: Tensor) -> tuple[int, int]:
    """``(T, d_in)`` of input rows ``(N, d_in, T)``."""
    return a.shape[2], a.shape[1]


def input_gram(a1: Tensor, a2: Tensor) -> Tensor:
    """Position Gram of the inputs: ``(N1 T1, N2 T2)``, entry ``A1[n, :, t] . A2[m, :, t']``."""
    return a1.transpose(1, 2).reshape(-1, a1.shape[1]) @ a2.transpose(1, 2).reshape(
        -1, a2.shape[1]).T


def per_example(module: nn.Module, a: Tensor, g: Tensor, weight: bool, bias: bool
                ) -> list[Tensor]:
    """Per-example gradients ``[(N, O, d_out d_in), (N, O, d_out)]`` of the selected parameters.

    ``J_W[n, o] = G[n, o] A[n]^T`` (``(d_out, T) @ (T, d_in)``): one batched matmul, cost
    ``N O T d_out d_in``.
    """
    n, o, d, t = g.shape
    feats = []
    if weight:
        jw = torch.bmm(g.reshape(n, o * d, t), a.transpose(1, 2))  # (N, O d, d_in)
        feats.append(jw.reshape(n, o, -1))
    if bias:
        feats.append(g.sum(3))
    return feats


def grad_of_sum(module: nn.Module, a: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    """``(d_out, d_in)`` weight and ``(d_out,)`` bias gradient of ``sum_{n, o} f_o(x_n)``."""
    gs = g.sum(1)  # (N, d_out, T)
    return torch.einsum("ndt,nit->di", gs, a), gs.sum((0, 2))
