"""Kernel methods on a (tangent) kernel: ridge regression, the MSE gradient-flow / gradient-descent
predictor in closed form, and the largest stable learning rate.

Loss normalisation throughout (same as ``lazylab.train``'s ``"mse"``):
``L(f) = (1 / 2n) sum_i ||f(x_i) - y_i||^2`` over the ``n`` training points. For a model that is
linear in its parameters with tangent kernel ``K``, gradient flow ``d theta/dt = -grad L`` moves the
training outputs as ``df/dt = -(1/n) K (f - y)`` and GD with step ``lr`` as
``f_{k+1} = f_k - (lr/n) K (f_k - y)``.

Kernels: ``(n, n)`` (shared across output columns of ``y``), or a full multi-output kernel
``(n, n, O, O)`` from ``lazylab.ntk(..., output="full")``, flattened to ``(nO, nO)`` internally.
All solves run in float64; results come back in ``y``'s dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["kernel_regression", "gradient_flow", "max_stable_lr", "solve_psd"]


def _flat(k: Tensor, name: str, n: int | None = None) -> Tensor:
    if not isinstance(k, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(k).__name__}")
    if k.dim() == 4:
        a, b, o, o2 = k.shape
        if o != o2:
            raise ValueError(f"{name}: a full kernel must be (N1, N2, O, O), got {tuple(k.shape)}")
        k = k.permute(0, 2, 1, 3).reshape(a * o, b * o)
    elif k.dim() != 2:
        raise ValueError(f"{name} must be (N1, N2) or (N1, N2, O, O), got {tuple(k.shape)}")
    if not bool(torch.isfinite(k).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return k.to(torch.float64)


def _targets(k: Tensor, y: Tensor, full: bool) -> tuple[Tensor, tuple[int, ...]]:
    if not isinstance(y, Tensor):
        raise TypeError(f"y_train must be a torch.Tensor, got {type(y).__name__}")
    shape = tuple(y.shape)
    if full:
        y2 = y.reshape(-1, 1)
    else:
        y2 = y.unsqueeze(1) if y.dim() == 1 else y.reshape(y.shape[0], -1)
    if y2.shape[0] != k.shape[0]:
        raise ValueError(f"y_train has {shape[0]} rows (shape {shape}) but K_train is "
                         f"{tuple(k.shape)}")
    return y2.to(torch.float64), shape


def _check_square(k: Tensor) -> None:
    if k.shape[0] != k.shape[1]:
        raise ValueError(f"K_train must be square, got {tuple(k.shape)}")


def solve_psd(k: Tensor, y: Tensor, ridge: float = 0.0, max_tries: int = 6) -> Tensor:
    """Solve ``(K + ridge I) a = y`` for a PSD ``K`` (float64).

    Cholesky first; on failure add jitter ``eps * mean(diag K)`` for ``eps = 1e-12, 1e-10, ...``;
    if still not positive definite, an ``eigh`` pseudo-inverse dropping eigenvalues below
    ``n * eps64 * lambda_max``. Cost ``O(n^3)``.
    """
    k = k.to(torch.float64)
    n = k.shape[0]
    eye = torch.eye(n, dtype=k.dtype, device=k.device)
    a = k + ridge * eye
    scale = float(torch.diagonal(k).abs().mean().clamp_min(1e-300))
    for i in range(max_tries):
        jitter = 0.0 if i == 0 else scale * 10.0 ** (-14 + 2 * i)
        chol, info = torch.linalg.cholesky_ex(a + jitter * eye)
        if int(info) == 0:
            return torch.cholesky_solve(y, chol)
    lam, v = torch.linalg.eigh(a)
    cut = n * torch.finfo(torch.float64).eps * lam.abs().max()
    inv = torch.where(lam > cut, 1.0 / lam, torch.zeros_like(lam))
    return v @ (inv[:, None] * (v.T @ y))


def kernel_regression(K_train: Tensor, y_train: Tensor, K_test_train: Tensor | None = None, *,
                      ridge: float = 0.0) -> Tensor:
    """Kernel (ridge) regression ``f(X*) = K(X*, X) (K(X, X) + ridge I)^{-1} y``.

    ``ridge = 0`` is the minimum-norm interpolant (the t -> infinity limit of :func:`gradient_flow`
    from ``f0 = 0``). Returns predictions on the test points (shape of ``y_train`` with ``N*``
    rows), or on the training points when ``K_test_train`` is None.
    """
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    full = K_train.dim() == 4
    k = _flat(K_train, "K_train")
    _check_square(k)
    y, shape = _targets(k, y_train, full)
    coef = solve_psd(k, y, ridge)
    ks = k if K_test_train is None else _flat(K_test_train, "K_test_train")
    if ks.shape[1] != k.shape[0]:
        raise ValueError(f"K_test_train has {ks.shape[1]} columns, K_train {k.shape[0]} rows")
    pred = ks @ coef
    n_out = (K_train.shape[0] if K_test_train is None else K_test_train.shape[0])
    return pred.reshape(n_out, *shape[1:]).to(y_train.dtype if y_train.is_floating_point()
                                                 else torch.float64)


def gradient_flow(
    K_train: Tensor,
    y_train: Tensor,
    t: float,
    K_test_train: Tensor | None = None,
    *,
    lr: float | None = None,
    steps: int | None = None,
    f0: Tensor | None = None,
    f0_test: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Outputs of the linear(ized) model trained on the MSE loss, in closed form.

    With ``K = V diag(lam) V^T`` and residual ``r0 = y - f0``:

    - gradient flow for time ``t``: ``f_t = y - V e^{-lam t/n} V^T r0``,
      ``f*_t = f0* + K(X*, X) V diag((1 - e^{-lam t/n}) / lam) V^T r0``;
    - gradient descent (``lr`` and ``steps`` given; ``t`` ignored): ``e^{-lam t/n}`` becomes
      ``(1 - lr lam / n)^steps`` (exact for a model linear in its parameters).

    ``(1 - e^{-lam t/n}) / lam`` is continued by ``t/n`` (resp. ``steps lr / n``) at ``lam = 0``
    (``lam <= 1e-13 lam_max``). ``t = inf`` gives the limit, also for a singular ``K``: the
    minimum-norm solution ``f* = f0* + K(X*, X) K^+ r0`` (pseudo-inverse: the null-space
    directions of ``K`` get gain 0), training outputs ``y - P_null r0``.
    ``f0`` / ``f0_test``: initial outputs (default 0, e.g. a centered model). Cost: one ``eigh``
    ``O(n^3)`` plus ``O(N* n)``.

    Returns:
        ``(train outputs, test outputs or None)``, shaped like ``y_train`` (test: ``N*`` rows).
    """
    full = K_train.dim() == 4
    k = _flat(K_train, "K_train")
    _check_square(k)
    y, shape = _targets(k, y_train, full)
    n = K_train.shape[0]
    if (lr is None) != (steps is None):
        raise ValueError("give both lr and steps (gradient descent) or neither (gradient flow)")
    if lr is None and (t is None or t < 0):
        raise ValueError(f"t must be >= 0, got {t}")
    if steps is not None and (not isinstance(steps, int) or steps < 0):
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    f0v = torch.zeros_like(y) if f0 is None else _targets(k, f0, full)[0]
    lam, v = torch.linalg.eigh(k)
    lam = lam.clamp_min(0.0)
    tiny = lam <= lam.max() * 1e-13
    if lr is None and t == float("inf"):
        # the limit: decay 0 on the range of K, 1 on its null space (those directions never
        # move), and the minimum-norm gain K^+ (0 on the null space, not t/n = inf)
        decay = tiny.to(lam.dtype)
        small = 0.0
    elif lr is None:
        decay = torch.exp(-lam * t / n)
        small = t / n
    else:
        decay = (1.0 - lr * lam / n) ** steps
        small = steps * lr / n
    gain = torch.where(tiny, torch.full_like(lam, small), (1 - decay) / torch.where(tiny, 1.0, lam))
    r0 = v.T @ (y - f0v)
    train = y - v @ (decay[:, None] * r0)
    out_dtype = y_train.dtype if y_train.is_floating_point() else torch.float64
    train = train.reshape(shape).to(out_dtype)
    if K_test_train is None:
        return train, None
    ks = _flat(K_test_train, "K_test_train")
    if ks.shape[1] != k.shape[0]:
        raise ValueError(f"K_test_train has {ks.shape[1]} columns, K_train {k.shape[0]} rows")
    m = K_test_train.shape[0]
    test = ks @ (v @ (gain[:, None] * r0))
    if f0_test is not None:
        test = test + f0_test.reshape(test.shape).to(torch.float64)
    return train, test.reshape(m, *shape[1:]).to(out_dtype)


def max_stable_lr(K: Tensor, n: int | None = None) -> float:
    """Largest stable GD step for the MSE loss ``(1/2n) sum ||f - y||^2``: ``2 n / lam_max(K)``.

    GD on the linearized model multiplies the residual by ``I - (lr/n) K`` each step; it converges
    iff ``lr < 2 n / lam_max(K)``. ``n`` defaults to the number of training points ``K.shape[0]``
    (pass ``n=1`` for a summed loss ``(1/2) sum ||f - y||^2``).
    """
    k = _flat(K, "K")
    _check_square(k)
    n = K.shape[0] if n is None else n
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    lam_max = float(torch.linalg.eigvalsh(k)[-1])
    if lam_max <= 0:
        raise ValueError("K has no positive eigenvalue: every learning rate is stable")
    return 2.0 * n / lam_max
