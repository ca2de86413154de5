"""Matrix-free kernel machines: ridge regression and the gradient-flow predictor by Krylov methods.

The kernel is an operator, never a dense ``n x n`` tensor in RAM:

- :class:`StoredKernel`: a stored or memory-mapped kernel (a tensor, a numpy array, or the
  ``.npy`` file of ``lazylab.ntk(..., out=PATH)``), multiplied in row tiles read one at a time;
- :class:`NTKOperator`: NTK-vector products ``K v = J(x1) (J(x2)^T v)`` (one ``vjp`` over ``x2``
  and one ``jvp`` over ``x1``, in example batches) that never form the kernel.

Solvers (float64; formulas with the loss of :mod:`lazylab.kernel_methods`,
``L = (1/2n) sum ||f - y||^2``):

- :func:`kernel_regression_cg`: ``f(X*) = K(X*, X) (K + ridge I)^{-1} y`` by preconditioned conjugate
  gradients (``linear_operator.utils.linear_cg``, GPyTorch's solver) with a rank-``r`` Nyström or
  pivoted-Cholesky preconditioner;
- :func:`gradient_flow_krylov`: ``f_t = y - e^{-K t/n} r0`` and ``f*_t = f0* + K(X*, X) phi(K) r0``,
  ``phi(lam) = (1 - e^{-lam t/n}) / lam``, ``r0 = y - f0``, by Lanczos (``linear_operator.utils.
  lanczos_tridiag``, full reorthogonalisation) at finite ``t``, and by the CG solve above at
  ``t = inf``.

Both return ``(predictions, SolveInfo)`` with the iteration counts. Costs: one CG iteration or
Lanczos step is one kernel-vector product (``StoredKernel``: reads the ``n^2`` entries once;
``NTKOperator``: about ``3 (N1 + N2)`` forward passes) plus ``O(n r)`` for the preconditioner.

The pivoted Cholesky factor is computed here (Harbrecht et al. 2012, the greedy loop that
``linear_operator`` also uses): its version takes a ``LinearOperator`` and fetches pivot rows
through that library's indexing protocol, while these operators read a row directly (a file read,
or one ``lazylab.ntk(model, x[i:i+1], x)`` call).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["StoredKernel", "NTKOperator", "SolveInfo", "kernel_regression_cg",
           "gradient_flow_krylov", "nystrom_factor", "pivoted_cholesky_factor"]

TILE_BYTES = 256 << 20  # float64 bytes of one row tile read by StoredKernel.matmul
F64 = torch.float64


class StoredKernel:
    """A kernel ``(N1, N2)`` or ``(N1, N2, O, O)`` (flattened to ``(N1 O, N2 O)``) read in row tiles.

    ``kernel``: a tensor, numpy array / memmap, or the path of a ``.npy`` file (memory-mapped).
    ``matmul(V)``: ``K V`` for ``V (N2 O, k)``, reading ``tile`` kernel rows at a time (default:
    ``TILE_BYTES`` of float64), so RAM holds one tile. ``rows(idx)``, ``diagonal()``: exact reads.
    """

    def __init__(self, kernel: Tensor | np.ndarray | str | os.PathLike, tile: int | None = None):
        if isinstance(kernel, (str, os.PathLike)):
            kernel = np.load(kernel, mmap_mode="r")
        if not isinstance(kernel, (Tensor, np.ndarray)):
            raise TypeError(f"kernel must be a Tensor, numpy array or .npy path, got "
                            f"{type(kernel).__name__}")
        if kernel.ndim not in (2, 4) or (kernel.ndim == 4 and kernel.shape[2] != kernel.shape[3]):
            raise ValueError(f"kernel must be (N1, N2) or (N1, N2, O, O), got {tuple(kernel.shape)}")
        self.k, self.o = kernel, (kernel.shape[2] if kernel.ndim == 4 else 1)
        self.shape = (kernel.shape[0] * self.o, kernel.shape[1] * self.o)
        self.tile = tile or max(1, TILE_BYTES // (8 * self.o * self.shape[1]))
        self.matvecs = 0

    def _band(self, lo: int, hi: int) -> Tensor:
        """Kernel rows of examples ``lo:hi`` as float64 ``((hi - lo) O, N2 O)``."""
        b = self.k[lo:hi]
        b = torch.from_numpy(np.array(b, dtype=np.float64)) if isinstance(b, np.ndarray) else b.to(F64)
        if b.dim() == 4:
            b = b.permute(0, 2, 1, 3).reshape((hi - lo) * self.o, -1)
        return b

    def matmul(self, v: Tensor) -> Tensor:
        self.matvecs += v.shape[-1]
        n = self.k.shape[0]
        return torch.cat([self._band(i, min(i + self.tile, n)).to(v.device) @ v
                          for i in range(0, n, self.tile)])

    def rows(self, idx: Tensor) -> Tensor:
        ex, a = idx // self.o, idx % self.o
        return torch.stack([self._band(int(e), int(e) + 1)[int(j)] for e, j in zip(ex, a)]).cpu()

    def diagonal(self) -> Tensor:
        n = self.k.shape[0]
        out = []
        for i in range(0, n, self.tile):
            hi = min(i + self.tile, n)
            band = self._band(i, hi)
            cols = torch.arange(i * self.o, hi * self.o)
            out.append(band[torch.arange(len(cols)), cols])
        return torch.cat(out).cpu()


class NTKOperator:
    """Matrix-free empirical NTK ``K(x1, x2)``: ``matmul(V) = J(x1) J(x2)^T V``, never formed.

    ``output="trace"``: ``K = sum_a J_a J_a^T`` (``(N1, N2)``, ``V (N2, k)``); ``"full"``: the
    ``(N1 O, N2 O)`` kernel (``V (N2 O, k)``, index ``n O + a``). One product = a ``vjp`` over
    ``x2`` (``J^T V``, accumulated over batches of ``batch_size`` examples) then a ``jvp`` over
    ``x1`` (vmapped over the ``k`` columns); memory ``k P`` plus one batch of activations.
    ``rows(idx)`` calls ``lazylab.ntk(model, x1[i], x2)``; ``diagonal()`` per-example gradient norms.
    The model runs in eval mode in its own dtype (use float64 for tight solves) on its device;
    products, rows and the diagonal come back as float64 on the caller's (CPU) side.
    """

    def __init__(self, model: torch.nn.Module, x1: Tensor, x2: Tensor | None = None, *,
                 output: str = "trace", params: object = None, batch_size: int = 2048) -> None:
        from lazylab.ntk.problem import build_problem

        if output not in ("trace", "full"):
            raise ValueError(f"output must be 'trace' or 'full', got {output!r}")
        self.model, self.output, self.params_spec = model, output, params
        self.problem = build_problem(model, params)
        self.x1 = self.problem.prep_input(x1)
        self.x2 = self.x1 if x2 is None else self.problem.prep_input(x2)
        with torch.no_grad(), self.problem.eval_mode():
            self.o = self.problem.f(self.problem.params, self.x1[:1]).shape[1]
        oo = self.o if output == "full" else 1
        self.shape = (self.x1.shape[0] * oo, self.x2.shape[0] * oo)
        self.batch_size, self.matvecs = batch_size, 0

    def _cotangents(self, v: Tensor, lo: int, hi: int) -> Tensor:
        """Output cotangents ``(k, hi - lo, O)`` of batch ``lo:hi`` from ``V``'s columns."""
        dt, dev = self.problem.dtype, self.problem.device
        if self.output == "trace":
            return v[lo:hi].T.to(dev, dt)[:, :, None].expand(-1, -1, self.o)
        return v[lo * self.o:hi * self.o].T.to(dev, dt).reshape(v.shape[1], hi - lo, self.o)

    def matmul(self, v: Tensor) -> Tensor:
        from torch.func import jvp, vjp, vmap

        p, f, bs = self.problem.params, self.problem.f, self.batch_size
        self.matvecs += v.shape[1]
        with self.problem.eval_mode():
            g = None  # J(x2)^T V: dict name -> (k, *shape)
            for lo in range(0, self.x2.shape[0], bs):
                hi = min(lo + bs, self.x2.shape[0])
                _, vjp_fn = vjp(lambda q, xb=self.x2[lo:hi]: f(q, xb), p)
                (gb,) = vmap(vjp_fn)(self._cotangents(v, lo, hi))
                g = gb if g is None else {k: g[k] + gb[k] for k in g}
            out = []
            for lo in range(0, self.x1.shape[0], bs):
                xb = self.x1[lo:lo + bs]
                kv = vmap(lambda t, xb=xb: jvp(lambda q: f(q, xb), (p,), (t,))[1])(g)  # (k, b, O)
                out.append(kv.sum(-1) if self.output == "trace" else kv.reshape(kv.shape[0], -1))
        return torch.cat(out, 1).T.to(v.device, F64)

    def rows(self, idx: Tensor) -> Tensor:
        from lazylab.ntk import ntk

        oo = self.o if self.output == "full" else 1
        ex, a = idx // oo, idx % oo
        k = ntk(self.model, self.x1[ex], self.x2, output=self.output, params=self.params_spec,
                progress=False).to("cpu", F64)
        if self.output == "trace":
            return k
        return k[torch.arange(len(idx)), :, a, :].reshape(len(idx), -1)

    def diagonal(self) -> Tensor:
        from torch.func import jacrev, vmap

        pr, x = self.problem, self.x1
        psize = max(1, pr.n_params * self.o * 8)
        bs = max(1, min(self.batch_size, (64 << 20) // psize))
        out = []
        with pr.eval_mode():
            for lo in range(0, x.shape[0], bs):
                jac = vmap(jacrev(pr.f_single), in_dims=(None, 0))(pr.params, x[lo:lo + bs])
                sq = sum(j.reshape(j.shape[0], self.o, -1).to(F64).pow(2).sum(-1) for j in jac.values())
                out.append(sq.sum(1) if self.output == "trace" else sq.reshape(-1))
        return torch.cat(out).cpu()


@dataclass
class SolveInfo:
    """What a Krylov solve did: ``iterations`` (CG iterations, or Lanczos steps, largest over the
    right-hand sides), ``matvecs`` (kernel-vector products, columns counted), ``residual`` (final
    relative residual ``||b - A x|| / ||b||``, or Lanczos' relative change between its last two
    estimates), ``preconditioner`` and its ``rank``, and ``converged``."""

    method: str
    iterations: int
    matvecs: int
    residual: float
    preconditioner: str | None = None
    rank: int = 0
    converged: bool = True


def _as_operator(k: object, name: str) -> StoredKernel | NTKOperator:
    if isinstance(k, (StoredKernel, NTKOperator)):
        return k
    try:
        return StoredKernel(k)
    except TypeError:
        raise TypeError(f"{name} must be a StoredKernel, NTKOperator, Tensor, numpy array or .npy "
                        f"path, got {type(k).__name__}") from None


def _targets(op: object, y: Tensor, name: str = "y_train") -> tuple[Tensor, tuple[int, ...]]:
    """``y`` as float64 columns ``(n, c)``: ``(N,)``/``(N, O)`` for a trace kernel (``c = O``
    right-hand sides), ``(N, O)`` flattened to ``(N O, 1)`` for a full one."""
    if not isinstance(y, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(y).__name__}")
    n = op.shape[0]
    if y.dim() >= 1 and y.shape[0] == n:
        return y.reshape(n, -1).to(F64), tuple(y.shape)
    if y.numel() == n:
        return y.reshape(n, 1).to(F64), tuple(y.shape)
    raise ValueError(f"{name} of shape {tuple(y.shape)} does not match the kernel's {n} rows")


def pivoted_cholesky_factor(op: object, rank: int, tol: float = 1e-10) -> tuple[Tensor, Tensor]:
    """Greedy pivoted Cholesky ``K ~ L L^T``, ``L (n, r)``; returns ``(L, pivots)``.

    Step ``m``: pivot ``i = argmax d`` (``d`` = diagonal of ``K - L L^T``), read row ``K[i]``,
    ``L[:, m] = (K[i] - L L[i]^T) / sqrt(d_i)``, ``d -= L[:, m]^2``; stops at ``rank`` or when
    ``max d <= tol * max diag K``. Cost: ``r`` row reads, ``O(n r^2)``.
    """
    d = op.diagonal().to(F64).clone()
    n, d0 = d.shape[0], float(d.max())
    cols, piv = [], []
    for _ in range(min(rank, n)):
        i = int(torch.argmax(d))
        if d[i] <= tol * d0:
            break
        row = op.rows(torch.tensor([i]))[0].to(F64)
        if cols:
            lmat = torch.stack(cols, 1)
            row = row - lmat @ lmat[i]
        col = row / math.sqrt(float(d[i]))
        d = (d - col**2).clamp_min(0.0)
        d[i] = 0.0
        cols.append(col)
        piv.append(i)
    return torch.stack(cols, 1), torch.tensor(piv)


def nystrom_factor(op: object, rank: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Nyström ``K ~ C W^{-1} C^T = L L^T`` from ``rank`` uniformly drawn landmarks ``S``:
    ``C = K[:, S]`` (read as rows ``K[S]``, ``K`` symmetric), ``W = K[S, S]``, ``L = C R^{-1}`` with
    ``W + eps I = R^T R`` (``eps = 1e-10 tr(W) / r``). Cost: ``r`` rows, ``O(n r^2)``."""
    n = op.shape[0]
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(n, generator=g)[:min(rank, n)].sort().values
    c = op.rows(idx).to(F64).T
    w = c[idx]
    w = (w + w.T) / 2
    eye = torch.eye(len(idx), dtype=F64)
    r = torch.linalg.cholesky(w + 1e-10 * float(torch.trace(w)) / len(idx) * eye, upper=True)
    return torch.linalg.solve_triangular(r, c, upper=True, left=False), idx


def _preconditioner(op: object, kind: str | None, rank: int, ridge: float, seed: int):
    """``P^{-1}`` for ``K + ridge I`` from a low-rank ``L L^T = U diag(lam) U^T`` (Frangella,
    Tropp & Udell 2023): ``P^{-1} v = (lam_r + ridge) U (diag(lam) + ridge)^{-1} U^T v
    + (I - U U^T) v``, exact on ``range(U)`` and scaled to the tail elsewhere; works at
    ``ridge = 0``. Returns ``(closure or None, rank)``."""
    if kind is None or rank <= 0:
        return None, 0
    if kind == "nystrom":
        lmat, _ = nystrom_factor(op, rank, seed)
    elif kind == "pivoted_cholesky":
        lmat, _ = pivoted_cholesky_factor(op, rank)
    else:
        raise ValueError(f"preconditioner must be 'nystrom', 'pivoted_cholesky' or None, got {kind!r}")
    u, sv, _ = torch.linalg.svd(lmat, full_matrices=False)
    lam = sv**2
    keep = lam > 1e-12 * lam.max()
    u, lam = u[:, keep], lam[keep]
    scale = (lam[-1] + ridge) / (lam + ridge) - 1.0

    def apply(v: Tensor) -> Tensor:
        return v + u @ (scale[:, None] * (u.T @ v))

    return apply, int(lam.numel())


def _pcg(op: object, b: Tensor, ridge: float, tol: float, max_iter: int,
         preconditioner: str | None, rank: int, seed: int) -> tuple[Tensor, SolveInfo]:
    """``(K + ridge I)^{-1} b`` by ``linear_operator.utils.linear_cg`` (preconditioned CG)."""
    from linear_operator.utils import linear_cg

    pre, r = _preconditioner(op, preconditioner, rank, ridge, seed)
    calls = [0]
    m0 = op.matvecs

    def mat(v: Tensor) -> Tensor:
        calls[0] += 1
        return op.matmul(v) + ridge * v

    x = linear_cg(mat, b, tolerance=tol, max_iter=max_iter, stop_updating_after=tol * 1e-3,
                  preconditioner=pre, eps=1e-300, max_tridiag_iter=0)
    res = float(((b - mat(x)).norm(dim=0) / b.norm(dim=0).clamp_min(1e-300)).max())
    calls[0] -= 1  # the residual check above
    info = SolveInfo("pcg", calls[0] - 1, op.matvecs - m0 - b.shape[1], res, preconditioner, r,
                     res <= 10 * tol)
    return x, info


def _check_solver_args(op: object, ridge: float, tol: float, max_iter: int) -> None:
    if op.shape[0] != op.shape[1]:
        raise ValueError(f"K_train must be square, got {op.shape}")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    if not 0 < tol < 1:
        raise ValueError(f"tol must be in (0, 1), got {tol}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")


def _predict(k_test: object, coef: Tensor, n_train: int, shape: tuple[int, ...]) -> Tensor:
    kt = _as_operator(k_test, "K_test_train")
    if kt.shape[1] != n_train:
        raise ValueError(f"K_test_train has {kt.shape[1]} columns, K_train {n_train} rows")
    return kt.matmul(coef).reshape(-1, *shape[1:])


def kernel_regression_cg(K_train: object, y_train: Tensor, K_test_train: object | None = None, *,
                         ridge: float = 0.0, tol: float = 1e-10, max_iter: int = 1000,
                         preconditioner: str | None = "auto", rank: int = 100, seed: int = 0
                         ) -> tuple[Tensor, SolveInfo]:
    """Kernel (ridge) regression ``f(X*) = K(X*, X) (K + ridge I)^{-1} y`` by preconditioned CG.

    Args:
        K_train: ``(n, n)`` kernel as :class:`StoredKernel`, :class:`NTKOperator`, a tensor, numpy
            array / memmap or ``.npy`` path (read in tiles). y_train: ``(n,)`` or ``(n, O)``.
        K_test_train: ``K(X*, X)`` in the same forms (e.g. ``NTKOperator(model, x_test, x_train)``);
            None predicts on the training points.
        ridge: ``>= 0``; at 0 the system must be consistent (``K`` positive definite, or ``y`` in
            its range: CG from 0 then converges to the minimum-norm solution).
        tol: relative residual ``||y - (K + ridge I) a|| / ||y||`` at which CG stops.
        preconditioner: ``"nystrom"``, ``"pivoted_cholesky"``, None, or ``"auto"`` (pivoted
            Cholesky for stored kernels, whose rows are cheap reads; Nyström for NTK operators,
            whose ``rank`` rows come from one ``lazylab.ntk`` call). rank: its rank ``r``.

    Cost: ``iterations`` kernel products plus ``O(n r^2)``. Returns ``(predictions, SolveInfo)``;
    predictions have ``y_train``'s trailing shape, float64.
    """
    op = _as_operator(K_train, "K_train")
    _check_solver_args(op, ridge, tol, max_iter)
    y, shape = _targets(op, y_train)
    if preconditioner == "auto":
        preconditioner = "nystrom" if isinstance(op, NTKOperator) else "pivoted_cholesky"
    coef, info = _pcg(op, y, ridge, tol, max_iter, preconditioner, rank, seed)
    if K_test_train is None:
        return op.matmul(coef).reshape(-1, *shape[1:]), info
    return _predict(K_test_train, coef, op.shape[0], shape), info


def _lanczos_apply(op: object, r0: Tensor, fns: list, scale: float, m: int
                   ) -> tuple[list[Tensor], int, float]:
    """``[g(K) r0 for g in fns]`` from ``m`` Lanczos steps on ``K / scale`` started at ``r0``:
    ``g(K) r0 ~ ||r0|| Q g(T) e1``; also the step count and the relative change of the first
    estimate between ``3m/4`` and ``m`` steps (the convergence check)."""
    from linear_operator.utils.lanczos import lanczos_tridiag

    beta = float(r0.norm())
    if beta == 0.0:
        return [torch.zeros_like(r0) for _ in fns], 0, 0.0
    q, t = lanczos_tridiag(lambda v: op.matmul(v) / scale, max_iter=m, dtype=F64,
                           device=r0.device, matrix_shape=(op.shape[0], op.shape[0]),
                           init_vecs=r0[:, None], tol=1e-10)
    steps = t.shape[-1]

    def est(g, k: int) -> Tensor:
        theta, s = torch.linalg.eigh(t[:k, :k])
        return beta * q[:, :k] @ (s @ (g(theta.clamp_min(0.0) * scale) * s[0]))

    outs = [est(g, steps) for g in fns]
    if steps < m:  # Lanczos stopped early: an invariant subspace, the estimates are exact
        return outs, steps, 0.0
    k2 = max(1, (3 * steps) // 4)
    change = max(float((o - est(g, k2)).norm() / o.norm().clamp_min(1e-300))
                 for g, o in zip(fns, outs))
    return outs, steps, change



def _n_examples(op: object) -> int:
    if isinstance(op, NTKOperator):
        return op.x1.shape[0]
    return op.k.shape[0]


def _phi(x: Tensor) -> Tensor:
    """``(1 - e^{-x}) / x``, continued by 1 at ``x = 0`` (``-expm1(-x) / x``, no cancellation)."""
    safe = torch.where(x > 1e-300, x, torch.ones_like(x))
    return torch.where(x > 1e-300, -torch.expm1(-safe) / safe, torch.ones_like(x))


def gradient_flow_krylov(K_train: object, y_train: Tensor, t: float, K_test_train: object | None = None,
                         *, f0: Tensor | None = None, f0_test: Tensor | None = None,
                         tol: float = 1e-8, max_iter: int = 1000, start: int = 32,
                         preconditioner: str | None = "auto", rank: int = 100, seed: int = 0
                         ) -> tuple[Tensor, Tensor | None, SolveInfo]:
    """Gradient-flow outputs of the linearized model on the MSE loss at time ``t``, matrix-free.

    ``f_t = y - e^{-K t/n} r0`` on the training points and ``f*_t = f0* + K(X*, X) phi(K) r0``,
    ``phi(lam) = (1 - e^{-lam t/n}) / lam`` (``= t/n`` at ``lam = 0``), ``r0 = y - f0``, ``n`` =
    number of training examples (same as :func:`lazylab.kernel_methods.gradient_flow`).

    Finite ``t``: per column of ``r0``, ``m`` Lanczos steps (``m = start, 2 start, ...`` up to
    ``max_iter``) give ``g(K) r0 ~ ||r0|| Q_m g(T_m) e1`` for ``g = e^{-lam t/n}`` and ``phi``;
    accepted when the estimates from ``3m/4`` and ``m`` steps differ by ``<= tol`` (relative).
    Converges fast for moderate ``t lam_max / n`` (``phi`` and ``exp`` are smooth on the spectrum);
    as ``t -> inf`` ``phi -> 1/lam`` and the step count approaches that of unpreconditioned CG.
    ``t = inf``: the minimum-norm interpolant by preconditioned CG (:func:`kernel_regression_cg`,
    ``ridge = 0``). Cost: ``m`` kernel products per column (Lanczos restarts at most double it),
    ``O(n m)`` memory for the Lanczos basis, plus one ``K(X*, X)`` product.

    Returns ``(train outputs, test outputs or None, SolveInfo)``, shaped like ``y_train``.
    """
    op = _as_operator(K_train, "K_train")
    _check_solver_args(op, 0.0, tol, max_iter)
    if t is None or not t >= 0:
        raise ValueError(f"t must be >= 0 (or math.inf), got {t}")
    y, shape = _targets(op, y_train)
    f0v = torch.zeros_like(y) if f0 is None else _targets(op, f0, "f0")[0]
    r0 = y - f0v
    if math.isinf(t):
        if preconditioner == "auto":
            preconditioner = "nystrom" if isinstance(op, NTKOperator) else "pivoted_cholesky"
        coef, info = _pcg(op, r0, 0.0, tol, max_iter, preconditioner, rank, seed)
        train = f0v + op.matmul(coef)
    else:
        tau = t / _n_examples(op)
        m0 = op.matvecs
        probe = r0[:, :1] / r0[:, :1].norm().clamp_min(1e-300)
        scale = float(op.matmul(probe).norm()) or 1.0  # ~ lam_max: keeps Lanczos' thresholds meaningful
        gain, decay = (lambda lam: tau * _phi(lam * tau)), (lambda lam: torch.exp(-lam * tau))
        cols, steps, change = [], 0, 0.0
        for c in range(r0.shape[1]):
            m = min(start, max_iter)
            while True:
                (gc, dc), s_c, ch = _lanczos_apply(op, r0[:, c], [gain, decay], scale, m)
                if ch <= tol or m >= max_iter or s_c < m:
                    break
                m = min(2 * m, max_iter)
            cols.append((gc, dc))
            steps, change = max(steps, s_c), max(change, ch)
        coef = torch.stack([g for g, _ in cols], 1)
        train = y - torch.stack([d for _, d in cols], 1)
        info = SolveInfo("lanczos", steps, op.matvecs - m0, change, None, 0, change <= tol)
    train = train.reshape(shape)
    if K_test_train is None:
        return train, None, info
    test = _predict(K_test_train, coef, op.shape[0], shape)
    if f0_test is not None:
        test = test + f0_test.reshape(test.shape).to(F64)
    return train, test, info
