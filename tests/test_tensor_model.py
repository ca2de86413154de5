"""Tests for lazylab.tensor.model: structured loss vs dense, probes, homogeneity, regimes."""

import pytest
import torch

from lazylab.regimes import lazy, linearize
from lazylab.tensor.model import TensorModel, coordinate_probes
from lazylab.tensor.symmetric import SymCP, random_ground_truth

F64 = torch.float64


def _model(d=5, m=4, order=3, par="standard", seed=0, scale=1.0):
    return TensorModel(d, m, order, par, init_scale=scale,
                       generator=torch.Generator().manual_seed(seed), dtype=F64)


def _dense_model_tensor(model):
    """Independent dense construction from the raw parameters (loop over components)."""
    out = 0
    for i in range(model.m):
        u, c = model.u[i], model.c[i]
        if model.parametrization == "homogeneous":
            c, u = c * u.norm(), u / u.norm()
        t = c
        for _ in range(model.order):
            t = torch.tensordot(t, u, dims=0) if t.dim() else t * u
        out = out + t
    return out


@pytest.mark.parametrize("order", [3, 4])
@pytest.mark.parametrize("par", ["standard", "homogeneous"])
def test_loss_and_gradient_match_dense(order, par):
    model = _model(order=order, par=par)
    target = random_ground_truth(5, 2, order, "general", generator=torch.Generator().manual_seed(1),
                                 dtype=F64)
    loss = model.loss(target)
    dense_t, dense_star = _dense_model_tensor(model), target.dense()
    dense = (dense_t - dense_star).pow(2).sum() / dense_star.pow(2).sum()
    assert torch.allclose(loss, dense, rtol=1e-10)
    g_struct = torch.autograd.grad(loss, [model.u, model.c])
    g_dense = torch.autograd.grad(dense, [model.u, model.c])
    for a, b in zip(g_struct, g_dense):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
    raw = model.loss(target, normalized=False)
    assert torch.allclose(raw, (dense_t - dense_star).pow(2).sum(), rtol=1e-10)


def test_forward_probes():
    model = _model(d=4, m=3, order=3)
    dense = _dense_model_tensor(model)
    entries = model(coordinate_probes(4, 3, dtype=F64))
    assert torch.allclose(entries, dense.reshape(-1), atol=1e-12)
    x = torch.randn(5, 4, dtype=F64)
    poly = torch.einsum("abc,na,nb,nc->n", dense, x, x, x)
    assert torch.allclose(model(x), poly, atol=1e-10)
    with pytest.raises(ValueError, match="x must have shape"):
        model(torch.randn(5, 3, dtype=F64))


@pytest.mark.parametrize("par,degree", [("standard", 4), ("homogeneous", 2)])
def test_homogeneity_degree(par, degree):
    model = _model(par=par)
    t1 = _dense_model_tensor(model).detach()
    with torch.no_grad():
        model.u.mul_(3.0)
        model.c.mul_(3.0)
    assert torch.allclose(_dense_model_tensor(model), 3.0 ** degree * t1, rtol=1e-10)


def test_init_scale_and_reinit():
    model = TensorModel(50, 400, 3, "homogeneous", init_scale=0.1,
                        generator=torch.Generator().manual_seed(0), dtype=F64)
    norms = model.u.norm(dim=1)
    assert abs(norms.mean().item() - 0.1) < 0.005
    assert torch.allclose(model.c.abs(), norms)                      # balanced
    assert 150 < int((model.c > 0).sum()) < 250                      # random signs
    std = TensorModel(50, 10, 3, init_scale=2.0, coef_scale=0.5)
    assert torch.allclose(std.c.abs(), torch.full((10,), 0.5))
    u_before = model.u.detach().clone()
    model.reinit_(3, scale=1e-3)
    changed = (model.u != u_before).any(dim=1)
    assert changed.tolist() == [i == 3 for i in range(400)]
    assert model.u[3].norm() < 0.01


def test_regularizer_and_weights():
    model = _model(par="homogeneous")
    reg = 0.5 * (model.c.pow(2).sum() + model.u.pow(2).sum())
    assert torch.allclose(model.regularizer(), reg)
    w = model.c.abs() * model.u.norm(dim=1)
    assert torch.allclose(model.component_weights(), w)
    # at balance |c_i| = ||u_i|| the penalty equals the l1 norm of the weights
    assert torch.allclose(model.regularizer(), w.sum())


def test_bad_arguments():
    with pytest.raises(ValueError, match="parametrization"):
        TensorModel(3, 2, 3, "other")
    with pytest.raises(ValueError, match="m must"):
        TensorModel(3, 0)
    with pytest.raises(ValueError, match="init_scale"):
        TensorModel(3, 2, init_scale=0.0)
    model = _model()
    with pytest.raises(ValueError, match="order 3 and d=5"):
        model.loss(random_ground_truth(6, 2, 3))
    with pytest.raises(TypeError, match="SymCP"):
        model.loss(torch.zeros(5, 5, 5))


def test_linearize_applies_and_its_fit_equals_tangent_least_squares():
    """linearize(model) evaluated on all coordinate probes is T0 + J delta; training it on the
    entries of T* (a quadratic) reaches the exact tangent least-squares value of fit_lazy."""
    from lazylab.tensor.fit import fit_lazy

    d, m = 4, 3
    model = _model(d=d, m=m, order=3, seed=3)
    target = random_ground_truth(d, 2, 3, generator=torch.Generator().manual_seed(4), dtype=F64)
    exact = fit_lazy(model, target).rel_error
    probes = coordinate_probes(d, 3, dtype=F64)
    y = target.dense().reshape(-1)
    lin = linearize(model)
    opt = torch.optim.LBFGS(lin.model.parameters(), lr=1.0, max_iter=500, tolerance_grad=1e-14,
                            tolerance_change=1e-16, history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = (lin(probes) - y).pow(2).sum()
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    with torch.no_grad():
        err = ((lin(probes) - y).pow(2).sum() / y.pow(2).sum()).sqrt().item()
    assert 0.05 < exact < 1.0            # a genuinely nonzero residual (m d = 12 < dim Sym^3 = 20)
    assert abs(err - exact) < 1e-6


def test_lazy_wrapper_applies():
    model = _model(d=4, m=3, seed=2)
    t0 = _dense_model_tensor(model).detach()
    lz = lazy(model, alpha=10.0)
    probes = coordinate_probes(4, 3, dtype=F64)
    assert torch.allclose(lz(probes), torch.zeros(64, dtype=F64))
    with torch.no_grad():
        for p in lz.delta.values():
            p.add_(0.01)
    moved = _model(d=4, m=3, seed=2)
    with torch.no_grad():
        moved.u.add_(0.01)
        moved.c.add_(0.01)
    expect = 10.0 * (_dense_model_tensor(moved) - t0)
    assert torch.allclose(lz(probes), expect.reshape(-1), atol=1e-10)


def test_same_seed_same_model():
    a, b = _model(seed=7), _model(seed=7)
    assert torch.equal(a.u, b.u) and torch.equal(a.c, b.c)
    assert isinstance(a.cp(), SymCP)
