"""Exact population risks of RF / NT / NN two-layer nets with quadratic activation on quadratic targets
(Ghorbani, Mei, Misiakiewicz & Montanari 2019, "Limitations of lazy training of two-layers neural
networks"), and the Bayes error of their Gaussian-mixture model.

Setting. ``x ~ N(0, I_d)``, target ``f*(x) = x^T B x + b0`` (default ``b0 = -tr B``, mean 0), B symmetric.
Two-layer nets ``f(x) = c + sum_{i<=N} a_i <w_i, x>^2`` (the ``1/sqrt(d)`` input scale and any output
scale are absorbed in ``w_i`` and ``a_i``) are quadratic forms ``c + x^T Q x``, so the classes are:

* RF (first layer frozen at ``W``):   ``Q in span{w_i w_i^T}``;
* NT (linearization at ``(a0, W)``, all ``a0_i != 0``): ``Q = sum_i a_i w_i w_i^T + sym(W^T S)`` =
  every symmetric Q with ``P_perp Q P_perp = 0``, ``P`` the projector on ``span(w_1..w_N)``;
* NN (everything trained): every symmetric Q with ``rank Q <= N``.

Inclusions: RF(N) ⊂ NT(N) ⊂ NN(2N) (``sym(W^T S)`` has rank <= 2N); NT(N) is not inside NN(N).

Two Gaussian moments give everything: for symmetric A, ``E x^T A x = tr A`` and
``Var(x^T A x) = 2 ||A||_F^2``. For ``f(x) = c + b^T x + x^T Q x``::

    E (f*(x) - f(x))^2 = 2 ||B - Q||_F^2 + ||b||^2 + (tr B + b0 - tr Q - c)^2          (risk_of_quadratic)

and with the best constant c the risk of a class is ``2 min_Q ||B - Q||_F^2`` (least squares in the
space of quadratic forms, Frobenius geometry). Hence, exactly at finite d (``Var(f*) = 2 ||B||_F^2``):

* ``R_RF = 2 (||B||_F^2 - r^T G^+ r)``, ``G_ij = <w_i, w_j>^2``, ``r_i = w_i^T B w_i``  (normal equations);
* ``R_NT = 2 ||P_perp B P_perp||_F^2``;
* ``R_NN = 2 sum_{i>N} lambda_(i)(B)^2`` (eigenvalues sorted by ``|lambda|``; Eckart-Young).

Asymptotics (``N/d -> rho``, W with iid Gaussian entries; ``B_0 = B - (tr B/d) I``)::

    R_RF -> 2 ||B_0||_F^2 + 2 (tr B)^2 / (d (1 + rho))
    R_NT -> 2 (1-rho)_+^2 ||B_0||_F^2 + 2 (1-rho)_+ (tr B)^2 / d

Provenance: these are our derivations ([D]) in docs/papers.md §2.3 (the paper's body was not
available), re-derived here and checked numerically in tests/test_risks.py (Monte Carlo and a least
squares fit on samples, float64). RF: ``G = (I + 11^T/d)(1 + o(1))`` for ``w_i ~ N(0, I/d)`` and the
isotropic target ``||x||^2 - d`` correlates equally with every feature -> explained fraction
``rho/(1+rho)``; the traceless part is explained only to ``O(N/d^2)``. NT: for a Haar projector of
rank ``d - N``, ``E ||P_perp B_0 P_perp||_F^2 ~ (1-rho)^2 ||B_0||^2`` and ``||P_perp||_F^2 = d - N``.
For the official code's target ``B = diag(gamma)/sqrt(d)``, ``gamma_i ~ Exp(1)``
(``||B_0||^2 -> 1``, ``(tr B)^2/d -> 1``, ``Var -> 4``), the normalized limits are
(:func:`exp_target_limits`)::

    RF/Var = (1 + 1/(1+rho))/2,  NT/Var = (1-rho)_+ (2-rho)/2,
    NN/Var = 1 - rho (ln^2 rho - 2 ln rho + 2)/2   (rho < 1; 0 for rho >= 1)

the last being ``E[gamma^2 1{gamma < -ln rho}]/2`` (Exp(1) tail above the ``1-rho`` quantile removed).

Mixture model: ``x | y=+-1 ~ N(0, I +- Delta P_s)`` (P_s projector on an s-dim subspace, 0<Delta<1,
equal priors; this parametrization is ours, the paper's was not found). The log-likelihood ratio is
``Delta/(1-Delta^2) ||P_s x||^2 - (s/2) ln((1+Delta)/(1-Delta))``: a quadratic of rank s, so the
Bayes rule is in the NN class for ``N >= s`` (:func:`mixture_bayes_error`, exact via chi^2 tails).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "exp_diagonal_target",
    "quadratic_variance",
    "risk_of_quadratic",
    "risk_rf",
    "risk_nt",
    "risk_nn",
    "limit_rf",
    "limit_nt",
    "exp_target_limits",
    "model_quadratic_form",
    "model_risk",
    "mixture_llr",
    "mixture_bayes_error",
]


def _sym(B: object, name: str = "B") -> np.ndarray:
    A = np.asarray(B.detach().cpu().numpy() if isinstance(B, Tensor) else B, dtype=np.float64)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"{name} must be a square matrix (d, d), got shape {A.shape}")
    if not np.all(np.isfinite(A)):
        raise ValueError(f"{name} has non-finite entries (NaN/inf)")
    if not np.allclose(A, A.T, atol=1e-10 * (1 + np.abs(A).max())):
        raise ValueError(f"{name} must be symmetric")
    return A


def _weights(W: object, d: int) -> np.ndarray:
    A = np.asarray(W.detach().cpu().numpy() if isinstance(W, Tensor) else W, dtype=np.float64)
    if A.ndim != 2 or A.shape[1] != d:
        raise ValueError(f"W must have shape (N, {d}) (one first-layer weight per row), got {A.shape}")
    return A


def exp_diagonal_target(d: int, seed: int = 100) -> np.ndarray:
    """The official code's target matrix ``B = diag(gamma)/sqrt(d)``, ``gamma_i ~ Exp(1)`` iid drawn with
    ``numpy.random.RandomState(seed)`` (the code seeds numpy with 100). Shape (d, d), float64.
    ``f*(x) = x^T B x - tr B`` is then the code's ``y = (sum_i gamma_i x_i^2 - sum_i gamma_i)/sqrt(d)``."""
    if not isinstance(d, int) or d < 1:
        raise ValueError(f"d must be a positive integer, got {d!r}")
    gamma = np.random.RandomState(seed).exponential(1.0, size=d)
    return np.diag(gamma) / math.sqrt(d)


def quadratic_variance(B: object) -> float:
    """``Var(x^T B x) = 2 ||B||_F^2`` for ``x ~ N(0, I)`` and symmetric B."""
    A = _sym(B)
    return float(2.0 * np.sum(A * A))


def risk_of_quadratic(B: object, Q: object, c: float = 0.0, b: object | None = None,
                      b0: float | None = None) -> float:
    """Exact ``E (f*(x) - f(x))^2`` for ``f*(x) = x^T B x + b0`` (default ``b0 = -tr B``) and
    ``f(x) = c + b^T x + x^T Q x``, ``x ~ N(0, I_d)``:
    ``2 ||B - Q||_F^2 + ||b||^2 + (tr B + b0 - tr Q - c)^2``. Cost O(d^2)."""
    A, M = _sym(B), _sym(Q, "Q")
    if A.shape != M.shape:
        raise ValueError(f"Q must have the shape of B {A.shape}, got {M.shape}")
    b0 = -float(np.trace(A)) if b0 is None else float(b0)
    lin = 0.0 if b is None else float(np.sum(np.asarray(b, dtype=np.float64) ** 2))
    mean = float(np.trace(A)) + b0 - float(np.trace(M)) - float(c)
    return float(2.0 * np.sum((A - M) ** 2) + lin + mean * mean)


def risk_rf(B: object, W: object) -> float:
    """Population-optimal risk of the random-features class ``c + sum_i a_i <w_i, x>^2`` (W frozen):
    ``2 min_a ||B - W^T diag(a) W||_F^2``; a from the normal equations ``G a = r`` with
    ``G_ij = <w_i, w_j>^2``, ``r_i = w_i^T B w_i`` (float64 least squares). W: (N, d).
    Cost O(N^2 d + N^3 + N d^2)."""
    A = _sym(B)
    Wn = _weights(W, A.shape[0])
    G = (Wn @ Wn.T) ** 2
    r = np.sum((Wn @ A) * Wn, axis=1)
    a = np.linalg.lstsq(G, r, rcond=None)[0]
    R = A - (Wn.T * a) @ Wn
    return float(2.0 * np.sum(R * R))


def risk_nt(B: object, W: object) -> float:
    """Population-optimal risk of the neural-tangent class at first-layer weights W (N, d), all second
    layer weights at init non-zero: ``2 ||P_perp B P_perp||_F^2`` with ``P_perp`` the projector on the
    orthogonal complement of the row span of W (numerical rank by SVD). Cost O(d^3)."""
    A = _sym(B)
    Wn = _weights(W, A.shape[0])
    _, s, Vt = np.linalg.svd(Wn, full_matrices=True)
    rank = int(np.sum(s > s.max(initial=0.0) * max(Wn.shape) * np.finfo(float).eps)) if s.size else 0
    Vp = Vt[rank:].T  # (d, d - rank) orthonormal basis of the complement
    if Vp.shape[1] == 0:
        return 0.0
    M = Vp.T @ A @ Vp
    return float(2.0 * np.sum(M * M))


def risk_nn(B: object, N: int, sign: str = "any") -> float:
    """Population-optimal risk of the class ``c + x^T Q x``, ``rank Q <= N`` (Eckart-Young):
    ``2 sum_{i>N} lambda_(i)^2`` with eigenvalues sorted by ``|lambda|``. ``sign="psd"`` restricts to
    ``Q = s Q_+`` with ``Q_+`` psd (a common second-layer weight, the official code's default): the best
    of keeping the N largest positive or the N largest negative eigenvalues. Cost O(d^3)."""
    A = _sym(B)
    if not isinstance(N, (int, np.integer)) or N < 0:
        raise ValueError(f"N must be a non-negative integer, got {N!r}")
    lam = np.linalg.eigvalsh(A)
    total = float(np.sum(lam * lam))
    if sign == "any":
        kept = np.sort(lam * lam)[::-1][:N].sum()
    elif sign == "psd":
        pos = np.sort(lam[lam > 0] ** 2)[::-1][:N].sum()
        neg = np.sort(lam[lam < 0] ** 2)[::-1][:N].sum()
        kept = max(pos, neg)
    else:
        raise ValueError(f"sign must be 'any' or 'psd', got {sign!r}")
    return float(2.0 * max(total - kept, 0.0))


def _rho(rho: object) -> np.ndarray:
    r = np.asarray(rho, dtype=np.float64)
    if np.any(~np.isfinite(r)) or np.any(r < 0):
        raise ValueError(f"rho must be finite and >= 0, got {rho!r}")
    return r


def _stats(B: object) -> tuple[float, float]:
    A = _sym(B)
    d = A.shape[0]
    t = float(np.trace(A))
    B0 = A - t / d * np.eye(d)
    return float(np.sum(B0 * B0)), t * t / d


def limit_rf(rho: object, B: object) -> np.ndarray:
    """Asymptotic RF risk ``2 ||B_0||_F^2 + 2 (tr B)^2 / (d (1 + rho))`` (plug-in: B's own statistics)."""
    f0, t2 = _stats(B)
    r = _rho(rho)
    return 2 * f0 + 2 * t2 / (1 + r)


def limit_nt(rho: object, B: object) -> np.ndarray:
    """Asymptotic NT risk ``2 (1-rho)_+^2 ||B_0||_F^2 + 2 (1-rho)_+ (tr B)^2 / d`` (plug-in)."""
    f0, t2 = _stats(B)
    u = np.clip(1 - _rho(rho), 0, None)
    return 2 * u * u * f0 + 2 * u * t2


def exp_target_limits(rho: object) -> dict[str, np.ndarray]:
    """Normalized limits ``R/Var(f*)`` (d -> inf) for the code's target ``B = diag(gamma)/sqrt(d)``,
    ``gamma ~ Exp(1)``: keys ``"rf"``, ``"nt"``, ``"nn"`` (formulas in the module docstring)."""
    r = _rho(rho)
    u = np.clip(1 - r, 0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        lr = np.log(np.where(r > 0, r, 1.0))
        nn_ = np.where(r >= 1, 0.0, 1 - r * (lr * lr - 2 * lr + 2) / 2)
    nn_ = np.where(r == 0, 1.0, nn_)
    return {"rf": (1 + 1 / (1 + r)) / 2, "nt": u * (2 - r) / 2,
            "nn": nn_}


def model_quadratic_form(model: nn.Module, d: int, dtype: torch.dtype | None = None
                         ) -> tuple[float, np.ndarray, np.ndarray]:
    """``(c, b, Q)`` with ``model(x) = c + b^T x + x^T Q x`` for a scalar-output model that is a
    polynomial of degree <= 2 in x (e.g. a quadratic-activation net or its linearization):
    ``c = f(0)``, ``b = grad f(0)``, ``Q = Hess f(0) / 2`` by ``torch.func`` (exact, no sampling).
    Evaluated in the dtype/device of the model's first parameter. Cost: one forward-over-reverse
    Hessian, O(d) model evaluations. Gives wrong answers for non-polynomial models (not checked)."""
    p = next(model.parameters())
    dt = dtype or p.dtype
    x0 = torch.zeros(1, d, dtype=dt, device=p.device)

    def f(x: Tensor) -> Tensor:
        return model(x.unsqueeze(0)).reshape(())

    with torch.no_grad():
        c = float(model(x0).reshape(()))
    g = torch.func.jacrev(f)(x0[0]).detach()
    H = torch.func.jacfwd(torch.func.jacrev(f))(x0[0]).detach()
    Q = (H + H.T) / 4  # f = x^T Q x + ... has Hessian 2Q
    return c, g.double().cpu().numpy(), Q.double().cpu().numpy()


def model_risk(model: nn.Module, B: object, b0: float | None = None) -> float:
    """Exact population risk ``E (f*(x) - model(x))^2`` of a degree-2 polynomial model
    (:func:`model_quadratic_form` + :func:`risk_of_quadratic`)."""
    A = _sym(B)
    c, b, Q = model_quadratic_form(model, A.shape[0])
    return risk_of_quadratic(A, Q, c=c, b=b, b0=b0)


def mixture_llr(z: object, s: int, delta: float) -> np.ndarray:
    """Log-likelihood ratio ``log p_+(x)/p_-(x)`` as a function of ``z = ||P_s x||^2``:
    ``delta/(1-delta^2) z - (s/2) ln((1+delta)/(1-delta))`` for ``Sigma_+- = I +- delta P_s``."""
    _check_mixture(s, delta)
    return delta / (1 - delta**2) * np.asarray(z, dtype=np.float64) - s / 2 * math.log(
        (1 + delta) / (1 - delta))


def _check_mixture(s: int, delta: float) -> None:
    if not isinstance(s, (int, np.integer)) or s < 1:
        raise ValueError(f"s must be a positive integer, got {s!r}")
    if not 0 < float(delta) < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")


def mixture_bayes_error(s: int, delta: float) -> float:
    """Bayes error of ``x | y=+-1 ~ N(0, I +- delta P_s)``, equal priors. Predict +1 iff
    ``||P_s x||^2 > t``, ``t = s (1-delta^2)/(2 delta) ln((1+delta)/(1-delta))``; under class +-,
    ``||P_s x||^2 ~ (1 +- delta) chi^2_s``, so the error is
    ``(F_s(t/(1+delta)) + 1 - F_s(t/(1-delta)))/2`` with ``F_s`` the chi^2_s cdf (exact, scipy)."""
    from scipy.stats import chi2

    _check_mixture(s, delta)
    t = s * (1 - delta**2) / (2 * delta) * math.log((1 + delta) / (1 - delta))
    return float(0.5 * (chi2.cdf(t / (1 + delta), s) + chi2.sf(t / (1 - delta), s)))
