"""Shared pieces of the Chizat, Oyallon & Bach (2019) reproductions (``chizat-*`` experiments).

Model (paper Sec 3.1, code ``shallow-nn/*.jl``): ``f(x) = sum_j a_j relu(<b_j, x>)`` with inputs on the
unit sphere, no biases, output scale 1 (``scaling = 1``). Built as
``TwoLayerNet(d, m, scaling=1.0, input_scale=1.0, init_std=tau)``: ``hidden.weight`` holds the
``b_j`` (m, d) and ``out.weight`` the ``a_j`` (1, m), all ~ N(0, tau^2).

Scale mapping: this net is 2-positively homogeneous in its weights, so initialising with std ``tau``
equals ``tau^2 * h(w0 / tau)``: the paper's init scale ``tau`` plays the role of ``alpha = tau^2``
(docs/papers.md §1.1). The paper changes the scale through ``tau`` (``scaling = 1``),
and so do we; ``lazylab.lazy`` is used where the paper uses an explicit ``alpha`` (chizat-width,
chizat-rates).

Symmetrized init (paper Sec 3.1, ``test_vs_scale.jl``): draw the first ``m/2`` units, make their output
weights positive, then unit ``j + m/2`` copies ``b_j`` and takes ``-a_j``; ``h(w0) = 0`` exactly and all
``m`` units train. This is the paper's own construction inside one net (``lazy(..., center=
"symmetric")`` is the same idea as two separate copies, with an extra 1/sqrt(2)).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor

from lazylab.data.synthetic import sphere, teacher_two_layer
from lazylab.lab.experiments._common import loglog_slope  # noqa: F401  (its old home)
from lazylab.models import TwoLayerNet

__all__ = ["chizat_net", "teacher_data", "loglog_slope", "paper_lr", "cell_threads"]


@contextlib.contextmanager
def cell_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (``n <= 0``: leave the setting alone), then
    restore the previous number. These experiments' tensors are tiny (d <= 100, m <= 512): extra
    threads only add synchronisation, and on a busy 2-core machine 2 threads measured 10-25x slower
    than 1 (300 GD steps of the chizat-scale cell: 11-27 s vs 0.7-1.0 s)."""
    if n <= 0:
        yield
        return
    prev = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def teacher_data(
    d: int, m0: int, n_train: int, n_test: int, seed: int, *, signs: str = "random",
    output_scale: float = 1.0, dtype: torch.dtype = torch.float32,
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor], Tensor, Tensor]:
    """Inputs uniform on the unit sphere of R^d, labels from a ReLU teacher with ``m0`` unit-norm
    rows ``B`` and output weights ``a = +-1`` (times ``output_scale``).

    Returns ``((X, y), (X_test, y_test), B, a)``; X (n_train, d), y (n_train,). Same seed, same data.
    """
    for name, v in (("d", d), ("m0", m0), ("n_train", n_train), ("n_test", n_test)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    g = torch.Generator().manual_seed(1_000_003 * (int(seed) + 1))
    f, B, a = teacher_two_layer(d, m0, seed=g, signs=signs, output_scale=output_scale)
    X = sphere(n_train, d, seed=g, dtype=dtype)
    Xt = sphere(n_test, d, seed=g, dtype=dtype)
    return (X, f(X)), (Xt, f(Xt)), B, a


def chizat_net(d: int, m: int, tau: float, seed: int, *, symmetric: bool = True,
               positive_first: bool = True, init: str = "gaussian",
               dtype: torch.dtype = torch.float32) -> TwoLayerNet:
    """``f(x) = sum_j a_j relu(<b_j, x>)`` with weights ``tau * W_init`` (the same ``W_init`` for
    every ``tau`` at a given seed), symmetrized when ``symmetric`` (see module docstring;
    ``positive_first`` makes the first half's ``a_j >= 0`` as in ``test_vs_scale.jl``).

    ``init``: ``"gaussian"`` (every weight N(0, 1), ``test_vs_scale.jl``) or ``"unit"`` (rows ``b_j``
    uniform on the unit sphere, ``a_j ~ U[0, 1]``, ``illustration.jl``).
    Cost: O(m d). Raises ValueError for ``tau <= 0``, an odd ``m`` with ``symmetric`` or an unknown
    ``init``.
    """
    if init not in ("gaussian", "unit"):
        raise ValueError(f"init must be 'gaussian' or 'unit', got {init!r}")
    if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be a positive finite number, got {tau!r}")
    if symmetric and m % 2:
        raise ValueError(f"m must be even for the symmetrized init, got m={m}")
    with torch.random.fork_rng(devices=[]):  # seeded draw; the caller's global RNG is left as it was
        torch.manual_seed(int(seed))
        net = TwoLayerNet(d, m, activation="relu", scaling=1.0, input_scale=1.0, init_std=1.0).to(dtype)
    with torch.no_grad():
        if init == "unit":
            net.hidden.weight.div_(net.hidden.weight.norm(dim=1, keepdim=True))
            net.out.weight.uniform_(0.0, 1.0)
        if symmetric:
            h = m // 2
            net.hidden.weight[h:] = net.hidden.weight[:h]
            if positive_first:
                net.out.weight[:, :h] = net.out.weight[:, :h].abs()
            net.out.weight[:, h:] = -net.out.weight[:, :h]
        net.hidden.weight.mul_(tau)
        net.out.weight.mul_(tau)
    return net


def paper_lr(tau: float, c: float = 0.1, cap: float = 10.0) -> float:
    """The paper's GD step size ``min(cap, c / tau^2)`` (``test_vs_scale.jl``: c = 0.1, cap = 10)."""
    return float(min(cap, c / tau**2))
