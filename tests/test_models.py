import math

import pytest
import torch

import lazylab
from lazylab.models import ACTIVATIONS, PARAMETRIZATIONS


@pytest.mark.parametrize("act", [a for a in ACTIVATIONS if a != "identity"])
def test_two_layer_formula(act):
    torch.manual_seed(0)
    net = lazylab.TwoLayerNet(5, 7, activation=act, scaling="mean_field", bias=True).double()
    X = torch.randn(4, 5, dtype=torch.float64)
    W, b, a = net.hidden.weight, net.hidden.bias, net.out.weight[0]
    sig = {"relu": torch.relu, "quadratic": lambda z: z * z, "tanh": torch.tanh,
           "softplus": torch.nn.functional.softplus, "erf": torch.erf}[act]
    expect = (sig(X @ W.T / math.sqrt(5) + b) @ a) / 7 + net.out.bias
    assert torch.allclose(net(X), expect)


@pytest.mark.parametrize("p", PARAMETRIZATIONS)
def test_parametrizations_output_scale(p):
    """Output variance at init: O(1) for standard/ntk, -> 0 like 1/m for mean_field and mup."""
    torch.manual_seed(0)
    X = torch.randn(256, 20)
    v = [lazylab.MLP([20, m, m, 1], parametrization=p, activation="relu")(X).var().item()
         for m in (64, 1024)]
    ratio = v[1] / v[0]
    if p in ("standard", "ntk"):
        assert 0.5 < ratio < 2
    else:
        assert ratio < 0.2


def test_vgg_resnet_shapes():
    x = torch.randn(2, 3, 32, 32)
    assert lazylab.vgg11(width_mult=0.125)(x).shape == (2, 10)
    assert lazylab.resnet18(width_mult=0.125)(x).shape == (2, 10)
    assert lazylab.SmallCNN(3, 10, width=8)(x).shape == (2, 10)


def test_resnet18_batch_norm_option():
    torch.manual_seed(0)
    plain = lazylab.resnet18(width_mult=0.125)
    torch.manual_seed(0)
    bn = lazylab.resnet18(width_mult=0.125, batch_norm=True)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in bn.modules())
    assert n_bn == 1 + 8 * 2 + 3  # stem, two per block, three 1x1 shortcuts
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    convs = [m for m in bn.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.bias is None for c in convs)  # BN follows every conv
    x = torch.rand(6, 3, 32, 32)
    bn.train()
    bn(x)  # one train-mode pass updates the running statistics
    bn.eval()
    assert bn(x).shape == (6, 10)
    # eval-mode BN network: the linearization at init is the network, and its empirical NTK equals a
    # naive per-example Jacobian loop (float64)
    net = bn.double()
    xd = x.double()[:3]
    lin = lazylab.linearize(net)
    torch.testing.assert_close(lin(xd), net(xd))
    K = lazylab.ntk(net, xd, output="trace")
    params = [p for p in net.parameters() if p.requires_grad]
    J = []
    for i in range(3):
        rows = []
        for k in range(10):
            g = torch.autograd.grad(net(xd[i:i + 1])[0, k], params)
            rows.append(torch.cat([t.flatten() for t in g]))
        J.append(torch.stack(rows))
    ref = torch.stack([torch.stack([(J[i] * J[j]).sum() for j in range(3)]) for i in range(3)])
    torch.testing.assert_close(K, ref, rtol=1e-9, atol=1e-9)


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="activation"):
        lazylab.TwoLayerNet(3, 4, activation="gelu2")
    with pytest.raises(ValueError, match="m must be"):
        lazylab.TwoLayerNet(3, 0)
    with pytest.raises(ValueError, match="parametrization"):
        lazylab.MLP([3, 4], parametrization="abc")
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        lazylab.TwoLayerNet(3, 4)(torch.randn(2, 4))
    with pytest.raises(TypeError, match="floating"):
        lazylab.TwoLayerNet(3, 4)(torch.ones(2, 3, dtype=torch.long))
