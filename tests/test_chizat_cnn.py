"""chizat-cnn: stability of activations vs a naive computation, effective weights, the learning-rate
convention against the paper's code, run_cell on a tiny budget, the report's checks."""

import copy
import math

import pandas as pd
import pytest
import torch
from torch import nn

from lazylab.lab.experiments.chizat_cnn import (
    ChizatCNNConfig,
    effective_network,
    report,
    resolve_fig3b,
    run_cell,
)
from lazylab.lab.registry import RunContext
from lazylab.metrics import activation_stability
from lazylab.models import SmallCNN
from lazylab.regimes import lazy
from lazylab.trainer import train


def _naive_stability(net0, net1, x):
    """Pre-activations of SmallCNN's conv layers computed by hand, layer by layer."""
    fr = []
    h0 = h1 = x
    convs0 = [m for m in net0.features if isinstance(m, nn.Conv2d)]
    convs1 = [m for m in net1.features if isinstance(m, nn.Conv2d)]
    for c0, c1 in zip(convs0, convs1):
        z0, z1 = c0(h0), c1(h1)
        fr.append((torch.sign(z0) == torch.sign(z1)).double().mean().item())
        h0, h1 = torch.relu(z0), torch.relu(z1)
    return sum(fr) / len(fr)


def test_activation_stability_matches_naive_loop():
    torch.manual_seed(0)
    net0 = SmallCNN(1, 10, width=6, depth=3).double()
    net1 = copy.deepcopy(net0)
    with torch.no_grad():
        for p in net1.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(7, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        expected = _naive_stability(net0, net1, x)
    assert 0.3 < expected < 0.99  # the perturbation flips a good share of signs
    # the metric run_cell uses (lazylab.metrics), on the float64 nets run_cell builds
    assert activation_stability(net0, net1, x, batch_size=3) == pytest.approx(expected, abs=1e-12)
    assert activation_stability(net0, copy.deepcopy(net0), x) == 1.0


class _Twice(nn.Module):
    """One ReLU module called twice: two layers for the stability average."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.relu = nn.Linear(3, 5), nn.Linear(5, 4), nn.ReLU()

    def forward(self, x):
        return self.relu(self.l2(self.relu(self.l1(x))))


def test_activation_stability_counts_each_call():
    torch.manual_seed(1)
    a = _Twice().double()
    b = copy.deepcopy(a)
    with torch.no_grad():
        b.l2.weight.neg_()
        b.l2.bias.neg_()
    x = torch.randn(20, 3, dtype=torch.float64)
    with torch.no_grad():
        s2 = (torch.sign(a.l2(torch.relu(a.l1(x)))) == torch.sign(b.l2(torch.relu(b.l1(x))))).double().mean()
    assert activation_stability(a, b, x) == pytest.approx((1.0 + s2.item()) / 2)
    with pytest.raises(ValueError, match="no nn.ReLU"):
        activation_stability(nn.Linear(3, 2).double(), nn.Linear(3, 2).double(), x)


def test_effective_network_reproduces_the_lazy_output():
    torch.manual_seed(0)
    alpha = 1e4
    lz = lazy(SmallCNN(1, 10, width=4, depth=2), alpha)
    x = torch.randn(16, 1, 8, 8)
    y = torch.randint(0, 10, (16,))
    train(lz, (x, y), optimizer="gd", lr=0.5, steps=3, progress=False)
    assert max(v.abs().max().item() for v in lz.delta.values()) > 0
    eff = effective_network(lz)
    net0 = copy.deepcopy(lz.model).double()
    with torch.no_grad():
        out = alpha * (eff(x.double()) - net0(x.double()))
        assert torch.allclose(out, lz(x.double()), rtol=1e-9, atol=1e-9)


def test_eta0_is_in_the_paper_codes_units():
    """One full-batch SGD step of run_cell's setting (lazylab mse, lr = eta0 * 2 / C, loss / alpha^2)
    equals the paper's code: outputs = h(w) - h(w0), MSELoss(outputs, onehot / alpha), lr = eta0."""
    torch.manual_seed(0)
    alpha, eta0, C = 10.0, 0.7, 10
    base = SmallCNN(1, C, width=4, depth=2).double()
    x = torch.randn(12, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, C, (12,))
    lz = lazy(copy.deepcopy(base), alpha)
    train(lz, (x, y), optimizer="gd", lr=eta0 * 2 / C, steps=1, progress=False)
    net, net0 = copy.deepcopy(base), copy.deepcopy(base)
    opt = torch.optim.SGD(net.parameters(), lr=eta0)
    onehot = torch.nn.functional.one_hot(y, C).double()
    loss = nn.MSELoss()(net(x) - net0(x).detach(), onehot / alpha)
    loss.backward()
    opt.step()
    for n, p in net.named_parameters():
        moved = p.detach() - dict(base.named_parameters())[n].detach()
        assert torch.allclose(lz.delta[n.replace(".", "__")].detach(), moved, rtol=1e-9, atol=1e-14)


def test_resolve_fig3b():
    v = resolve_fig3b(ChizatCNNConfig(model="vgg11", alpha=1e7, fig3b=True))
    assert (v.width_mult, v.gain, v.batch_size, v.loss, v.eta0) == (8.0, 1.3, 8, "cross_entropy", 1.0)
    r = resolve_fig3b(ChizatCNNConfig(model="resnet18", alpha=1.0, fig3b=True))
    assert (r.width_mult, r.gain, r.eta0) == (7.0, 1.2, 0.01)
    assert resolve_fig3b(ChizatCNNConfig(alpha=1.0)).eta0 == 1.0  # untouched without fig3b
    with pytest.raises(ValueError, match="vgg11 or resnet18"):
        resolve_fig3b(ChizatCNNConfig(model="smallcnn", fig3b=True))


def test_run_cell_tiny_budget():
    cfg = ChizatCNNConfig(width=4, depth=2, epochs=1, n_train=128, n_test=64, n_stability=32,
                          alpha=1e5, eta0=3.0, n_track=2)
    recs = run_cell(cfg, RunContext(progress=False))
    final = recs[-1]
    assert final["final"] and not final["diverged"] and final["step"] == 1
    assert 0.99 <= final["stability"] <= 1.0            # lazy: activations frozen
    assert 0 < final["rel_weight_change"] < 1e-3         # ||delta|| / ||w0|| = O(1/alpha)
    assert 0.0 <= final["test_acc"] <= 1.0 and final["lr_used"] == pytest.approx(0.6)
    with pytest.warns(UserWarning, match="diverged"):
        div = run_cell(ChizatCNNConfig(width=4, depth=2, epochs=4, n_train=128, n_test=32,
                                       alpha=1.0, eta0=1e5, n_track=2), RunContext(progress=False))
    assert div[-1]["diverged"] and math.isnan(div[-1]["test_acc"])


def test_bad_inputs_name_the_setting(tmp_path):
    ctx = RunContext(progress=False)
    with pytest.raises(ValueError, match="data_dir"):
        run_cell(ChizatCNNConfig(dataset="cifar10", model="vgg11"), ctx)
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        run_cell(ChizatCNNConfig(dataset="cifar10", model="vgg11", data_dir=str(tmp_path)), ctx)
    with pytest.raises(ValueError, match="dataset"):
        run_cell(ChizatCNNConfig(dataset="svhn"), ctx)
    with pytest.raises(ValueError, match="loss"):
        run_cell(ChizatCNNConfig(loss="hinge"), ctx)


def _fake_df(test_accs, stab_last):
    rows = []
    for i, (a, te) in enumerate(test_accs.items()):
        rows.append(dict(alpha=a, model="smallcnn", seed=0, final=True, diverged=False, step=10,
                         train_acc=te, test_acc=te, train_loss=0.1, test_loss=0.1,
                         stability=stab_last if i == len(test_accs) - 1 else 0.7,
                         rel_weight_change=1 / a))
    return pd.DataFrame(rows)


def test_report_checks():
    cfg = ChizatCNNConfig()
    good = report(_fake_df({1.0: 0.95, 10.0: 0.8, 100.0: 0.68, 1e4: 0.67}, 0.999), cfg)
    assert good.metrics["test_acc_drop"] == pytest.approx(0.95 - 0.675)
    assert all(c.passed for c in good.checks), [c for c in good.checks if not c.passed]
    flat = report(_fake_df({1.0: 0.70, 10.0: 0.69, 100.0: 0.68, 1e4: 0.67}, 0.999), cfg)
    assert not all(c.passed for c in flat.checks)     # no 10-point drop
    unstable = report(_fake_df({1.0: 0.95, 10.0: 0.8, 100.0: 0.68, 1e4: 0.67}, 0.9), cfg)
    assert not unstable.checks[-1].passed


@pytest.mark.slow
def test_quick_preset_end_to_end(tmp_path):
    import json

    from lazylab.lab.runner import run_experiment

    run_experiment("chizat-cnn", preset="quick", out=tmp_path / "run", progress=False)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert all(c["passed"] for c in summary["checks"]), summary["checks"]


def test_report_fig3b_table():
    rows = [dict(model=m, alpha=a, seed=58, final=True, diverged=False, step=1, train_acc=tr,
                 test_acc=te, train_loss=0.1, test_loss=0.1, stability=st, rel_weight_change=0.0)
            for m, a, tr, te, st in (("vgg11", 1.0, 0.99, 0.89, 0.5), ("vgg11", 1e7, 0.6, 0.62, 1.0),
                                     ("resnet18", 1.0, 0.99, 0.91, 0.5),
                                     ("resnet18", 1e7, 0.55, 0.40, 1.0))]
    rep = report(pd.DataFrame(rows), ChizatCNNConfig(fig3b=True, dataset="cifar10"))
    verdict = {c.name: c.passed for c in rep.checks}
    assert verdict["test acc vgg11 wide, alpha=1e+07 (paper Fig 3b: 61.7%)"]
    assert not verdict["test acc resnet18 wide, alpha=1e+07 (paper Fig 3b: 56.7%)"]  # 40 % is off
    assert set(rep.table["paper_test_acc"]) == {0.897, 0.617, 0.910, 0.567}


def test_fig3a_claims_fail_on_untrained_nets():
    """Negative control: with a learning rate of ~0 (nothing learned; the centered model predicts
    0 for every alpha) the accuracy does not fall with alpha and there is no drop, so those claims,
    and the plateau claim that needs them, fail."""
    rows = []
    for seed in (0, 1, 2):
        for alpha in (1.0, 10.0, 100.0, 1e4):
            cfg = ChizatCNNConfig(width=4, depth=2, epochs=1, n_train=128, n_test=64,
                                  n_stability=16, alpha=alpha, eta0=1e-12, n_track=2, seed=seed)
            rows += [{**r, "alpha": alpha, "seed": seed, "model": "smallcnn"}
                     for r in run_cell(cfg, RunContext(progress=False))]
    rep = report(pd.DataFrame(rows), ChizatCNNConfig())
    claims = [c for c in rep.checks if c.kind == "claim"]
    assert len(claims) == 3 and not any(c.passed for c in claims), claims
    assert all(c.n == 3 for c in claims)
