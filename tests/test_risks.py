"""Exact RF/NT/NN risks for quadratic targets (lazylab.risks) against independent computations:
Monte Carlo, least squares on samples, brute-force minimization, numerical integration (float64)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lazylab import risks


def _sym(rng, d):
    A = rng.standard_normal((d, d))
    return (A + A.T) / 2


def _lstsq_risk(feats, y):
    """Population risk estimated by ordinary least squares on many samples (independent route)."""
    coef = np.linalg.lstsq(feats, y, rcond=None)[0]
    return float(np.mean((y - feats @ coef) ** 2))


def test_risk_of_quadratic_matches_monte_carlo():
    rng = np.random.default_rng(0)
    d, n = 5, 400_000
    B, Q = _sym(rng, d), _sym(rng, d)
    b, c, b0 = rng.standard_normal(d), 0.7, -1.3
    x = rng.standard_normal((n, d))
    fs = np.einsum("ni,ij,nj->n", x, B, x) + b0
    f = c + x @ b + np.einsum("ni,ij,nj->n", x, Q, x)
    mc = np.mean((fs - f) ** 2)
    assert risks.risk_of_quadratic(B, Q, c=c, b=b, b0=b0) == pytest.approx(mc, rel=0.02)


def test_variance_is_two_frobenius_squared():
    rng = np.random.default_rng(1)
    B = _sym(rng, 4)
    x = rng.standard_normal((400_000, 4))
    assert risks.quadratic_variance(B) == pytest.approx(np.var(np.einsum("ni,ij,nj->n", x, B, x)), rel=0.02)


def test_rf_risk_matches_least_squares_on_samples():
    rng = np.random.default_rng(2)
    d, N, n = 5, 4, 300_000
    B = _sym(rng, d)
    W = rng.standard_normal((N, d)) / math.sqrt(d)
    x = rng.standard_normal((n, d))
    y = np.einsum("ni,ij,nj->n", x, B, x) - np.trace(B)
    feats = np.concatenate([np.ones((n, 1)), (x @ W.T) ** 2], axis=1)
    assert risks.risk_rf(B, W) == pytest.approx(_lstsq_risk(feats, y), rel=0.02)


def test_nt_risk_matches_least_squares_on_tangent_features():
    rng = np.random.default_rng(3)
    d, N, n = 5, 2, 300_000
    B = _sym(rng, d)
    W = rng.standard_normal((N, d))
    x = rng.standard_normal((n, d))
    y = np.einsum("ni,ij,nj->n", x, B, x) - np.trace(B)
    proj = x @ W.T  # (n, N)
    # tangent features of c + sum_j a_j <w_j,x>^2 at (a0, W): 1, <w_j,x>^2, 2 a0_j <w_j,x> x_k (a0 = 1)
    feats = np.concatenate([np.ones((n, 1)), proj**2, (proj[:, :, None] * x[:, None, :]).reshape(n, -1)], 1)
    exact = risks.risk_nt(B, W)
    assert exact == pytest.approx(_lstsq_risk(feats, y), rel=0.02)
    assert exact > 0.05 * risks.quadratic_variance(B)  # not trivially zero for N < d


def test_nn_risk_matches_brute_force_minimization():
    from scipy.optimize import minimize

    rng = np.random.default_rng(4)
    d, N = 4, 2
    B = _sym(rng, d)

    def obj(p):
        U, s = p[: N * d].reshape(N, d), p[N * d:]
        return 2 * np.sum((B - (U.T * s) @ U) ** 2)

    best = min(minimize(obj, rng.standard_normal(N * d + N), method="BFGS").fun for _ in range(8))
    assert risks.risk_nn(B, N) == pytest.approx(best, rel=1e-5, abs=1e-8)


def test_nn_risk_zero_when_rank_at_most_N():
    rng = np.random.default_rng(5)
    d, k = 30, 6
    U = np.linalg.qr(rng.standard_normal((d, k)))[0].T  # k orthonormal rows
    lam = np.array([3.0, -2.0, 1.5, 1.0, -0.7, 0.4])
    B = (U.T * lam) @ U
    assert risks.risk_nn(B, k) < 1e-10 * risks.quadratic_variance(B)
    assert risks.risk_nn(B, k - 1) == pytest.approx(2 * 0.4**2)
    assert risks.risk_nn(B, 2) == pytest.approx(2 * np.sum(lam[2:] ** 2))
    # ... while NT with N = k random neurons keeps ~(1 - rho)^2 of the (traceless-dominated) variance
    W = rng.standard_normal((k, d))
    assert risks.risk_nt(B, W) > 0.3 * risks.quadratic_variance(B)


def test_psd_sign_restriction():
    B = np.diag([3.0, 2.0, -2.5, 0.5])
    assert risks.risk_nn(B, 2, sign="psd") == pytest.approx(2 * (2.5**2 + 0.5**2))
    assert risks.risk_nn(B, 2) == pytest.approx(2 * (2.0**2 + 0.5**2))


@settings(max_examples=20, deadline=None)
@given(d=st.integers(2, 7), N=st.integers(1, 9), seed=st.integers(0, 10_000))
def test_class_inclusions_order_the_risks(d, N, seed):
    """RF(N) ⊂ NT(N) ⊂ NN(2N) for sigma = t^2 (sym(W^T S) has rank <= 2N; NT(N) is NOT inside NN(N):
    w g^T + g w^T has rank 2), so R_RF(N) >= R_NT(N) >= R_NN(2N); all are in [0, Var]."""
    rng = np.random.default_rng(seed)
    B = _sym(rng, d)
    W = rng.standard_normal((N, d))
    rf, nt, nn_ = risks.risk_rf(B, W), risks.risk_nt(B, W), risks.risk_nn(B, 2 * N)
    v = risks.quadratic_variance(B)
    tol = 1e-9 * v
    assert -tol <= nn_ <= nt + tol <= rf + 2 * tol <= v + 3 * tol
    if N >= d:
        assert nt <= tol and nn_ <= tol


def test_nt_traceless_is_one_minus_rho_squared_var():
    rng = np.random.default_rng(6)
    d = 200
    B = _sym(rng, d)
    B -= np.trace(B) / d * np.eye(d)
    v = risks.quadratic_variance(B)
    for rho in (0.25, 0.5):
        W = rng.standard_normal((int(rho * d), d))
        assert risks.risk_nt(B, W) / v == pytest.approx((1 - rho) ** 2, abs=0.01)
    # RF of a traceless B is ~ Var for N = O(d)
    W = rng.standard_normal((d // 2, d)) / math.sqrt(d)
    assert risks.risk_rf(B, W) / v > 0.98


@pytest.mark.parametrize("rho", [0.25, 0.75, 1.5])
def test_finite_d_rf_nt_close_to_plugin_limits(rho):
    d = 200
    B = risks.exp_diagonal_target(d)
    W = np.random.default_rng(7).standard_normal((int(rho * d), d)) / math.sqrt(d)
    v = risks.quadratic_variance(B)
    assert risks.risk_rf(B, W) / v == pytest.approx(float(risks.limit_rf(rho, B)) / v, abs=0.03)
    assert risks.risk_nt(B, W) / v == pytest.approx(float(risks.limit_nt(rho, B)) / v, abs=0.03)


@pytest.mark.slow
def test_issue_check_a_at_d450():
    """Issue 7 check (a) at the paper's d = 450: exact risks within 0.03 of the Exp(1) limits."""
    d = 450
    B = risks.exp_diagonal_target(d)
    v = risks.quadratic_variance(B)
    rng = np.random.default_rng(8)
    for rho in (0.25, 0.5, 0.75, 1.5):
        N = int(round(rho * d))
        W = rng.standard_normal((N, d)) / math.sqrt(d)
        lim = risks.exp_target_limits(rho)
        assert abs(risks.risk_rf(B, W) / v - lim["rf"]) <= 0.03
        assert abs(risks.risk_nt(B, W) / v - lim["nt"]) <= 0.03
        assert abs(risks.risk_nn(B, N) / v - lim["nn"]) <= 0.03


def test_exp_target_limits_against_integrals():
    from scipy.integrate import quad

    for rho in (0.1, 0.3, 0.6, 0.9):
        q = -math.log(rho)  # P(gamma > q) = rho
        tail = quad(lambda g: g * g * math.exp(-g), 0, q)[0]  # E[gamma^2 1{gamma < q}]
        assert float(risks.exp_target_limits(rho)["nn"]) == pytest.approx(tail / 2, rel=1e-9)
    lim = risks.exp_target_limits(np.array([0.0, 1.0, 2.0]))
    np.testing.assert_allclose(lim["rf"], [1.0, 0.75, 2 / 3])
    np.testing.assert_allclose(lim["nt"], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(lim["nn"], [1.0, 0.0, 0.0], atol=1e-12)
    # plug-in limits at the population statistics reproduce the normalized Exp(1) formulas
    B = risks.exp_diagonal_target(3000)
    v = risks.quadratic_variance(B)
    want = float(risks.exp_target_limits(0.5)["rf"])
    assert float(risks.limit_rf(0.5, B)) / v == pytest.approx(want, abs=0.03)


def test_model_quadratic_form_and_risk_of_nets_and_linearization():
    from lazylab.models import TwoLayerNet
    from lazylab.regimes import linearize

    torch.manual_seed(0)
    d, m = 6, 4
    net = TwoLayerNet(d, m, activation="quadratic", scaling="mean_field", bias=True).double()
    with torch.no_grad():
        net.hidden.bias.zero_()
        net.out.bias.fill_(0.3)
    W = net.hidden.weight.detach().numpy() / math.sqrt(d)
    a = net.out.weight.detach().numpy()[0] / m
    c, b, Q = risks.model_quadratic_form(net, d)
    np.testing.assert_allclose(Q, (W.T * a) @ W, atol=1e-12)
    assert c == pytest.approx(0.3) and np.abs(b).max() < 1e-12
    lin = linearize(net)
    with torch.no_grad():
        net.hidden.weight.add_(0.3 * torch.randn(m, d, dtype=torch.float64))
        net.out.weight.add_(0.2)
    rng = np.random.default_rng(9)
    B = _sym(rng, d)
    x = torch.tensor(rng.standard_normal((100_000, d)))
    fs = ((x.numpy() @ B) * x.numpy()).sum(1) - np.trace(B)
    with torch.no_grad():
        mc = float(np.mean((fs - lin(x).numpy()) ** 2))
    assert risks.model_risk(lin, B) == pytest.approx(mc, rel=0.03)


def test_mixture_bayes_error_matches_monte_carlo_and_is_optimal():
    s, delta, d, n = 6, 0.5, 10, 400_000
    rng = np.random.default_rng(10)
    y = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    z = rng.standard_normal((n, d))
    x = z.copy()
    x[:, :s] *= np.sqrt(1 + y * delta)[:, None]  # P_s = first s coordinates
    zs = np.sum(x[:, :s] ** 2, 1)
    llr = risks.mixture_llr(zs, s, delta)
    # the closed-form LLR equals the log-density ratio of the two Gaussians
    ref = ((-0.5 * zs / (1 + delta) - s / 2 * math.log(1 + delta))
           - (-0.5 * zs / (1 - delta) - s / 2 * math.log(1 - delta)))
    np.testing.assert_allclose(llr, ref, rtol=1e-10, atol=1e-10)
    err = np.mean(np.sign(llr) != y)
    be = risks.mixture_bayes_error(s, delta)
    assert be == pytest.approx(err, abs=4 * math.sqrt(be * (1 - be) / n))
    for shift in (-1.0, 1.0):  # any other threshold on ||P_s x||^2 is worse
        assert np.mean(np.sign(llr + shift) != y) > be


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="square"):
        risks.risk_nn(np.ones((2, 3)), 1)
    with pytest.raises(ValueError, match="symmetric"):
        risks.quadratic_variance(np.array([[0.0, 1.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="W must have shape"):
        risks.risk_rf(np.eye(3), np.ones((2, 4)))
    with pytest.raises(ValueError, match="N must be"):
        risks.risk_nn(np.eye(3), -1)
    with pytest.raises(ValueError, match="rho"):
        risks.exp_target_limits(-0.5)
    with pytest.raises(ValueError, match="delta"):
        risks.mixture_bayes_error(3, 1.5)
    with pytest.raises(ValueError, match="non-finite"):
        risks.risk_nn(np.full((2, 2), np.nan), 1)
