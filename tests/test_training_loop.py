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


def test_prebuilt_optimizer_with_per_layer_rates_matches_a_hand_written_loop():
    """``optim.prebuilt`` runs an already built optimizer (here Adam with two groups of different
    rates) on the loop; the weights equal those of a hand-written full-batch loop exactly."""
    X, y = _data()

    def groups(m):
        return [{"params": m[0].parameters(), "lr": 0.01}, {"params": m[2].parameters(), "lr": 0.003}]

    m, ref = _net(), _net()
    opt = torch.optim.Adam(groups(m), lr=0.5)
    h = training.run(training.LoopState(m), training.NoData(),
                     lambda st, _: ((st.model(X) - y).pow(2).mean(), None), optim.prebuilt(opt),
                     opt, 7)
    ref_opt = torch.optim.Adam(groups(ref), lr=0.5)
    for _ in range(7):
        ref_opt.zero_grad(set_to_none=True)
        (ref(X) - y).pow(2).mean().backward()
        ref_opt.step()
    assert h.steps == 7 and [g["lr"] for g in opt.param_groups] == [0.01, 0.003]
    assert all(torch.equal(p, q) for p, q in zip(m.parameters(), ref.parameters()))
    with pytest.raises(TypeError, match="opt must be a torch.optim.Optimizer"):
        optim.prebuilt(training.sgd(0.1))


def test_on_divergence_continue_trains_on_and_a_bad_value_is_refused():
    """``"continue"`` keeps stepping through a non-finite loss (the weights become NaN, as a
    hand-written loop's would); an unknown ``on_divergence`` is refused by name."""
    X, y = _data()
    spec, m = training.sgd(0.1), _net()
    h = training.run(training.LoopState(m), training.NoData(),
                     lambda st, _: ((st.model(X) - y).pow(2).mean() * float("inf"), None), spec,
                     spec.build(list(m.parameters())), 3, on_divergence="continue")
    assert h.steps == 3 and h.stopped == "budget" and torch.isnan(m[0].weight).all()
    with pytest.raises(ValueError, match="on_divergence must be"):
        training.run(training.LoopState(m), training.NoData(), lambda st, _: (X.sum(), None), spec,
                     spec.build(list(m.parameters())), 1, on_divergence="ignore")
