"""NTK from NTK-vector products: ``K v = J(x1) (J(x2)^T v)``, never materialising ``J``.

For each basis vector ``e_{m,b}`` of the ``N2 * O`` outputs on ``x2`` one ``vjp`` (at ``x2``)
gives ``J(x2)^T e_{m,b}`` (a parameter-shaped tensor) and one ``jvp`` (at ``x1``) pushes it
forward, giving the column ``K[:, m, :, b]``. The ``N2 * O`` products are batched with ``vmap`` in
chunks of ``chunk_size`` basis vectors. Memory: ``chunk_size * P`` numbers plus activations; time:
``N2 * O`` (vjp + jvp) on ``N1 + N2`` examples, i.e. roughly ``3 * N1 * N2 * O * F`` for a forward
cost of ``F`` per example. It wins when the per-example Jacobians ``N * O * P`` do not fit in
memory. The ``jvp`` is :func:`lazylab.functional.jvp` (exact double-VJP fallback for ops without
forward mode); models with recurrent layers, or whose products fail under ``vmap``, loop over the
basis vectors instead (exact, slower).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import vjp, vmap

from lazylab import functional as fn
from lazylab.ntk.problem import Problem


def ntvp_block(problem: Problem, x1: fn.Inputs, x2: fn.Inputs, output: str,
               chunk_size: int | None = None) -> Tensor:
    """Kernel block between ``x1 (N1, ...)`` and ``x2 (N2, ...)`` in the given output mode."""
    p = problem.params
    with fn.math_attention():
        out2, vjp_fn = vjp(lambda q: problem.f(q, x2), p)
    n2, o = out2.shape
    n1 = fn.batch_size(x1)

    def column(v: Tensor) -> Tensor:
        (ct,) = vjp_fn(v)
        return fn.jvp(lambda q: problem.f(q, x1), p, ct)[1]

    basis = torch.eye(n2 * o, dtype=out2.dtype, device=out2.device).reshape(n2 * o, n2, o)
    cols = None
    if not problem.recurrent:
        try:
            cols = vmap(column, chunk_size=chunk_size)(basis)  # (N2*O, N1, O): [m*O+b, n, a]
        except RuntimeError:  # a layer that breaks under vmap: exact loop below
            cols = None
    if cols is None:
        cols = torch.stack([column(v) for v in basis])
    k = cols.reshape(n2, o, n1, o).permute(2, 0, 3, 1)  # (N1, N2, a, b)
    if output == "full":
        return k
    diag = torch.diagonal(k, dim1=2, dim2=3)  # (N1, N2, O)
    return diag if output == "diagonal" else diag.sum(-1)


class NTVPEngine:
    """Tiles are raw inputs; ``block`` runs the NTK-vector products for one tile pair."""

    def __init__(self, problem: Problem, output: str, acc_dtype: torch.dtype | None,
                 chunk_size: int | None = None) -> None:
        self.problem, self.output, self.acc_dtype = problem, output, acc_dtype
        self.chunk_size = chunk_size

    def prepare(self, x: fn.Inputs) -> fn.Inputs:
        return x

    def block(self, x1: fn.Inputs, x2: fn.Inputs) -> Tensor:
        k = ntvp_block(self.problem, x1, x2, self.output, self.chunk_size)
        return k if self.acc_dtype is None else k.to(self.acc_dtype)
