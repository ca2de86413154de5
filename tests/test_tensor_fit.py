"""Tests for lazylab.tensor.fit: lazy fit vs dimension count, plain GD, lazy scaling, the variant."""

import numpy as np
import pytest
import torch

from lazylab.tensor.fit import fit_gd, fit_lazy, fit_variant, relative_error
from lazylab.tensor.model import TensorModel
from lazylab.tensor.symmetric import SymCP, dim_sym, random_ground_truth

F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_relative_error_is_dense_frobenius_ratio():
    a = random_ground_truth(5, 3, 3, "general", generator=_gen(0), dtype=F64)
    b = random_ground_truth(5, 2, 3, "general", generator=_gen(1), dtype=F64)
    expect = ((a.dense() - b.dense()).norm() / b.dense().norm()).item()
    assert abs(relative_error(a, b) - expect) < 1e-12


def test_lazy_fit_is_affine_least_squares_from_init():
    """fit_lazy = min_delta ||T* - T0 - J delta|| computed densely with numpy (T0 != 0)."""
    d, m = 5, 4
    model = TensorModel(d, m, 3, generator=_gen(2), dtype=F64)
    target = random_ground_truth(d, 2, 3, generator=_gen(3), dtype=F64)
    p0 = torch.cat([model.c.detach(), model.u.detach().reshape(-1)])

    def f(p):
        return SymCP(p[:m], p[m:].reshape(m, d), 3).dense().reshape(-1)

    jac = torch.autograd.functional.jacobian(f, p0).numpy()
    y = (target.dense().reshape(-1) - f(p0)).numpy()
    sol = np.linalg.lstsq(jac, y, rcond=1e-12)[0]
    expect = np.linalg.norm(y - jac @ sol) / target.dense().norm().item()
    res = fit_lazy(model, target)
    assert abs(res.rel_error - expect) < 1e-8
    assert res.info["solver"] == "dense"


def test_lazy_fit_needs_md_at_least_dim_sym():
    d, r = 8, 2
    dim = dim_sym(d, 3)                                               # 120
    target = random_ground_truth(d, r, 3, generator=_gen(0))
    small = fit_lazy(TensorModel(d, 5, 3, init_scale=0.1, generator=_gen(1)), target)   # md = 40
    full = fit_lazy(TensorModel(d, 16, 3, init_scale=0.1, generator=_gen(1)), target)   # md = 128
    assert 16 * d >= 1.05 * dim and 5 * d <= 0.5 * dim
    assert small.rel_error > 0.5
    assert full.rel_error < 1e-5
    cg = fit_lazy(TensorModel(d, 16, 3, init_scale=0.1, generator=_gen(1)), target, solver="cg")
    assert cg.rel_error < 1e-4 and cg.info["solver"] == "cg"


def test_plain_gd_fits_an_easy_instance_and_is_deterministic():
    target = random_ground_truth(8, 2, 3, generator=_gen(0))
    runs = []
    for _ in range(2):
        model = TensorModel(8, 8, 3, coef_scale=8 ** -0.5, generator=_gen(1))
        runs.append(fit_gd(model, target, steps=1500, lr=0.1))
    assert runs[0].history[0][1] > 0.5
    assert runs[0].rel_error < 0.05
    assert runs[0].rel_error == runs[1].rel_error and runs[0].steps == runs[1].steps
    # the reported error is the final model's (recomputed independently, densely)
    with torch.no_grad():
        dense = (model.cp().dense() - target.dense()).norm() / target.dense().norm()
    assert abs(runs[1].rel_error - dense.item()) < 1e-5
    assert runs[1].history[-1] == (runs[1].steps, runs[1].rel_error)
    errs = [e for _, e in runs[0].history]
    assert errs[-1] < errs[0]


def test_lazy_scaled_gd_moves_weights_like_one_over_alpha():
    """Chizat et al.: with the 1/alpha^2 loss scale, ||w - w0|| after a fixed number of steps is
    O(1/alpha); here the ratio between alpha = 100 and alpha = 1000 must be about 10."""
    target = random_ground_truth(6, 2, 3, generator=_gen(0), dtype=F64)
    moves = []
    for alpha in (100.0, 1000.0):
        model = TensorModel(6, 10, 3, generator=_gen(1), dtype=F64)
        w0 = torch.cat([model.u.detach().reshape(-1), model.c.detach()]).clone()
        res = fit_gd(model, target, steps=50, lr=0.005, alpha=alpha, tol=0.0)
        w = torch.cat([model.u.detach().reshape(-1), model.c.detach()])
        moves.append((w - w0).norm().item())
        assert res.steps == 50
    assert 8.0 < moves[0] / moves[1] < 12.0


def test_variant_recovers_with_few_components():
    d, r, m = 12, 2, 6
    target = random_ground_truth(d, r, 3, generator=_gen(0))
    model = TensorModel(d, m, 3, "homogeneous", init_scale=1e-2, generator=_gen(1))
    res = fit_variant(model, target, steps=1500, lr=0.1, reinit_every=100, reinit_above=None,
                      generator=_gen(2))
    assert res.rel_error < 0.01
    # unconditional: re-inits happen every 100 steps during the first 80 % of the steps
    assert res.info["reinits"] == 1200 // 100 - 1
    # conditional (default): none once the error is below reinit_above, so fewer
    model = TensorModel(d, m, 3, "homogeneous", init_scale=1e-2, generator=_gen(1))
    cond = fit_variant(model, target, steps=1500, lr=0.1, reinit_every=100, generator=_gen(2))
    assert cond.rel_error < 0.01
    assert cond.info["reinits"] < res.info["reinits"]
    # the lazy fit at the same (m, d) is far from the target: m d = 72 < dim Sym^3 = 364
    lazy = fit_lazy(TensorModel(d, m, 3, generator=_gen(1)), target)
    assert lazy.rel_error > 0.5


def test_fit_argument_checks():
    target = random_ground_truth(4, 1, 3)
    with pytest.raises(ValueError, match="homogeneous"):
        fit_variant(TensorModel(4, 2), target)
    with pytest.raises(ValueError, match="lr"):
        fit_gd(TensorModel(4, 2), target, lr=0.0)
    with pytest.raises(ValueError, match="alpha"):
        fit_gd(TensorModel(4, 2), target, alpha=-1.0)
    with pytest.raises(TypeError, match="TensorModel"):
        fit_gd(torch.nn.Linear(2, 2), target)
    with pytest.raises(ValueError, match="reinit_above"):
        fit_variant(TensorModel(4, 2, parametrization="homogeneous"), target, reinit_above=-1.0)
    with pytest.raises(ValueError, match="polish_frac"):
        fit_variant(TensorModel(4, 2, parametrization="homogeneous"), target, polish_frac=2.0)
