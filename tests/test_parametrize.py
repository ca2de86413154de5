"""Tests of lazylab.parametrize: abc-parametrizations of any nn.Module.

Independent checks: the abc symmetry (mean_field and mup are the same SGD dynamics; folding the lr
exponents into the multipliers changes nothing), the base-width identity (every scheme is the
standard parametrization at the base width), init statistics against the table, and NTK == SP
with per-layer learning rates ``lr / r`` (Tensor Programs IV's symmetry, computed by hand here).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lazylab.models import MLP, SmallCNN
from lazylab.parametrize import (
    ABC,
    get_parametrization,
    make_optimizer,
    param_groups,
    parametrize,
)
from lazylab.transformer import TinyTransformer


def mlp(w: int, d: int = 5) -> nn.Module:
    return nn.Sequential(nn.Linear(d, w), nn.Tanh(), nn.Linear(w, w), nn.Tanh(), nn.Linear(w, 2))


def _pair(scheme: str, w: int, seed: int = 0, **kw):
    g = torch.Generator().manual_seed(seed)
    base = mlp(4).double()
    torch.manual_seed(seed)  # the kept bias init is drawn from the global generator
    m = parametrize(mlp(w).double(), scheme, base=base, generator=g, **kw)
    return m


def _train(model, opt, X, y, steps=5):
    outs = []
    for _ in range(steps):
        opt.zero_grad()
        loss = 0.5 * (model(X) - y).pow(2).sum(1).mean()
        loss.backward()
        opt.step()
        outs.append(model(X).detach().clone())
    return torch.stack(outs)


def test_roles_widths_and_ratios_from_base():
    m = parametrize(mlp(32), "mup", base=mlp(8))
    s = get_parametrization(m).by_name()
    assert s["0.weight"].role == "input" and s["0.weight"].width == 32
    assert s["2.weight"].role == "hidden" and s["4.weight"].role == "output"
    assert s["0.bias"].role == "input" and s["4.bias"].role == "finite"
    assert s["2.weight"].ratio == 4.0
    # the table: mup hidden (a, b) = (0, 1/2) -> multiplier 1, std sigma0 / sqrt(r) = 1/sqrt(32)
    assert s["2.weight"].multiplier == 1.0
    assert s["2.weight"].init_std == pytest.approx(1 / math.sqrt(32))
    assert s["4.weight"].multiplier == pytest.approx(0.5)  # r^-1/2, a = 1/2
    assert s["0.weight"].lr_sgd == pytest.approx(4.0) and s["2.weight"].lr_adam == pytest.approx(0.25)


def test_init_statistics_match_the_table():
    """Effective weights W = mult * w: empirical std against the table's sigma0 r^-(a+b)."""
    for scheme in ("standard", "ntk", "mean_field", "mup"):
        m = parametrize(mlp(512), scheme, base=mlp(16), generator=torch.Generator().manual_seed(1))
        for s in get_parametrization(m).layers:
            if s.kind == "vector":
                continue
            W = m.get_submodule(s.module).weight.detach()  # parametrized: the effective weight
            a, b = ABC[scheme][s.role][:2]
            fan_base = s.fan_in / s.ratio if s.role != "input" else s.fan_in
            expect = fan_base ** -0.5 * s.ratio ** (-(a + b))
            assert W.std().item() == pytest.approx(expect, rel=0.08), (scheme, s.name)


def test_every_scheme_is_standard_at_the_base_width():
    X = torch.randn(7, 5, dtype=torch.float64)
    outs = []
    for scheme in ("standard", "ntk", "mean_field", "mup"):
        g = torch.Generator().manual_seed(3)
        torch.manual_seed(3)
        m = parametrize(mlp(16).double(), scheme, base=mlp(16).double(), delta=mlp(8).double(),
                        generator=g)
        outs.append(m(X))
        assert all(g["lr_mult"] == 1.0 for g in param_groups(m, 0.1, "sgd"))
    for o in outs[1:]:
        assert torch.equal(o, outs[0])


def test_mean_field_and_mup_are_the_same_sgd_dynamics():
    X, y = torch.randn(9, 5, dtype=torch.float64), torch.randn(9, 2, dtype=torch.float64)
    a, b = _pair("mup", 64), _pair("mean_field", 64)
    assert torch.allclose(a(X), b(X), atol=1e-12)
    ta = _train(a, make_optimizer(a, 0.3, "sgd"), X, y)
    tb = _train(b, make_optimizer(b, 0.3, "sgd"), X, y)
    assert (ta - ta[0]).abs().max() > 1e-2  # it moved
    assert torch.allclose(ta, tb, atol=1e-10)


@pytest.mark.parametrize("scheme", ["mup", "ntk"])
def test_fold_lr_sgd_is_the_same_dynamics(scheme):
    X, y = torch.randn(9, 5, dtype=torch.float64), torch.randn(9, 2, dtype=torch.float64)
    a, b = _pair(scheme, 32), _pair(scheme, 32, fold_lr="sgd")
    assert all(g["lr_mult"] == 1.0 for g in param_groups(b, 0.2, "sgd"))
    ta = _train(a, make_optimizer(a, 0.2, "sgd"), X, y)
    tb = _train(b, torch.optim.SGD(b.parameters(), lr=0.2), X, y)
    assert torch.allclose(ta, tb, atol=1e-10)


def test_fold_lr_adam_is_the_same_dynamics():
    X, y = torch.randn(9, 5, dtype=torch.float64), torch.randn(9, 2, dtype=torch.float64)
    a, b = _pair("mup", 32), _pair("mup", 32, fold_lr="adam")
    ta = _train(a, make_optimizer(a, 1e-2, "adam", eps=1e-14), X, y)
    tb = _train(b, torch.optim.Adam(b.parameters(), lr=1e-2, eps=1e-14), X, y)
    assert torch.allclose(ta, tb, atol=1e-8)


def test_ntk_equals_standard_with_lr_over_r_on_hidden_and_output():
    """TP4 symmetry by hand: NTK hidden/output (1/2, 0, 0) == SP (0, 1/2, 0) with lr * r^-1."""
    X, y = torch.randn(9, 5, dtype=torch.float64), torch.randn(9, 2, dtype=torch.float64)
    ntk, sp = _pair("ntk", 64), _pair("standard", 64)
    assert torch.allclose(ntk(X), sp(X), atol=1e-12)
    groups = param_groups(sp, 0.4, "sgd")
    for g, s in zip(groups, get_parametrization(sp).layers):
        if s.role in ("hidden", "output") and s.kind != "vector":
            g["lr"] = 0.4 / s.ratio
    t1 = _train(ntk, make_optimizer(ntk, 0.4, "sgd"), X, y)
    t2 = _train(sp, torch.optim.SGD(groups, lr=0.4), X, y)
    assert torch.allclose(t1, t2, atol=1e-10)


def test_cnn_transformer_embedding_roles():
    cnn = parametrize(SmallCNN(3, 10, width=32), "mup", base=SmallCNN(3, 10, width=8))
    s = get_parametrization(cnn).by_name()
    assert s["features.0.weight"].role == "input" and s["features.2.weight"].role == "hidden"
    assert s["features.2.weight"].fan_in == 32 * 9 and s["head.weight"].role == "output"
    tr = parametrize(TinyTransformer(3, 64), "ntk", base=TinyTransformer(3, 32))
    s = get_parametrization(tr).by_name()
    assert s["encoder.layers.0.self_attn.in_proj_weight"].role == "hidden"
    assert s["encoder.layers.0.self_attn.out_proj.weight"].multiplier == pytest.approx(2 ** -0.5)
    assert s["pos.weight"].role == "input" and s["encoder.layers.1.norm2.weight"].role == "input"
    emb = nn.Sequential(nn.Embedding(11, 32), nn.Linear(32, 3))
    m = parametrize(emb, "mup", base_width=8)
    s = get_parametrization(m).by_name()
    assert s["0.weight"].role == "input" and s["0.weight"].init_std == 1.0
    assert s["1.weight"].role == "output" and s["1.weight"].ratio == 4.0
    assert m(torch.tensor([1, 2])).shape == (2, 3)


def test_by_order_roles_and_override():
    m = parametrize(MLP([6, 16, 16, 1]), "mup", base_width=4, roles={"net.2.weight": "finite"})
    s = get_parametrization(m).by_name()
    assert s["net.0.weight"].role == "input" and s["net.4.weight"].role == "output"
    assert s["net.2.weight"].role == "finite" and s["net.4.bias"].role == "finite"


def test_same_seed_same_numbers_and_vectors_keep_effective_init():
    a = parametrize(mlp(16), "mup", base=mlp(4), generator=torch.Generator().manual_seed(5))
    b = parametrize(mlp(16), "mup", base=mlp(4), generator=torch.Generator().manual_seed(5))
    assert torch.equal(a[2].weight, b[2].weight)
    ln = nn.Sequential(nn.Linear(3, 16), nn.LayerNorm(16), nn.Linear(16, 1))
    parametrize(ln, "mup", base_width=4, fold_lr="sgd")  # LayerNorm gain gets multiplier r^1/2
    assert torch.allclose(ln[1].weight, torch.ones(16))


class _Custom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.gate = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return self.lin(x) * self.gate


def test_bad_input_errors():
    with pytest.raises(ValueError, match="<root>.*_Custom"):
        parametrize(_Custom(), "mup", base_width=2)
    with pytest.raises(ValueError, match="scheme"):
        parametrize(mlp(8), "xavier", base_width=2)
    with pytest.raises(ValueError, match="exactly one"):
        parametrize(mlp(8), "mup")
    with pytest.raises(ValueError, match="base model has no parameter"):
        parametrize(mlp(8), "mup", base=nn.Linear(2, 2))
    with pytest.raises(ValueError, match="not parametrized"):
        param_groups(mlp(8), 0.1)
    m = parametrize(mlp(8), "mup", base_width=4)
    with pytest.raises(ValueError, match="already parametrized"):
        parametrize(m, "mup", base_width=4)
    with pytest.raises(ValueError, match="optimizer"):
        param_groups(m, 0.1, "rmsprop")
    with pytest.raises(ValueError, match="roles"):
        parametrize(mlp(8), "mup", base_width=4, roles={"nope": "hidden"})
