"""Kernel methods: closed-form predictors vs the linearized model trained by explicit GD."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lazylab.kernel_methods import gradient_flow, kernel_regression, max_stable_lr, solve_psd
from lazylab.ntk import ntk


def _net(out=1):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(),
                         nn.Linear(32, out)).double()


def _gd_linearized(model, x, y, xt, lr, steps):
    """Train lazylab.linearize(model) by plain GD on (1/2n) sum (f - y)^2; return outputs."""
    from lazylab.regimes import linearize

    lin = linearize(copy.deepcopy(model))  # linearize shares the module's parameters
    ps = [p for p in lin.model.parameters()]
    n = x.shape[0]
    for _ in range(steps):
        loss = ((lin(x) - y) ** 2).sum() / (2 * n)
        grads = torch.autograd.grad(loss, ps)
        with torch.no_grad():
            for p, g in zip(ps, grads):
                p -= lr * g
    with torch.no_grad():
        return lin(x), lin(xt)


@pytest.mark.parametrize("out", [1, 2])
def test_predictor_reproduces_linearized_gd(out):
    pytest.importorskip("lazylab.regimes")
    model = _net(out)
    torch.manual_seed(1)
    x, xt = torch.randn(12, 3).double(), torch.randn(7, 3).double()
    y = torch.randn(12, out).double()
    with torch.no_grad():
        f0, f0t = model(x), model(xt)
    kind = "trace" if out == 1 else "full"
    k, kt = ntk(model, x, output=kind), ntk(model, xt, x, output=kind)
    lr = 0.5 * max_stable_lr(k)
    steps = 100
    tr_gd, te_gd = _gd_linearized(model, x, y, xt, lr, steps)
    # exact discrete-GD formula
    tr, te = gradient_flow(k, y, 0.0, kt, lr=lr, steps=steps, f0=f0, f0_test=f0t)
    assert (tr - tr_gd).abs().max() < 1e-8 and (te - te_gd).abs().max() < 1e-8
    # gradient flow at t = lr * steps vs small-step GD (step 1/10 of the above)
    tr_s, te_s = _gd_linearized(model, x, y, xt, lr / 10, steps * 10)
    tr_f, te_f = gradient_flow(k, y, lr * steps, kt, f0=f0, f0_test=f0t)
    assert (tr_f - tr_s).abs().max() < 1e-3 and (te_f - te_s).abs().max() < 1e-3
    assert (tr_f - y).abs().max() < (f0 - y).abs().max()  # it actually trained


def test_flow_limits_and_ridge():
    torch.manual_seed(0)
    z = torch.randn(10, 4, dtype=torch.float64)
    k, y = z @ z.T + 0.1 * torch.eye(10, dtype=torch.float64), torch.randn(10, dtype=torch.float64)
    kt = torch.randn(3, 4, dtype=torch.float64) @ z.T
    tr0, te0 = gradient_flow(k, y, 0.0, kt)
    assert tr0.abs().max() < 1e-13 and te0.abs().max() < 1e-13
    tr, te = gradient_flow(k, y, 1e6, kt)
    torch.testing.assert_close(tr, y)
    torch.testing.assert_close(te, kt @ torch.linalg.solve(k, y))
    torch.testing.assert_close(kernel_regression(k, y, kt), te)
    lam = 0.7
    ref = kt @ torch.linalg.solve(k + lam * torch.eye(10, dtype=torch.float64), y)
    torch.testing.assert_close(kernel_regression(k, y, kt, ridge=lam), ref)


def test_robust_solve_singular_kernel():
    torch.manual_seed(0)
    z = torch.randn(20, 3, dtype=torch.float64)
    k = z @ z.T  # rank 3: Cholesky fails, jitter / eigh fallback must return the min-norm fit
    y = z @ torch.randn(3, dtype=torch.float64)
    a = solve_psd(k, y[:, None])
    assert (k @ a - y[:, None]).abs().max() < 1e-6
    pred = kernel_regression(k, y)
    assert (pred - y).abs().max() < 1e-6


def test_max_stable_lr_is_the_divergence_threshold():
    torch.manual_seed(0)
    z = torch.randn(8, 8, dtype=torch.float64)
    k, y = z @ z.T, torch.randn(8, dtype=torch.float64)
    lr = max_stable_lr(k)
    assert lr == pytest.approx(2 * 8 / torch.linalg.eigvalsh(k)[-1].item())
    ok, _ = gradient_flow(k, y, 0, lr=0.99 * lr, steps=3000)
    bad, _ = gradient_flow(k, y, 0, lr=1.01 * lr, steps=3000)
    assert (ok - y).abs().max() < 1e-3 and (bad - y).abs().max() > 1e3
    assert max_stable_lr(k, n=1) == pytest.approx(lr / 8)


def test_errors():
    k = torch.eye(3)
    with pytest.raises(ValueError, match="y_train has 2 rows"):
        kernel_regression(k, torch.zeros(2))
    with pytest.raises(ValueError, match="square"):
        gradient_flow(torch.zeros(3, 2), torch.zeros(3), 1.0)
    with pytest.raises(ValueError, match="both lr and steps"):
        gradient_flow(k, torch.zeros(3), 1.0, lr=0.1)
    with pytest.raises(ValueError, match="t must be"):
        gradient_flow(k, torch.zeros(3), -1.0)
    with pytest.raises(ValueError, match="ridge"):
        kernel_regression(k, torch.zeros(3), ridge=-1)
    with pytest.raises(ValueError, match="NaN"):
        max_stable_lr(torch.full((2, 2), float("nan")))


def test_gradient_flow_at_infinity_on_a_singular_kernel_is_minimum_norm():
    """K = Phi Phi^T of rank 3 < n = 8: t = inf gives K* K^+ (y - f0) + f0*, not NaN."""
    g = torch.Generator().manual_seed(0)
    phi = torch.randn(8, 3, dtype=torch.float64, generator=g)
    phis = torch.randn(5, 3, dtype=torch.float64, generator=g)
    k, ks = phi @ phi.T, phis @ phi.T
    y = torch.randn(8, 2, dtype=torch.float64, generator=g)
    f0 = torch.randn(8, 2, dtype=torch.float64, generator=g)
    f0s = torch.randn(5, 2, dtype=torch.float64, generator=g)
    train, test = gradient_flow(k, y, float("inf"), ks, f0=f0, f0_test=f0s)
    pinv = torch.linalg.pinv(k, hermitian=True, rtol=1e-10)
    assert torch.isfinite(test).all() and torch.isfinite(train).all()
    assert torch.allclose(test, f0s + ks @ pinv @ (y - f0), atol=1e-10)
    assert torch.allclose(train, f0 + k @ pinv @ (y - f0), atol=1e-10)
    # the limit of finite times (null-space directions never move)
    train_t, test_t = gradient_flow(k, y, 1e8, ks, f0=f0, f0_test=f0s)
    assert torch.allclose(test_t, test, atol=1e-8) and torch.allclose(train_t, train, atol=1e-8)
