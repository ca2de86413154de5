"""Tests for the loo-ntk-evolution experiment (Loo et al. 2022)."""

import pandas as pd
import pytest
import torch

from lazylab.lab.experiments.loo_ntk_evolution import (
    LooConfig,
    _conv_epoch,
    report,
    run_cell,
    tangent_kernel,
)
from lazylab.lab.registry import RunContext, get_experiment
from lazylab.models import MLP
from lazylab.ntk import ntk
from lazylab.regimes import linearize


def test_tangent_kernel_measures_frozen_kernel_of_linearized_model():
    torch.manual_seed(0)
    net = MLP([5, 16, 3]).double()
    x = torch.randn(7, 5, dtype=torch.float64)
    K_net = ntk(net, x, accumulate_dtype=torch.float64)
    assert torch.allclose(tangent_kernel(net, x), K_net, atol=1e-10)
    lin = linearize(net, center=True)
    with torch.no_grad():  # move the trainable weights far away: the measured kernel stays K(w0)
        for p in lin.model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    assert torch.allclose(tangent_kernel(lin, x), K_net, atol=1e-10)
    assert not torch.allclose(ntk(lin.model, x, accumulate_dtype=torch.float64), K_net, atol=1e-3)


def test_conv_epoch_is_first_epoch_after_last_excursion():
    sub = pd.DataFrame({"epoch": [0, 1, 2, 4, 8], "dist_to_final": [0.5, 0.05, 0.2, 0.05, 0.0]})
    assert _conv_epoch(sub) == 4
    sub2 = pd.DataFrame({"epoch": [0, 1, 2], "dist_to_final": [0.01, 0.02, 0.0]})
    assert _conv_epoch(sub2) == 0


def test_run_cell_tiny_records_and_frozen_phase2_kernel():
    cfg = LooConfig(phase1="adversarial", n_train=120, n_test=60, width=16, epochs1=2, epochs2=1,
                    probe_per_class=2, n_snapshots=4, freeze_epochs=(1.0,), train_attack_steps=2,
                    eval_attack_steps=2, batch_size=40, kernel_check_points=12)
    recs = run_cell(cfg, RunContext(progress=False))
    df = pd.DataFrame(recs)
    ker = df[df["kind"] == "kernel"].sort_values("epoch")
    assert ker["epoch"].iloc[0] == 0 and ker["epoch"].iloc[-1] == 2
    assert abs(ker["dist_to_final"].iloc[-1]) < 1e-12
    assert ker["dist_to_init"].iloc[-1] > 0  # the network's kernel moved in phase 1
    p2 = df[df["kind"] == "phase2"]
    assert set(p2["run"]) == {"AC", "AA"}
    assert (p2["kernel_move"] < 1e-6).all()
    assert (p2["kernel_vs_phase1"] < 1e-6).all()  # phase 2 starts from the phase-1 kernel k_t
    assert ((p2["robust_acc"] >= 0) & (p2["robust_acc"] <= p2["clean_acc"])).all()


def test_run_cell_batchnorm_resnet_phase2_kernel_is_frozen():
    """The paper preset's model (ResNet-18 with BatchNorm; tiny width here): BN trains in phase 1
    and is evaluated with running statistics in phase 2, so the phase-2 kernel is still frozen."""
    cfg = LooConfig(phase1="standard", model="resnet18", width=8, batch_norm=True, n_train=60, n_test=30,
                    epochs1=1, epochs2=1, probe_per_class=1, n_snapshots=3, freeze_epochs=(1.0,),
                    train_attack_steps=1, eval_attack_steps=1, batch_size=30, kernel_check_points=4)
    df = pd.DataFrame(run_cell(cfg, RunContext(progress=False)))
    p2 = df[df["kind"] == "phase2"]
    assert set(p2["run"]) == {"CC", "CA"}
    assert (p2["kernel_move"] < 1e-6).all() and (p2["kernel_vs_phase1"] < 1e-6).all()
    ker = df[df["kind"] == "kernel"]
    assert ker["dist_to_init"].max() > 0
    with pytest.raises(ValueError, match="batch_norm"):
        run_cell(LooConfig(model="mlp", batch_norm=True), RunContext(progress=False))


def _fake(ac_rob: float, conv_adv_fast: bool) -> pd.DataFrame:
    rows = []
    for ph in ("standard", "adversarial"):
        fast = (ph == "adversarial") == conv_adv_fast
        dists = [0.5, 0.05, 0.04, 0.0] if fast else [0.5, 0.3, 0.2, 0.0]
        for e, d in zip([0.0, 1.0, 5.0, 20.0], dists):
            rows.append({"kind": "kernel", "phase1": ph, "seed": 0, "epoch": e, "dist_to_final": d,
                         "velocity": 0.1, "alignment": 0.2})
        rows.append({"kind": "phase1", "phase1": ph, "seed": 0, "clean_acc": 0.9, "robust_acc": 0.5})
        letter = "C" if ph == "standard" else "A"
        for r2 in "CA":
            rob = ac_rob if letter + r2 == "AC" else 0.5
            rows.append({"kind": "phase2", "phase1": ph, "seed": 0, "t": 20.0, "run": letter + r2,
                         "clean_acc": 0.9, "robust_acc": rob, "kernel_move": 0.0})
    return pd.DataFrame(rows)


def test_report_checks_pass_and_fail():
    good = report(_fake(0.7, True), LooConfig())
    assert [c.passed for c in good.checks] == [True, True, True]
    assert good.metrics["convergence_epoch_adversarial"] == 1.0
    assert good.metrics["convergence_epoch_standard"] == 20.0
    bad = report(_fake(0.55, False), LooConfig())
    assert [c.passed for c in bad.checks] == [True, False, False]
    assert set(good.figures) == {"loo_ntk_evolution", "loo_phase2"}


def test_registered_with_presets():
    exp = get_experiment("loo-ntk-evolution")
    assert exp.presets["paper"].set["model"] == "resnet18"
    assert exp.presets["paper"].set["batch_norm"] is True
    assert abs(exp.presets["paper"].set["eps"] - 4 / 255) < 1e-12


@pytest.mark.slow
def test_quick_preset_end_to_end(tmp_path):
    import json

    from lazylab.lab.runner import run_experiment

    run_experiment("loo-ntk-evolution", preset="quick", out=tmp_path / "run", progress=False,
                   echo=False)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    checks = {c["name"]: c for c in summary["checks"]}
    assert any("does not move" in n and c["passed"] for n, c in checks.items())
    assert any("AC more robust" in n and c["passed"] for n, c in checks.items())


def test_claims_fail_when_the_kernel_was_not_adversarially_trained():
    """Negative control: the 'adversarial' arm replaced by the very same standard training (its
    records relabelled), so its kernel is the standard one: 'AC more robust than CC' and 'the
    adversarial kernel converges earlier' must fail (differences exactly 0)."""
    rows = []
    for seed in (0, 1, 2):
        cfg = LooConfig(phase1="standard", n_train=120, n_test=60, width=16, epochs1=2, epochs2=1,
                        probe_per_class=2, n_snapshots=4, freeze_epochs=(2.0,), eval_attack_steps=2,
                        batch_size=40, kernel_check_points=4, seed=seed)
        for r in run_cell(cfg, RunContext(progress=False)):
            rows.append({**r, "phase1": "standard", "seed": seed})
            twin = {**r, "phase1": "adversarial", "seed": seed}
            if r.get("run"):
                twin["run"] = "A" + r["run"][1]
            rows.append(twin)
    rep = report(pd.DataFrame(rows), LooConfig())
    claims = [c for c in rep.checks if c.kind == "claim"]
    assert len(claims) == 2 and not any(c.passed for c in claims), claims
    assert all(c.value == pytest.approx(0.0, abs=1e-12) and c.n == 3 for c in claims)
