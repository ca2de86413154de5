"""Layer rule for ``nn.Linear``: ``y = x W^T + b`` on inputs ``(N, ..., d_in)``.

Per example ``n`` and output ``o`` the weight gradient is ``J_W = sum_t G[o, n, t] (x) A[n, t]``
(outer product; ``t`` runs over the extra input dims, ``T = 1`` for plain ``(N, d_in)`` inputs)
and the bias gradient ``sum_t G[o, n, t]``, with ``A`` the layer input and ``G = d f_o / d y``
the output cotangent. The kernel block is thus ``sum_{t,t'} (G G'^T)_{tt'} (A A'^T + 1)_{tt'}``,
which for ``T = 1`` is the classic ``(G G'^T) * (A A'^T + 1)``.
"""

from __future__ import annotations

from torch import Tensor, nn


def supports(module: nn.Module) -> bool:
    return type(module) is nn.Linear


def rows_in(module: nn.Linear, x: Tensor) -> Tensor:
    """Layer input ``(N, ..., d_in)`` -> ``(N, d_in, T)`` (a view for plain ``(N, d_in)``)."""
    return x.reshape(x.shape[0], -1, module.in_features).transpose(1, 2)


def rows_out(module: nn.Linear, g: Tensor) -> Tensor:
    """Output cotangent ``(O, N, ..., d_out)`` -> ``(O, N, d_out, T)``."""
    return g.reshape(g.shape[0], g.shape[1], -1, module.out_features).transpose(2, 3)
