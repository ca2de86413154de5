"""lazylab.metrics: identities, and every metric against a direct numpy / float64 computation."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from threadpoolctl import threadpool_limits
from torch import nn
from torch.func import functional_call, hessian, jacrev

from lazylab import metrics as M
from lazylab.models import MLP, TwoLayerNet
from lazylab.regimes import lazy, linearize
from lazylab.trainer import train


def _psd(n: int, seed: int, rank: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, rank or n + 3))
    return A @ A.T


# ------------------------------------------------------------------------------ kernel identities
@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 12), seed=st.integers(0, 10_000), c=st.floats(1e-3, 1e3))
def test_distance_to_self_and_positive_multiple_is_zero(n, seed, c):
    K = _psd(n, seed)
    assert M.kernel_distance(K, K) < 1e-12
    assert M.kernel_distance(K, c * K) < 1e-12
    assert M.kernel_distance(torch.tensor(K), torch.tensor(c * K)) < 1e-12
    assert M.relative_kernel_change(K, K) == 0.0
    assert M.relative_kernel_change(c * K, K) == pytest.approx(abs(c - 1), rel=1e-9, abs=1e-12)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(3, 12), seed=st.integers(0, 10_000), c=st.floats(1e-3, 1e3),
       shift=st.floats(-5, 5))
def test_cka_invariances(n, seed, c, shift):
    K1, K2 = _psd(n, seed), _psd(n, seed + 1)
    base = M.cka(K1, K2)
    assert M.cka(c * K1, K2) == pytest.approx(base, abs=1e-10)
    assert M.cka(K1, c * K2) == pytest.approx(base, abs=1e-10)
    assert M.cka(K1 + shift, K2) == pytest.approx(base, abs=1e-8)  # centering removes constants
    assert M.cka(K1, K1) == pytest.approx(1.0, abs=1e-12)
    assert -1e-12 <= base <= 1 + 1e-12


@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 10), seed=st.integers(0, 10_000))
def test_distance_symmetric_and_bounded(n, seed):
    K1, K2 = _psd(n, seed), _psd(n, seed + 7)
    d = M.kernel_distance(K1, K2)
    assert d == pytest.approx(M.kernel_distance(K2, K1), abs=1e-14)
    assert 0.0 <= d <= 2.0
    assert M.kernel_distance(K1, -K1) == pytest.approx(2.0, abs=1e-12)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 10), seed=st.integers(0, 10_000), c=st.floats(1e-3, 1e3),
       s=st.floats(-1e3, 1e3).filter(lambda v: abs(v) > 1e-3))
def test_kernel_target_alignment_scale_invariant_and_bounded(n, seed, c, s):
    K = _psd(n, seed)
    y = np.random.default_rng(seed).standard_normal(n)
    a = M.kernel_target_alignment(K, y)
    assert M.kernel_target_alignment(c * K, s * y) == pytest.approx(a, rel=1e-9)
    assert 0.0 <= a <= 1.0 + 1e-12  # PSD K: 0 <= y^T K y <= ||K||_2 ||y||^2 <= ||K||_F ||y||^2


# ------------------------------------------------------------------------ kernels vs numpy direct
def test_kernel_metrics_match_direct_numpy():
    rng = np.random.default_rng(3)
    n = 9
    K0, K1 = _psd(n, 1), _psd(n, 2)
    num = sum(K0[i, j] * K1[i, j] for i in range(n) for j in range(n))
    n0, n1 = math.sqrt((K0**2).sum()), math.sqrt((K1**2).sum())
    assert M.kernel_distance(K0, K1) == pytest.approx(1 - num / (n0 * n1), rel=1e-12)
    assert M.relative_kernel_change(K1, K0) == pytest.approx(np.linalg.norm(K1 - K0) / n0, rel=1e-12)
    assert M.kernel_velocity(K0, K1, 4) == pytest.approx((1 - num / (n0 * n1)) / 4, rel=1e-12)
    H = np.eye(n) - np.ones((n, n)) / n
    A, B = H @ K0 @ H, H @ K1 @ H
    assert M.cka(K0, K1) == pytest.approx((A * B).sum() / np.linalg.norm(A) / np.linalg.norm(B), rel=1e-12)
    # kernel-target alignment: vector, one-hot labels, (N, C)
    y = rng.standard_normal(n)
    assert M.kernel_target_alignment(K0, y) == pytest.approx(y @ K0 @ y / (n0 * (y @ y)), rel=1e-12)
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2])
    Y = np.eye(3)[labels]
    expect = sum(Y[:, c] @ K0 @ Y[:, c] for c in range(3)) / (n0 * (Y**2).sum())
    assert M.kernel_target_alignment(K0, torch.tensor(labels)) == pytest.approx(expect, rel=1e-12)
    assert M.kernel_target_alignment(K0, Y) == pytest.approx(expect, rel=1e-12)
    # KTA = 1 when K is y y^T
    assert M.kernel_target_alignment(np.outer(y, y), y) == pytest.approx(1.0, abs=1e-12)


def test_full_kernel_read_as_matrix():
    rng = np.random.default_rng(0)
    n, o = 4, 3
    J = rng.standard_normal((n, o, 20))
    K4 = np.einsum("nap,mbp->nmab", J, J)
    K2 = J.reshape(n * o, 20) @ J.reshape(n * o, 20).T
    y = rng.standard_normal((n, o))
    assert M.kernel_target_alignment(K4, y) == pytest.approx(
        M.kernel_target_alignment(K2, y.reshape(-1)), rel=1e-12)
    assert M.cka(K4, K4 + 1e-3 * K4**2) == pytest.approx(M.cka(K2, K2 + 1e-3 * K2**2), rel=1e-12)


def test_spectrum_summary_matches_numpy():
    K = _psd(12, 5, rank=6)
    y = np.random.default_rng(1).standard_normal(12)
    s = M.spectrum_summary(K, y, k=3)
    lam, U = np.linalg.eigh(K)
    lam, U = lam[::-1], U[:, ::-1]
    np.testing.assert_allclose(s["eigenvalues"], lam, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(s["top"], lam[:3], rtol=1e-12)
    pos = lam[lam > 1e-9 * lam[0]]
    p = pos / pos.sum()
    # rank-6 kernel: the effective ranks lie in (1, 6]; rounding-level eigenvalues are negligible
    assert s["effective_rank"] == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-6)
    assert s["participation_ratio"] == pytest.approx(pos.sum() ** 2 / (pos**2).sum(), rel=1e-6)
    assert 1 < s["effective_rank"] <= 6 + 1e-6
    assert s["y_topk_fraction"] == pytest.approx(((U[:, :3].T @ y) ** 2).sum() / (y @ y), rel=1e-9)
    # y inside the top eigenvector's span -> fraction 1
    assert M.spectrum_summary(K, U[:, 0], k=1)["y_topk_fraction"] == pytest.approx(1.0, abs=1e-10)
    assert M.spectrum_summary(np.eye(5))["effective_rank"] == pytest.approx(5.0, rel=1e-12)


def test_kernel_metric_bad_input():
    K = _psd(4, 0)
    with pytest.raises(ValueError, match="same shape"):
        M.kernel_distance(K, _psd(5, 0))
    with pytest.raises(ValueError, match="zero"):
        M.kernel_distance(K, np.zeros((4, 4)))
    with pytest.raises(TypeError, match="K1 must be"):
        M.kernel_distance([[1.0]], K)
    with pytest.raises(ValueError, match="square"):
        M.cka(np.ones((3, 4)), np.ones((3, 4)))
    with pytest.raises(ValueError, match="rows"):
        M.kernel_target_alignment(K, np.ones(5))
    with pytest.raises(ValueError, match="dt"):
        M.kernel_velocity(K, K, 0)
    with pytest.raises(ValueError, match="NaN"):
        M.relative_kernel_change(K * np.nan, K)
    with pytest.raises(ValueError, match="k must"):
        M.spectrum_summary(K, k=0)


# ----------------------------------------------------------------------------------- model metrics
def test_relative_weight_change_matches_direct():
    net = TwoLayerNet(4, 7)
    w0 = copy.deepcopy(net)
    with torch.no_grad():
        net.hidden.weight.add_(0.1 * torch.randn_like(net.hidden.weight))
    per = M.relative_weight_change(net, w0, per_layer=True)
    W, W0 = net.hidden.weight.double().detach().numpy(), w0.hidden.weight.double().detach().numpy()
    A0 = w0.out.weight.double().detach().numpy()
    assert per["hidden.weight"] == pytest.approx(np.linalg.norm(W - W0) / np.linalg.norm(W0), rel=1e-6)
    assert per["out.weight"] == 0.0
    total = np.linalg.norm(W - W0) / math.sqrt(np.linalg.norm(W0) ** 2 + np.linalg.norm(A0) ** 2)
    assert per["total"] == pytest.approx(total, rel=1e-6)
    assert M.relative_weight_change(net, {n: p.detach() for n, p in w0.named_parameters()}) == \
        pytest.approx(total, rel=1e-6)
    # lazy model: effective weights w0 + delta, against the plain net's names
    lz = lazy(copy.deepcopy(w0), 10.0)
    with torch.no_grad():
        lz.delta["out__weight"].fill_(0.5)
    expect = 0.5 * math.sqrt(7) / math.sqrt(np.linalg.norm(W0) ** 2 + np.linalg.norm(A0) ** 2)
    assert M.relative_weight_change(lz, w0) == pytest.approx(expect, rel=1e-6)
    with pytest.raises(ValueError, match="lacks"):
        M.relative_weight_change(net, {"hidden.weight": W0})
    with pytest.raises(TypeError, match="w0 must be"):
        M.relative_weight_change(net, 3)


def test_linearization_error_matches_direct():
    net = TwoLayerNet(3, 16, activation="tanh")
    lin = linearize(copy.deepcopy(net))
    x = torch.randn(10, 3)
    assert M.linearization_error(net, lin, x) < 1e-5  # same weights: f(w0) = f_lin(w0)
    with torch.no_grad():
        for p, q in zip(net.parameters(), lin.model.parameters()):
            d = 0.3 * torch.randn_like(p)
            p.add_(d)
            q.add_(d)
        f = net(x).double()
        # direct linearization by a dense Jacobian in float64
    net0 = copy.deepcopy(lin.model).double()
    p0 = {n: t.double() for n, t in lin.params0.items()}
    J = jacrev(lambda p: functional_call(net0, p, (x.double(),)))(p0)
    g = functional_call(net0, p0, (x.double(),)) + sum(
        J[n].reshape(10, -1) @ (dict(lin.model.named_parameters())[n].double() - p0[n]).reshape(-1)
        for n in p0)
    expect = (f - g.detach()).norm().item()
    assert expect > 1e-2
    assert M.linearization_error(net, lin, x) == pytest.approx(expect, rel=1e-4)
    assert M.linearization_error(net, lin, x, relative=True) == pytest.approx(
        expect / g.norm().item(), rel=1e-4)


def _dense_kappa(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float]:
    """Dense float64 reference: ||Dh|| by SVD; ||D^2 h|| for two outputs by a grid (refined around
    its best point) over the unit circle of c, max_c ||sum_i c_i H_i||_2 (the bilinear map's norm)."""
    params = {n: p.detach() for n, p in net.named_parameters()}
    names = list(params)

    def hf(v: torch.Tensor) -> torch.Tensor:
        d, i = {}, 0
        for n in names:
            k = params[n].numel()
            d[n] = v[i:i + k].reshape(params[n].shape)
            i += k
        return functional_call(net, d, (x,)).reshape(-1)

    flat = torch.cat([params[n].reshape(-1) for n in names])
    J = jacrev(hf)(flat).numpy()
    H = hessian(hf)(flat).numpy()
    assert H.shape[0] == 2
    def norms(ts: np.ndarray) -> np.ndarray:
        Mc = np.cos(ts)[:, None, None] * H[0] + np.sin(ts)[:, None, None] * H[1]
        return np.abs(np.linalg.eigvalsh(Mc)).max(axis=1)

    with threadpool_limits(1):  # small batched eigvalsh: BLAS threads only contend on busy cores
        coarse = np.linspace(0, np.pi, 721)  # then refine around the best angle: error ~ 1e-9 relative
        t0 = coarse[np.argmax(norms(coarse))]
        best = norms(np.linspace(t0 - np.pi / 720, t0 + np.pi / 720, 401)).max()
    res = np.linalg.norm(hf(flat).numpy() - y.numpy())
    return res, np.linalg.svd(J, compute_uv=False)[0], best


@pytest.mark.parametrize("act, d, m, n_iter", [("tanh", 3, 5, 30), ("relu", 3, 16, 12)])
def test_kappa_matches_dense_float64(act, d, m, n_iter):
    """tanh: 26 parameters, the Krylov space is (nearly) everything; relu: 64 parameters and a
    Hessian spectrum of 16 near-equal +-pairs, where 12 Lanczos steps must still find the top."""
    torch.manual_seed(1)
    net = TwoLayerNet(d, m, activation=act, bias=act == "tanh").double()
    x, y = torch.randn(2, d, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
    parts = M.laziness_kappa(net, x, y, n_iter=n_iter, n_outer=5, n_restarts=2, tol=1e-10,
                             return_parts=True)
    res, dh, d2h = _dense_kappa(net, x, y)
    assert parts["residual"] == pytest.approx(res, rel=1e-10)
    assert parts["dh_norm"] == pytest.approx(dh, rel=1e-6)
    assert parts["d2h_norm"] <= d2h * (1 + 1e-7)  # a lower bound ...
    assert parts["d2h_norm"] == pytest.approx(d2h, rel=1e-5)  # ... that is tight
    assert parts["kappa"] == pytest.approx(res * d2h / dh**2, rel=1e-5)


class _Sym(nn.Module):
    """h(w) = g(w_a) - g(w_b) with w_b = w_a at init: h(w0) = 0 exactly."""

    def __init__(self, g: nn.Module) -> None:
        super().__init__()
        self.a, self.b = g, copy.deepcopy(g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) - self.b(x)


@pytest.mark.parametrize("alpha", [10.0, 1000.0])
def test_kappa_of_lazy_model_is_kappa_over_alpha(alpha):
    net = _Sym(TwoLayerNet(4, 12, activation="tanh")).double()
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    with torch.no_grad():
        assert net(x).abs().max() == 0
    k1 = M.laziness_kappa(net, x, y, n_iter=15, n_restarts=1)
    k_alpha = M.laziness_kappa(lazy(copy.deepcopy(net), alpha), x, y, n_iter=15, n_restarts=1)
    assert k1 > 0
    assert k_alpha * alpha == pytest.approx(k1, rel=1e-2)


def test_kappa_one_hot_labels_and_errors():
    net = MLP([5, 8, 3], activation="tanh")
    x, labels = torch.randn(4, 5), torch.tensor([0, 2, 1, 0])
    k1 = M.laziness_kappa(net, x, labels, n_iter=5)
    k2 = M.laziness_kappa(net, x, torch.eye(3)[labels], n_iter=5)
    assert k1 == pytest.approx(k2, rel=1e-6)
    with pytest.raises(ValueError, match="rows"):
        M.laziness_kappa(net, x, labels[:3])
    with pytest.raises(ValueError, match="entries"):
        M.laziness_kappa(net, x, torch.randn(4, 2))
    with pytest.raises(TypeError, match="nn.Module"):
        M.laziness_kappa("net", x, labels)


def _preact_sign_fraction_direct(net0: TwoLayerNet, net: TwoLayerNet, x: torch.Tensor) -> float:
    z0 = (x.double() @ net0.hidden.weight.double().T).detach().numpy()
    z1 = (x.double() @ net.hidden.weight.double().T).detach().numpy()
    return float((np.sign(z0) == np.sign(z1)).mean())


def test_activation_stability_one_at_init_below_one_after_feature_learning():
    torch.manual_seed(0)
    X = torch.randn(40, 5)
    y = torch.sign(X[:, 0]) * X[:, 1].abs()
    net = TwoLayerNet(5, 30, scaling="mean_field")
    net0 = copy.deepcopy(net)
    assert M.activation_stability(net0, net, X) == 1.0
    train(net, (X, y), lr=5.0, steps=200)
    s = M.activation_stability(net0, net, X)
    assert s == pytest.approx(_preact_sign_fraction_direct(net0, net, X), abs=1e-12)
    assert s < 0.97
    # linearized twin: gates frozen at w0 -> exactly 1; lazy model at large alpha barely moves
    lin = linearize(copy.deepcopy(net0))
    train(lin, (X, y), lr=5.0, steps=20)
    assert M.activation_stability(net0, lin, X) == 1.0
    lz = lazy(copy.deepcopy(net0), 1e3)
    train(lz, (X, y), lr=1.0, steps=50)
    assert M.activation_stability(net0, lz, X) > 0.99


def test_activation_stability_averages_layers():
    net = MLP([4, 6, 6, 1])
    net0 = copy.deepcopy(net)
    with torch.no_grad():
        net.net[2].weight.mul_(-1)  # second layer flips: its pre-activations change sign
    x = torch.randn(30, 4)
    s = M.activation_stability(net0, net, x)
    z1 = net0.net[0](x)
    h = torch.relu(z1)
    a, b = net0.net[2](h), net.net[2](h)
    layer2 = (torch.sign(a) == torch.sign(b)).double().mean().item()
    assert s == pytest.approx((1.0 + layer2) / 2, abs=1e-12)
    assert s < 0.75
    with pytest.raises(ValueError, match="ReLU"):
        M.activation_stability(TwoLayerNet(4, 3, activation="tanh"), TwoLayerNet(4, 3, activation="tanh"), x)


@pytest.mark.slow
def test_kappa_decays_like_inverse_sqrt_width_in_ntk_scaling():
    """Chizat et al. (Sec 1.2, App A.2): E kappa <~ m^{-1/2} + (m alpha(m))^{-1/2} = O(m^{-1/2}) for
    alpha(m) = 1/sqrt(m). ||D^2 h|| ~ max_j |a_j| / sqrt(m) carries a sqrt(log m) from the largest
    Gaussian output weight, so over m = 100..10^4 the log-log slope is about -0.5 + 0.075 = -0.43
    (measured -0.40 over 3 seeds)."""
    from lazylab.data import sphere, teacher_two_layer

    X = sphere(20, 10, radius=10**0.5, seed=1)
    f, _, _ = teacher_two_layer(10, 3, seed=0)
    means = []
    for m in (100, 1000, 10000):
        ks = []
        for s in range(3):
            torch.manual_seed(s)
            ks.append(M.laziness_kappa(TwoLayerNet(10, m, activation="tanh"), X, f(X), n_iter=20, n_outer=4,
                                       n_restarts=1))
        means.append(np.mean(ks))
    slope = np.polyfit(np.log10([100, 1000, 10000]), np.log10(means), 1)[0]
    assert means[0] > means[1] > means[2]
    assert -0.6 < slope < -0.3, slope
