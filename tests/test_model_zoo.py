"""Conformance suite: every zoo architecture (tests/zoo.py) through every regime, kernel and
diagnostic, against independent float64 computations.

References are computed without lazylab's functional machinery: per-example gradients by a plain
``torch.autograd.grad`` loop over examples (batch of one) and output coordinates, on the module
called directly. Tolerance 1e-10 relative (float64: the algorithms differ only in summation order).
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from torch import Tensor, nn

import lazylab
from lazylab import functional as fn
from lazylab.attacks import attack_loss, pgd
from lazylab.kernel_predictor import KernelPredictor
from lazylab.regimes import _freeze_batchnorm, _key
from tests import zoo

NAMES = list(zoo.BUILDERS)
TOL = 1e-10


def _ref_model(e: zoo.Entry) -> nn.Module:
    """The model in the mode the regimes evaluate it in (BatchNorm frozen, dropout if train)."""
    m = copy.deepcopy(e.model).train(e.train_mode)
    _freeze_batchnorm(m)
    return m


def _params(m: nn.Module) -> list[Tensor]:
    return [p for p in m.parameters() if p.requires_grad]


def naive_jacobian(e: zoo.Entry) -> Tensor:
    """``J[n, a, :] = d f(x_n)_a / d w`` (N, O, P) by a loop of autograd.grad calls, eval mode."""
    m = copy.deepcopy(e.model).eval()
    ps = _params(m)
    rows = []
    with torch.enable_grad():
        return _naive_rows(m, ps, e)


def _naive_rows(m: nn.Module, ps: list[Tensor], e: zoo.Entry) -> Tensor:
    rows = []
    for i in range(fn.batch_size(e.x)):
        args, kwargs = fn.call_args(fn.take(e.x, slice(i, i + 1)))
        out = fn.select_output(m(*args, **kwargs), e.output_fn).reshape(-1)
        per_out = []
        for a in range(out.numel()):
            gs = torch.autograd.grad(out[a], ps, retain_graph=True, allow_unused=True)
            per_out.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                                      for g, p in zip(gs, ps)]))
        rows.append(torch.stack(per_out))
    return torch.stack(rows)


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


_JAC: dict[str, Tensor] = {}


def _jac(name: str) -> Tensor:
    if name not in _JAC:
        _JAC[name] = naive_jacobian(zoo.build(name))
    return _JAC[name]


@pytest.mark.parametrize("name", NAMES)
def test_ntk_every_method_and_output(name: str) -> None:
    e = zoo.build(name)
    J = _jac(name)
    full = torch.einsum("nap,mbp->nmab", J, J)
    ref = {"full": full, "trace": torch.einsum("nmaa->nm", full),
           "diagonal": torch.diagonal(full, dim1=2, dim2=3)}
    for method in ("jacobian", "ntvp", "structured", "auto"):
        for output in ("trace", "full", "diagonal"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                K = lazylab.ntk(e.model, e.x, method=method, output=output,
                                output_fn=e.output_fn)
            assert K.shape == ref[output].shape, (method, output)
            assert _rel(K, ref[output]) < TOL, (method, output, _rel(K, ref[output]))
    # an asymmetric pair, structured inputs sliced consistently
    x1, x2 = fn.take(e.x, slice(0, 3)), fn.take(e.x, slice(1, 4))
    K = lazylab.ntk(e.model, x1, x2, method="jacobian", output_fn=e.output_fn)
    assert _rel(K, ref["trace"][0:3, 1:4]) < TOL
    assert e.model.training == e.train_mode  # flags restored
    # the kernel machine x -> K(x, X) c of KernelPredictor, same inputs and selector
    o = full.shape[-1]
    c = torch.randn(fn.batch_size(e.x), o, generator=zoo._g(8), dtype=zoo.D)
    kp = KernelPredictor(e.model, e.x, c, output_fn=e.output_fn)
    args, kwargs = fn.call_args(e.x)
    got = kp(*args, **kwargs).reshape(-1, o)
    assert _rel(got, torch.einsum("nmab,mb->na", full, c)) < TOL


def _seeded(seed: int, f, *a):  # noqa: ANN001, ANN202
    """``f(*a)`` from a fixed random state, attention on the reference kernels lazylab uses
    (dropout masks of the fused and the math attention kernels differ)."""
    torch.manual_seed(seed)
    with fn.math_attention():
        return f(*a)


@pytest.mark.parametrize("name", NAMES)
def test_linearize_matches_model_at_init_and_taylor_away(name: str) -> None:
    e = zoo.build(name)
    ref = _ref_model(e)
    lin = lazylab.linearize(copy.deepcopy(e.model), output_fn=e.output_fn).train(e.train_mode)
    r = torch.randn(fn.apply(ref, e.x, e.output_fn).shape, generator=zoo._g(9), dtype=zoo.D)
    args, kwargs = fn.call_args(e.x)
    out_lin = _seeded(7, lambda: lin(*args, **kwargs))
    (out_lin * r).sum().backward()
    if e.train_mode:
        # dropout: torch draws a TransformerEncoderLayer's masks differently inside a torch.func
        # transform than in a plain call, so the reference is h(w0) with the mask of a vjp
        named = {n: p.detach() for n, p in ref.named_parameters() if p.requires_grad}
        out_ref, pull = _seeded(7, torch.func.vjp,
                                lambda q: fn.call(ref, q, e.x, e.output_fn), named)
        ref_grads = torch.cat([g.reshape(-1) for g in pull(r)[0].values()])
    else:
        out_ref = _seeded(7, fn.apply, ref, e.x, e.output_fn)
        (out_ref * r).sum().backward()
        ref_grads = _grads(ref)
    assert _rel(out_lin, out_ref) < TOL
    assert _rel(_grads(lin.model), ref_grads) < TOL
    # away from init: lin(w0 + v) = h(w0) + J v exactly (eval mode: the J of the naive loop)
    lin.eval()
    with torch.no_grad():
        h0 = fn.apply(copy.deepcopy(e.model).eval(), e.x, e.output_fn).reshape(-1)
        vs = [0.3 * torch.randn(p.shape, generator=zoo._g(10 + i), dtype=zoo.D)
              for i, p in enumerate(_params(lin.model))]
        _fix_padding_rows(lin.model, vs)
        for p, v in zip(_params(lin.model), vs):
            p.add_(v)
        taylor = h0 + (_jac(name) @ torch.cat([v.reshape(-1) for v in vs])).reshape(-1)
        assert _rel(lin(*args, **kwargs).reshape(-1), taylor) < TOL
        if not e.train_mode and name != "frozen_params":  # nonlinear in w: differs from Taylor
            moved = copy.deepcopy(lin.model)
            assert _rel(fn.apply(moved, e.x, e.output_fn).reshape(-1), taylor) > 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_lazy_zero_at_init_and_gradient(name: str) -> None:
    e = zoo.build(name)
    alpha = 10.0
    lz = lazylab.lazy(e.model, alpha, output_fn=e.output_fn).train(e.train_mode)
    ref = _ref_model(e)
    args, kwargs = fn.call_args(e.x)
    out = _seeded(3, lambda: lz(*args, **kwargs))
    assert float(out.abs().max()) == 0.0  # same dropout mask for h(w) and h(w0)
    if e.train_mode and name != "resnet_bn":  # control: dropout is active, two draws differ
        with torch.no_grad():
            assert not torch.equal(fn.apply(ref, e.x), fn.apply(ref, e.x))
    out_ref = _seeded(3, fn.apply, ref, e.x, e.output_fn)
    r = torch.randn(out.shape, generator=zoo._g(11), dtype=zoo.D)
    (out * r).sum().backward()
    (out_ref * r).sum().backward()
    named = dict(ref.named_parameters())
    assert sorted(lz.delta) == sorted(_key(n) for n in named if named[n].requires_grad)  # tied: once
    got = torch.cat([lz.delta[_key(n)].grad.reshape(-1) for n in lz._names])
    assert _rel(got, alpha * _grads(ref)) < TOL


def _fix_padding_rows(m: nn.Module, vs: list[Tensor]) -> None:
    """Zero the direction on ``nn.Embedding(padding_idx)`` rows: torch's backward gives them zero
    gradient (frozen by convention) while forward mode does not (see lazylab.functional.jvp)."""
    index = {id(p): i for i, p in enumerate(_params(m))}
    for mod in m.modules():
        if isinstance(mod, nn.Embedding) and mod.padding_idx is not None:
            if id(mod.weight) in index:
                vs[index[id(mod.weight)]][mod.padding_idx] = 0


def _grads(m: nn.Module) -> Tensor:
    return torch.cat([p.grad.reshape(-1) for p in _params(m)])


@pytest.mark.parametrize("regime", ["full", "lazy", "linearized", "random_features"])
@pytest.mark.parametrize("name", NAMES)
def test_training_lowers_loss(name: str, regime: str) -> None:
    e = zoo.build(name)
    out = fn.apply(_ref_model(e), e.x, e.output_fn)
    y = torch.randn(out.shape, generator=zoo._g(12), dtype=zoo.D)
    net = fn.with_output(e.model, e.output_fn)
    model = {"full": lambda: net, "lazy": lambda: lazylab.lazy(net, 10.0),
             "linearized": lambda: lazylab.linearize(net),
             "random_features": lambda: lazylab.random_features(net)}[regime]()
    hist = lazylab.train(model, (e.x, y), lr=0.05, steps=5, track_steps=[0, 5], progress=False)
    first, last = hist.records[0]["train_loss"], hist.records[-1]["train_loss"]
    assert math.isfinite(last) and last < first, (first, last)


_SLOW_DIAGNOSE = {"hf_gpt2", "hf_bert"}  # GPT-2 is diagnosed by examples/diagnose_gpt2.py


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in _SLOW_DIAGNOSE
                                  else n for n in NAMES])
def test_diagnose_end_to_end(name: str) -> None:
    e = zoo.build(name)
    out = fn.apply(_ref_model(e), e.x, e.output_fn)
    y = torch.randn(out.shape, generator=zoo._g(13), dtype=zoo.D)
    rep = lazylab.diagnose(fn.with_output(e.model, e.output_fn), (e.x, y), steps=3, lr=0.05,
                           n_probe=4, n_snapshots=2, progress=False)
    assert rep.verdict in ("lazy", "intermediate", "feature learning")
    for k in ("kernel_rel_change", "lin_gap_rel", "rel_weight_change", "train_loss"):
        assert math.isfinite(rep.numbers[k]), k
    kappa = rep.numbers["kappa"]
    if name == "frozen_params":  # linear in its trainable (last-layer) weights: D^2 h = 0
        assert kappa == 0.0
    else:
        assert math.isfinite(kappa) and kappa > 0



@pytest.mark.parametrize("name", NAMES)
def test_pgd_on_continuous_inputs(name: str) -> None:
    e = zoo.build(name)
    model = fn.with_output(copy.deepcopy(e.model).eval(), e.output_fn)
    if not e.continuous:
        with pytest.raises(TypeError, match="continuous inputs"):
            pgd(model, e.x, torch.zeros(fn.batch_size(e.x), dtype=torch.long), 0.1, clip=None)
        return
    with torch.no_grad():
        logits = fn.apply(model, e.x)
    y = logits.argmin(1)  # labels the model gets wrong least: the attack must still raise the loss
    res = pgd(model, e.x, y, 0.05, steps=5, clip=None)
    assert float((res.x_adv - e.x).abs().max()) <= 0.05 + 1e-12
    with torch.no_grad():
        assert attack_loss(fn.apply(model, res.x_adv), y) > attack_loss(logits, y)


# ---------------------------------------------------------------- refusals and policies
def test_buffer_written_in_forward_is_refused_naming_the_module() -> None:
    x = zoo._feat(4, 4)
    for build in (lambda m: lazylab.lazy(m, 10.0), lazylab.linearize):
        model = build(zoo.CountingBuffer().to(zoo.D))
        with pytest.raises(ValueError, match="'<root>'.*CountingBuffer.*'running'"):
            model(x)
    # the NTK is taken in eval mode, where this module does not write: accepted ...
    ok = zoo.CountingBuffer().to(zoo.D).train()
    K = lazylab.ntk(ok, x, method="jacobian")
    assert torch.equal(ok.running, torch.zeros(4))
    # ... and exactly the linear model's kernel (x - 0) (x - 0)^T + 1, per output, traced
    assert _rel(K, 2 * (x @ x.T + 1)) < TOL
    # a module that writes in eval mode too is refused, naming it
    always = zoo.CountingBuffer(always=True).to(zoo.D)
    with pytest.raises(ValueError, match="'0'.*CountingBuffer.*'0.running'"):
        lazylab.ntk(nn.Sequential(always), x)


def test_tuple_output_needs_a_selector() -> None:
    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 2)

        def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
            return self.lin(x), x

    x = zoo._feat(3, 4).float()
    with pytest.raises(TypeError, match="output_fn"):
        lazylab.linearize(Pair())(x)
    lin = lazylab.linearize(Pair(), output_fn=0)
    assert lin(x).shape == (3, 2)
    assert lazylab.ntk(Pair(), x, output_fn=0).shape == (3, 3)
    with pytest.raises(ValueError, match="output_fn='nope'"):
        lazylab.ntk(DictOutModel(), x, output_fn="nope")


class DictOutModel(zoo.DictOut):
    pass


def test_dataloader_equals_tensors() -> None:
    e = zoo.build("embedding_pool")
    y = torch.randn(4, 2, generator=zoo._g(14), dtype=zoo.D)
    ds = torch.utils.data.TensorDataset(e.x, y)
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    h1 = lazylab.train(copy.deepcopy(e.model), loader, optimizer="sgd", lr=0.05, steps=4,
                       progress=False)
    h2 = lazylab.train(copy.deepcopy(e.model), (e.x, y), optimizer="sgd", batch_size=2, lr=0.05,
                       steps=4, progress=False)
    assert h1.records[-1]["train_loss"] == h2.records[-1]["train_loss"]


def test_float32_lstm_linearize_uses_the_double_vjp_fallback() -> None:
    """float32 LSTM runs the mkldnn kernel, which has no forward-mode rule."""
    torch.manual_seed(0)
    model = zoo.Recurrent(nn.LSTM)
    x = zoo._feat(4, zoo.T, 3).float()
    with pytest.raises(NotImplementedError):
        lazylab.linearize(copy.deepcopy(model), forward_mode="forward")(x)
    lin = lazylab.linearize(copy.deepcopy(model))
    with torch.no_grad():
        for p in lin.model.parameters():
            p.add_(0.01)
        got = lin(x).double()
    m64 = copy.deepcopy(model).double()
    lin64 = lazylab.linearize(copy.deepcopy(m64), forward_mode="forward")
    with torch.no_grad():
        for p in lin64.model.parameters():
            p.add_(0.01)
        want = lin64(x.double())
    assert _rel(got, want) < 1e-5
