"""Tests for lazylab.tensor.tangent: closed-form Gram vs autograd Jacobian, least squares vs numpy."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lazylab.tensor.model import TensorModel
from lazylab.tensor.symmetric import SymCP, dim_sym, random_ground_truth
from lazylab.tensor.tangent import (
    tangent_gram,
    tangent_lstsq,
    tangent_matvec,
    tangent_residual,
    tangent_rhs,
)

F64 = torch.float64


def _point(m, d, order, seed):
    g = torch.Generator().manual_seed(seed)
    return SymCP(torch.randn(m, generator=g, dtype=F64), torch.randn(m, d, generator=g, dtype=F64),
                 order)


def _dense_jacobian(point):
    m, d = point.vectors.shape

    def f(p):
        return SymCP(p[:m], p[m:].reshape(m, d), point.order).dense().reshape(-1)

    p0 = torch.cat([point.coefs, point.vectors.reshape(-1)])
    return torch.autograd.functional.jacobian(f, p0)


@pytest.mark.parametrize("order", [3, 4])
def test_gram_and_rhs_equal_autograd_jacobian(order):
    point = _point(3, 4, order, 0)
    jac = _dense_jacobian(point)
    assert torch.allclose(tangent_gram(point), jac.T @ jac, rtol=1e-10, atol=1e-10)
    y = random_ground_truth(4, 2, order, "general", generator=torch.Generator().manual_seed(1),
                            dtype=F64)
    assert torch.allclose(tangent_rhs(point, y), jac.T @ y.dense().reshape(-1), atol=1e-10)


@settings(max_examples=20, deadline=None)
@given(m=st.integers(1, 5), d=st.integers(1, 6), order=st.integers(2, 4),
       seed=st.integers(0, 10_000))
def test_matvec_equals_dense_gram(m, d, order, seed):
    point = _point(m, d, order, seed)
    v = torch.randn(m * (d + 1), generator=torch.Generator().manual_seed(seed + 1), dtype=F64)
    gram = tangent_gram(point)
    assert torch.allclose(tangent_matvec(point, v), gram @ v, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("m", [2, 5, 9])
def test_lstsq_equals_numpy_on_dense_jacobian(m):
    point = _point(m, 5, 3, m)
    y = random_ground_truth(5, 2, 3, "general", generator=torch.Generator().manual_seed(2),
                            dtype=F64)
    jac, yv = _dense_jacobian(point).numpy(), y.dense().reshape(-1).numpy()
    sol = np.linalg.lstsq(jac, yv, rcond=1e-12)[0]
    expect = ((yv - jac @ sol) ** 2).sum() / (yv ** 2).sum()
    dense = tangent_lstsq(point, y, solver="dense")
    cg = tangent_lstsq(point, y, solver="cg", tol=1e-13)
    assert dense["rank"] == np.linalg.matrix_rank(jac) == min(m * 5, dim_sym(5, 3))
    assert abs(dense["rel_residual"] - expect) < 1e-9
    assert abs(cg["rel_residual"] - expect) < 1e-7


def test_residual_vanishes_exactly_when_tangent_space_fills_sym3():
    """The experiment's checks at d = 20 (dim Sym^3 = 1540): residual of a rank-1 target is > 0.2
    when m d <= 0.5 dim Sym^3, and < 1e-6 once m d >= 1.05 dim Sym^3. Init u_i ~ N(0, I/d)."""
    d = 20
    target = random_ground_truth(d, 1, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    for m, lo, hi in [(38, 0.2, 1.0), (81, -1e-6, 1e-6)]:
        model = TensorModel(d, m, 3, generator=torch.Generator().manual_seed(m), dtype=F64)
        point = SymCP(model.c.detach(), model.u.detach(), 3)
        res = tangent_lstsq(point, target, solver="dense", rcond=1e-10)
        assert lo < res["rel_residual"] < hi
        assert res["rank"] == min(m * d, 1540)


def test_bad_arguments():
    point = _point(2, 3, 3, 0)
    with pytest.raises(ValueError, match="solver"):
        tangent_lstsq(point, point, solver="svd")
    with pytest.raises(ValueError, match="same order and d"):
        tangent_residual(point, _point(2, 4, 3, 0))
    with pytest.raises(TypeError, match="SymCP"):
        tangent_gram(torch.zeros(3))


def test_order4_tangent_rank_is_min_of_md_and_dim_sym4():
    d = 6
    dim = dim_sym(d, 4)                                              # C(9, 4) = 126
    target = random_ground_truth(d, 1, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    for m, expect_zero in [(10, False), (22, True)]:                 # m d = 60 and 132
        model = TensorModel(d, m, 4, generator=torch.Generator().manual_seed(m), dtype=F64)
        res = tangent_lstsq(SymCP(model.c.detach(), model.u.detach(), 4), target)
        assert res["rank"] == min(m * d, dim)
        assert (abs(res["rel_residual"]) < 1e-8) == expect_zero
        if not expect_zero:
            assert res["rel_residual"] > 0.2


@pytest.mark.parametrize("order", [3, 4])
def test_jacobian_in_sym_coordinates_is_an_isometry_of_the_dense_one(order):
    from lazylab.tensor.tangent import sym_coords, tangent_jacobian

    point = _point(3, 4, order, 5)
    jac, dense = tangent_jacobian(point), _dense_jacobian(point)
    assert jac.shape == (dim_sym(4, order), 3 * 5)
    assert torch.allclose(jac.T @ jac, dense.T @ dense, rtol=1e-12, atol=1e-12)
    y = random_ground_truth(4, 2, order, "general", generator=torch.Generator().manual_seed(1),
                            dtype=F64)
    assert torch.allclose(jac.T @ sym_coords(y), dense.T @ y.dense().reshape(-1), atol=1e-12)
    assert abs(float(sym_coords(y) @ sym_coords(y) - y.norm_sq())) < 1e-12


@pytest.mark.parametrize("order,d,seeds", [(3, 8, range(8, 13)), (4, 6, range(4, 9))])
def test_rcond_acts_on_singular_values_of_j_at_md_equal_dim(order, d, seeds):
    """m d = dim Sym^l: the tangent space fills Sym^l (rank = dim, residual 0) for these draws.

    Their smallest singular value of J is 3e-7..1e-5 of the largest: a genuine direction that a cut
    of 1e-10 on the eigenvalues of J^T J (= 1e-5 on J's singular values) dropped in some draws."""
    from lazylab.tensor.tangent import tangent_jacobian

    dim = dim_sym(d, order)
    m = dim // d
    assert m * d == dim
    target = random_ground_truth(d, 1, order, generator=torch.Generator().manual_seed(0), dtype=F64)
    below_old_cut = 0
    for s in seeds:
        model = TensorModel(d, m, order, generator=torch.Generator().manual_seed(s), dtype=F64)
        point = SymCP(model.c.detach(), model.u.detach(), order)
        res = tangent_lstsq(point, target, solver="dense", rcond=1e-10)
        assert res["rank"] == dim
        assert res["rel_residual"] < 1e-12
        sv = torch.linalg.svdvals(tangent_jacobian(point))
        below_old_cut += int(sv[-1] / sv[0] < 1e-5)
    assert below_old_cut >= 1  # the draws include the case the old rule got wrong
