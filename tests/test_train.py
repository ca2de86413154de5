import math

import pytest
import torch
from torch import nn

import lazylab
from lazylab.trainer import LOSSES, DivergenceError, log_schedule


def _task(n=32, d=4):
    X = torch.randn(n, d)
    return X, torch.sin(X[:, 0])


def test_gd_step_is_exact_gradient_step():
    """One GD step equals w - lr * loss_scale * grad(L) computed by hand (float64)."""
    torch.manual_seed(0)
    X, y = _task()
    X, y = X.double(), y.double()
    net = lazylab.TwoLayerNet(4, 8).double()
    lz = lazylab.lazy(net, 4.0)
    out = lz(X)
    L = 0.5 * ((out - y) ** 2).mean()
    g = torch.autograd.grad(L / 16.0, [lz.delta["hidden__weight"]])[0]
    expect = -0.3 * g
    lazylab.train(lz, (X, y), lr=0.3, steps=1)
    assert torch.allclose(lz.delta["hidden__weight"], expect, atol=1e-14)


def test_losses_match_definitions():
    out = torch.tensor([0.5, -2.0, 1.5])
    y = torch.tensor([1.0, -1.0, -1.0])
    L = LOSSES
    assert L["mse"](out, y).item() == pytest.approx(0.5 * (0.25 + 1 + 6.25) / 3)
    assert L["logistic"](out, y).item() == pytest.approx(
        sum(math.log1p(math.exp(-a * b)) for a, b in zip([0.5, -2.0, 1.5], [1, -1, -1])) / 3)
    assert L["hinge"](out, y).item() == pytest.approx((0.5 + 0 + 2.5) / 3)
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    lab = torch.tensor([0, 0])
    assert L["mse"](logits, lab).item() == pytest.approx(0.5 * ((1 + 0) + (1 + 1)) / 2)


def test_sgd_reaches_low_loss_and_records_schedule():
    X, y = _task(64)
    net = lazylab.TwoLayerNet(4, 64, activation="tanh")
    h = lazylab.train(net, (X, y), optimizer="sgd", lr=0.5, epochs=30, batch_size=16,
                      momentum=0.9, test_data=_task(32))
    df = h.to_frame()
    assert list(df["step"]) == sorted(df["step"])
    assert df["step"].iloc[0] == 0 and df["step"].iloc[-1] == 30 * 4
    assert h.final["train_loss"] < 0.2 * h.records[0]["train_loss"]
    assert "test_loss" in df


def test_inverse_schedule_lr_values():
    X, y = _task(8)
    h = lazylab.train(lazylab.TwoLayerNet(4, 4), (X, y), optimizer="sgd", batch_size=4, lr=1.0,
                      epochs=6, schedule="inverse", beta=0.5, track_steps=2)
    lrs = {r["step"]: r["lr"] for r in h.records}
    assert lrs[0] == pytest.approx(1.0) and lrs[4] == pytest.approx(1 / (1 + 0.5 * 2))


def test_target_loss_stops_early():
    X, y = _task()
    h = lazylab.train(lazylab.TwoLayerNet(4, 64, activation="tanh"), (X, y), lr=1.0, steps=5000,
                      target_loss=0.05)
    assert h.stopped == "target_loss" and h.steps < 5000
    assert h.final["train_loss"] <= 0.05 + 1e-6


def test_divergence_names_step_and_lr():
    X, y = _task()
    with pytest.raises(DivergenceError, match=r"step \d+.*lr=1e\+06"):
        lazylab.train(lazylab.TwoLayerNet(4, 16), (X, 100 * y), lr=1e6, steps=200)


def test_classification_accuracy_and_cross_entropy():
    (Xtr, ytr), (Xte, yte) = lazylab.data.digits(classes=[0, 1, 2], flatten=True)
    net = lazylab.MLP([64, 64, 3])
    h = lazylab.train(net, (Xtr, ytr), loss="cross_entropy", optimizer="sgd", lr=0.1,
                      momentum=0.9, batch_size=64, epochs=5, test_data=(Xte, yte))
    assert h.final["test_acc"] > 0.9


def test_checkpoint_resume_matches_uninterrupted(tmp_path):
    X, y = _task(40)

    def run(steps, ckpt=None, resume=False):
        torch.manual_seed(3)
        net = lazylab.TwoLayerNet(4, 16)
        h = lazylab.train(net, (X, y), optimizer="sgd", batch_size=8, momentum=0.9, lr=0.1,
                          steps=steps, checkpoint=ckpt, checkpoint_every=5, resume=resume,
                          track_steps=5)
        return net, h

    full, hf = run(30)
    run(15, tmp_path / "c.pt")  # "interrupted" after 15 steps
    torch.manual_seed(99)  # a resumed run must not depend on the global RNG
    net = lazylab.TwoLayerNet(4, 16)
    hr = lazylab.train(net, (X, y), optimizer="sgd", batch_size=8, momentum=0.9, lr=0.1,
                       steps=30, checkpoint=tmp_path / "c.pt", checkpoint_every=5, resume=True,
                       track_steps=5)
    for a, b in zip(full.parameters(), net.parameters()):
        assert torch.equal(a, b)
    assert [r["train_loss"] for r in hr.records] == [r["train_loss"] for r in hf.records]


def test_float64_and_device_arguments():
    X, y = _task()
    net = lazylab.TwoLayerNet(4, 8)
    lazylab.train(net, (X, y), steps=2, dtype=torch.float64, device="cpu")
    assert net.hidden.weight.dtype == torch.float64


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(loss="l2"), "loss must be one of"),
        (dict(optimizer="lbfgs"), "optimizer must be one of"),
        (dict(schedule="exp"), "schedule must be one of"),
        (dict(lr=-1.0), "lr must be"),
        (dict(steps=None), "exactly one of"),
    ],
)
def test_bad_arguments(kwargs, match):
    X, y = _task()
    args = dict(steps=1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        lazylab.train(lazylab.TwoLayerNet(4, 4), (X, y), **args)


def test_bad_data():
    net = lazylab.TwoLayerNet(4, 4)
    X, y = _task()
    Xn = X.clone()
    Xn[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        lazylab.train(net, (Xn, y), steps=1)
    with pytest.raises(ValueError, match="shape"):
        lazylab.train(net, (torch.randn(8, 5), torch.randn(8)), steps=1)
    with pytest.raises(ValueError, match="rows"):
        lazylab.train(net, (X, y[:3]), steps=1)
    with pytest.raises(TypeError, match="floating"):
        lazylab.train(net, (X.long(), y), steps=1)
    with pytest.raises(ValueError, match="output shape"):
        lazylab.train(net, (X, torch.randn(32, 3)), steps=1)
    with pytest.raises(ValueError, match="no trainable"):
        lazylab.train(nn.Linear(4, 1).requires_grad_(False), (X, y[:, None]), steps=1)


def test_log_schedule():
    s = log_schedule(1000, 10)
    assert s[0] == 0 and s[1] == 1 and s[-1] == 1000 and s == sorted(set(s))
