"""chizat-kernel-limit: eq. (8) vs Monte-Carlo, the net's empirical kernel vs the finite-m formula,
and the report's rate check."""

import math

import pandas as pd
import pytest
import torch

from lazylab.data.synthetic import sphere
from lazylab.lab.experiments.chizat_kernel_limit import (
    KernelLimitConfig,
    empirical_kernel,
    limit_kernel,
    report,
    run_cell,
)
from lazylab.lab.registry import RunContext
from lazylab.models import TwoLayerNet


def _finite_m(A, b, x1, x2):
    """Chizat et al. App A.2: k_m^(a), k_m^(b) from the parameters (a_j rows of A, b_j), naive loops
    over the units are replaced by exact float64 sums."""
    m = A.shape[0]
    z1, z2 = x1 @ A.T, x2 @ A.T  # (N, m)
    ka = (x1 @ x2.T) * (((z1 > 0) * b**2) @ (z2 > 0).T.to(b.dtype)) / m
    kb = torch.relu(z1) @ torch.relu(z2).T / m
    return ka, kb


def test_limit_formula_matches_monte_carlo():
    d, M = 10, 400_000
    g = torch.Generator().manual_seed(3)
    A = torch.randn(M, d, generator=g, dtype=torch.float64)   # E ||a||^2 = d
    b = torch.randn(M, generator=g, dtype=torch.float64)      # E b^2 = 1
    x = sphere(6, d, seed=1, dtype=torch.float64)
    x[1] = x[0]                       # phi = 0
    x[2] = -x[0]                      # phi = pi
    ka, kb = _finite_m(A, b, x, x)
    la, lb = limit_kernel(x, parts=True)
    # CLT: each entry is a mean of M i.i.d. terms of O(1) variance -> error ~ 1/sqrt(M) = 1.6e-3
    assert torch.allclose(ka, la, atol=8e-3)
    assert torch.allclose(kb, lb, atol=8e-3)
    # closed form by hand at phi = 0 on the unit sphere: k^(a) = 1/2, k^(b) = d/(2d) = 1/2
    assert la[0, 1].item() == pytest.approx(0.5) and lb[0, 1].item() == pytest.approx(0.5)
    assert abs(la[0, 2].item()) < 1e-12 and abs(lb[0, 2].item()) < 1e-12


def test_empirical_kernel_is_the_finite_m_formula():
    d, m = 10, 37
    torch.manual_seed(0)
    net = TwoLayerNet(d, m, scaling="ntk", input_scale=1.0, init_std=1.0).double()
    x1 = sphere(5, d, seed=2, dtype=torch.float64)
    x2 = sphere(4, d, seed=3, dtype=torch.float64)
    A, b = net.hidden.weight.detach(), net.out.weight.detach()[0]
    ka, kb = _finite_m(A, b, x1, x2)
    ea, eb = empirical_kernel(net, x1, x2, parts=True)
    assert torch.allclose(ea, ka, atol=1e-12) and torch.allclose(eb, kb, atol=1e-12)
    assert torch.allclose(empirical_kernel(net, x1, x2), ka + kb, atol=1e-12)


def test_run_cell_records_and_error_shrinks():
    cfg_small = KernelLimitConfig(m=10, n_points=12, n_angles=5)
    cfg_big = KernelLimitConfig(m=4000, n_points=12, n_angles=5)
    r_small = run_cell(cfg_small, RunContext(progress=False))
    r_big = run_cell(cfg_big, RunContext(progress=False))
    assert r_small[0]["kind"] == "error" and len(r_small) == 1 + 5
    assert r_big[0]["rel_err"] < 0.1 < r_small[0]["rel_err"]
    curve = r_big[1:]
    assert curve[0]["phi"] == 0.0 and curve[-1]["phi"] == pytest.approx(math.pi)
    assert curve[0]["k_lim"] == pytest.approx(1.0)  # k^(a) + k^(b) = 1/2 + 1/2 at phi = 0
    with pytest.raises(ValueError, match="n_points"):
        run_cell(KernelLimitConfig(n_points=1), RunContext(progress=False))


def _fake_df(errs):
    rows = []
    for m, e in errs.items():
        rows.append(dict(m=m, seed=0, kind="error", rel_err=e, rel_err_a=e, rel_err_b=e,
                         max_abs_err=e))
        for p in (0.0, 1.0):
            rows.append(dict(m=m, seed=0, kind="curve", phi=p, k_emp=1 - p / 2, k_lim=1 - p / 2))
    return pd.DataFrame(rows)


def test_report_checks_the_rate():
    ms = [10, 100, 1000, 10000]
    good = report(_fake_df({m: 1.5 / math.sqrt(m) for m in ms}), KernelLimitConfig())
    assert good.metrics["slope_log_err_vs_log_m"] == pytest.approx(-0.5)
    assert all(c.passed for c in good.checks)
    bad = report(_fake_df({m: 1.5 / m**0.2 for m in ms}), KernelLimitConfig())  # wrong rate
    assert not bad.checks[0].passed


@pytest.mark.slow
def test_quick_preset_end_to_end(tmp_path):
    import json

    from lazylab.lab.runner import run_experiment

    run_experiment("chizat-kernel-limit", preset="quick", out=tmp_path / "run", progress=False)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert all(c["passed"] for c in summary["checks"]), summary["checks"]


def test_claims_fail_when_the_net_does_not_match_the_limit():
    """Negative control: parameters with std 1.5 instead of the limit's 1 make K_m converge to
    2.25 K, so the relative error to eq. (8) stalls at ~1.25: the -1/2 slope and the
    'error < 3 m^-1/2' claims must fail (and hold for std 1 on the same sizes)."""
    import pandas as pd

    from lazylab.lab.experiments import chizat_kernel_limit as kl
    from lazylab.lab.registry import RunContext

    def run(std):
        rows = []
        for seed in (0, 1, 2):
            for m in (16, 256, 4096):
                cfg = kl.KernelLimitConfig(m=m, seed=seed, n_points=12, n_angles=3, init_std=std)
                rows += [{**r, "m": m, "seed": seed} for r in kl.run_cell(cfg, RunContext(progress=False))]
        return kl.report(pd.DataFrame(rows), kl.KernelLimitConfig())

    good, bad = run(1.0), run(1.5)
    assert all(c.passed and c.n == 3 for c in good.checks), good.checks
    assert len(bad.checks) == 2 and not any(c.passed for c in bad.checks), bad.checks
