"""lazylab.functional: inputs, output selection, the JVP fallback, random state, buffer check."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lazylab import functional as fn


def test_inputs_any_dtype_and_structure() -> None:
    ids = torch.randint(0, 5, (4, 3))
    x = {"input_ids": ids, "scale": torch.randn(4, dtype=torch.float32)}
    assert fn.check_inputs(x) is x and fn.batch_size(x) == 4
    c = fn.cast_inputs(x, "cpu", torch.float64)
    assert c["input_ids"].dtype == torch.int64 and torch.equal(c["input_ids"], ids)  # never cast
    assert c["scale"].dtype == torch.float64
    sub = fn.take((ids, ids.float()), torch.tensor([2, 0]))
    assert torch.equal(sub[0], ids[[2, 0]]) and torch.equal(sub[1], ids[[2, 0]].float())
    assert fn.call_args((ids, ids)) == ((ids, ids), {})
    assert fn.float_dtype(ids) is None


def test_inputs_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match=r"x\[1\] has batch size 3 but x\[0\] has 4"):
        fn.check_inputs((torch.zeros(4, 2), torch.zeros(3)))
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor or a tuple/dict.*x\['a'\] is a list"):
        fn.check_inputs({"a": [1, 2]})
    with pytest.raises(ValueError, match=r"x\['m'\] contains NaN"):
        fn.check_inputs({"m": torch.tensor([float("nan")])})
    with pytest.raises(ValueError, match="empty batch"):
        fn.check_inputs(torch.zeros(0, 3))


def test_select_output() -> None:
    out = {"logits": torch.ones(2, 3), "hidden": torch.zeros(2)}
    assert fn.select_output(out) is out["logits"]
    assert fn.select_output(out, "hidden") is out["hidden"]
    assert fn.select_output((out["hidden"], 1), 0) is out["hidden"]
    assert fn.select_output(out, lambda o: o["hidden"] + 1).sum() == 2
    with pytest.raises(TypeError, match="output_fn"):
        fn.select_output((out["hidden"],))
    with pytest.raises(KeyError, match="output_fn='nope'"):
        fn.select_output(out, "nope")


@settings(max_examples=15, deadline=None)
@given(width=st.integers(1, 6), n=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_double_vjp_equals_forward_mode(width: int, n: int, seed: int) -> None:
    """J t by the double-VJP identity equals forward mode, for any net, input and tangent."""
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, width), nn.Tanh(), nn.Linear(width, 2)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    params = {k: v.detach() for k, v in net.named_parameters()}
    t = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in params.items()}

    def f(p: dict) -> torch.Tensor:
        return fn.call(net, p, x)

    out_a, jt_a = fn.jvp(f, params, t, mode="forward")
    out_b, jt_b = fn.double_vjp_jvp(f, params, t)
    assert torch.allclose(out_a, out_b, rtol=0, atol=1e-14)
    assert torch.allclose(jt_a, jt_b, rtol=1e-12, atol=1e-12)


def test_rng_state_replays_dropout() -> None:
    drop = nn.Dropout(0.5)
    x = torch.ones(100)
    s = fn.rng_state()
    a = drop(x)
    fn.set_rng_state(s)
    assert torch.equal(drop(x), a)
    assert not torch.equal(drop(x), a)  # control: without the rewind the mask changes


def test_buffer_check_allows_constant_buffers() -> None:
    m = nn.BatchNorm1d(3).eval()  # eval BatchNorm reads its statistics, never writes them
    fn.check_buffers_frozen(m, torch.randn(4, 3), "test")

    class Counter(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("calls", torch.zeros(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return x

    c = nn.Sequential(nn.Linear(3, 3), Counter())
    with pytest.raises(ValueError, match="'1' \\(Counter\\) updates its buffer '1.calls'"):
        fn.check_buffers_frozen(c, torch.randn(4, 3), "test")
    assert float(c[1].calls) == 0  # the check ran on clones
