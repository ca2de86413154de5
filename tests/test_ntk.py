"""Empirical NTK: every method against a naive float64 per-example-gradient loop."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from lazylab.ntk import ntk

METHODS = ["jacobian", "ntvp", "structured", "auto"]




def naive_ntk(model: nn.Module, x1, x2=None, names=None, output="trace"):
    """K[n,m,a,b] = <d f_a(x1_n)/dθ, d f_b(x2_m)/dθ> by a Python loop of autograd.grad calls."""
    x2 = x1 if x2 is None else x2
    model = copy.deepcopy(model).double().eval()
    named = dict(model.named_parameters())
    names = [n for n, p in named.items() if p.requires_grad] if names is None else names
    ps = [named[n] for n in names]
    for p in ps:
        p.requires_grad_(True)

    def jac(x):
        rows = []
        for xi in x.double():
            out = model(xi.unsqueeze(0)).reshape(-1)
            grads = [torch.autograd.grad(out[a], ps, retain_graph=True) for a in range(out.numel())]
            rows.append(torch.stack([torch.cat([g.reshape(-1) for g in gs]) for gs in grads]))
        return torch.stack(rows)  # (N, O, P)

    j1, j2 = jac(x1), jac(x2)
    full = torch.einsum("naf,mbf->nmab", j1, j2)
    if output == "full":
        return full
    diag = torch.diagonal(full, dim1=2, dim2=3)
    return diag if output == "diagonal" else diag.sum(-1)


def rel_err(k, ref):
    return ((k.double() - ref).abs().max() / ref.abs().max()).item()


def mlp(out=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6), nn.ReLU(inplace=True),
                         nn.Linear(6, out))


class CNN(nn.Module):
    def __init__(self, out=2):
        super().__init__()
        self.c1 = nn.Conv2d(2, 3, 3, padding=1)
        self.c2 = nn.Conv2d(3, 4, 3, stride=2, padding="valid")
        self.c3 = nn.Conv1d(4, 3, 2, dilation=2, bias=False)
        self.head = nn.Linear(3, out)

    def forward(self, x):
        h = torch.relu(self.c2(torch.tanh(self.c1(x))))  # (N, 4, 3, 3)
        h = torch.tanh(self.c3(h.flatten(2)))  # (N, 3, 7)
        return self.head(h.mean(-1))


class Shared(nn.Module):
    """One Linear applied twice plus a Linear on a sequence axis."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 5)
        self.shared = nn.Linear(5, 5)
        self.seq = nn.Linear(5, 3)
        self.out = nn.Linear(3, 2)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        h = torch.tanh(self.shared(torch.tanh(self.shared(h))))
        s = torch.tanh(self.seq(torch.stack([h, h * h], 1)))  # (N, 2, 3): T = 2 positions
        return self.out(s.sum(1))


class Tied(nn.Module):
    """Weight tied across two different modules, and a weight used functionally."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.b.weight = self.a.weight
        self.c = nn.Linear(4, 1)

    def forward(self, x):
        h = torch.tanh(self.b(torch.tanh(self.a(x))))
        return self.c(h) + (h @ self.c.weight.T) ** 2


CASES = {
    "mlp": (mlp, lambda: torch.randn(6, 5), lambda: torch.randn(4, 5)),
    "cnn": (CNN, lambda: torch.randn(5, 2, 6, 6), lambda: torch.randn(3, 2, 6, 6)),
    "shared": (Shared, lambda: torch.randn(5, 4), lambda: torch.randn(3, 4)),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("output", ["trace", "full", "diagonal"])
def test_methods_match_naive_float64(case, method, output):
    make, gx1, gx2 = CASES[case]
    torch.manual_seed(1)
    model = make().double()
    x1, x2 = gx1().double(), gx2().double()
    for a, b in ((x1, None), (x1, x2)):
        k = ntk(model, a, b, method=method, output=output)
        ref = naive_ntk(model, a, b, output=output)
        assert k.shape == ref.shape and k.dtype == torch.float64
        assert rel_err(k, ref) < 1e-10


@pytest.mark.parametrize("method", METHODS)
def test_float32_matches_naive(method):
    model, x1 = CNN(), torch.randn(5, 2, 6, 6)
    k = ntk(model, x1, method=method, output="full")
    assert k.dtype == torch.float32
    assert rel_err(k, naive_ntk(model, x1, output="full")) < 1e-4


def test_multi_output_shapes_and_relations():
    model, x1, x2 = mlp(out=3), torch.randn(6, 5), torch.randn(4, 5)
    full = ntk(model, x1, x2, output="full", dtype=torch.float64)
    diag = ntk(model, x1, x2, output="diagonal", dtype=torch.float64)
    tr = ntk(model, x1, x2, output="trace", dtype=torch.float64)
    assert full.shape == (6, 4, 3, 3) and diag.shape == (6, 4, 3) and tr.shape == (6, 4)
    torch.testing.assert_close(torch.diagonal(full, dim1=2, dim2=3), diag)
    torch.testing.assert_close(diag.sum(-1), tr)


def test_scalar_output_model():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1), nn.Flatten(0))
    x = torch.randn(5, 3, dtype=torch.float64)
    model.double()
    k = ntk(model, x, method="structured")
    assert k.shape == (5, 5)
    assert rel_err(k, naive_ntk(model, x)) < 1e-10


@pytest.mark.parametrize("method", METHODS)
def test_parameter_subset(method):
    model = mlp().double()
    x1, x2 = torch.randn(6, 5).double(), torch.randn(4, 5).double()
    names = ["2.weight", "4.bias"]
    k = ntk(model, x1, x2, method=method, params=names, output="full")
    assert rel_err(k, naive_ntk(model, x1, x2, names, output="full")) < 1e-10
    kp = ntk(model, x1, x2, method=method, params=lambda n, p: n.startswith("4."))
    assert rel_err(kp, naive_ntk(model, x1, x2, ["4.weight", "4.bias"])) < 1e-10


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("output", ["trace", "full"])
def test_tiled_equals_untiled(method, output):
    model = Shared().double()
    x1, x2 = torch.randn(11, 4).double(), torch.randn(7, 4).double()
    for b in (x2, None):
        whole = ntk(model, x1, b, method=method, output=output)
        tiled = ntk(model, x1, b, method=method, output=output, block_size=3, progress=False)
        torch.testing.assert_close(tiled, whole, rtol=1e-12, atol=1e-12)
    sym = ntk(model, x1, method=method, output=output, block_size=4)
    torch.testing.assert_close(sym, sym.transpose(0, 1).transpose(2, 3) if output == "full"
                               else sym.T, rtol=0, atol=0)


def test_accumulate_float64_and_progress(capsys):
    model, x = mlp(), torch.randn(9, 5)
    k = ntk(model, x, block_size=2, accumulate_dtype=torch.float64, progress=True)
    assert k.dtype == torch.float64
    assert rel_err(k, naive_ntk(model, x)) < 1e-5
    assert "tile" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["structured", "jacobian"])
def test_tied_and_functional_weights_fall_back_correctly(method):
    model = Tied().double()
    x = torch.randn(5, 4).double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        k = ntk(model, x, method=method)
    assert rel_err(k, naive_ntk(model, x)) < 1e-10


def test_structured_warns_when_rule_cannot_be_trusted():
    with pytest.warns(RuntimeWarning, match="c.weight"):
        ntk(Tied(), torch.randn(3, 4), method="structured")


def test_batchnorm_policy_eval_mode_and_refusal():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 1)).double()
    model[1].running_mean.uniform_(-1, 1)
    model[1].running_var.uniform_(0.5, 2)
    model.train()
    x = torch.randn(6, 3).double()
    for method in METHODS:
        k = ntk(model, x, method=method)
        assert rel_err(k, naive_ntk(model, x)) < 1e-10  # naive_ntk uses eval mode
    assert model.training and model[1].training  # flags restored
    bad = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False))
    with pytest.raises(ValueError, match="track_running_stats=False"):
        ntk(bad, x.float())


def test_linearized_gives_frozen_kernel_and_lazy_scales():
    regimes = pytest.importorskip("lazylab.regimes")
    model = mlp(out=1).double()
    x = torch.randn(5, 5).double()
    k0 = naive_ntk(model, x)
    lin = regimes.linearize(copy.deepcopy(model))
    with torch.no_grad():
        for p in lin.model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    assert rel_err(ntk(lin, x, method="structured"), k0) < 1e-10
    assert rel_err(ntk(lin, x, method="jacobian"), k0) < 1e-10
    lz = regimes.lazy(copy.deepcopy(model), alpha=7.0)
    assert rel_err(ntk(lz, x, method="auto"), 49.0 * k0) < 1e-10


def test_auto_picks_structured_for_mlp():
    from lazylab.ntk.api import _choose
    from lazylab.ntk.problem import build_problem
    from lazylab.ntk.structured import StructuredEngine

    model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                          nn.Linear(512, 1))
    pb = build_problem(model)
    x = torch.randn(2, 784)
    st = StructuredEngine(pb, "trace", None, x, 256)
    assert _choose(pb, st, 256, 256, 1, "trace", True) == "structured"


# ---- bad input ---------------------------------------------------------------------------------

def test_errors():
    model, x = mlp(), torch.randn(4, 5)
    with pytest.raises(ValueError, match=r"x1 of shape \(4, 6\)"):
        ntk(model, torch.randn(4, 6))
    with pytest.raises(ValueError, match=r"x2 of shape \(3, 2\)"):
        ntk(model, x, torch.randn(3, 2))
    with pytest.raises(ValueError, match="method must be one of"):
        ntk(model, x, method="fast")
    with pytest.raises(ValueError, match="output must be one of.*trace"):
        ntk(model, x, output="diag")
    for b in (0, -3):
        with pytest.raises(ValueError, match="block_size"):
            ntk(model, x, block_size=b)
    with pytest.raises(TypeError, match="block_size"):
        ntk(model, x, block_size=2.5)
    with pytest.raises(ValueError, match="x1 is an empty batch"):
        ntk(model, torch.randn(0, 5))
    with pytest.raises(ValueError, match="x2 is an empty batch"):
        ntk(model, x, torch.randn(0, 5))
    bad = x.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="x1 contains NaN"):
        ntk(model, bad)
    bad[1, 2] = float("inf")
    with pytest.raises(ValueError, match="x2 contains NaN or inf"):
        ntk(model, x, bad)
    with pytest.raises(ValueError, match="unknown parameter.*'9.weight'"):
        ntk(model, x, params=["9.weight"])
    with pytest.raises(TypeError, match="x1 must be a torch.Tensor"):
        ntk(model, [[1.0] * 5])
    with pytest.raises(TypeError, match="model must be"):
        ntk(lambda t: t, x)


def test_tiling_without_feature_cache(monkeypatch):
    """Column-tile features are cached up to MEMORY_BUDGET; with no budget they are recomputed."""
    import lazylab.ntk.api as api

    model = Shared().double()
    x = torch.randn(10, 4).double()
    ref = naive_ntk(model, x)
    monkeypatch.setattr(api, "MEMORY_BUDGET", 0)
    for method in ("structured", "jacobian"):
        assert rel_err(ntk(model, x, method=method, block_size=3), ref) < 1e-10


def test_dtype_argument_does_not_touch_the_model():
    model, x = CNN(), torch.randn(4, 2, 6, 6)
    k = ntk(model, x, dtype=torch.float64, method="structured")
    assert k.dtype == torch.float64 and next(model.parameters()).dtype == torch.float32
    assert rel_err(k, naive_ntk(model, x)) < 1e-10


def test_lazylab_ntk_is_callable_after_submodule_import():
    import lazylab
    import lazylab.ntk.api  # noqa: F401  (importing the package must not shadow the function)

    net = lazylab.TwoLayerNet(3, 5).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    assert torch.allclose(lazylab.ntk(net, x), lazylab.ntk.api.ntk(net, x))
