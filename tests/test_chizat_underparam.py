"""chizat-underparam (Chizat et al. Fig 2(b)): online SGD against the population loss, its claims
and their negative controls."""

import pandas as pd
import pytest
import torch

from lazylab.lab.experiments import chizat_underparam as cu
from lazylab.lab.registry import RunContext, get_experiment

CTX = RunContext(progress=False)
SMALL = dict(d=10, m=10, batch=50, n_pop=300, n_track=4)


def _run(taus, steps, seeds=(0, 1, 2)):
    rows = []
    for seed in seeds:
        for tau in taus:
            cfg = cu.ChizatUnderparamConfig(tau=tau, steps=steps, seed=seed, **SMALL)
            rows += [{**r, "tau": tau, "seed": seed, "cell_id": f"{tau}-{seed}"}
                     for r in cu.run_cell(cfg, CTX)]
    return pd.DataFrame(rows)


def test_run_cell_starts_at_the_zero_predictor_and_sgd_lowers_the_population_loss():
    recs = cu.run_cell(cu.ChizatUnderparamConfig(tau=0.1, steps=200, **SMALL), CTX)
    assert recs[0]["step"] == 0 and recs[0]["pop_loss_rel"] == pytest.approx(1.0, abs=1e-12)
    assert recs[-1]["step"] == 200 and recs[-1]["pop_loss_rel"] < 0.5
    again = cu.run_cell(cu.ChizatUnderparamConfig(tau=0.1, steps=200, **SMALL), CTX)
    assert [r["pop_loss"] for r in again] == [r["pop_loss"] for r in recs]  # same seed, same numbers
    assert recs[0]["lr"] == pytest.approx(min(25.0, 0.25 / 0.01))
    # the population loss is 1/2 E (f - y)^2 on the fixed sample: the zero predictor's is 1/2 E y^2
    assert recs[0]["zero_loss"] > 0 and torch.isfinite(torch.tensor(recs[-1]["pop_loss"]))


def test_claims_fail_on_controls():
    """Negative controls: untrained nets (0 steps) neither reach ≈ 0 at small tau nor separate the
    regimes; a lazy run stopped after 20 steps has not converged (Thm 2.5's claim fails)."""
    un = cu.report(_run((0.05, 2.0), steps=0), cu.ChizatUnderparamConfig())
    got = {c.name.split(":")[0].split(" (")[0]: c for c in un.checks}
    assert not got["tau <= 0.15"].passed and not got["tau >= 0.5 stays above 0"].passed
    early = cu.report(_run((2.0,), steps=20), cu.ChizatUnderparamConfig())
    conv = [c for c in early.checks if "converged" in c.name][0]
    assert not conv.passed and conv.n == 3


def test_registered():
    exp = get_experiment("chizat-underparam")
    assert {"quick", "paper"} <= set(exp.presets)
    assert len(exp.presets["quick"].sweep["seed"]) >= 3
    assert exp.presets["paper"].sweep["tau"][:3] == [0.01, 0.02, 0.04] and 8.0 in exp.presets[
        "paper"].sweep["tau"]
