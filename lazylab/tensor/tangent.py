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
The dense solver works on ``J`` itself in isometric coordinates of Sym^l (one per multiset of
indices, weighted by the square root of its multiplicity): memory O(dim Sym^l m d), SVD
O(dim Sym^l (m d)^2). The matrix-free product G @ delta
costs O(m^2 d) and drives conjugate gradients for large m d.
"""

from __future__ import annotations

import itertools
import math

import torch

from lazylab.tensor.symmetric import SymCP

__all__ = ["tangent_gram", "tangent_rhs", "tangent_matvec", "tangent_lstsq", "tangent_residual",
           "tangent_jacobian", "sym_coords"]

#: the dense solver forms J (dim Sym^l x m(d+1)) up to this many entries, else it uses G = J^T J
J_MAX_ENTRIES = 50_000_000


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


def _multisets(d: int, order: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted index multisets ``(D, l)`` of Sym^l(R^d) and their weights ``sqrt(l! / prod k_a!)``."""
    idx = torch.tensor(list(itertools.combinations_with_replacement(range(d), order)),
                       dtype=torch.long, device=device).reshape(-1, order)
    counts = torch.stack([(idx == a).sum(1) for a in range(d)], 1)
    logw = math.lgamma(order + 1) - torch.lgamma(counts.double() + 1).sum(1)
    return idx, torch.exp(0.5 * logw)


def sym_coords(t: SymCP) -> torch.Tensor:
    """Isometric coordinates of a symmetric tensor: ``sqrt(mult(a)) T_a`` over the multisets ``a``.

    ``mult(a) = l! / prod_k count_k(a)!`` entries of the ``d^l`` array equal ``T_a``, so the
    Euclidean inner product of these ``D = dim Sym^l`` coordinates is the Frobenius one.
    """
    _check(t)
    idx, w = _multisets(t.d, t.order, t.vectors.device)
    return w.to(t.vectors.dtype) * (t.vectors[:, idx].prod(-1).T @ t.coefs)


def tangent_jacobian(point: SymCP) -> torch.Tensor:
    """``J`` in the coordinates of :func:`sym_coords`: ``(D, m(d+1))``, columns ``[c ; vec(U)]``.

    Column ``c_i``: ``u_i^{(x)l}``; column ``u_ia`` at multiset ``a``:
    ``c_i sum_j [a_j = a] prod_{j' != j} u_i[a_j']``. Memory ``D m (d+1)``, cost ``O(D m d l)``.
    """
    _check(point)
    c, u, lo = point.coefs, point.vectors, point.order
    m, d = u.shape
    idx, w = _multisets(d, lo, u.device)
    w = w.to(u.dtype)
    fac = u[:, idx]                                       # (m, D, l)
    jc = fac.prod(-1)                                     # (m, D)
    ju = torch.zeros(m, idx.shape[0], d, dtype=u.dtype, device=u.device)
    for j in range(lo):                                   # leave-one-out products, no division
        rest = torch.cat([fac[..., :j], fac[..., j + 1:]], -1).prod(-1)
        ju.scatter_add_(2, idx[None, :, j:j + 1].expand(m, -1, 1), rest[..., None])
    ju = ju * c[:, None, None]
    return w[:, None] * torch.cat([jc.T, ju.permute(1, 0, 2).reshape(-1, m * d)], 1)


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

    solver: ``"dense"``, ``"cg"`` (conjugate gradients on ``G delta = J^T Y``, matrix-free,
    relative tolerance ``tol``) or ``"auto"`` (dense when ``m(d+1) <= dense_max``).

    Dense: SVD of ``J`` itself (:func:`tangent_jacobian`, ``D x m(d+1)``, ``D = dim Sym^l``),
    singular values below ``rcond * s_max`` dropped (``J`` is rank-deficient, rank <= m d):
    ``delta = V_k S_k^{-1} U_k^T y``. The cut acts on the singular values of ``J`` as ``rcond``
    says; applying it to the eigenvalues of ``G = J^T J`` (as before) cut at ``sqrt(rcond) s_max``
    (~1e-5) and dropped genuine directions. Above ``J_MAX_ENTRIES`` entries it falls back to the
    eigendecomposition of ``G``, keeping eigenvalues above ``max(rcond^2, n eps) lam_max`` (the
    eigenvalues of ``G`` are only resolved to ``n eps lam_max``).
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
    yy = target.norm_sq()
    out: dict = {"solver": solver}
    if solver == "dense" and n * math.comb(point.d + point.order - 1, point.order) <= J_MAX_ENTRIES:
        jac, y = tangent_jacobian(point), sym_coords(target)
        uu, sv, vh = torch.linalg.svd(jac, full_matrices=False)
        keep = sv > rcond * sv.max()
        delta = vh[keep].T @ ((uu[:, keep].T @ y) / sv[keep])
        r = y - jac @ delta
        out.update(rank=int(keep.sum()), residual_sq=float(r @ r), rel_residual=float(r @ r / yy),
                   delta=delta)
        return out
    b = tangent_rhs(point, target)
    if solver == "dense":
        evals, evecs = torch.linalg.eigh(tangent_gram(point))
        cut = max(rcond ** 2, n * torch.finfo(evals.dtype).eps)
        keep = evals > cut * evals.max().clamp_min(0)
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
