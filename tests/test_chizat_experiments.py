"""Tests of the Chizat et al. (2019) experiments: chizat-scale, -width, -rates, -trajectories.

Each experiment's run_cell runs on a tiny config; the helpers are checked against independent
computations (naive loops, closed forms, exact identities); report() is fed records with known
answers so its checks must pass or fail as the numbers say.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch

from lazylab.lab.experiments import chizat_rates, chizat_scale, chizat_trajectories, chizat_width
from lazylab.lab.experiments._chizat_common import chizat_net, loglog_slope, paper_lr, teacher_data
from lazylab.lab.registry import RunContext, get_experiment
from lazylab.regimes import lazy, linearize
from lazylab.trainer import train

CTX = RunContext(progress=False)


# ----------------------------------------------------------------------------- common helpers
def test_teacher_data_matches_naive_loop():
    (X, y), (Xt, yt), B, a = teacher_data(4, 3, 7, 5, seed=3, dtype=torch.float64)
    assert X.shape == (7, 4) and Xt.shape == (5, 4)
    assert torch.allclose(X.norm(dim=1), torch.ones(7, dtype=torch.float64))
    assert torch.allclose(B.norm(dim=1), torch.ones(3, dtype=torch.float64))
    assert set(a.tolist()) <= {-1.0, 1.0}
    for i in range(7):
        ref = sum(a[k].item() * max(sum(B[k, j].item() * X[i, j].item() for j in range(4)), 0.0)
                  for k in range(3))
        assert y[i].item() == pytest.approx(ref, abs=1e-12)
    (X2, y2), _, _, _ = teacher_data(4, 3, 7, 5, seed=3, dtype=torch.float64)
    assert torch.equal(X, X2) and torch.equal(y, y2)
    (_, y3), _, _, _ = teacher_data(4, 3, 7, 5, seed=3, output_scale=100.0, dtype=torch.float64)
    assert torch.allclose(y3, 100 * y)
    with pytest.raises(ValueError, match="n_train"):
        teacher_data(4, 3, 0, 5, seed=0)


def test_chizat_net_symmetrized_zero_output_and_structure():
    net = chizat_net(6, 8, 0.7, seed=1, dtype=torch.float64)
    X = torch.randn(10, 6, dtype=torch.float64)
    assert net(X).abs().max().item() < 1e-14  # zero up to the summation order
    W, a = net.hidden.weight, net.out.weight[0]
    assert torch.equal(W[:4], W[4:]) and torch.equal(a[:4], -a[4:])
    assert (a[:4] >= 0).all()
    # the paper's model: f(x) = sum_j a_j relu(<b_j, x>), output scale 1, no biases
    net2 = chizat_net(6, 8, 0.7, seed=1, symmetric=False, dtype=torch.float64)
    ref = torch.relu(X @ net2.hidden.weight.T) @ net2.out.weight[0]
    assert torch.allclose(net2(X), ref, atol=1e-12)


def test_chizat_net_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a = chizat_net(3, 4, 1.0, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(chizat_net(3, 4, 1.0, seed=5).hidden.weight, a.hidden.weight)


def test_chizat_net_tau_is_alpha_tau_squared():
    """Same N(0,1) draw for every tau; 2-homogeneous: f_tau = tau^2 f_1 (so tau acts as alpha = tau^2)."""
    X = torch.randn(9, 5, dtype=torch.float64)
    f1 = chizat_net(5, 6, 1.0, seed=2, symmetric=False, dtype=torch.float64)
    f3 = chizat_net(5, 6, 3.0, seed=2, symmetric=False, dtype=torch.float64)
    assert torch.allclose(f3.hidden.weight, 3.0 * f1.hidden.weight)
    assert torch.allclose(f3(X), 9.0 * f1(X), rtol=1e-12)


def test_chizat_net_unit_init_and_bad_input():
    net = chizat_net(2, 6, 2.0, seed=0, init="unit", symmetric=False, dtype=torch.float64)
    assert torch.allclose(net.hidden.weight.norm(dim=1), torch.full((6,), 2.0, dtype=torch.float64))
    assert ((net.out.weight >= 0) & (net.out.weight <= 2.0)).all()
    with pytest.raises(ValueError, match="even"):
        chizat_net(2, 5, 1.0, seed=0)
    with pytest.raises(ValueError, match="tau"):
        chizat_net(2, 4, 0.0, seed=0)
    with pytest.raises(ValueError, match="init"):
        chizat_net(2, 4, 1.0, seed=0, init="xavier")


def test_paper_lr_and_slope():
    assert paper_lr(0.01) == 10.0 and paper_lr(1.0) == pytest.approx(0.1)
    assert paper_lr(2.0) == pytest.approx(0.025)
    assert paper_lr(0.01, cap=30.0) == 30.0
    x = np.array([1.0, 10.0, 100.0])
    assert loglog_slope(x, 3.0 * x ** -1.5) == pytest.approx(-1.5, abs=1e-12)
    assert math.isnan(loglog_slope(x[:1], x[:1]))


# ----------------------------------------------------------------------------- chizat-scale
def test_linearized_reference_is_tau_independent():
    """The claim behind lin_tau: with step c/tau^2 the linearized symmetrized model's function
    path does not depend on tau (kernel ∝ tau^2)."""
    (X, y), (Xt, yt), _, _ = teacher_data(5, 2, 20, 10, seed=0, dtype=torch.float64)
    losses = []
    for tau in (0.5, 2.0):
        lin = linearize(chizat_net(5, 6, tau, seed=0, dtype=torch.float64))
        h = train(lin, (X, y), test_data=(Xt, yt), lr=paper_lr(tau), steps=30, track_steps=30)
        losses.append(h.final["test_loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-9)


def test_scale_run_cell_tiny():
    cfg = chizat_scale.ChizatScaleConfig(tau=1.0, d=5, m=6, n_train=20, n_test=10, steps=40,
                                         track_every=5, lin_tau=1.0, dtype="float64")
    (rec,) = chizat_scale.run_cell(cfg, CTX)
    assert rec["step"] == 40 and not rec["diverged"] and rec["lr"] == pytest.approx(0.1)
    assert rec["test_loss_best"] <= rec["test_loss_end"]
    assert rec["step_best"] % 5 == 0 or rec["step_best"] == 40
    assert "lin_test_loss_end" in rec
    # both start at h(w0) = 0 (the zero predictor) and GD lowers the loss
    _, (_, yt), _, _ = teacher_data(5, 3, 20, 10, 0, dtype=torch.float64)
    zero = 0.5 * yt.pow(2).mean().item()
    assert rec["test_loss_best"] < zero and rec["lin_test_loss_best"] < zero
    (rec2,) = chizat_scale.run_cell(cfg.__class__(**{**cfg.__dict__, "tau": 0.5}), CTX)
    assert "lin_test_loss_end" not in rec2
    with pytest.raises(ValueError, match="dtype"):
        chizat_scale.run_cell(cfg.__class__(**{**cfg.__dict__, "dtype": "int8"}), CTX)


def _scale_df(small: float, plateau: float, lin: float) -> pd.DataFrame:
    rows = []
    for seed in (0, 1):
        for tau in (0.01, 0.0316, 0.316, 1.0, 3.16):
            v = small if tau <= 0.01 else (0.2 * plateau if tau < 0.1 else plateau)
            r = {"tau": tau, "seed": seed, "cell_id": f"{tau}-{seed}", "test_loss_end": v / 1000,
                 "test_loss_best": 0.4 * v / 1000, "train_loss_end": 0.0, "diverged": False}
            if tau == 1.0:
                r.update(lin_test_loss_end=lin / 1000, lin_test_loss_best=0.4 * lin / 1000)
            rows.append(r)
    return pd.DataFrame(rows)


def test_scale_report_checks():
    base = chizat_scale.ChizatScaleConfig(paper_checks=True)
    rep = chizat_scale.report(_scale_df(small=0.1, plateau=3.1, lin=3.0), base)
    got = {c.name: c for c in rep.checks}
    assert rep.metrics["plateau_over_small_tau"] == pytest.approx(31.0)
    assert rep.metrics["plateau_end_1000x"] == pytest.approx(3.1)
    assert rep.metrics["plateau_best_1000x"] == pytest.approx(0.4 * 3.1)  # paper 1.95: fails
    assert rep.metrics["plateau_vs_linearized_rel_gap"] == pytest.approx(0.1 / 3.0)
    assert len(rep.checks) == 7
    assert [c.passed for c in rep.checks] == [True, True, True, True, True, True, False]
    assert "chizat_scale" in rep.figures and "plateau best" in list(got)[-1]
    bad = chizat_scale.report(_scale_df(small=1.0, plateau=3.1, lin=2.0),
                              chizat_scale.ChizatScaleConfig())
    assert [c.passed for c in bad.checks][:2] == [False, False]  # ratio 3.1 < 10; gap 55 % > 10 %
    assert len(bad.checks) == 4  # no paper checks


# ----------------------------------------------------------------------------- chizat-width
def test_width_alpha_lr_and_bad_input():
    assert chizat_width.alpha_and_lr(16, "sqrt") == (0.25, 1 / 16)
    assert chizat_width.alpha_and_lr(16, "mean_field") == (1 / 16, 0.05 / 16)
    with pytest.raises(ValueError, match="scaling"):
        chizat_width.alpha_and_lr(16, "ntk")
    with pytest.raises(ValueError, match="m must"):
        chizat_width.alpha_and_lr(0, "sqrt")


def test_width_model_step_is_the_papers_gd():
    """One step of train(lazy(h, alpha, 'none'), lr) equals the code's GDfor2NN update
    W <- W - (lr/alpha) * Dh^T (alpha h - y)/n, computed here by hand for the ReLU net."""
    d, m, n, alpha, lr = 4, 5, 6, 0.2, 0.3
    (X, y), _, _, _ = teacher_data(d, 2, n, 1, seed=1, dtype=torch.float64)
    net = chizat_net(d, m, 1.0, seed=4, symmetric=False, dtype=torch.float64)
    B, a = net.hidden.weight.detach().clone(), net.out.weight.detach()[0].clone()
    model = lazy(copy.deepcopy(net), alpha, center="none")
    train(model, (X, y), lr=lr, steps=1, track_steps=[0])
    w = model.effective_weights()
    pre = X @ B.T                                  # (n, m)
    r = (alpha * (torch.relu(pre) @ a) - y) / n    # dR/d(output), R = 1/2 mean (f - y)^2
    ga = torch.relu(pre).T @ r                     # dh/da_j weighted by r
    gB = ((pre > 0) * a * r[:, None]).T @ X        # dh/db_j
    assert torch.allclose(w["out.weight"][0], a - lr / alpha * ga, atol=1e-12)
    assert torch.allclose(w["hidden.weight"], B - lr / alpha * gB, atol=1e-12)


def test_width_run_cell_and_report():
    recs = []
    for sc in ("sqrt", "mean_field"):
        cfg = chizat_width.ChizatWidthConfig(m=4, scaling=sc, n_train=20, n_test=10, steps=20, n_track=5)
        out = chizat_width.run_cell(cfg, CTX)
        assert out[-1]["step"] == 20 and out[0]["step"] == 0
        assert out[-1]["train_loss"] < out[0]["train_loss"]
        recs += [{"m": 4, "scaling": sc, "seed": 0, "cell_id": sc, **r} for r in out]
    # synthetic records: at m = 64 the sqrt loss is 4x the mean-field loss
    for sc, v in (("sqrt", 40.0), ("mean_field", 10.0)):
        recs.append({"m": 64, "scaling": sc, "seed": 0, "cell_id": f"{sc}64", "step": 20,
                     "train_loss": 0.0, "test_loss": v, "diverged": False})
    rep = chizat_width.report(pd.DataFrame(recs), chizat_width.ChizatWidthConfig())
    assert rep.metrics["ratio_sqrt_over_mf@m=64"] == pytest.approx(4.0)
    assert rep.checks[0].passed  # 4 >= 3
    rep2 = chizat_width.report(pd.DataFrame(recs), chizat_width.ChizatWidthConfig(ratio_target=5.0))
    assert not rep2.checks[0].passed


# ----------------------------------------------------------------------------- chizat-rates
def test_rates_run_cell_gaps_shrink_with_alpha():
    out = {}
    for a in (1.0, 100.0):
        cfg = chizat_rates.ChizatRatesConfig(alpha=a, center="copy", m=10, n=8, steps=20, track_every=5)
        (rec,) = chizat_rates.run_cell(cfg, CTX)
        out[a] = rec
        assert rec["train_loss_end"] < rec["train_loss_0"]
    assert out[100.0]["sup_w"] == pytest.approx(out[1.0]["sup_w"] / 100, rel=0.2)
    assert out[100.0]["sup_p"] < out[1.0]["sup_p"] / 1000
    with pytest.raises(ValueError, match="center"):
        chizat_rates.run_cell(chizat_rates.ChizatRatesConfig(center="none"), CTX)


def test_rates_report_slopes_from_exact_power_laws():
    rows = []
    for center, pf in (("copy", 1.0), ("symmetric", 2.0)):
        for a in (1.0, 10.0, 100.0):
            rows.append({"center": center, "alpha": a, "seed": 0, "sup_w": 2.0 / a,
                         "sup_f": 0.5 * a ** -pf, "sup_p": 3.0 / a**2, "train_loss_0": 1.0,
                         "train_loss_end": 0.5})
    rep = chizat_rates.report(pd.DataFrame(rows), chizat_rates.ChizatRatesConfig())
    assert rep.metrics["slope_sup_f_copy"] == pytest.approx(-1.0)
    assert rep.metrics["slope_sup_f_symmetric"] == pytest.approx(-2.0)
    assert all(c.passed for c in rep.checks) and len(rep.checks) == 5
    rows2 = [{**r, "sup_f": 0.5 / r["alpha"]} for r in rows]  # symmetric gap only 1/alpha: fail
    rep2 = chizat_rates.report(pd.DataFrame(rows2), chizat_rates.ChizatRatesConfig())
    assert [c.passed for c in rep2.checks] == [True, True, True, True, False]


# ----------------------------------------------------------------------------- chizat-trajectories
def test_angular_distances_match_naive_loop():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(7, 2, generator=g, dtype=torch.float64)
    a = torch.randn(7, generator=g, dtype=torch.float64)
    U = torch.randn(3, 2, generator=g, dtype=torch.float64)
    U = U / U.norm(dim=1, keepdim=True)
    got = chizat_trajectories.angular_distances(W, a, U)
    angs, masses = [], []
    for j in range(7):
        th = math.atan2(W[j, 1].item(), W[j, 0].item())
        best = min(abs((th - math.atan2(U[k, 1].item(), U[k, 0].item()) + math.pi) % (2 * math.pi)
                       - math.pi) for k in range(3))
        angs.append(best)
        masses.append(abs(a[j].item()) * math.hypot(W[j, 0].item(), W[j, 1].item()))
    assert got["ang_dist_unweighted"] == pytest.approx(np.mean(angs), abs=1e-9)
    assert got["ang_dist"] == pytest.approx(np.dot(masses, angs) / sum(masses), abs=1e-9)


def test_trajectories_run_cell_and_report():
    recs = []
    for tau in (0.1, 2.0):
        cfg = chizat_trajectories.ChizatTrajectoriesConfig(tau=tau, m=4, n_train=5, n_test=5, steps=30,
                                                            lr=0.05, n_track=5)
        out = chizat_trajectories.run_cell(cfg, CTX)
        last = out[-1]
        assert last["step"] == 30
        # the recorded points are |a_j| b_j of the model (checked at init: symmetric pairs coincide)
        assert out[0]["px0"] == out[0]["px2"] and out[0]["sa0"] == -out[0]["sa2"]
        assert out[0]["zero_loss"] == pytest.approx(out[0]["train_loss"], rel=1e-12)
        recs += [{"tau": tau, "m": 4, "n_train": 5, "symmetric": True, "seed": 0,
                  "cell_id": str(tau), **r} for r in out]
    df = pd.DataFrame(recs)
    rep = chizat_trajectories.report(df, chizat_trajectories.ChizatTrajectoriesConfig())
    assert len(rep.checks) == 4 and "chizat_trajectories" in rep.figures
    t = rep.table.set_index("tau")
    for tau in (0.1, 2.0):
        sub = df[df["tau"] == tau].sort_values("step")
        assert t.loc[tau, "ang_ratio"] == pytest.approx(sub["ang_dist"].iloc[-1] / sub["ang_dist"].iloc[0])
    # the lazy check is the one with ">= 0.8", the non-lazy the "<= 0.5"
    assert rep.checks[1].target == "<= 0.5" and rep.checks[3].target == ">= 0.8"
    assert rep.checks[1].passed == (t.loc[0.1, "ang_ratio"] <= 0.5)


# ----------------------------------------------------------------------------- registry + end to end
@pytest.mark.parametrize("name", ["chizat-scale", "chizat-width", "chizat-rates", "chizat-trajectories"])
def test_registered_with_presets(name):
    exp = get_experiment(name)
    assert {"quick", "paper"} <= set(exp.presets)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["chizat-rates", "chizat-trajectories", "chizat-scale", "chizat-width"])
def test_quick_preset_end_to_end(name, tmp_path):
    import json

    from lazylab.lab.runner import run_experiment

    path = run_experiment(name, preset="quick", out=tmp_path / name, progress=False, echo=False)
    summary = json.loads((path.parent / "summary.json").read_text())
    assert summary["checks"] and all(c["passed"] for c in summary["checks"]), summary["checks"]


def test_cell_threads_sets_and_restores():
    from lazylab.lab.experiments._chizat_common import cell_threads

    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with cell_threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with cell_threads(0):
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(prev)


# ----------------------------------------------------------------------------- negative controls
def _scale_run(taus, steps, lin_tau=1.0, seeds=(0, 1, 2)):
    rows = []
    for seed in seeds:
        for tau in taus:
            cfg = chizat_scale.ChizatScaleConfig(seed=seed, tau=tau, d=10, m=20, n_train=60,
                                                 n_test=100, steps=steps, lin_tau=lin_tau,
                                                 track_every=10, dtype="float64")
            (r,) = chizat_scale.run_cell(cfg, CTX)
            rows.append({**r, "tau": tau, "seed": seed, "cell_id": f"{tau}-{seed}"})
    return pd.DataFrame(rows)


def test_scale_claims_fail_on_an_untrained_net():
    """Negative control: with no training every tau gives the zero predictor's loss, so the
    plateau/small-tau ratio, the rise and the paper's values must all fail."""
    df = _scale_run((0.01, 0.0316, 0.5, 1.0), steps=0)
    rep = chizat_scale.report(df, chizat_scale.ChizatScaleConfig(paper_checks=True))
    got = {c.name.split(" (")[0].split(":")[0]: c for c in rep.checks}
    for name in ("plateau", "rise starts", "rise done", "small tau", "plateau end test loss, 1000x",
                 "plateau best test loss, 1000x"):
        key = next(k for k in got if k.startswith(name))
        assert not got[key].passed and got[key].verdict == "not reproduced", key
        assert got[key].n == 3  # measured on each of the 3 trials
    assert got["plateau"].value == pytest.approx(1.0)


def test_scale_claims_fail_in_the_wrong_regime():
    """Negative control on trained nets (d = 10, m = 20): 'plateau = linearized model' judged on
    a feature-learning scale (tau = 0.1 taken as the plateau) fails, while at tau = 1 it holds
    (the linearized model's function-space path does not depend on tau)."""
    df = _scale_run((0.1, 1.0), steps=200, lin_tau=0.1)
    lazy_rep = chizat_scale.report(df, chizat_scale.ChizatScaleConfig(plateau_tau=1.0))
    lin = next(c for c in lazy_rep.checks if "linearized" in c.name)
    assert lin.passed
    feat = chizat_scale.report(df[df["tau"] == 0.1], chizat_scale.ChizatScaleConfig(plateau_tau=0.1))
    lin_f = next(c for c in feat.checks if "linearized" in c.name)
    assert not lin_f.passed and lin_f.value > 0.5


def test_width_claims_fail_on_untrained_nets():
    """Negative control: untrained nets (steps = 0) of either scaling predict ~0 against a teacher
    scaled by 100, so the 1/sqrt(m)-over-1/m ratio and the rise with m are ~1 and must fail."""
    recs = []
    for seed in (0, 1, 2):
        for m in (4, 64):
            for sc in ("sqrt", "mean_field"):
                cfg = chizat_width.ChizatWidthConfig(m=m, scaling=sc, d=10, n_train=20, n_test=50,
                                                     steps=0, n_track=1, seed=seed)
                recs += [{"m": m, "scaling": sc, "seed": seed, "cell_id": f"{sc}{m}-{seed}", **r}
                         for r in chizat_width.run_cell(cfg, CTX)]
    rep = chizat_width.report(pd.DataFrame(recs), chizat_width.ChizatWidthConfig(ratio_target=2.0))
    assert len(rep.checks) == 2 and all(c.n == 3 for c in rep.checks)
    assert not any(c.passed for c in rep.checks), [(c.name, c.value) for c in rep.checks]
    assert rep.checks[0].value == pytest.approx(1.0, abs=0.2)


def _traj(tau, steps, lr, seeds=(0, 1, 2)):
    recs = []
    for seed in seeds:
        cfg = chizat_trajectories.ChizatTrajectoriesConfig(tau=tau, steps=steps, lr=lr, n_track=4,
                                                            seed=seed)
        recs += [{"tau": tau, "m": 20, "n_train": 15, "symmetric": True, "seed": seed,
                  "cell_id": f"{tau}-{seed}", **r} for r in chizat_trajectories.run_cell(cfg, CTX)]
    return pd.DataFrame(recs)


def test_trajectory_claims_fail_on_controls():
    """Negative controls: an untrained net (lr ~ 0) neither interpolates nor moves its neurons,
    so 'near-zero train loss' and 'non-lazy: shrinks a lot' fail; a feature-learning run
    (tau = 0.1, 2000 steps) judged as lazy (lazy_tau = 0.05) fails 'hardly shrinks'."""
    cfg = chizat_trajectories.ChizatTrajectoriesConfig
    un = chizat_trajectories.report(_traj(0.1, steps=2, lr=1e-12), cfg())
    assert len(un.checks) == 2 and not any(c.passed for c in un.checks), un.checks
    assert un.checks[1].value == pytest.approx(1.0, abs=1e-6) and un.checks[1].n == 3
    feat = chizat_trajectories.report(_traj(0.1, steps=2000, lr=0.05), cfg(lazy_tau=0.05))
    lazy_claim = [c for c in feat.checks if c.name.startswith("lazy")][0]
    assert not lazy_claim.passed and lazy_claim.value < 0.6


def test_rates_claims_fail_on_controls():
    """Negative controls of Thm 2.2's rates: (i) the 'copy'-centered run (second-order term not
    cancelled) judged as 'symmetric' fails 'function gap faster than 1/alpha' while the real
    symmetric run passes; (ii) an untrained run (lr ~ 0: nothing moves, every gap is 0) has no
    slope, so the copy claims fail."""
    def run(center, lr, seeds=(0, 1, 2)):
        rows = []
        for seed in seeds:
            for a in (1.0, 10.0, 100.0):
                cfg = chizat_rates.ChizatRatesConfig(alpha=a, center=center, m=10, n=8, steps=20,
                                                     track_every=5, lr=lr, seed=seed)
                rows += [{**r, "alpha": a, "center": center, "seed": seed}
                         for r in chizat_rates.run_cell(cfg, CTX)]
        return pd.DataFrame(rows)

    sym = run("symmetric", 0.5)
    faster = [c for c in chizat_rates.report(sym, chizat_rates.ChizatRatesConfig()).checks
              if "faster" in c.name][0]
    assert faster.passed and faster.n == 3
    copy_as_sym = run("copy", 0.5).assign(center="symmetric")
    bad = [c for c in chizat_rates.report(copy_as_sym, chizat_rates.ChizatRatesConfig()).checks
           if "faster" in c.name][0]
    assert not bad.passed and bad.value == pytest.approx(-1.0, abs=0.2)
    still = chizat_rates.report(run("copy", 1e-300), chizat_rates.ChizatRatesConfig())
    assert len(still.checks) == 3 and not any(c.passed for c in still.checks)
