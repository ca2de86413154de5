import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

import lazylab
from lazylab.track import LinearizedTwin, WeightChange


def _naive_ntk(model, X):
    """Traced NTK by a float64 loop over examples: K_ij = sum_o <d f_io/dw, d f_jo/dw>."""
    ps = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(X.shape[0]):
        out = model(X[i:i + 1]).reshape(-1)
        grads = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(o, ps, retain_graph=True)])
                 for o in out]
        rows.append(torch.stack(grads))
    J = torch.stack(rows)  # (N, O, P)
    return torch.einsum("iop,jop->ij", J, J)


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.lin(torch.tanh(self.lin(x)))))


def _models():
    torch.manual_seed(0)
    return [
        (lazylab.TwoLayerNet(4, 16, activation="tanh", bias=True).double(), torch.randn(5, 4)),
        (lazylab.MLP([4, 8, 8, 3], activation="tanh").double(), torch.randn(5, 4)),
        (lazylab.SmallCNN(1, 3, width=4, depth=2).double(), torch.randn(5, 1, 6, 6)),
        (Shared().double(), torch.randn(5, 3)),
    ]


@pytest.mark.parametrize("k", range(4))
def test_linearize_equals_model_at_init_outputs_and_grads(k):
    model, X = _models()[k]
    X = X.double()
    ref = copy.deepcopy(model)
    lin = lazylab.linearize(model)
    out_l, out_m = lin(X), ref(X)
    assert torch.allclose(out_l, out_m, atol=1e-12)
    gl = torch.autograd.grad(out_l.sum(), [p for p in lin.parameters() if p.requires_grad])
    gm = torch.autograd.grad(out_m.sum(), list(ref.parameters()))
    for a, b in zip(gl, gm):
        assert torch.allclose(a, b, atol=1e-12)


@pytest.mark.parametrize("k", range(4))
def test_linearize_is_first_order_taylor(k):
    """After moving w, lin(x) = h(w0,x) + J(w0,x)(w-w0): compare with a central difference."""
    model, X = _models()[k]
    X = X.double()
    ref = copy.deepcopy(model)
    lin = lazylab.linearize(model)
    torch.manual_seed(1)
    deltas = [1e-2 * torch.randn_like(p) for p in lin.model.parameters()]
    with torch.no_grad():
        for p, dlt in zip(lin.model.parameters(), deltas):
            p.add_(dlt)
    eps = 1e-4

    def shifted(s):
        m = copy.deepcopy(ref)
        with torch.no_grad():
            for p, dlt in zip(m.parameters(), deltas):
                p.add_(s * dlt)
        return m(X)

    jd = (shifted(eps) - shifted(-eps)) / (2 * eps)
    assert torch.allclose(lin(X), ref(X) + jd, atol=1e-7)
    assert torch.allclose(lazylab.linearize(copy.deepcopy(lin.model), center=True)(X) * 0,
                          torch.zeros_like(jd))


def test_linearize_center_drops_h0():
    model, X = _models()[0]
    lin = lazylab.linearize(model, center=True)
    assert torch.allclose(lin(X.double()), torch.zeros(5, dtype=torch.float64))


@pytest.mark.parametrize("center", ["copy", "symmetric"])
def test_lazy_is_zero_at_init(center):
    model, X = _models()[1]
    lz = lazylab.lazy(model, 37.0, center=center)
    assert lz(X.double()).abs().max().item() == 0.0
    assert lz.loss_scale == pytest.approx(1 / 37.0**2)


def test_lazy_none_scales_output():
    model, X = _models()[0]
    ref = copy.deepcopy(model)
    lz = lazylab.lazy(model, 3.0, center="none")
    assert torch.allclose(lz(X.double()), 3.0 * ref(X.double()))


@pytest.mark.parametrize("center,factor", [("copy", 1.0), ("symmetric", 1.0), ("none", 1.0)])
def test_lazy_tangent_kernel_is_alpha2_K(center, factor):
    model, X = _models()[0]
    X = X.double()
    K = _naive_ntk(copy.deepcopy(model), X)
    Kl = _naive_ntk(lazylab.lazy(model, 5.0, center=center), X)
    assert torch.allclose(Kl, 25.0 * factor * K, rtol=1e-10)


def _rates(center, alphas=(1.0, 10.0, 100.0, 1000.0)):
    torch.manual_seed(0)
    X = torch.randn(40, 5, dtype=torch.float64)
    y = torch.sin(2 * X[:, 0])
    res = []
    for a in alphas:
        torch.manual_seed(1)
        net = lazylab.TwoLayerNet(5, 50, activation="tanh").double()
        h = lazylab.train(lazylab.lazy(net, a, center=center), (X, y), lr=0.5, steps=200,
                          trackers=[WeightChange(), LinearizedTwin(X)], track_steps=10)
        res.append([h.max("weight_dist"), h.max("lin_gap"), h.max("param_gap")])
    la = np.log10(alphas)
    return [np.polyfit(la, np.log10(np.array(res)[:, k]), 1)[0] for k in range(3)]


def test_chizat_rates_copy():
    """Theorem 2.2: sup||w-w0|| = O(1/a), function gap O(1/a), parameter gap O(1/a^2)."""
    s_w, s_f, s_p = _rates("copy")
    assert abs(s_w + 1) < 0.2
    assert abs(s_f + 1) < 0.2
    assert abs(s_p + 2) < 0.2


def test_chizat_rates_symmetric_gap_falls_faster():
    """With the doubling trick the function gap falls like 1/a^2 (measured slope about -1.97)."""
    s_w, s_f, _ = _rates("symmetric")
    assert abs(s_w + 1) < 0.2
    assert s_f < -1.5


@pytest.mark.parametrize("alpha", [1e3, 1e5, 1e7])
def test_lazy_float32_matches_float64_up_to_1e7(alpha):
    """Stated tolerance: outputs after 300 GD steps agree to 1e-5 relative (measured ~6e-8)."""
    torch.manual_seed(0)
    X = torch.randn(40, 5, dtype=torch.float64)
    y = torch.sin(2 * X[:, 0])
    torch.manual_seed(2)
    net = lazylab.TwoLayerNet(5, 50, activation="tanh")
    l64 = lazylab.lazy(copy.deepcopy(net).double(), alpha)
    l32 = lazylab.lazy(net, alpha)
    lazylab.train(l32, (X.float(), y.float()), lr=0.5, steps=300)
    lazylab.train(l64, (X, y), lr=0.5, steps=300)
    with torch.no_grad():
        o32, o64 = l32(X.float()).double(), l64(X)
    assert torch.isfinite(o32).all()
    assert (o32 - o64).norm() / o64.norm() < 1e-5


def test_batchnorm_policy_eval_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 1)).double()
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    X = torch.randn(6, 3, dtype=torch.float64)
    ref = copy.deepcopy(net).eval()
    lin = lazylab.linearize(net)
    lin.train()
    assert not lin.model[1].training
    assert torch.allclose(lin(X), ref(X), atol=1e-12)
    assert torch.allclose(lin(X[:1]), ref(X[:1]), atol=1e-12)  # per-example: no batch coupling


def test_batchnorm_without_running_stats_refused():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False))
    with pytest.raises(ValueError, match="track_running_stats"):
        lazylab.linearize(net)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), "x", None])
def test_bad_alpha(bad):
    with pytest.raises((ValueError, TypeError), match="alpha"):
        lazylab.lazy(nn.Linear(2, 1), bad)


def test_bad_center_and_model_without_params():
    with pytest.raises(ValueError, match="center must be one of"):
        lazylab.lazy(nn.Linear(2, 1), 1.0, center="double")
    with pytest.raises(ValueError, match="no parameters"):
        lazylab.linearize(nn.ReLU())
    with pytest.raises(TypeError, match="nn.Module"):
        lazylab.lazy(lambda x: x, 1.0)


def test_random_features_default_last_layer_and_names():
    net = lazylab.TwoLayerNet(4, 8, bias=True)
    lazylab.random_features(net)
    assert {n for n, p in net.named_parameters() if p.requires_grad} == {"out.weight", "out.bias"}
    lazylab.random_features(net, trainable=["hidden.weight"])
    assert {n for n, p in net.named_parameters() if p.requires_grad} == {"hidden.weight"}
    with pytest.raises(ValueError, match="unknown parameter.*hidden.weight"):
        lazylab.random_features(net, trainable=["hiden.weight"])


def test_random_features_kernel_is_feature_gram():
    torch.manual_seed(0)
    net = lazylab.TwoLayerNet(4, 32, activation="relu").double()
    X = torch.randn(6, 4, dtype=torch.float64)
    lazylab.random_features(net)
    phi = net.features(X) / math.sqrt(32)
    assert torch.allclose(_naive_ntk(net, X), phi @ phi.T, rtol=1e-10)


def test_weights_of_lazy_are_w0_plus_delta():
    net = lazylab.TwoLayerNet(3, 4)
    w0 = net.hidden.weight.detach().clone()
    lz = lazylab.lazy(net, 2.0)
    with torch.no_grad():
        lz.delta["hidden__weight"].fill_(0.5)
    assert torch.allclose(lazylab.regimes.weights(lz)["hidden.weight"], w0 + 0.5)


def test_apply_regime_by_name():
    net = lazylab.TwoLayerNet(3, 4)
    assert lazylab.apply_regime(net, "full") is net
    assert isinstance(lazylab.apply_regime(lazylab.TwoLayerNet(3, 4), "lazy", alpha=2.0), lazylab.Lazy)
    assert isinstance(lazylab.apply_regime(lazylab.TwoLayerNet(3, 4), "linearized"), lazylab.Linearized)
    with pytest.raises(ValueError, match="regime must be one of.*random_features"):
        lazylab.apply_regime(net, "ntk")


def test_lazy_leaves_the_callers_model_untouched():
    net = lazylab.TwoLayerNet(3, 4)
    before = [p.detach().clone() for p in net.parameters()]
    lz = lazylab.lazy(net, 10.0)
    X = torch.randn(8, 3)
    lazylab.train(lz, (X, X[:, 0]), lr=0.5, steps=3)
    assert all(p.requires_grad for p in net.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    assert lz.delta["hidden__weight"].abs().sum() > 0


def test_lazy_batchnorm_uses_frozen_running_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 1)).double()
    lz = lazylab.lazy(net, 5.0)
    lz.train()
    X = torch.randn(6, 3, dtype=torch.float64)
    stats = lz.model[1].running_mean.clone()
    lazylab.train(lz, (X, X[:, :1]), lr=0.1, steps=3)
    assert not lz.model[1].training
    assert torch.equal(lz.model[1].running_mean, stats)  # never updated by h(w) or h(w0)
    assert lz(X[:1]).abs().max() < 1 and lazylab.lazy(net, 5.0)(X).abs().max() == 0
    with pytest.raises(ValueError, match="track_running_stats"):
        lazylab.lazy(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False)), 1.0)
