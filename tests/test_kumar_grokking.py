"""Tests of the `kumar-grokking` experiment (Kumar et al. 2024): the task and model against direct
formulas, run_cell on small cells, report() on real and on constructed records, and the negative
control (the linearised net = the lazy limit never generalizes here, so the checks fail)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from lazylab.lab.experiments.kumar_grokking import (
    KumarConfig,
    kumar_data,
    kumar_net,
    report,
    run_cell,
)
from lazylab.lab.registry import RunContext, get_experiment

CTX = RunContext(progress=False)
SMALL = dict(D=12, N=60, n_train=60, n_test=200, track=50)


def _rows(cfg: KumarConfig) -> list[dict]:
    return [{**vars(cfg), **r} for r in run_cell(cfg, CTX)]


@pytest.fixture(scope="module")
def net_cells():
    rows = []
    for a in (0.5, 2.0):
        rows += _rows(KumarConfig(alpha=a, steps=1000, **SMALL))
    return pd.DataFrame(rows)


def test_task_and_model_match_the_formulas():
    cfg = KumarConfig(D=5, N=7, n_train=4, n_test=3, eps=0.3)
    (X, y), (Xt, yt) = kumar_data(cfg)
    g = torch.Generator().manual_seed(4242)
    beta = torch.randn(5, generator=g)
    assert torch.allclose(y, (X @ beta) ** 2 / 2) and Xt.shape == (3, 5)
    net = kumar_net(cfg)
    W = net.W.detach()
    ref = torch.stack([np.mean([float(W[i] @ x) + 0.15 * float(W[i] @ x) ** 2 for i in range(7)])
                       * torch.ones(()) for x in X])
    assert torch.allclose(net(X).detach(), ref.float(), atol=1e-5)
    assert get_experiment("kumar-grokking").presets["paper"].set["D"] == 100


def test_larger_alpha_delays_generalization(net_cells):
    small = net_cells[net_cells.alpha == 0.5].sort_values("step")
    big = net_cells[net_cells.alpha == 2.0].sort_values("step")
    assert small.test_mse.min() < 0.1  # generalizes within 1000 steps
    assert big.test_mse.iloc[-1] > small.test_mse.iloc[-1]
    delay_small = small.step[small.test_mse < 0.1].min() - small.step[small.train_mse < 0.1].min()
    t_tr_big = big.step[big.train_mse < 0.1].min()
    assert t_tr_big < 1000  # large alpha fits the training set ...
    assert not (big.test_mse < 0.1).any()  # ... but has not generalized: delay > 1000 - t_tr_big
    assert 1000 - t_tr_big > delay_small


def _constructed(delays: dict[float, float]) -> pd.DataFrame:
    rows = []
    for a, d in delays.items():
        for s in range(0, 3001, 50):
            rows.append({"alpha": a, "seed": 0, "step": s, "train_mse": 1.0 if s < 100 else 0.01,
                         "test_mse": 1.0 if s < 100 + d else 0.01})
    return pd.DataFrame(rows)


def test_report_on_constructed_records():
    rep = report(_constructed({0.5: 100, 1.0: 400, 2.0: 900}), KumarConfig())
    assert all(c.passed for c in rep.checks), [(c.name, c.value) for c in rep.checks]
    assert rep.metrics["delay@alpha=2"] == 900
    rep = report(_constructed({0.5: 900, 1.0: 400, 2.0: 100}), KumarConfig())  # shrinking delay
    assert not rep.checks[0].passed


def test_negative_control_linearized_never_generalizes():
    lin = pd.DataFrame(_rows(KumarConfig(alpha=1.0, steps=400, model="linearized", **SMALL)))
    assert lin.test_mse.min() > 0.3 and lin.train_mse.iloc[-1] < lin.train_mse.iloc[0]
    rep = report(lin, KumarConfig(**SMALL))
    assert not rep.checks[1].passed  # "generalizes eventually" fails in the lazy limit


def test_bad_model_name():
    with pytest.raises(ValueError, match="model"):
        run_cell(KumarConfig(model="mlp", **SMALL), CTX)
