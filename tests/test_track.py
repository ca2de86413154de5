import copy
import math

import torch

import lazylab
from lazylab.track import LinearizedTwin, WeightChange


def test_weight_change_matches_direct_computation():
    torch.manual_seed(0)
    X = torch.randn(20, 3)
    y = X[:, 0]
    net = lazylab.TwoLayerNet(3, 8)
    w0 = copy.deepcopy(net)
    h = lazylab.train(net, (X, y), lr=0.5, steps=10, trackers=[WeightChange(per_layer=True)])
    num = sum((a - b).pow(2).sum() for a, b in zip(net.parameters(), w0.parameters()))
    den = sum(b.pow(2).sum() for b in w0.parameters())
    assert math.isclose(h.final["rel_weight_change"], math.sqrt(num / den), rel_tol=1e-5)
    dh = (net.hidden.weight - w0.hidden.weight).norm() / w0.hidden.weight.norm()
    assert math.isclose(h.final["rel_change/hidden.weight"], dh.item(), rel_tol=1e-5)
    assert h.records[0]["rel_weight_change"] == 0.0


def test_linearized_twin_of_a_linear_model_has_zero_gap():
    """A model linear in its parameters equals its linearization: the gap stays ~0."""
    torch.manual_seed(0)
    X = torch.randn(20, 3, dtype=torch.float64)
    net = torch.nn.Linear(3, 1).double()
    h = lazylab.train(net, (X, X[:, :1] * 2), lr=0.3, steps=50, trackers=[LinearizedTwin(X)])
    assert h.max("lin_gap") < 1e-12 and h.max("param_gap") < 1e-12


def test_linearized_twin_of_a_nonlinear_model_moves():
    torch.manual_seed(0)
    X = torch.randn(20, 3, dtype=torch.float64)
    net = lazylab.TwoLayerNet(3, 4, activation="tanh").double()
    h = lazylab.train(net, (X, torch.sin(3 * X[:, 0])), lr=1.0, steps=100,
                      trackers=[LinearizedTwin(X)])
    assert h.final["lin_gap"] > 1e-3


def test_linearized_twin_resume_with_adam_matches_uninterrupted(tmp_path):
    """Checkpoint/resume keeps the twin's own optimizer (Adam here) and its state."""
    X = torch.randn(24, 3, dtype=torch.float64)
    y = torch.sin(2 * X[:, 0])

    def run(steps, ckpt=None, resume=False):
        torch.manual_seed(5)
        net = lazylab.TwoLayerNet(3, 8, activation="tanh").double()
        twin = LinearizedTwin(X)
        h = lazylab.train(net, (X, y), optimizer="adam", lr=0.01, steps=steps, trackers=[twin],
                          checkpoint=ckpt, checkpoint_every=5, resume=resume, track_steps=5)
        return h, twin

    full, _ = run(20)
    run(10, tmp_path / "c.pt")
    resumed, twin = run(20, tmp_path / "c.pt", resume=True)
    assert isinstance(twin.opt, torch.optim.Adam)
    assert [r["lin_gap"] for r in resumed.records] == [r["lin_gap"] for r in full.records]
