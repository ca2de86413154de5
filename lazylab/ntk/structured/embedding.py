"""Layer rule for ``nn.Embedding``: a gather ``y[n, t] = W[tok[n, t]]`` on integer tokens.

The per-example gradient is ``J_W[n, o] = sum_t e_{tok[n,t]} (x) G[n, o, :, t]`` (row
``tok[n, t]`` of a ``(V, d)`` matrix receives the cotangent of position ``t``), so the kernel
block sums cotangent products over matching tokens:

    K[n, m] = sum_{t, t'} [tok[n, t] = tok'[m, t']] G[n, :, :, t] . G'[m, :, :, t'].

This is the :mod:`.linear` position-Gram rule with one-hot inputs (``A A'^T`` = the token-match
matrix), computed without one-hot vectors: cost ``N1 N2 T^2 (1 + O d)`` per block, independent of
the vocabulary size ``V`` (a per-example Jacobian would hold ``N O V d`` numbers). For small tables
(position embeddings: ``V d < T^2 (1 + O d)``) the dense per-example gradients are cheaper and the
engine uses them. Tokens equal to
``padding_idx`` get no gradient and are masked out. ``max_norm`` (renormalises the weight in
place) and ``scale_grad_by_freq`` (a batch-dependent gradient) are not supported: such layers
use the Jacobian path.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

KIND = "gather"


def supports(module: nn.Module) -> bool:
    return (type(module) is nn.Embedding and module.max_norm is None
            and not module.scale_grad_by_freq)


def rows_in(module: nn.Module, x: Tensor) -> Tensor:
    """Token ids ``(N, ...)`` -> ``(N, T)``, ``padding_idx`` replaced by -1 (matches nothing)."""
    tok = x.reshape(x.shape[0], -1)
    if module.padding_idx is not None:
        tok = torch.where(tok == module.padding_idx, torch.full_like(tok, -1), tok)
    return tok


def rows_out(module: nn.Module, g: Tensor) -> Tensor:
    """Output cotangent ``(N, O, ..., d)`` -> ``(N, O, d, T)``."""
    return g.reshape(g.shape[0], g.shape[1], -1, module.embedding_dim).transpose(2, 3)


def weight_shape(module: nn.Module, gw: Tensor) -> Tensor:
    return gw


def dims(a: Tensor) -> tuple[int, int]:
    """``(T, d_in)``; ``d_in = 1``: one comparison per position pair."""
    return a.shape[1], 1


def input_gram(a1: Tensor, a2: Tensor) -> Tensor:
    """Token-match matrix ``(N1 T1, N2 T2)`` (0/1; masked padding tokens match nothing)."""
    t1, t2 = a1.reshape(-1), a2.reshape(-1)
    return ((t1[:, None] == t2[None, :]) & (t1[:, None] >= 0)).float()


def per_example(module: nn.Module, a: Tensor, g: Tensor, weight: bool, bias: bool
                ) -> list[Tensor]:
    """Dense per-example gradients ``(N, O, V d)`` (index_add of the cotangents): cheaper than
    the Gram form only for small tables (position embeddings); the engine's cost model decides."""
    n, o, d, t = g.shape
    v = module.num_embeddings
    keep = a >= 0
    rows = (torch.arange(n, device=a.device)[:, None] * v + a.clamp_min(0))[keep]  # (K,)
    vals = g.permute(0, 3, 1, 2)[keep].reshape(-1, o * d)  # (K, O d)
    out = torch.zeros(n * v, o * d, dtype=g.dtype, device=g.device).index_add_(0, rows, vals)
    return [out.reshape(n, v, o, d).permute(0, 2, 1, 3).reshape(n, o, v * d)]


def grad_of_sum(module: nn.Module, a: Tensor, g: Tensor) -> tuple[Tensor, None]:
    """``(V, d)`` weight gradient of ``sum_{n, o} f_o(x_n)`` (index_add of the cotangents)."""
    gs = g.sum(1).transpose(1, 2).reshape(-1, g.shape[2])  # (N T, d)
    tok = a.reshape(-1)
    keep = tok >= 0
    out = torch.zeros(module.num_embeddings, g.shape[2], dtype=g.dtype, device=g.device)
    return out.index_add_(0, tok[keep], gs[keep]), None
