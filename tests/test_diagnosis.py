"""diagnose / alpha_crossover (lazylab.diagnosis) and the `lazylab diagnose` command."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from lazylab.data import sphere, teacher_two_layer
from lazylab.diagnosis import THRESHOLDS, alpha_crossover, diagnose, verdict_from
from lazylab.lab import diagnose_cli
from lazylab.lab import diagnosis_render as render
from lazylab.models import TwoLayerNet

D = 8


def _task(n: int = 60, n_test: int = 40):
    f, _, _ = teacher_two_layer(D, 3, seed=0)
    X, Xt = sphere(n, D, radius=D**0.5, seed=1), sphere(n_test, D, radius=D**0.5, seed=2)
    return (X, f(X)), (Xt, f(Xt))


def test_verdict_rules():
    assert verdict_from(0.05, 0.05)[0] == "lazy"
    assert verdict_from(0.05, 0.2)[0] == "intermediate"  # kernel still, but the output left the twin
    assert verdict_from(0.3, 0.01)[0] == "intermediate"
    assert verdict_from(0.5, 0.01)[0] == "feature learning"
    assert verdict_from(0.3, 0.01, {"feature_kernel": 0.2})[0] == "feature learning"
    assert THRESHOLDS == {"lazy_kernel": 0.1, "lazy_lin_gap": 0.1, "feature_kernel": 0.5}


def test_wide_net_large_alpha_is_lazy(tmp_path):
    train_set, test_set = _task()
    net = TwoLayerNet(D, 1000)
    w_before = net.hidden.weight.detach().clone()
    rep = diagnose(net, train_set, test_data=test_set, alpha=100.0, steps=100, lr=1.0, n_probe=16,
                   n_snapshots=6)
    assert torch.equal(net.hidden.weight, w_before)  # the caller's model is untouched
    n = rep.numbers
    assert rep.verdict == "lazy"
    assert n["kernel_rel_change"] < 0.01 and n["lin_gap_rel"] < 0.01 and n["rel_weight_change"] < 0.01
    assert n["train_loss"] < 0.5 * n["train_loss_init"]  # it trained
    assert n["activation_stability"] > 0.99
    assert 0 < n["kappa"] < 0.01
    md = render.to_markdown(rep)
    assert "Verdict: **lazy**" in md
    assert f"{n['kernel_rel_change']:.3g}" in md and f"{n['lin_gap_rel']:.3g}" in md  # numbers shown
    path = render.save(rep, tmp_path / "rep")
    assert path.read_text() == md
    for f in ("figures/diagnose_curves.png", "figures/diagnose_spectrum.png", "history.csv", "kernel.csv"):
        assert (tmp_path / "rep" / f).stat().st_size > 0
    assert set(render.figures(rep)) == {"curves", "spectrum"}


def test_cli_narrow_net_small_alpha_is_feature_learning(tmp_path, capsys):
    out = tmp_path / "d"
    rc = diagnose_cli.main(["--model", "two_layer", "--model-set", "m=10", "--alpha", "0.1",
                            "--data", "teacher", "--data-set", f"d={D}", "--data-set", "n=60",
                            "--data-set", "n_test=40", "--steps", "100", "--lr", "1", "--probe", "16",
                            "--snapshots", "6", "--no-kappa", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert text.startswith("verdict: feature learning (kernel change ")
    change = float(re.search(r"kernel change ([0-9.e+-]+)", text).group(1))
    assert change >= 0.5
    md = (out / "report.md").read_text()
    assert "Verdict: **feature learning**" in md
    assert "ReLU activation stability" in md and "relative kernel change" in md
    stab = float(re.search(r"ReLU activation stability[^|]*\| ([0-9.e+-]+) \|", md).group(1))
    assert stab < 0.95
    assert (out / "figures" / "diagnose_curves.png").exists()


def test_cli_bad_input_clear_errors(tmp_path, capsys, monkeypatch):
    def err(argv):
        assert diagnose_cli.main(argv) == 2
        return capsys.readouterr().err

    assert "unknown model 'resnet9000'" in err(["--model", "resnet9000", "--data", "teacher"])
    assert "unknown dataset 'imagenet'" in err(["--model", "two_layer", "--data", "imagenet"])
    assert "unknown setting(s) ['width']" in err(["--model", "two_layer", "--model-set", "width=3",
                                                  "--data", "teacher"])
    # a factory that does not return a module
    (tmp_path / "myfactories.py").write_text(
        "import torch\n"
        "def not_a_model():\n    return 42\n"
        "def good(d, out_dim, m=8):\n    return torch.nn.Sequential(torch.nn.Linear(d, m), torch.nn.ReLU(),"
        " torch.nn.Linear(m, out_dim), torch.nn.Flatten(0))\n")
    monkeypatch.chdir(tmp_path)
    msg = err(["--model", "myfactories:not_a_model", "--data", "teacher"])
    assert "returned int" in msg and "torch.nn.Module" in msg
    assert "has no attribute 'missing'" in err(["--model", "myfactories:missing", "--data", "teacher"])
    assert "cannot import module 'no_such_mod'" in err(["--model", "no_such_mod:f", "--data", "teacher"])
    # data files with the wrong keys or shapes
    np.savez(tmp_path / "keys.npz", inputs=np.zeros((5, 3)), targets=np.zeros(5))
    msg = err(["--model", "two_layer", "--data", str(tmp_path / "keys.npz")])
    assert "lacks ['X', 'y']" in msg and "found keys ['inputs', 'targets']" in msg
    np.savez(tmp_path / "rows.npz", X=np.zeros((5, 3), np.float32), y=np.zeros(4, np.float32))
    assert "X has 5 rows but y has 4" in err(["--model", "two_layer", "--data", str(tmp_path / "rows.npz")])
    torch.save({"X": torch.zeros(5), "y": torch.zeros(5)}, tmp_path / "flat.pt")
    assert "X must have shape (N, features...)" in err(["--model", "two_layer", "--data",
                                                        str(tmp_path / "flat.pt")])
    torch.save({"X": torch.zeros(5, 3), "y": torch.zeros(5, 2, 2)}, tmp_path / "y3.pt")
    msg = err(["--model", "two_layer", "--data", str(tmp_path / "y3.pt")])
    assert "y must have shape (N,) or (N, C)" in msg
    torch.save([1, 2], tmp_path / "list.pt")
    assert "must hold a dict" in err(["--model", "two_layer", "--data", str(tmp_path / "list.pt")])
    assert "does not exist" in err(["--model", "two_layer", "--data", str(tmp_path / "none.npz")])
    torch.save({"X": [[1.0, 2.0]] * 3, "y": torch.zeros(3)}, tmp_path / "lists.pt")
    assert "X must be a tensor or array, got list" in err(["--model", "two_layer", "--data",
                                                           str(tmp_path / "lists.pt")])
    # through the main `lazylab` command
    from lazylab.lab.cli import main

    assert main(["diagnose", "--model", "resnet9000", "--data", "teacher"]) == 2
    assert "unknown model 'resnet9000'" in capsys.readouterr().err
    # the API refuses non-modules too
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        diagnose(lambda x: x, _task()[0])


def test_cli_factory_and_data_file(tmp_path, capsys, monkeypatch):
    (tmp_path / "fac.py").write_text(
        "import torch\n"
        "def good(d, out_dim, m=8):\n    return torch.nn.Sequential(torch.nn.Linear(d, m), torch.nn.ReLU(),"
        " torch.nn.Linear(m, out_dim), torch.nn.Flatten(0))\n")
    monkeypatch.chdir(tmp_path)
    (X, y), (Xt, yt) = _task(30, 20)
    np.savez(tmp_path / "data.npz", X=X.numpy(), y=y.numpy(), X_test=Xt.numpy(), y_test=yt.numpy())
    rc = diagnose_cli.main(["--model", "fac:good", "--model-set", "m=16", "--data", "data.npz",
                            "--steps", "20", "--lr", "0.5", "--probe", "8", "--snapshots", "3",
                            "--no-kappa", "--out", "o"])
    assert rc == 0
    out = capsys.readouterr().out
    assert re.match(r"verdict: (lazy|intermediate|feature learning) \(", out)
    md = (tmp_path / "o" / "report.md").read_text()
    assert "| parameters | 161 |" in md  # 8*16 + 16 + 16 + 1: the factory got d=8, out_dim=1, m=16
    assert "| test points | 20 |" in md


def test_alpha_crossover_brackets_the_threshold(tmp_path):
    (X, y), _ = _task(40, 10)

    def model_fn():
        return TwoLayerNet(D, 30)

    res = alpha_crossover(model_fn, (X, y), threshold=0.1, alpha_range=(0.1, 100.0), n_grid=4, tol=0.5,
                          steps=80, lr=1.0, n_probe=12)
    assert res.alpha_star is not None and res.bracket is not None
    lo, hi = res.bracket
    assert lo <= res.alpha_star <= hi and np.log10(hi / lo) <= 0.5
    t = res.table.sort_values("alpha")
    grid = t[t.phase == "grid"]
    assert list(np.diff(grid["kernel_rel_change"].to_numpy()) < 0) == [True] * 3  # decreasing in alpha
    # every evaluated alpha is on the side of alpha* its kernel change says
    for a, c in zip(t["alpha"], t["kernel_rel_change"]):
        assert (c >= 0.1) == (a <= lo), (a, c)
    assert (t.phase == "bisection").sum() >= 1
    path = render.save_crossover(res, tmp_path / "x")
    assert (tmp_path / "x" / "figures" / "alpha_crossover.png").stat().st_size > 0
    assert f"alpha* = {res.alpha_star:.4g}" in path.read_text()
    with pytest.raises(TypeError, match="must return a torch.nn.Module"):
        alpha_crossover(lambda: 3, (X, y), steps=2, n_grid=2)
    with pytest.raises(ValueError, match="alpha_range"):
        alpha_crossover(model_fn, (X, y), alpha_range=(10.0, 1.0))
    nox = alpha_crossover(model_fn, (X, y), alpha_range=(100.0, 1000.0), n_grid=2, steps=20, n_probe=8)
    assert nox.alpha_star is None and "does not cross" in nox.message
