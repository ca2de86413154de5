"""NTK from per-example Jacobians (torch.func), contracted parameter by parameter.

``K(x, x')_{ab} = sum_p J_p(x)_a . J_p(x')_b`` with ``J_p(x) = d f(x) / d p`` per parameter
tensor ``p``. The Jacobians of a tile of ``N`` examples are ``vmap(jacrev(f_single))``: memory
``N * O * P`` numbers (``P`` = selected parameters), time about ``O`` backward passes per example,
then ``N1 * N2 * O * P`` multiply-adds for the trace contraction (``O^2`` times that for
``output="full"``).

Recurrent layers (``nn.RNN``/``nn.LSTM``/``nn.GRU``) do not run under a per-example ``vmap`` (their
fused kernels mix the vmapped batch with the RNN's own): for models holding one, and whenever the
vmapped Jacobian raises, the Jacobians are computed example by example (``jacrev`` per example;
exact, ``N`` calls instead of one).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.func import jacrev, vmap

from lazylab import functional as fn
from lazylab.ntk.problem import Problem

OUTPUTS = ("trace", "full", "diagonal")


def jacobian_features(problem: Problem, x: fn.Inputs, names: Sequence[str] | None = None
                      ) -> list[Tensor]:
    """Per-example Jacobians ``[(N, O, numel(p)) for p in names]`` (default: all selected)."""
    names = list(problem.params) if names is None else list(names)
    if not names:
        return []
    sub = {k: problem.params[k] for k in names}
    rest = {k: v for k, v in problem.params.items() if k not in sub}

    def fs(p: dict[str, Tensor], xi: Tensor) -> Tensor:
        return problem.f_single({**rest, **p}, xi)

    jac = None
    if not problem.recurrent:
        try:
            jac = vmap(jacrev(fs), in_dims=(None, 0))(sub, x)
        except RuntimeError:  # a layer that breaks under vmap: the exact per-example loop below
            jac = None
    if jac is None:
        rows = [jacrev(fs)(sub, fn._map(lambda t, i=i: t[i], x)) for i in range(fn.batch_size(x))]
        jac = {k: torch.stack([r[k] for r in rows]) for k in sub}
    return [j.reshape(j.shape[0], j.shape[1], -1) for j in jac.values()]


def contract_pair(j1: Tensor, j2: Tensor, output: str) -> Tensor:
    """Kernel of two feature tensors ``j1 (N1, O, F)``, ``j2 (N2, O, F)``.

    trace: ``sum_{a,f} j1[n,a,f] j2[m,a,f]`` (N1, N2); full: ``sum_f j1[n,a,f] j2[m,b,f]``
    (N1, N2, O, O); diagonal: ``sum_f j1[n,a,f] j2[m,a,f]`` (N1, N2, O).
    """
    n1, o, _ = j1.shape
    n2 = j2.shape[0]
    if output == "trace":
        return j1.reshape(n1, -1) @ j2.reshape(n2, -1).T
    if output == "full":
        k = j1.reshape(n1 * o, -1) @ j2.reshape(n2 * o, -1).T
        return k.reshape(n1, o, n2, o).permute(0, 2, 1, 3)
    return torch.bmm(j1.transpose(0, 1), j2.permute(1, 2, 0)).permute(1, 2, 0)


def contract(f1: Sequence[Tensor], f2: Sequence[Tensor], output: str,
             acc_dtype: torch.dtype | None = None) -> Tensor | None:
    """Sum of :func:`contract_pair` over parameter blocks (in ``acc_dtype`` if given)."""
    total = None
    for a, b in zip(f1, f2):
        if acc_dtype is not None:
            a, b = a.to(acc_dtype), b.to(acc_dtype)
        k = contract_pair(a, b, output)
        total = k if total is None else total + k
    return total


class JacobianEngine:
    """``prepare(x)`` = per-example Jacobians of a tile; ``block(s1, s2)`` = their contraction."""

    def __init__(self, problem: Problem, output: str, acc_dtype: torch.dtype | None) -> None:
        self.problem, self.output, self.acc_dtype = problem, output, acc_dtype

    def prepare(self, x: Tensor) -> list[Tensor]:
        return jacobian_features(self.problem, x)

    def block(self, s1: list[Tensor], s2: list[Tensor]) -> Tensor:
        return contract(s1, s2, self.output, self.acc_dtype)
