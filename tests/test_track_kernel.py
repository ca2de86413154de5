"""KernelTracker: kernel snapshots during training and their metrics."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from lazylab import metrics as M
from lazylab.data import sphere, teacher_two_layer
from lazylab.models import TwoLayerNet
from lazylab.ntk import ntk
from lazylab.regimes import lazy, linearize
from lazylab.track import KernelTracker
from lazylab.trainer import train

D = 5


def _task(n: int = 30):
    X = sphere(n, D, seed=0) * D**0.5
    f, _, _ = teacher_two_layer(D, 3, seed=1)
    return X, f(X)


def test_linearized_model_kernel_does_not_change():
    X, y = _task()
    lin = linearize(TwoLayerNet(D, 40))
    kt = KernelTracker(X[:15], y[:15])
    h = train(lin, (X, y), lr=1.0, steps=100, trackers=[kt])
    assert h.final["train_loss"] < 0.5 * h.records[0]["train_loss"]  # it did train
    assert len(kt.records) == len(h.records) > 5
    assert max(r["kernel_rel_change"] for r in kt.records) < 1e-6
    assert max(h["kernel_dist"]) < 1e-6


def _final_change(alpha: float, X: torch.Tensor, y: torch.Tensor) -> float:
    torch.manual_seed(0)
    kt = KernelTracker(X[:15], y[:15], schedule=[150])
    train(lazy(TwoLayerNet(D, 40), alpha), (X, y), lr=1.0, steps=150, trackers=[kt])
    assert [int(r["step"]) for r in kt.records] == [0, 150]
    return kt.records[-1]["kernel_rel_change"]


def test_kernel_change_decreases_with_alpha():
    X, y = _task()
    changes = [_final_change(a, X, y) for a in (0.1, 1.0, 10.0, 100.0)]
    assert changes[0] > 0.5  # clearly non-zero at small alpha
    assert all(a > b for a, b in zip(changes, changes[1:])), changes
    assert changes[-1] < 0.01


def test_tracker_metrics_match_direct_computation(tmp_path):
    X, y = _task()
    net = TwoLayerNet(D, 20, scaling="mean_field")
    net0 = copy.deepcopy(net)
    kt = KernelTracker(X[:10], y[:10], schedule=5, store=tmp_path / "kernels", keep=True)
    h = train(net, (X, y), lr=5.0, steps=20, trackers=[kt], track_steps=[0, 10, 20])
    steps = [int(r["step"]) for r in kt.records]
    assert steps == [0, 5, 10, 15, 20]  # every 5 steps, including steps the trainer did not record
    K0 = ntk(net0, X[:10], accumulate_dtype=torch.float64)
    KT = ntk(net, X[:10], accumulate_dtype=torch.float64)
    torch.testing.assert_close(kt.K0, K0)
    torch.testing.assert_close(kt.K_last, KT)
    last, prev = kt.records[-1], kt.records[-2]
    assert last["kernel_rel_change"] == pytest.approx(
        (KT - K0).norm().item() / K0.norm().item(), rel=1e-9)
    assert last["kernel_dist"] == pytest.approx(M.kernel_distance(KT, K0), rel=1e-9)
    assert last["kernel_dist_prev"] == pytest.approx(M.kernel_distance(kt.kernels[15], KT), rel=1e-9)
    assert last["kernel_velocity"] == pytest.approx(last["kernel_dist_prev"] / 5, rel=1e-12)
    assert last["kernel_kta"] == pytest.approx(M.kernel_target_alignment(KT, y[:10]), rel=1e-9)
    assert last["kernel_rel_change"] > 0.05 and prev["kernel_rel_change"] > 0
    assert h.final["kernel_rel_change"] == last["kernel_rel_change"]
    np.testing.assert_allclose(kt.spectra[20], np.linalg.eigvalsh(KT.numpy())[::-1], rtol=1e-8, atol=1e-10)
    # compressed storage: one file per snapshot + the probe set
    files = sorted(p.name for p in (tmp_path / "kernels").iterdir())
    assert files == ["kernel_step00000000.npz", "kernel_step00000005.npz", "kernel_step00000010.npz",
                     "kernel_step00000015.npz", "kernel_step00000020.npz", "probe.npz"]
    with np.load(tmp_path / "kernels" / "kernel_step00000020.npz") as z:
        np.testing.assert_array_equal(z["K"], KT.numpy())
        assert int(z["step"]) == 20
    with np.load(tmp_path / "kernels" / "probe.npz") as z:
        np.testing.assert_array_equal(z["x"], X[:10].numpy())
    assert list(kt.to_frame()["step"]) == [0, 5, 10, 15, 20]


def test_log_schedule_with_total_steps_and_bad_input():
    kt = KernelTracker(torch.randn(4, 3), total_steps=100, n_snapshots=5)
    assert kt.steps is not None and 0 in kt.steps and 100 in kt.steps and len(kt.steps) <= 5
    with pytest.raises(ValueError, match="probe_x"):
        KernelTracker(torch.randn(1, 3))
    with pytest.raises(ValueError, match="probe_y"):
        KernelTracker(torch.randn(4, 3), torch.randn(3))
    with pytest.raises(ValueError, match="period"):
        KernelTracker(torch.randn(4, 3), schedule=0)


def test_checkpoint_resume_gives_the_same_snapshots(tmp_path):
    X, y = _task(24)

    def run(steps, ckpt=None, resume=False):
        torch.manual_seed(3)
        net = TwoLayerNet(D, 16, scaling="mean_field")
        kt = KernelTracker(X[:8], y[:8], schedule=[4, 9, 16, 20])
        train(net, (X, y), optimizer="sgd", batch_size=8, lr=2.0, steps=steps, checkpoint=ckpt,
              checkpoint_every=5, resume=resume, track_steps=5, trackers=[kt])
        return kt

    full = run(20)
    run(10, tmp_path / "c.pt")  # interrupted after 10 steps
    resumed = run(20, tmp_path / "c.pt", resume=True)
    assert [r["step"] for r in resumed.records] == [0, 4, 9, 16, 20]
    assert resumed.records == full.records
    assert full.records[-1]["kernel_rel_change"] > 0.01
