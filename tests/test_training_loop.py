"""The one training loop (lazylab.training): optimizer/schedule objects, sources, hooks, resume."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lazylab
from lazylab import training
from lazylab.training import optim


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).double()


def _data(n=30):
    g = torch.Generator().manual_seed(1)
    X = torch.randn(n, 4, generator=g, dtype=torch.float64)
    return X, torch.sin(X[:, :1])


def test_optimizer_object_equals_the_keyword_arguments():
    X, y = _data()
    a, b = _net(), _net()
    ha = lazylab.train(a, (X, y), optimizer="sgd", lr=0.1, momentum=0.9, schedule="inverse", beta=0.5,
                       epochs=4, batch_size=7, seed=3)
    spec = training.sgd(0.1, momentum=0.9).with_schedule(optim.inverse(0.5))
    hb = lazylab.train(b, (X, y), optimizer=spec, epochs=4, batch_size=7, seed=3)
    assert ha.records == hb.records
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert ha.records[-1]["lr"] == pytest.approx(0.1 / (1 + 0.5 * 4))


def _stream_run(model, steps, ckpt=None):
    def sample(g):
        x = torch.randn(5, 4, generator=g, dtype=torch.float64)
        return x, x.sum(1, keepdim=True)

    w, b = model[0].weight, model[0].bias
    groups = [{"params": [w], "lr": 0.05 * 3.0}, {"params": [b], "lr": 0.05}]
    spec = training.sgd(0.05).with_schedule(optim.multiply(lambda s: 1.0 if s < 4 else 0.1))
    return training.run(training.LoopState(model), training.Stream(sample, torch.Generator().manual_seed(9)),
                        lambda st, bt: (0.5 * (st.model(bt[0]) - bt[1]).pow(2).mean(), None), spec,
                        spec.build(groups), steps, checkpoint=ckpt)


def test_stream_source_with_parameter_groups_matches_a_hand_written_sgd_loop():
    m = _net()
    _stream_run(m, 6)
    ref = _net()
    for p in ref[2].parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(9)
    for step in range(6):
        x = torch.randn(5, 4, generator=g, dtype=torch.float64)
        loss = 0.5 * (ref(x) - x.sum(1, keepdim=True)).pow(2).mean()
        gw, gb = torch.autograd.grad(loss, [ref[0].weight, ref[0].bias])
        f = 1.0 if step < 4 else 0.1
        with torch.no_grad():
            ref[0].weight -= 0.05 * 3.0 * f * gw
            ref[0].bias -= 0.05 * f * gb
    torch.testing.assert_close(m[0].weight, ref[0].weight, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(m[0].bias, ref[0].bias, rtol=1e-12, atol=1e-14)
    assert torch.equal(m[2].weight, _net()[2].weight)  # not in a group: not trained


def test_stream_resume_is_exact(tmp_path):
    full = _net()
    _stream_run(full, 8)
    part = _net()
    ck = training.Checkpoint(tmp_path / "c.pt", every=3, resume=True)
    _stream_run(part, 5, ck)
    _stream_run(part, 8, ck)
    assert all(torch.equal(p, q) for p, q in zip(full.parameters(), part.parameters()))


def test_hooks_stop_divergence_and_order():
    X, y = _data()
    calls = []

    class Spy(training.Hook):
        def batches(self, state, it):
            for b in it:
                calls.append(("batch", state.step))
                yield b
                calls.append(("after", state.step, state.batch_loss))

        def end_step(self, state):
            calls.append(("end", state.step))
            if state.step == 2:
                raise training.Stop("spy", record=True)

    spec = training.sgd(0.1)
    m = _net()
    h = training.run(training.LoopState(m), training.Batches(X, y, 30, torch.Generator().manual_seed(0)),
                     lambda st, b: (0.5 * (st.model(b[0]) - b[1]).pow(2).mean(), None), spec,
                     spec.build(list(m.parameters())), 10, hooks=[Spy()], track={0})
    assert h.stopped == "spy" and h.steps == 2 and [r["step"] for r in h.records] == [0, 2]
    assert [c[0] for c in calls] == ["batch", "after", "end", "batch", "after", "end"]
    bad = training.sgd(1e6)
    m = _net()
    with pytest.raises(FloatingPointError, match="diverged"):  # DivergenceError is one
        training.run(training.LoopState(m), training.Batches(X, y * 1e6, 30, torch.Generator()),
                     lambda st, b: ((st.model(b[0]) - b[1]).pow(2).mean(), None), bad,
                     bad.build(list(m.parameters())), 50)


def test_optimizer_factories_refuse_bad_rates():
    with pytest.raises(ValueError, match="lr must be a positive finite number"):
        training.sgd(0.0)
    with pytest.raises(ValueError, match="lr must be a positive finite number"):
        training.adam(float("nan"))
