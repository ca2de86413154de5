"""Tests for the wang-lazy-attack experiment (Wang, Ullah, Mianjy & Arora 2022)."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from lazylab.lab.experiments.wang_lazy_attack import (
    WangConfig,
    report,
    run_cell,
    sphere_task,
    wang_net,
)
from lazylab.lab.registry import RunContext, get_experiment


def test_wang_net_matches_authors_architecture():
    net = wang_net(9, 50, seed=3)
    x = torch.randn(4, 9)
    a = net.out.weight.detach()[0]
    assert set(a.unique().tolist()) == {-1.0, 1.0}
    assert abs(abs(float(net.out.bias)) - 1 / math.sqrt(50)) < 1e-7
    assert not net.out.weight.requires_grad and net.hidden.weight.requires_grad
    manual = (torch.relu(x @ net.hidden.weight.T + net.hidden.bias) @ a) / math.sqrt(50) + net.out.bias
    assert torch.allclose(net(x), manual, atol=1e-5)


def test_sphere_task_norm_and_margin_exact():
    X, y = sphere_task(50, 30, 0.4, seed=1)
    assert torch.allclose(X.norm(dim=1), torch.full((50,), math.sqrt(30)), rtol=1e-5)
    X2, y2 = sphere_task(50, 30, 0.4, seed=1)
    assert torch.equal(X, X2) and torch.equal(y, y2)
    # <u, x> = y * 0.4 * sqrt(d) for one unit vector u: the linear system X u = y 0.4 sqrt(d) is
    # consistent (zero residual) and its solution has norm 1
    target = (y * 0.4 * math.sqrt(30)).double()
    u = torch.linalg.lstsq(X.double(), target.unsqueeze(1)).solution[:, 0]
    assert torch.allclose(X.double() @ u, target, atol=1e-4)
    assert abs(float(u.norm()) - 1) < 1e-4


def test_run_cell_tiny_walk_and_gap():
    cfg = WangConfig(dataset="digits", d=16, width=40, epochs=3, step=1e-2, max_steps=3000,
                     n_train=100, n_test=50,
                     gap_d=16, gap_width=40, radii=(0.03, 3.0), epochs_gap=1, attack_steps=2,
                     eval_attack_steps=2, eps=0.3)
    recs = run_cell(cfg, RunContext(progress=False))
    walk = [r for r in recs if r["kind"] == "walk"][0]
    assert walk["max_deviation"] <= walk["lazy_radius"]
    assert walk["clean_acc"] > 0.5 and 0 < walk["frac_flipped"] <= walk["clean_acc"] + 1e-6
    assert walk["delta_mean"] > 0 and np.isfinite(walk["rel_delta_mean"])
    gap = [r for r in recs if r["kind"] == "gap"]
    assert [g["radius"] for g in gap] == [0.03, 3.0]
    for g in gap:
        assert g["max_deviation"] <= g["radius"]
        assert 0 <= g["robust_acc"] <= g["clean_acc"] <= 1
    syn = run_cell(WangConfig(d=16, width=30, epochs=2, n_train=60, n_test=30), RunContext(progress=False))
    assert [r["kind"] for r in syn] == ["walk"]


def _fake(slope: float, gap_acc: list[float]) -> pd.DataFrame:
    rows = []
    for d in (16, 64, 256, 1024):
        for w in (100, 400):
            rows.append({"kind": "walk", "dataset": "synthetic", "d": d, "width": w, "seed": 0,
                         "clean_acc": 1.0, "frac_flipped": 1.0, "delta_mean": 1.0,
                         "rel_delta_mean": 0.5 * d**slope, "grad_norm_mean": 1.0, "eta_mean": 1.0,
                         "max_deviation": 0.1, "lazy_radius": 0.5})
    for r, a in zip((0.03, 0.3, 3.0), gap_acc):
        rows.append({"kind": "gap", "radius": r, "clean_acc": 1.0, "robust_acc": a,
                     "max_deviation": r, "seed": 0})
    return pd.DataFrame(rows)


ORIGINAL = ("synthetic: log-log slope", "robust accuracy rises", "robust accuracy non-decreasing")


def _orig(rep):
    return [c for c in rep.checks if c.name.startswith(ORIGINAL)]


def test_report_checks():
    ok = report(_fake(-0.5, [0.0, 0.3, 0.8]), WangConfig())
    assert [c.passed for c in _orig(ok)] == [True, True, True]
    assert all(c.passed for c in ok.checks) and len(ok.checks) == 5
    assert ok.metrics["slope_rel_delta_vs_d_synthetic"] == pytest.approx(-0.5, abs=1e-9)
    bad = report(_fake(-1.0, [0.5, 0.2, 0.6]), WangConfig())
    assert [c.passed for c in _orig(bad)] == [False, False, False]
    assert "wang_lazy_attack" in ok.figures


def test_registered_with_presets():
    exp = get_experiment("wang-lazy-attack")
    assert exp.presets["paper"].set["dataset"] == "mnist"
    assert set(exp.presets["quick"].sweep["dataset"]) == {"synthetic", "digits"}


def test_mnist_missing_gives_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        run_cell(WangConfig(dataset="mnist", data_dir=str(tmp_path), d=16), RunContext(progress=False))
    with pytest.raises(ValueError, match="perfect square"):
        run_cell(WangConfig(dataset="digits", d=20), RunContext(progress=False))


@pytest.mark.slow
def test_quick_preset_end_to_end(tmp_path):
    import json

    from lazylab.lab.runner import run_experiment

    run_experiment("wang-lazy-attack", preset="quick", out=tmp_path / "run", progress=False,
                   echo=False)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert all(c["passed"] for c in summary["checks"]), summary["checks"]


def _write_idx(path, arr):
    import struct

    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    with open(path, "wb") as f:
        f.write(bytes([0, 0, 0x08, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape))
        f.write(arr.tobytes())


def test_mnist_branch_on_fake_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("t10k", 30)):
        labels = rng.integers(0, 3, n)
        imgs = np.zeros((n, 28, 28), np.uint8)
        imgs[labels == 1, :, 10:18] = 255  # a bar for the ones, noise elsewhere
        imgs += rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte", imgs)
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte", labels)
    recs = run_cell(WangConfig(dataset="mnist", data_dir=str(tmp_path), d=25, width=20, epochs=2,
                               n_train=0, n_test=0, step=1e-2, max_steps=2000),
                    RunContext(progress=False))
    assert recs[0]["kind"] == "walk" and recs[0]["clean_acc"] > 0.5


# ----------------------------------------------------------------------------- negative controls
def _walks(train: str, epochs: int, seeds=(0, 1, 2), **kw) -> pd.DataFrame:
    rows = []
    for seed in seeds:
        for d in (16, 64):
            cfg = WangConfig(d=d, width=50, epochs=epochs, n_train=200, n_test=50, seed=seed,
                             train=train, step=5e-3, **kw)
            rows += [{**r, "dataset": "synthetic", "d": d, "width": 50, "seed": seed}
                     for r in run_cell(cfg, RunContext(progress=False))]
    return pd.DataFrame(rows)


def test_walk_claims_fail_on_untrained_nets():
    """Negative control: untrained random nets are fragile too (delta = Θ(1), the slope may even
    look right), but they did not learn: test accuracy ~ chance, so every part-1 claim fails."""
    rep = report(_walks("lazy", epochs=0), WangConfig())
    claims = [c for c in rep.checks if c.name.startswith("synthetic")]
    assert len(claims) == 3 and not any(c.passed for c in claims), claims
    assert claims[0].value < 0.8 and claims[0].n == 3


def test_radius_claim_fails_without_training():
    """Negative control of part 2: with no adversarial training (0 epochs) the robust accuracy
    does not rise with the allowed radius."""
    cfg = WangConfig(dataset="digits", d=16, width=20, gap_d=16, gap_width=20, epochs=1,
                     epochs_gap=0, radii=(0.03, 3.0), eval_attack_steps=5, n_train=60, n_test=40)
    rows = [{**r, "seed": s, "dataset": "digits", "d": 16, "width": 20} for s in (0, 1, 2)
            for r in run_cell(WangConfig(**{**cfg.__dict__, "seed": s}), RunContext(progress=False))]
    rep = report(pd.DataFrame(rows), WangConfig())
    rise = [c for c in rep.checks if c.name.startswith("robust accuracy rises")][0]
    assert not rise.passed and abs(rise.value) < 0.2


def test_non_decreasing_claim_fails_on_flipped_labels():
    """Negative control of 'robust accuracy non-decreasing in the radius': adversarial training on
    flipped labels (-y). The further the net may move, the better it learns the wrong rule, so the
    robust accuracy on the true labels falls with the radius (measured: 0.34 -> 0.04 -> 0.06 over
    radii 0.03, 0.3, 3; the same run on the true labels: 0.29 -> 0.31 -> 0.47, drop 0)."""
    cfg = WangConfig(dataset="digits", d=16, width=200, gap_d=16, gap_width=200, epochs=1,
                     epochs_gap=20, radii=(0.03, 0.3, 3.0), eval_attack_steps=10, n_train=200,
                     n_test=100, gap_labels="flipped")
    rows = [{**r, "seed": s, "dataset": "digits", "d": 16, "width": 200} for s in (0, 1, 2)
            for r in run_cell(WangConfig(**{**cfg.__dict__, "seed": s}), RunContext(progress=False))]
    rep = report(pd.DataFrame(rows), WangConfig())
    c = {x.name.split(" (")[0]: x for x in rep.checks}
    drop = c["robust accuracy non-decreasing in the radius"]
    assert not drop.passed and drop.value > 0.1
    assert not c["robust accuracy rises with the allowed radius"].passed


@pytest.mark.slow
def test_walk_claims_fail_on_adversarially_trained_nets():
    """Negative control named by Wang et al.'s claim: nets adversarially trained far outside the
    lazy ball learn (accuracy ~1) but are robust: the flip distance stays near the Bayes margin
    (delta/||x|| ≈ 0.33 at d = 16 and 64), so the d^(-1/2) slope and 'far below the margin' fail."""
    rep = report(_walks("adversarial", epochs=10, attack_steps=5), WangConfig())
    c = {x.name.split(" (")[0].split(" at d")[0]: x for x in rep.checks}
    assert c["synthetic: lazy nets learned"].passed
    assert not c["synthetic: log-log slope of delta/||x|| vs d"].passed
    assert not c["synthetic: flip distance / Bayes margin"].passed
