"""chizat-spectrum (Chizat et al. Fig 7(b)): the tangent-kernel spectrum statistics, the claims on
a CNN at init, and their negative control (a linear model on white noise)."""

import numpy as np
import pandas as pd
import pytest

from lazylab.lab.experiments import chizat_spectrum as cs
from lazylab.lab.registry import RunContext, get_experiment

CTX = RunContext(progress=False)


def test_spectrum_stats_on_a_known_spectrum():
    C, N = 10, 400
    i = np.arange(1, N + 1)
    ev = np.where(i <= C, 1.0, 0.1 * (C + 1) / i)  # gap 10 after C, then exactly 1/i
    s = cs.spectrum_stats(ev, C)
    assert s["gap"] == pytest.approx(10.0) and s["slope"] == pytest.approx(-1.0, abs=1e-9)


def _run(model, inputs, seeds=(0, 1, 2), **kw):
    rows = []
    for seed in seeds:
        cfg = cs.ChizatSpectrumConfig(model=model, inputs=inputs, seed=seed, epochs=0, **kw)
        rows += [{**r, "inputs": inputs, "seed": seed} for r in cs.run_cell(cfg, CTX)]
    return pd.DataFrame(rows)


def test_cnn_claims_hold_and_fail_on_a_linear_model_of_white_noise():
    """SmallCNN on digits at init: a gap after the top C = 10 eigenvalues and a ~1/i bulk (the
    figure's pattern). Negative control: a linear model on Gaussian inputs has the kernel
    X X^T ⊗ I_C — C-fold degenerate eigenvalues, a flat bulk — and must fail both claims."""
    ok = cs.report(_run("smallcnn", "data", n_probe=30, width=16), cs.ChizatSpectrumConfig())
    assert len(ok.checks) == 2 and all(c.passed and c.n == 3 for c in ok.checks), ok.checks
    bad = cs.report(_run("linear", "gaussian", n_probe=30), cs.ChizatSpectrumConfig())
    assert len(bad.checks) == 2 and not any(c.passed for c in bad.checks), bad.checks
    # untrained (epochs = 0): the kernel at the 'trained' weights is the initial one
    assert bad.metrics["kernel_distance[gaussian]"] == pytest.approx(0.0, abs=1e-12)


def test_registered():
    exp = get_experiment("chizat-spectrum")
    assert {"quick", "paper"} <= set(exp.presets)
    assert exp.presets["paper"].set["model"] == "vgg11"
    assert len(exp.presets["quick"].sweep["seed"]) >= 3
