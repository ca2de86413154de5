"""Tests of lazylab.coord_check.

Claim (Yang & Hu 2021; the issue's tolerance, fixed before measuring): after 3 SGD steps
(seed means over 8 inits) the per-coordinate change of every width-sized layer's output has
fitted width exponent within ±0.1 of 0 under muP and within ±0.1 of -1/2 under NTK scaling.
lr 0.02, gain sqrt(2) and muP's zero
read-out init were chosen on a different MLP (d=16, 3 hidden layers, 32 points, data seed 0);
checked here on d=10, 2 hidden layers, 24 points, data seed 7. Negative controls: each scheme
fails the other's criterion, and standard parametrization at the same lr fails both.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lazylab.coord_check import coord_check, fit_exponent, record_layers, width_exponents
from lazylab.models import SmallCNN
from lazylab.parametrize import parametrize
from lazylab.transformer import TinyTransformer

WIDTHS = [64, 128, 256, 512, 1024]


def mlp(w: int) -> nn.Module:
    return nn.Sequential(nn.Linear(10, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(), nn.Linear(w, 1))


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(7)
    return torch.randn(24, 10, generator=g), torch.randn(24, 1, generator=g)


@pytest.fixture(scope="module")
def exps(data):
    out = {}
    for scheme, zo in (("mup", True), ("ntk", False), ("standard", False)):
        df = coord_check(mlp, WIDTHS, data, scheme=scheme, lr=0.02, steps=3, seeds=range(8),
                         gain=2 ** 0.5, zero_output=zo)
        e = width_exponents(df)
        out[scheme] = e[e.role.isin(["input", "hidden"])].set_index("layer")["exponent"]
    return out


def test_fit_exponent_closed_form():
    x = np.array([1.0, 2.0, 4.0, 8.0])
    p, se = fit_exponent(x, 3 * x ** -0.5)
    assert p == pytest.approx(-0.5, abs=1e-12) and se == pytest.approx(0.0, abs=1e-12)
    p, se = fit_exponent(x, x * np.array([1.0, 1.1, 0.9, 1.0]))
    ref = np.polyfit(np.log(x), np.log(x * np.array([1.0, 1.1, 0.9, 1.0])), 1, cov=True)
    assert p == pytest.approx(ref[0][0]) and se == pytest.approx(np.sqrt(ref[1][0, 0]))
    assert np.isnan(fit_exponent([1.0], [2.0])[0])


def test_record_layers_matches_manual_forward():
    torch.manual_seed(0)
    m = parametrize(mlp(8).double(), "ntk", base_width=4)
    x = torch.randn(5, 10, dtype=torch.float64)
    acts = record_layers(m, x)
    W0 = m[0].weight
    h0 = x @ W0.T + m[0].bias
    h1 = torch.relu(h0) @ m[2].weight.T + m[2].bias  # parametrized: effective weight (mult * w)
    assert torch.allclose(m[2].weight, m[2].parametrizations.weight.original * 0.5 ** 0.5)
    assert torch.allclose(acts["0"], h0) and torch.allclose(acts["2"], h1)


def test_frame_and_reproducible(data):
    df = coord_check(mlp, [16, 32], data, scheme="mup", steps=2, lr=0.05)
    assert set(df.columns) == {"width", "seed", "step", "layer", "role", "act_rms", "delta_rms"}
    assert (df[df.step == 0].delta_rms == 0).all() and (df[df.step == 2].delta_rms > 0).all()
    df2 = coord_check(mlp, [16, 32], data, scheme="mup", steps=2, lr=0.05)
    assert df.equals(df2)


def test_mup_hidden_updates_are_width_independent(exps):
    assert (exps["mup"].abs() <= 0.1).all(), exps["mup"].to_dict()


def test_ntk_hidden_updates_fall_like_sqrt_width(exps):
    assert ((exps["ntk"] + 0.5).abs() <= 0.1).all(), exps["ntk"].to_dict()


def test_negative_controls_fail_the_other_criterion(exps):
    assert not (exps["ntk"].abs() <= 0.1).any()
    assert not ((exps["mup"] + 0.5).abs() <= 0.1).any()
    sp = exps["standard"]  # SP at a fixed lr: updates grow with width
    assert (sp > 0.1).all(), sp.to_dict()


def test_runs_on_cnn_and_transformer():
    g = torch.Generator().manual_seed(1)
    data = (torch.randn(6, 3, 8, 8, generator=g), torch.randn(6, 1, generator=g))
    df = coord_check(lambda w: SmallCNN(3, 1, width=w, depth=2), [8, 16], data, steps=1, lr=0.02)
    assert set(df.layer) == {"features.0", "features.2", "head"} and np.isfinite(df.delta_rms).all()
    data = (torch.randn(6, 8, 4, generator=g), torch.randn(6, generator=g))
    df = coord_check(lambda w: TinyTransformer(4, w, depth=1), [16, 32], data, steps=1, lr=0.02)
    assert "encoder.layers.0.self_attn" in set(df.layer) and np.isfinite(df.delta_rms).all()


def test_bad_input():
    with pytest.raises(ValueError, match="widths"):
        coord_check(mlp, [8], (torch.zeros(2, 10), torch.zeros(2, 1)))
    with pytest.raises(TypeError, match="data"):
        coord_check(mlp, [8, 16], torch.zeros(2, 10))
    with pytest.raises(ValueError, match="steps"):
        coord_check(mlp, [8, 16], (torch.zeros(2, 10), torch.zeros(2, 1)), steps=0)
