"""Tests for lazylab.attacks and lazylab.kernel_predictor."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lazylab.attacks import (
    accuracy,
    fgsm,
    input_gradient,
    l2_gradient_step,
    pgd,
    robust_accuracy,
    sign_flip_walk,
)
from lazylab.kernel_predictor import KernelPredictor
from lazylab.models import MLP, TwoLayerNet
from lazylab.ntk import ntk
from lazylab.regimes import linearize


class Linear1(nn.Module):
    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.b = nn.Parameter(torch.tensor(b, dtype=w.dtype))

    def forward(self, x):
        return x.flatten(1) @ self.w + self.b


def _binary_data(n=40, d=6, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=g, dtype=dtype)
    y = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).to(dtype)
    return x, y


# --------------------------------------------------------------------------- constraints
@settings(max_examples=20, deadline=None)
@given(eps=st.floats(0.0, 0.7), norm=st.sampled_from(["linf", "l2"]), seed=st.integers(0, 10_000),
       steps=st.integers(1, 6))
def test_pgd_constraint_holds_exactly(eps, norm, seed, steps):
    torch.manual_seed(seed)
    net = MLP([5, 16, 3])
    x = torch.rand(12, 5)
    y = torch.randint(0, 3, (12,))
    res = pgd(net, x, y, eps, steps=steps, norm=norm, seed=seed)
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype
    assert bool((res.delta_norm <= eps).all())  # float64 on the returned tensors, no tolerance
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    d = (res.x_adv.double() - x.double()).flatten(1)
    manual = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert torch.equal(manual, res.delta_norm)


@settings(max_examples=20, deadline=None)
@given(eps=st.floats(0.0, 2.0), seed=st.integers(0, 10_000))
def test_one_step_constraints_exact(eps, seed):
    torch.manual_seed(seed)
    net = MLP([7, 8, 4])
    x = torch.rand(9, 7)
    y = torch.randint(0, 4, (9,))
    r1 = fgsm(net, x, y, eps)
    r2 = l2_gradient_step(net, x, y, eps)
    assert bool((r1.delta_norm <= eps).all()) and bool((r2.delta_norm <= eps).all())
    for r in (r1, r2):
        assert float(r.x_adv.min()) >= 0 and float(r.x_adv.max()) <= 1


def test_l2_step_without_clip_has_norm_eps():
    torch.manual_seed(1)
    net = MLP([7, 8, 4])
    x = torch.randn(9, 7, dtype=torch.float64)
    net.double()
    y = torch.randint(0, 4, (9,))
    r = l2_gradient_step(net, x, y, 0.3, clip=None)
    assert torch.allclose(r.delta_norm, torch.full((9,), 0.3, dtype=torch.float64), rtol=1e-12)


# --------------------------------------------------------------------------- closed forms
def test_fgsm_linear_model_closed_form():
    x, y = _binary_data()
    x = 0.2 + 0.6 * x  # stay inside the box after a 0.1 step
    w = torch.randn(6, dtype=torch.float64)
    model = Linear1(w, 0.3)
    res = fgsm(model, x, y, 0.1)
    expected = x - 0.1 * y[:, None] * torch.sign(w)[None]  # ascent on log(1 + exp(-y f))
    assert torch.allclose(res.x_adv, expected, atol=1e-15)
    assert torch.allclose(res.delta_norm, torch.full_like(res.delta_norm, 0.1), atol=1e-15)
    # and the L2 step goes along -y w / ||w||
    r2 = l2_gradient_step(model, x, y, 0.05)
    assert torch.allclose(r2.x_adv, x - 0.05 * y[:, None] * (w / w.norm())[None], atol=1e-15)


def test_input_gradient_matches_closed_form_cross_entropy():
    torch.manual_seed(0)
    W = torch.randn(3, 5, dtype=torch.float64)
    model = nn.Linear(5, 3, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(W)
    x = torch.randn(4, 5, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 2])
    p = torch.softmax(x @ W.T, 1)
    expected = (p - torch.nn.functional.one_hot(y, 3).double()) @ W
    assert torch.allclose(input_gradient(model, x, y), expected, atol=1e-12)


def test_sign_flip_walk_linear_equals_margin_over_norm():
    torch.manual_seed(0)
    d = 10
    w = torch.randn(d, dtype=torch.float64)
    model = Linear1(w, -0.2)
    x = torch.randn(50, d, dtype=torch.float64)
    step = 1e-3
    res = sign_flip_walk(model, x, step=step, max_steps=20000)
    exact = (x @ w - 0.2).abs() / w.norm()
    ok = exact < 20000 * step
    assert bool(res.flipped[ok].all())
    gap = res.delta[ok] - exact[ok]
    assert float(gap.min()) >= -1e-12 and float(gap.max()) <= step + 1e-12
    assert torch.allclose(res.grad_norm, torch.full_like(res.grad_norm, float(w.norm())))
    assert torch.allclose(res.eta, res.delta / w.norm())


def test_sign_flip_walk_skips_misclassified_and_budget():
    w = torch.tensor([1.0, 0.0], dtype=torch.float64)
    model = Linear1(w, 0.0)
    x = torch.tensor([[0.5, 0.0], [-0.3, 1.0], [5.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    res = sign_flip_walk(model, x, y, step=0.01, max_steps=100, coarse=7)
    assert res.walked.tolist() == [True, False, True]
    assert res.flipped.tolist() == [True, False, False]  # third: |f| = 5 > budget 1.0
    assert abs(float(res.delta[0]) - 0.5) <= 0.01 + 1e-12 and float(res.delta[0]) >= 0.5 - 1e-12
    assert math.isnan(float(res.delta[1])) and math.isnan(float(res.delta[2]))


# --------------------------------------------------------------------------- PGD strength
def test_pgd_beats_fgsm_and_lowers_accuracy():
    torch.manual_seed(0)
    from lazylab.data import digits

    (X, y), _ = digits(classes=[0, 1, 2], flatten=True, seed=0)
    X, y = X[:200], y[:200]
    net = MLP([64, 64, 3])
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(X), y).backward()
        opt.step()
    clean = accuracy(net, X, y)
    eps = 0.15  # measured: clean 1.0, FGSM 0.515, PGD-20 0.48
    acc_fgsm = accuracy(net, fgsm(net, X, y, eps).x_adv, y)
    acc_pgd = robust_accuracy(net, X, y, eps, steps=20)
    assert clean > 0.95
    assert acc_pgd < acc_fgsm - 0.02  # PGD is a stronger attack on this net
    # loss of the PGD points is larger than that of the FGSM points
    res_p = pgd(net, X, y, eps, steps=20)
    with torch.no_grad():
        lp = torch.nn.functional.cross_entropy(net(res_p.x_adv), y)
        lf = torch.nn.functional.cross_entropy(net(fgsm(net, X, y, eps).x_adv), y)
    assert float(lp) > float(lf)


def test_pgd_same_seed_same_result_and_linearized_models():
    torch.manual_seed(0)
    net = MLP([5, 16, 3])
    x, y = torch.rand(8, 5), torch.randint(0, 3, (8,))
    a = pgd(net, x, y, 0.2, steps=3, seed=3).x_adv
    b = pgd(net, x, y, 0.2, steps=3, seed=3).x_adv
    assert torch.equal(a, b)
    # on the linearized model at w = w0 the attack equals the one on the network itself
    lin = linearize(net)
    c = pgd(lin, x, y, 0.2, steps=3, seed=3).x_adv
    assert torch.allclose(a, c, atol=1e-6)
    lin_c = linearize(MLP([5, 16, 3]), center=True)
    r = pgd(lin_c, x, y, 0.2, steps=3, norm="l2", seed=3)
    assert bool((r.delta_norm <= 0.2).all())


# --------------------------------------------------------------------------- kernel predictor
def _explicit_kernel(net: TwoLayerNet, x, X):
    """Empirical NTK of a tanh TwoLayerNet with biases, in closed form (float64, differentiable in x)."""
    W, b = net.hidden.weight, net.hidden.bias
    a, s_i, s_o = net.out.weight[0], net.in_scale.c, net.out_scale.c

    def feats(z):
        pre = s_i * z @ W.T + b
        return torch.tanh(pre), 1 - torch.tanh(pre) ** 2

    s1, d1 = feats(x)
    s2, d2 = feats(X)
    k_a = s1 @ s2.T
    k_wb = (d1 * a**2) @ d2.T * (s_i**2 * x @ X.T + 1)
    return s_o**2 * (k_a + k_wb) + 1.0  # + output bias


def test_kernel_predictor_matches_explicit_kernel_and_its_input_gradient():
    torch.manual_seed(0)
    d, m = 4, 7
    net = TwoLayerNet(d, m, activation="tanh", bias=True).double()
    X = torch.randn(6, d, dtype=torch.float64)
    c = torch.randn(6, dtype=torch.float64)
    kp = KernelPredictor(net, X, c)
    x = torch.randn(5, d, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        ref = _explicit_kernel(net, x, X) @ c
    assert torch.allclose(kp(x), ref, atol=1e-12)
    assert torch.allclose(kp(x).detach(), ntk(net, x.detach(), X, accumulate_dtype=torch.float64) @ c,
                          atol=1e-12)
    g_kp = torch.autograd.grad(kp(x).sum(), x)[0]
    g_ref = torch.autograd.grad((_explicit_kernel(net, x, X) @ c).sum(), x)[0]
    assert torch.allclose(g_kp, g_ref, atol=1e-12)
    # and the attack's input gradient through the predictor is the logistic loss of that function
    yb = torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0], dtype=torch.float64)
    gi = input_gradient(kp, x.detach(), yb)
    xr = x.detach().requires_grad_(True)
    g_manual = torch.autograd.grad(torch.nn.functional.softplus(-yb * (_explicit_kernel(net, xr, X) @ c))
                                   .sum(), xr)[0]
    assert torch.allclose(gi, g_manual, atol=1e-12)


def test_kernel_predictor_fit_interpolates_and_multiclass():
    torch.manual_seed(0)
    net = MLP([5, 12, 3]).double()
    X = torch.randn(8, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (8,))
    kp = KernelPredictor.fit(net, X, y)
    out = kp(X)
    assert out.shape == (8, 3)
    assert torch.allclose(out, torch.nn.functional.one_hot(y, 3).double(), atol=1e-6)
    # equals the centered linearized model at w - w0 = J(X)^T c
    lin = linearize(net, center=True)
    with torch.no_grad():
        for n, p in lin.model.named_parameters():
            p.add_(kp.direction[n])
    xt = torch.randn(4, 5, dtype=torch.float64)
    assert torch.allclose(lin(xt), kp(xt), atol=1e-10)
    r = pgd(kp, torch.rand(8, 5, dtype=torch.float64), y, 0.1, steps=2)
    assert bool((r.delta_norm <= 0.1).all())


def test_kernel_predictor_of_linearized_model_uses_w0():
    torch.manual_seed(2)
    net = MLP([4, 10, 2]).double()
    X = torch.randn(5, 4, dtype=torch.float64)
    c = torch.randn(5, 2, dtype=torch.float64)
    ref = KernelPredictor(net, X, c)
    lin = linearize(net)
    with torch.no_grad():  # training the linearized model moves w, not the kernel at w0
        for p in lin.model.parameters():
            p.add_(torch.randn_like(p))
    kp = KernelPredictor(lin, X, c)
    xt = torch.randn(3, 4, dtype=torch.float64)
    assert torch.allclose(kp(xt), ref(xt), atol=1e-12)
    K = ntk(lin, xt, X, output="full", accumulate_dtype=torch.float64)  # (3, 5, 2, 2), frozen kernel
    assert torch.allclose(kp(xt), torch.einsum("nmab,mb->na", K, c), atol=1e-10)


# --------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors():
    net = MLP([5, 8, 3])
    x, y = torch.rand(4, 5), torch.randint(0, 3, (4,))
    with pytest.raises(ValueError, match="eps"):
        pgd(net, x, y, -0.1)
    with pytest.raises(TypeError, match="eps"):
        fgsm(net, x, y, "big")
    with pytest.raises(ValueError, match="steps"):
        pgd(net, x, y, 0.1, steps=0)
    with pytest.raises(TypeError, match="steps"):
        pgd(net, x, y, 0.1, steps=2.5)
    with pytest.raises(ValueError, match="norm"):
        pgd(net, x, y, 0.1, norm="l1")
    with pytest.raises(ValueError, match="data range"):
        pgd(net, x + 2.0, y, 0.1)
    with pytest.raises(ValueError, match="NaN"):
        fgsm(net, torch.full((4, 5), float("nan")), y, 0.1)
    with pytest.raises(ValueError, match="y must have shape"):
        fgsm(net, x, y[:3], 0.1)
    with pytest.raises(TypeError, match="floating"):
        fgsm(net, torch.ones(4, 5, dtype=torch.int64), y, 0.1)
    with pytest.raises(ValueError, match="scalar-output"):
        sign_flip_walk(net, x)
    with pytest.raises(ValueError, match="coef"):
        KernelPredictor(net, x, torch.randn(3, 3))
    lin_model = Linear1(torch.ones(5), 0.0)
    with pytest.raises(ValueError, match="-1, \\+1"):
        fgsm(lin_model, x, torch.tensor([0.0, 1.0, 1.0, 1.0]), 0.1)
