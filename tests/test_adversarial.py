"""Tests for lazylab.adversarial: the lazy ball and adversarial training."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lazylab.adversarial import NeuronBall, adversarial_train
from lazylab.attacks import accuracy, robust_accuracy
from lazylab.models import MLP, TwoLayerNet


@settings(max_examples=20, deadline=None)
@given(radius=st.floats(0.0, 2.0), seed=st.integers(0, 1000), bias=st.booleans())
def test_projection_is_exact_and_only_moves_outside_rows(radius, seed, bias):
    torch.manual_seed(seed)
    layer = nn.Linear(6, 9, bias=bias)
    ball = NeuronBall(layer, radius)
    with torch.no_grad():
        layer.weight.add_(torch.randn_like(layer.weight) * torch.rand(9, 1) * 2)
        if bias:
            layer.bias.add_(torch.randn_like(layer.bias))
    before = ball.deviation()
    w_before = layer.weight.detach().clone()
    ball.project()
    after = ball.deviation()
    assert float(after.max()) <= radius  # exact, no tolerance
    inside = before <= radius
    assert torch.equal(layer.weight[inside], w_before[inside])
    # rows outside land on the sphere (up to float32 rounding), direction kept
    out = ~inside
    if out.any() and radius > 1e-3:  # below that, float32 rounding of w0 + delta dominates
        assert torch.allclose(after[out], torch.full_like(after[out], radius), rtol=1e-5, atol=1e-7)
        d0 = (w_before[out] - ball.w0[out])
        d1 = (layer.weight[out] - ball.w0[out]).detach()
        cos = (d0 * d1).sum(1) / (d0.norm(dim=1) * d1.norm(dim=1)).clamp_min(1e-30)
        assert bool((cos[d1.norm(dim=1) > 0] > 1 - 1e-5).all())


def _blobs(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    x = 0.5 + 0.25 * y[:, None] * torch.tensor([1.0, 1.0]) + 0.08 * torch.randn(n, 2, generator=g)
    return x.clamp(0, 1), y


def test_projected_training_stays_in_ball_and_stop_mode_stops():
    torch.manual_seed(0)
    X, y = _blobs()
    net = TwoLayerNet(2, 30, bias=True)
    ball = NeuronBall(net.hidden, 0.05)
    h = adversarial_train(net, (X, y), epochs=5, lr=1.0, batch_size=20, mode="clean", ball=ball)
    assert h.stopped == "budget" and len(h.records) == 5
    assert max(r["max_deviation"] for r in h.records) <= 0.05
    net2 = TwoLayerNet(2, 30, bias=True)
    ball2 = NeuronBall(net2.hidden, 0.05)
    h2 = adversarial_train(net2, (X, y), epochs=50, lr=1.0, batch_size=20, mode="clean", ball=ball2,
                           ball_mode="stop")
    assert h2.stopped == "left_ball" and h2.steps < 50 * 10
    assert ball2.max_deviation() <= 0.05  # the weights of the last step inside are kept


def test_adversarial_training_is_more_robust_than_clean_training():
    from lazylab.data import digits

    (X, y), (Xt, yt) = digits(classes=[0, 1, 2], flatten=True, seed=0)
    res = {}
    for mode in ("clean", "adversarial", "clean+adversarial"):
        torch.manual_seed(1)
        net = MLP([64, 32, 3])
        adversarial_train(net, (X, y), epochs=15, lr=0.1, momentum=0.9, batch_size=64, mode=mode,
                          eps=0.15, attack_steps=5, seed=0)
        res[mode] = (accuracy(net, Xt, yt), robust_accuracy(net, Xt, yt, 0.15, steps=10))
    # measured: clean (0.99, 0.53), adversarial (0.99, 0.85), clean+adversarial (1.0, 0.85)
    assert res["clean"][0] > 0.95 and res["adversarial"][0] > 0.95
    assert res["adversarial"][1] >= res["clean"][1] + 0.2, res
    assert res["clean+adversarial"][1] >= res["clean"][1] + 0.2, res


def test_callback_epochs_and_seed_reproducible():
    X, y = _blobs(64)
    seen = []
    outs = []
    for _ in range(2):
        torch.manual_seed(0)
        net = TwoLayerNet(2, 8, bias=True)
        seen.clear()
        adversarial_train(net, (X, y), epochs=3, lr=0.1, batch_size=16, mode="adversarial", eps=0.05,
                          attack_steps=2, callback=lambda e, m: seen.append(e),
                          callback_epochs=[0, 0.25, 1, 3], seed=5)
        outs.append(net.hidden.weight.detach().clone())
    assert seen == [0.0, 0.25, 1.0, 3.0]
    assert torch.equal(outs[0], outs[1])


def test_bad_arguments():
    X, y = _blobs(16)
    net = TwoLayerNet(2, 4)
    with pytest.raises(ValueError, match="mode"):
        adversarial_train(net, (X, y), epochs=1, lr=0.1, mode="fast")
    with pytest.raises(ValueError, match="epochs"):
        adversarial_train(net, (X, y), epochs=0, lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        adversarial_train(net, (X, y), epochs=1, lr=-1.0)
    with pytest.raises(ValueError, match="eps"):
        adversarial_train(net, (X, y), epochs=1, lr=0.1, eps=-0.1)
    with pytest.raises(ValueError, match="ball_mode"):
        adversarial_train(net, (X, y), epochs=1, lr=0.1, ball_mode="bounce")
    with pytest.raises(ValueError, match="radius"):
        NeuronBall(net.hidden, -1.0)
    with pytest.raises(TypeError, match="nn.Linear"):
        NeuronBall(nn.Conv2d(1, 1, 3), 1.0)


def _lazy_pair(alpha, seed=0):
    import lazylab

    torch.manual_seed(seed)
    h = TwoLayerNet(2, 16).double()
    return h, lazylab.lazy(h, alpha)


def _delta_norm(lz):
    return float(torch.sqrt(sum((p.detach() ** 2).sum() for p in lz.parameters() if p.requires_grad)))


def test_adversarial_training_of_a_lazy_model_scales_the_loss_by_one_over_alpha_squared():
    # one clean full-batch step from delta = 0: the objective is (1/alpha^2) mean_i logistic(alpha f_i)
    # with f = h(w) - h(w0) = 0 at init, so delta = -(lr / alpha) mean_i (-y_i / 2) grad_w h(x_i; w0)
    X, y = _blobs(40)
    X, y = X.double(), y.double()
    alpha, lr = 50.0, 0.3
    h, lz = _lazy_pair(alpha)
    adversarial_train(lz, (X, y), epochs=1, lr=lr, batch_size=40, mode="clean")
    h0 = h
    out = h0(X).reshape(-1)
    grads = torch.autograd.grad((-y / 2 * out).mean(), list(h0.parameters()))
    expected = torch.sqrt(sum((((lr / alpha) * g) ** 2).sum() for g in grads))
    assert _delta_norm(lz) == pytest.approx(float(expected), rel=1e-10)


def test_adversarial_weight_change_of_a_lazy_model_shrinks_as_one_over_alpha():
    # lazy regime (Chizat et al.): with the 1/alpha^2 loss the function moves by O(1) and the weights
    # by O(1/alpha), so alpha * ||delta|| is the same for alpha = 100 and 1000 up to O(1/alpha)
    X, y = _blobs(64)
    X, y = X.double(), y.double()
    moved = {}
    for alpha in (100.0, 1000.0):
        _, lz = _lazy_pair(alpha)
        adversarial_train(lz, (X, y), epochs=3, lr=0.5, batch_size=16, mode="clean+adversarial",
                          eps=0.05, attack_steps=3, seed=1)
        moved[alpha] = alpha * _delta_norm(lz)
    assert moved[100.0] > 1e-3  # it trained
    assert moved[1000.0] == pytest.approx(moved[100.0], rel=0.03)
