"""Tests of the `catapult` experiment (Lewkowycz et al. 2020): run_cell on small cells, report()
on real records, and the negative control (the linearised net has a constant kernel: no
catapult window, so the window check fails)."""

from __future__ import annotations

import pandas as pd
import pytest

from lazylab.lab.experiments.catapult import CatapultConfig, report, run_cell
from lazylab.lab.registry import RunContext, get_experiment

CTX = RunContext(progress=False)
SMALL = dict(m=256, n_train=16, steps=60, every=10)


def _cells(model: str, etas=(1.0, 1.9, 3.0)) -> pd.DataFrame:
    rows = []
    for eta in etas:
        cfg = CatapultConfig(eta_lambda0=eta, model=model, **SMALL)
        for r in run_cell(cfg, CTX):
            rows.append({**vars(cfg), **r})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def net_cells():
    return _cells("net")


def test_registered_with_presets():
    exp = get_experiment("catapult")
    assert {"quick", "paper"} <= set(exp.presets)


def test_phases_of_the_net(net_cells):
    by = net_cells.set_index("eta_lambda0")
    assert by.loc[1.0, "phase"] == "lazy" and by.loc[1.9, "phase"] == "lazy"
    assert by.loc[3.0, "phase"] == "catapult"
    assert by.loc[3.0, "peak_over_L0"] > 1.1 and by.loc[3.0, "lambda_end_over_lambda0"] < 2 / 3.0
    assert by.loc[1.0, "lambda_end_over_lambda0"] == pytest.approx(1.0, abs=0.1)


def test_report_checks_pass_on_the_net(net_cells):
    rep = report(net_cells, CatapultConfig(**SMALL))
    assert all(c.passed for c in rep.checks), [(c.name, c.value) for c in rep.checks]


def test_negative_control_linearized_has_no_catapult():
    lin = _cells("linearized", etas=(1.0, 3.0))
    by = lin.set_index("eta_lambda0")
    assert by.loc[3.0, "phase"] == "divergent" and not by.loc[3.0, "catapult"]
    rep = report(lin, CatapultConfig(**SMALL))
    window = [c for c in rep.checks if c.name.startswith("catapult window")][0]
    assert not window.passed


def test_bad_model_name():
    with pytest.raises(ValueError, match="model"):
        run_cell(CatapultConfig(model="cnn", **SMALL), CTX)
