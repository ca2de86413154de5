"""Tangent space of the CP model at (c, U) and exact least squares in it (the lazy / NTK fit).

The Jacobian J of ``(c, U) -> sum_i c_i u_i^{(x)l}`` maps R^{m(d+1)} to Sym^l(R^d); its columns are
``u_i^{(x)l}`` (for c_i) and ``l c_i sym(u_i^{(x)(l-1)} (x) e_a)`` (for u_ia). Their span (dimension
<= m d, since u_i^{(x)l} = sym(u_i^{(x)(l-1)} (x) u_i)) is the tangent space; it does not depend on
the parametrization (standard or 2-homogeneous) as long as every c_i != 0.

With g_ij = <u_i, u_j>, the Gram matrix G = J^T J has the closed form (from
<sym(u^{l-1} a), sym(v^{l-1} b)> = ((l-1) <u,v>^{l-2} <a,v><u,b> + <u,v>^{l-1} <a,b>) / l):

    G[c_i, c_j]   = g_ij^l
    G[c_i, u_jb]  = l c_j g_ij^{l-1} u_ib
    G[u_ia, u_jb] = l c_i c_j ((l-1) g_ij^{l-2} u_ja u_ib + g_ij^{l-1} delta_ab)

and for a CP target Y = sum_k y_k v_k^{(x)l}, ``J^T Y`` is
``[sum_k y_k <u_i,v_k>^l ;  l c_i sum_k y_k <u_i,v_k>^{l-1} v_k]``.
The least-squares residual is ``min_delta ||Y - J delta||^2 = ||Y||^2 - b^T G^+ b`` (b = J^T Y).
Dense Gram: memory O(m^2 d^2), eigendecomposition O(m^3 d^3). The matrix-free product G @ delta
costs O(m^2 d) and drives conjugate gradients for large m d.
"""

from __future__ import annotations

import torch

from lazylab.tensor.symmetric import SymCP

__all__ = ["tangent_gram", "tangent_rhs", "tangent_matvec", "tangent_lstsq", "tangent_residual"]


def _check(cp: SymCP) -> None:
    if not isinstance(cp, SymCP):
        raise TypeError(f"expected a SymCP, got {type(cp).__name__}")


def tangent_gram(point: SymCP) -> torch.Tensor:
    """Dense Gram ``J^T J`` at ``point`` = (c, U), shape (m(d+1), m(d+1)), ordered [c ; vec(U)]."""
    _check(point)
    c, u, lo = point.coefs, point.vectors, point.order
    m, d = u.shape
    g = u @ u.T
    gcc = g.pow(lo)
    gcu = (lo * c[None, :, None] * g.pow(lo - 1)[:, :, None] * u[:, None, :]).reshape(m, m * d)
    cc = lo * c[:, None] * c[None, :]
    # term1[(i,a),(j,b)] = (l-1) g_ij^{l-2} u_ja u_ib
    t1 = (lo - 1) * g.pow(lo - 2)[:, None, :, None] * u.T[None, :, :, None] * u[:, None, None, :]
    eye = torch.eye(d, dtype=u.dtype, device=u.device)
    t2 = g.pow(lo - 1)[:, None, :, None] * eye[None, :, None, :]
    guu = (cc[:, None, :, None] * (t1 + t2)).reshape(m * d, m * d)
    top = torch.cat([gcc, gcu], dim=1)
    bottom = torch.cat([gcu.T, guu], dim=1)
    return torch.cat([top, bottom], dim=0)


def tangent_rhs(point: SymCP, target: SymCP) -> torch.Tensor:
    """``J^T Y`` for a CP tensor Y, shape (m(d+1),). Cost O(m n d)."""
    _check(point)
    _check(target)
    c, u, lo = point.coefs, point.vectors, point.order
    h = u @ target.vectors.T                             # (m, n)
    bc = h.pow(lo) @ target.coefs
    bu = lo * c[:, None] * ((h.pow(lo - 1) * target.coefs[None, :]) @ target.vectors)
    return torch.cat([bc, bu.reshape(-1)])


def tangent_matvec(point: SymCP, delta: torch.Tensor) -> torch.Tensor:
    """``G @ delta`` without forming G: cost O(m^2 d). delta: (m(d+1),) ordered [dc ; vec(dU)]."""
    c, u, lo = point.coefs, point.vectors, point.order
    m, d = u.shape
    dc, du = delta[:m], delta[m:].reshape(m, d)
    g = u @ u.T
    gl1 = g.pow(lo - 1)
    h = u @ du.T                                         # h_ij = <u_i, du_j>
    out_c = g.pow(lo) @ dc + lo * (gl1 * h) @ c
    # out_u[i,a] = l c_i sum_j [ g^{l-1}_ij u_ja dc_j + c_j ((l-1) g^{l-2}_ij h_ij u_ja
    #                                                     + g^{l-1}_ij du_ja) ]
    w = gl1 * dc[None, :] + c[None, :] * (lo - 1) * g.pow(lo - 2) * h
    out_u = lo * c[:, None] * (w @ u + (gl1 * c[None, :]) @ du)
    return torch.cat([out_c, out_u.reshape(-1)])


def _cg(point: SymCP, b: torch.Tensor, tol: float, maxiter: int) -> tuple[torch.Tensor, int, float]:
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = r @ r
    bnorm = b.norm().clamp_min(1e-300)
    it = 0
    for it in range(1, maxiter + 1):  # noqa: B007
        gp = tangent_matvec(point, p)
        alpha = rs / (p @ gp)
        x = x + alpha * p
        r = r - alpha * gp
        rs_new = r @ r
        if rs_new.sqrt() <= tol * bnorm:
            rs = rs_new
            break
        p = r + (rs_new / rs) * p
        rs = rs_new
    return x, it, float(rs.sqrt() / bnorm)


def tangent_lstsq(point: SymCP, target: SymCP, *, solver: str = "auto", rcond: float = 1e-10,
                  tol: float = 1e-10, maxiter: int = 5000, dense_max: int = 4000) -> dict:
    """Exact least squares ``min_delta ||Y - J delta||_F^2`` in the tangent space at ``point``.

    solver: ``"dense"`` (eigendecomposition of G, eigenvalues below ``rcond * lambda_max`` dropped:
    G is rank-deficient, rank <= m d), ``"cg"`` (conjugate gradients on G delta = J^T Y,
    matrix-free, relative tolerance ``tol``) or ``"auto"`` (dense when m(d+1) <= dense_max).
    Returns dict: residual_sq (= ||Y - J delta||^2), rel_residual (divided by ||Y||^2), delta, rank
    (dense only), solver, iterations and cg_rel_residual (cg only). Use float64.
    """
    _check(point)
    _check(target)
    if target.order != point.order or target.d != point.d:
        raise ValueError("target and point must have the same order and d")
    if solver not in ("auto", "dense", "cg"):
        raise ValueError(f"solver must be 'auto', 'dense' or 'cg', got {solver!r}")
    n = point.rank * (point.d + 1)
    if solver == "auto":
        solver = "dense" if n <= dense_max else "cg"
    b = tangent_rhs(point, target)
    yy = target.norm_sq()
    out: dict = {"solver": solver}
    if solver == "dense":
        evals, evecs = torch.linalg.eigh(tangent_gram(point))
        keep = evals > rcond * evals.max().clamp_min(0)
        coef = (evecs[:, keep].T @ b) / evals[keep]
        delta = evecs[:, keep] @ coef
        out["rank"] = int(keep.sum())
    else:
        delta, it, rel = _cg(point, b, tol, maxiter)
        out["iterations"], out["cg_rel_residual"] = it, rel
    res = yy - 2 * (delta @ b) + delta @ tangent_matvec(point, delta)
    out.update(residual_sq=float(res), rel_residual=float(res / yy), delta=delta)
    return out


def tangent_residual(point: SymCP, target: SymCP, **kw) -> float:
    """Relative residual ``min_delta ||Y - J delta||^2 / ||Y||^2`` (see ``tangent_lstsq``)."""
    return tangent_lstsq(point, target, **kw)["rel_residual"]
