"""Tests of the `geiger-crossover` experiment (Geiger et al. 2020): the crossover interpolation
against a closed form, report() on constructed records (alpha* = h^-1/2 passes, an h-independent
alpha* fails), and real cells: in the lazy regime the kernel change falls with the width under NTK
scaling, while under the mean-field read-out (negative control) it does not."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lazylab.lab.experiments.geiger_crossover import (
    GeigerConfig,
    crossover,
    geiger_data,
    report,
    run_cell,
)
from lazylab.lab.registry import RunContext, get_experiment

CTX = RunContext(progress=False)


def test_crossover_is_exact_for_a_power_law():
    a = np.logspace(-2, 2, 9)
    assert crossover(a, (a / 0.37) ** -1.5) == pytest.approx(0.37, rel=1e-10)
    assert np.isnan(crossover(a, np.full(9, 5.0)))


def _constructed(alpha_star) -> pd.DataFrame:
    rows = []
    for h in (32, 64, 128, 256):
        for a in np.logspace(-2, 2, 9):
            rows.append({"h": h, "alpha": a, "seed": 0, "converged": True,
                         "kernel_change": (a / alpha_star(h)) ** -1.0})
    return pd.DataFrame(rows)


def test_report_passes_for_inverse_sqrt_h_and_fails_without_it():
    rep = report(_constructed(lambda h: h ** -0.5), GeigerConfig())
    assert rep.metrics["alpha_star_exponent"] == pytest.approx(-0.5, abs=1e-9)
    assert all(c.passed for c in rep.checks)
    bad = report(_constructed(lambda h: 0.3), GeigerConfig())  # crossover independent of h
    assert not bad.checks[0].passed


def test_data_labels_and_registry():
    (X, y), P = geiger_data(GeigerConfig(n_train=20, n_probe=7))
    assert X.shape == (20, 10) and P.shape == (7, 10)
    assert set(y.tolist()) <= {-1.0, 1.0} and (y == np.sign(X[:, 0] * X[:, 1])).all()
    assert get_experiment("geiger-crossover").presets["paper"].sweep["h"] == [100, 300, 1000, 3000]


@pytest.fixture(scope="module")
def lazy_side():
    out = {}
    for scaling in ("ntk", "mean_field"):
        for h in (32, 128):
            cfg = GeigerConfig(h=h, alpha=10.0, steps=200, scaling=scaling)
            out[scaling, h] = run_cell(cfg, CTX)[0]["kernel_change"]
    return out


def test_ntk_scaling_kernel_change_falls_with_width(lazy_side):
    ratio = lazy_side["ntk", 128] / lazy_side["ntk", 32]
    assert ratio < 0.75  # theory: (128/32)^-1/2 = 0.5 in the lazy regime


def test_negative_control_mean_field_readout(lazy_side):
    ratio = lazy_side["mean_field", 128] / lazy_side["mean_field", 32]
    assert ratio > 1.0  # alpha/sqrt(h) is the effective scale: wider = less lazy


def test_bad_scaling():
    with pytest.raises(ValueError, match="scaling"):
        run_cell(GeigerConfig(scaling="mup"), CTX)


def test_mean_field_run_equals_ntk_run_at_alpha_over_sqrt_h():
    """The control's step rule: lazy(net_MF, alpha) == lazy(net_NTK, alpha / sqrt(h)) exactly."""
    mf = run_cell(GeigerConfig(h=64, alpha=4.0, steps=30, scaling="mean_field"), CTX)[0]
    ntk = run_cell(GeigerConfig(h=64, alpha=0.5, steps=30, scaling="ntk"), CTX)[0]
    assert mf["kernel_change"] == pytest.approx(ntk["kernel_change"], rel=1e-3)
    assert mf["steps_run"] == ntk["steps_run"]
