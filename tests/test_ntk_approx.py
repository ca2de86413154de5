"""Approximate kernels (lazylab.ntk.approx): the pseudo-NTK identity and its convergence with the
readout width, the random-projection NTK's unbiasedness and 1/sqrt(k) error, the reported errors."""

import math

import pytest
import torch
from torch import nn

from lazylab.ntk import approx, ntk
from lazylab.ntk.approx import projected_ntk, pseudo_ntk

F64 = torch.float64


def _mlp(d=5, m=16, o=4, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, m), nn.Tanh(), nn.Linear(m, o)).double()


def _naive_full(model, x1, x2):
    """K[n, m, a, b] from per-example autograd Jacobians (float64)."""
    params = list(model.parameters())

    def jac(x):
        rows = []
        for i in range(x.shape[0]):
            out = model(x[i:i + 1]).reshape(-1)
            rows.append(torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(
                out[a], params, retain_graph=True)]) for a in range(out.shape[0])]))
        return torch.stack(rows)

    return torch.einsum("nap,mbp->nmab", jac(x1), jac(x2))


def test_pseudo_ntk_is_the_mean_of_all_output_blocks():
    model = _mlp()
    x1, x2 = torch.randn(6, 5, dtype=F64), torch.randn(4, 5, dtype=F64)
    full = _naive_full(model, x1, x2)
    res = pseudo_ntk(model, x1, x2)
    assert res.kernel.shape == (6, 4)
    assert torch.allclose(res.kernel, full.sum((2, 3)) / 4, rtol=1e-11, atol=1e-12)
    sub = pseudo_ntk(model, x1, params=["2.weight"]).kernel  # parameter names of the model
    h = torch.tanh(model[0](x1))
    assert torch.allclose(sub, h @ h.T, rtol=1e-11)  # readout only: (1/O) sum_c c' d_cc' h.h'


def test_pseudo_ntk_reports_its_error_against_the_full_kernel():
    model = _mlp(seed=1)
    x = torch.randn(7, 5, dtype=F64)
    res = pseudo_ntk(model, x, check=5)
    full = _naive_full(model, x[:5], x[:5])
    approx_full = res.kernel[:5, :5, None, None] * torch.eye(4, dtype=F64)
    expect = float(torch.linalg.norm(approx_full - full) / torch.linalg.norm(full))
    assert abs(res.rel_error - expect) < 1e-12
    trace = torch.diagonal(full, dim1=2, dim2=3).sum(-1) / 4
    expect_t = float(torch.linalg.norm(res.kernel[:5, :5] - trace) / torch.linalg.norm(trace))
    assert abs(res.info["rel_error_trace"] - expect_t) < 1e-12


def test_pseudo_ntk_converges_to_the_entk_with_readout_width():
    """At init, pNTK (x) I_O -> eNTK as the readout widens (cross-output terms ~ m^{-1/2})."""
    x = torch.randn(8, 5, dtype=F64, generator=torch.Generator().manual_seed(0))
    errs = []
    for m in (16, 256, 4096):
        errs.append(sum(pseudo_ntk(_mlp(m=m, seed=s), x, check=8).rel_error
                        for s in range(3)) / 3)
    assert errs[0] > errs[1] > errs[2]
    assert errs[0] / errs[2] > 4  # 1/sqrt(m) predicts 16 over a 256x wider readout
    # negative control: the same widths, but 1 output: nothing to approximate (error 0)
    assert pseudo_ntk(_mlp(m=16, o=1), x, check=8).rel_error < 1e-12


@pytest.mark.parametrize("sketch", approx.SKETCHES)
def test_projected_ntk_is_unbiased(sketch):
    model = _mlp(m=8, o=2, seed=2)
    x = torch.randn(5, 5, dtype=F64)
    exact = ntk(model, x)
    seeds = 300
    runs = [projected_ntk(model, x, k=8, sketch=sketch, seed=s).kernel for s in range(seeds)]
    mean = torch.stack(runs).mean(0)
    single = sum(float(torch.linalg.norm(r - exact) / torch.linalg.norm(exact))
                 for r in runs) / seeds
    err_mean = float(torch.linalg.norm(mean - exact) / torch.linalg.norm(exact))
    assert single > 0.1  # k = 8 << P: each draw is far off ...
    assert err_mean < 3 * single / math.sqrt(seeds)  # ... their mean is not (no bias)


@pytest.mark.parametrize("sketch", approx.SKETCHES)
def test_projected_ntk_error_falls_like_inverse_sqrt_k(sketch):
    model = _mlp(m=64, o=2, seed=3)
    x = torch.randn(6, 5, dtype=F64)
    ks = (16, 64, 256, 1024)
    errs = [sum(projected_ntk(model, x, k=k, sketch=sketch, seed=s, check=6).rel_error
                for s in range(6)) / 6 for k in ks]
    slope = (math.log(errs[-1]) - math.log(errs[0])) / (math.log(ks[-1]) - math.log(ks[0]))
    assert -0.7 < slope < -0.3, (errs, slope)


def test_projected_ntk_reports_the_measured_error_and_holds_one_batch(monkeypatch):
    model = _mlp(seed=4)
    x1, x2 = torch.randn(9, 5, dtype=F64), torch.randn(7, 5, dtype=F64)
    seen = []
    orig = approx.jacobian_features

    def spy(problem, x, names=None):
        seen.append(x.shape[0])
        return orig(problem, x, names)

    monkeypatch.setattr(approx, "jacobian_features", spy)
    res = projected_ntk(model, x1, x2, k=32, seed=1, batch_size=4, check=5)
    assert max(seen) <= 4  # per-example gradients of at most one batch at a time
    exact = _naive_full(model, x1[:5], x2[:5])
    exact = torch.diagonal(exact, dim1=2, dim2=3).sum(-1)
    expect = float(torch.linalg.norm(res.kernel[:5, :5] - exact) / torch.linalg.norm(exact))
    assert abs(res.rel_error - expect) < 1e-10
    again = projected_ntk(model, x1, x2, k=32, seed=1, batch_size=3).kernel
    assert torch.allclose(again, res.kernel, rtol=1e-12)  # same seed, same sketch


def test_bad_arguments():
    model, x = _mlp(), torch.randn(3, 5, dtype=F64)
    with pytest.raises(ValueError, match="k must be"):
        projected_ntk(model, x, k=0)
    with pytest.raises(ValueError, match="sketch"):
        projected_ntk(model, x, k=4, sketch="gaussian-ish")
    with pytest.raises(ValueError, match="check"):
        pseudo_ntk(model, x, check=-1)
    with pytest.raises(ValueError, match="output"):
        pseudo_ntk(model, x, output="full")
