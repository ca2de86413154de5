"""Matrix-free kernel machines (lazylab.kernel_solvers) against the dense float64 solves."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import lazylab
from lazylab.kernel_methods import gradient_flow, kernel_regression
from lazylab.kernel_solvers import (
    NTKOperator,
    StoredKernel,
    gradient_flow_krylov,
    kernel_regression_cg,
    nystrom_factor,
    pivoted_cholesky_factor,
)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    net = lazylab.MLP([6, 64, 64, 1]).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 6, generator=g, dtype=torch.float64)
    xt = torch.randn(40, 6, generator=g, dtype=torch.float64)
    y = torch.randn(300, generator=g, dtype=torch.float64)
    return net, x, xt, y, lazylab.ntk(net, x), lazylab.ntk(net, xt, x)


def test_ntk_operator_products_rows_diagonal(case):
    net, x, xt, _, k, kt = case
    op = NTKOperator(net, x, batch_size=128)  # 3 example batches
    v = torch.randn(300, 3, dtype=torch.float64)
    assert _rel(op.matmul(v), k @ v) < 1e-12
    assert _rel(NTKOperator(net, xt, x).matmul(v), kt @ v) < 1e-12
    assert _rel(op.diagonal(), k.diagonal()) < 1e-12
    assert _rel(op.rows(torch.tensor([3, 200])), k[[3, 200]]) < 1e-12


def test_full_output_operators_multi_output():
    torch.manual_seed(0)
    net = lazylab.MLP([5, 32, 3]).double()
    x = torch.randn(20, 5, dtype=torch.float64)
    kf = lazylab.ntk(net, x, output="full")  # (20, 20, 3, 3)
    flat = kf.permute(0, 2, 1, 3).reshape(60, 60)
    v = torch.randn(60, 2, dtype=torch.float64)
    op = NTKOperator(net, x, output="full", batch_size=7)
    assert _rel(op.matmul(v), flat @ v) < 1e-12
    assert _rel(op.diagonal(), flat.diagonal()) < 1e-12
    assert _rel(op.rows(torch.tensor([4, 59])), flat[[4, 59]]) < 1e-12
    st = StoredKernel(kf, tile=3)
    assert _rel(st.matmul(v), flat @ v) < 1e-12
    assert _rel(st.diagonal(), flat.diagonal()) < 1e-12
    assert _rel(st.rows(torch.tensor([4, 59])), flat[[4, 59]]) < 1e-12
    y = torch.randn(20, 3, dtype=torch.float64)
    ref = kernel_regression(kf, y, ridge=1e-2)
    got, info = kernel_regression_cg(op, y, ridge=1e-2, rank=10)
    assert got.shape == (20, 3) and _rel(got, ref) < 1e-6 and info.converged


def test_stored_kernel_from_npy_file(case, tmp_path):
    net, x, _, _, k, _ = case
    kk = lazylab.ntk(net, x, out=tmp_path / "k.npy", block_size=128)
    assert _rel(kk, k) < 1e-12
    st = StoredKernel(tmp_path / "k.npy", tile=64)
    assert isinstance(st.k, np.memmap)
    v = torch.randn(300, 2, dtype=torch.float64)
    assert _rel(st.matmul(v), k @ v) < 1e-12 and st.matvecs == 2


@pytest.mark.parametrize("preconditioner", [None, "nystrom", "pivoted_cholesky"])
@pytest.mark.parametrize("kind", ["stored", "ntvp"])
def test_kernel_regression_cg_matches_dense(case, kind, preconditioner):
    net, x, xt, y, k, kt = case
    ridge = 1e-3 * float(k.diagonal().mean())
    ref = kernel_regression(k, y, kt, ridge=ridge)
    train_op = StoredKernel(k, tile=100) if kind == "stored" else NTKOperator(net, x)
    test_op = kt if kind == "stored" else NTKOperator(net, xt, x)
    got, info = kernel_regression_cg(train_op, y, test_op, ridge=ridge,
                                     preconditioner=preconditioner, rank=50)
    assert got.shape == (40,)
    assert _rel(got, ref) < 1e-6
    assert info.converged and info.residual < 1e-9
    assert info.matvecs == info.iterations + 1  # one product per iteration + the initial residual


def test_preconditioner_cuts_iterations(case):
    """The claim of the preconditioners: fewer CG iterations at the same accuracy."""
    _, _, _, y, k, _ = case
    ridge = 1e-3 * float(k.diagonal().mean())
    its = {p: kernel_regression_cg(k, y, ridge=ridge, preconditioner=p, rank=50)[1].iterations
           for p in (None, "nystrom", "pivoted_cholesky")}
    assert its["nystrom"] < 0.6 * its[None]
    assert its["pivoted_cholesky"] < 0.6 * its[None]


def test_cg_reports_non_convergence(case):
    _, _, _, y, k, _ = case
    with pytest.warns(Warning, match="CG terminated in 5 iterations"):  # linear_operator's own
        _, info = kernel_regression_cg(k, y, ridge=1e-6, preconditioner=None, max_iter=5)
    assert not info.converged and info.residual > 1e-6


@pytest.mark.parametrize("t", [0.5, 50.0, 5e3, math.inf])
def test_gradient_flow_krylov_matches_eigh(case, t):
    net, x, xt, y, k, kt = case
    f0 = 0.1 * torch.randn(300, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    f0t = torch.zeros(40, dtype=torch.float64) + 0.05
    ref_tr, ref_te = gradient_flow(k, y, t, kt, f0=f0, f0_test=f0t)
    tr, te, info = gradient_flow_krylov(StoredKernel(k), y, t, kt, f0=f0, f0_test=f0t)
    assert _rel(tr, ref_tr) < 1e-6 and _rel(te, ref_te) < 1e-6
    assert info.converged and info.method == ("pcg" if math.isinf(t) else "lanczos")
    tr2, te2, _ = gradient_flow_krylov(NTKOperator(net, x), y, t, NTKOperator(net, xt, x),
                                       f0=f0, f0_test=f0t)
    assert _rel(tr2, ref_tr) < 1e-6 and _rel(te2, ref_te) < 1e-6


def test_gradient_flow_krylov_too_few_steps_is_flagged():
    """A flat spectrum (eigenvalues 1e-4..1, log-spaced) at t lam/n ~ 1 needs many steps."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(200, 200, generator=g, dtype=torch.float64))
    k = q @ torch.diag(torch.logspace(-4, 0, 200, dtype=torch.float64)) @ q.T
    y = torch.randn(200, generator=g, dtype=torch.float64)
    ref = gradient_flow(k, y, 2e5)[0]
    tr, _, info = gradient_flow_krylov(k, y, 2e5, start=4, max_iter=8)
    assert not info.converged
    assert _rel(tr, ref) > 1e-6  # and it is indeed inaccurate
    tr, _, info = gradient_flow_krylov(k, y, 2e5)
    assert info.converged and _rel(tr, ref) < 1e-6 and info.iterations > 8


def test_low_rank_factors_exact_on_low_rank_kernels():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(50, 7, generator=g, dtype=torch.float64)
    k = a @ a.T  # rank 7
    lmat, piv = pivoted_cholesky_factor(StoredKernel(k), rank=20)
    assert lmat.shape[1] == 7 and len(set(piv.tolist())) == 7  # stops once the residual is 0
    assert _rel(lmat @ lmat.T, k) < 1e-10
    ln, _ = nystrom_factor(StoredKernel(k), rank=10)
    assert _rel(ln @ ln.T, k) < 1e-8


def test_bad_arguments(case):
    _, _, _, y, k, kt = case
    with pytest.raises(ValueError, match="ridge must be >= 0"):
        kernel_regression_cg(k, y, ridge=-1.0)
    with pytest.raises(ValueError, match="must be square"):
        kernel_regression_cg(kt, y[:40])
    with pytest.raises(ValueError, match="y_train of shape"):
        kernel_regression_cg(k, y[:10])
    with pytest.raises(ValueError, match="preconditioner must be"):
        kernel_regression_cg(k, y, preconditioner="jacobi")
    with pytest.raises(TypeError, match="K_train must be"):
        kernel_regression_cg([[1.0]], y)
    with pytest.raises(ValueError, match="t must be >= 0"):
        gradient_flow_krylov(k, y, -1.0)
    with pytest.raises(ValueError, match="output must be"):
        NTKOperator(lazylab.MLP([3, 1]), torch.randn(4, 3), output="diagonal")


@pytest.mark.slow
def test_kernel_regression_cg_n5000_matches_dense(tmp_path):
    """N = 5000: a memory-mapped kernel and the NTK operator against the dense Cholesky solve."""
    torch.manual_seed(0)
    net = lazylab.MLP([10, 128, 128, 1]).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5000, 10, generator=g, dtype=torch.float64)
    xt = torch.randn(200, 10, generator=g, dtype=torch.float64)
    y = torch.sin(x[:, 0]) + 0.1 * torch.randn(5000, generator=g, dtype=torch.float64)
    k = lazylab.ntk(net, x, out=tmp_path / "k.npy")
    kt = lazylab.ntk(net, xt, x)
    ridge = 1e-4 * float(torch.diagonal(k).mean())
    ref = kernel_regression(torch.as_tensor(np.asarray(k)), y, kt, ridge=ridge)
    got, info = kernel_regression_cg(tmp_path / "k.npy", y, kt, ridge=ridge, rank=200)
    assert _rel(got, ref) < 1e-6 and info.converged
    got2, info2 = kernel_regression_cg(NTKOperator(net, x), y, NTKOperator(net, xt, x),
                                       ridge=ridge, rank=200)
    assert _rel(got2, ref) < 1e-6 and info2.converged
    print(f"N=5000 CG iterations: stored+pivoted Cholesky {info.iterations}, "
          f"NTK operator+Nystrom {info2.iterations}")
