"""The functional view of a model: ``f(params, x)`` for any ``nn.Module``.

Every part of lazylab that differentiates a network with respect to its weights (the regimes
:func:`~lazylab.regimes.lazy` and :func:`~lazylab.regimes.linearize`, the NTK engine, kappa,
:class:`~lazylab.kernel_predictor.KernelPredictor`) goes through this module, so one set of
rules holds everywhere:

**Inputs** (``Inputs``): a tensor of any dtype, a tuple/list of tensors (the model is called as
``model(*x)``) or a dict of tensors (``model(**x)``, e.g. Hugging Face ``input_ids`` and
``attention_mask``). The batch is the leading dimension of every leaf, and all leaves share it.
Only floating leaves are ever cast (to the compute dtype); integer leaves (token ids, masks) pass
through untouched.

**Outputs**: the model may return a tensor, a tuple, a dict or a Hugging Face ``ModelOutput``.
:func:`select_output` picks the tensor that regimes and kernels work on with one selector
``output_fn``: ``None`` (default: a tensor as is; a dict/``ModelOutput`` with a ``"logits"``
entry gives that entry; anything else is refused, naming ``output_fn``), a string (dict key or
attribute, e.g. ``"logits"``), an int (tuple index) or a callable ``out -> Tensor``.
:func:`with_output` bakes a selector into a module so every entry point sees a tensor.

**Forward mode where torch has none**: :func:`jvp` is ``torch.func.jvp`` with two exact
fallbacks. Attention runs on the math backend of ``scaled_dot_product_attention`` inside every
transform (the fused CPU flash kernel has neither a forward-mode rule nor a double backward); and
when an op still has no forward-mode rule (the mkldnn LSTM/GRU kernels, the fused transformer
encoder layer) the JVP is computed by the double-VJP identity: for ``g(u) = J^T u`` (linear in
``u``) the VJP of ``g`` with cotangent ``t`` is ``J t``. Cost: one forward + two backward passes
instead of one forward-mode pass (measured in ``benchmarks/bench_forward_fallback.py``).

**Randomness** (dropout): :func:`rng_state` / :func:`set_rng_state` let two evaluations of the
same network (``h(w)`` and ``h(w0)`` in ``lazy``) draw identical masks.

**Buffers updated in forward**: BatchNorm is frozen (running statistics, eval mode) by the
regimes; any other in-place buffer update is refused by :func:`check_buffers_frozen`, naming the
module, because a state change inside ``f(params, x)`` makes it depend on call order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Union

import torch
from torch import Tensor, nn
from torch.func import functional_call, vjp

__all__ = [
    "Inputs", "OutputFn", "check_inputs", "batch_size", "take", "cast_inputs", "leaves",
    "float_dtype", "call_args", "apply", "select_output", "with_output", "SelectOutput",
    "call", "jvp", "double_vjp_jvp", "math_attention", "rng_state", "set_rng_state",
    "check_buffers_frozen", "state_of", "has_recurrent",
]

Inputs = Union[Tensor, tuple, list, dict]
OutputFn = Union[Callable[[Any], Tensor], str, int, None]


# ---------------------------------------------------------------- inputs
def leaves(x: Inputs) -> list[Tensor]:
    """The tensors of an input structure, in order."""
    if isinstance(x, Tensor):
        return [x]
    if isinstance(x, Mapping):
        return list(x.values())
    return list(x)


def _map(fn: Callable[[Tensor], Tensor], x: Inputs) -> Inputs:
    if isinstance(x, Tensor):
        return fn(x)
    if isinstance(x, Mapping):
        return {k: fn(v) for k, v in x.items()}
    return tuple(fn(v) for v in x)


def check_inputs(x: object, arg: str = "x", finite: bool = True) -> Inputs:
    """Validate an input structure: a tensor, a tuple/list or a dict of tensors with one shared,
    non-empty leading (batch) dimension; floating leaves finite. Raises TypeError/ValueError
    naming ``arg``."""
    if isinstance(x, Tensor):
        items = [(arg, x)]
    elif isinstance(x, Mapping):
        items = [(f"{arg}[{k!r}]", v) for k, v in x.items()]
    elif isinstance(x, (tuple, list)):
        items = [(f"{arg}[{i}]", v) for i, v in enumerate(x)]
    else:
        raise TypeError(f"{arg} must be a torch.Tensor or a tuple/dict of tensors (batch on the "
                        f"leading dim), got {type(x).__name__}")
    if not items:
        raise ValueError(f"{arg} is an empty {type(x).__name__}; expected at least one tensor")
    n = None
    for name, t in items:
        if not isinstance(t, Tensor):
            raise TypeError(f"{arg} must be a torch.Tensor or a tuple/dict of tensors (batch on "
                            f"the leading dim); {name} is a {type(t).__name__}")
        if t.dim() == 0:
            raise ValueError(f"{name} must have a batch dimension, got a scalar")
        if n is None:
            n = t.shape[0]
        elif t.shape[0] != n:
            raise ValueError(f"{name} has batch size {t.shape[0]} but {items[0][0]} has {n}: "
                             "every input tensor needs the same leading (batch) dimension")
        if finite and (t.is_floating_point() or t.is_complex()) and not bool(
                torch.isfinite(t).all()):
            raise ValueError(f"{name} contains NaN or inf values")
    if n == 0:
        raise ValueError(f"{arg} is an empty batch (leading dim 0); need at least 1 example")
    return x if not isinstance(x, list) else tuple(x)


def batch_size(x: Inputs) -> int:
    """Number of examples: the leading dimension of the first leaf."""
    return leaves(x)[0].shape[0]


def take(x: Inputs, idx: slice | Tensor | int) -> Inputs:
    """Examples ``idx`` (a slice or an index tensor) of every leaf."""
    return _map(lambda t: t[idx], x)


def cast_inputs(x: Inputs, device: torch.device | str | None = None,
                dtype: torch.dtype | None = None) -> Inputs:
    """Move every leaf to ``device``; cast floating leaves (only) to ``dtype``."""
    def one(t: Tensor) -> Tensor:
        if dtype is not None and t.is_floating_point():
            return t.to(device=device, dtype=dtype)
        return t.to(device) if device is not None else t
    return _map(one, x)


def float_dtype(x: Inputs) -> torch.dtype | None:
    """dtype of the first floating leaf (None for pure token inputs)."""
    for t in leaves(x):
        if t.is_floating_point():
            return t.dtype
    return None


def call_args(x: Inputs) -> tuple[tuple, dict]:
    """``(args, kwargs)`` of the model call: ``model(x)``, ``model(*x)`` or ``model(**x)``."""
    if isinstance(x, Tensor):
        return (x,), {}
    if isinstance(x, Mapping):
        return (), dict(x)
    return tuple(x), {}


def pack_args(args: tuple, kwargs: dict) -> Inputs:
    """Inverse of :func:`call_args` for a wrapper's ``forward(*args, **kwargs)``."""
    if kwargs:
        if args:
            raise TypeError("pass inputs either positionally or by keyword, not both")
        return dict(kwargs)
    if len(args) == 1:
        return args[0]
    return tuple(args)


# ---------------------------------------------------------------- outputs
def select_output(out: Any, output_fn: OutputFn = None) -> Tensor:
    """The tensor that regimes and kernels work on (see the module docstring)."""
    if output_fn is None:
        if isinstance(out, Tensor):
            return out
        if isinstance(out, Mapping) and "logits" in out:
            return out["logits"]
        raise TypeError(
            f"the model returned a {type(out).__name__}, not a tensor; pass output_fn= (a key or "
            "attribute name such as 'logits', a tuple index, or a callable out -> Tensor), or wrap "
            "the model with lazylab.functional.with_output(model, output_fn)")
    if callable(output_fn):
        res = output_fn(out)
    elif isinstance(output_fn, int) and not isinstance(output_fn, bool):
        res = out[output_fn]
    elif isinstance(output_fn, str):
        res = out[output_fn] if isinstance(out, Mapping) and output_fn in out else getattr(
            out, output_fn, None)
        if res is None:
            raise KeyError(f"output_fn={output_fn!r}: the model's {type(out).__name__} output "
                           "has no such key or attribute")
    else:
        raise TypeError(f"output_fn must be None, a str, an int or a callable, got "
                        f"{type(output_fn).__name__}")
    if not isinstance(res, Tensor):
        raise TypeError(f"output_fn={output_fn!r} must select a tensor, got {type(res).__name__}")
    return res


class SelectOutput(nn.Module):
    """``model`` with its output passed through :func:`select_output` (``self.model`` is the
    original module; parameter names gain the prefix ``model.``)."""

    def __init__(self, model: nn.Module, output_fn: OutputFn) -> None:
        super().__init__()
        self.model = model
        self.output_fn = output_fn

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        return select_output(self.model(*args, **kwargs), self.output_fn)


def with_output(model: nn.Module, output_fn: OutputFn) -> nn.Module:
    """``model`` returning the selected tensor (``model`` itself when ``output_fn`` is None)."""
    return model if output_fn is None else SelectOutput(model, output_fn)


def apply(model: nn.Module, x: Inputs, output_fn: OutputFn = None) -> Tensor:
    """``select_output(model(x | *x | **x), output_fn)``: a plain (autograd) model call."""
    args, kwargs = call_args(x)
    return select_output(model(*args, **kwargs), output_fn)


# ---------------------------------------------------------------- f(params, x)
def state_of(module: nn.Module) -> dict[str, Tensor]:
    """Parameters (shared ones once, under their first name) and buffers of ``module``."""
    st = dict(module.named_parameters())
    st.update(dict(module.named_buffers()))
    return st


@contextlib.contextmanager
def math_attention() -> Iterator[None]:
    """Attention on its reference kernels: ``scaled_dot_product_attention`` on the math backend
    (composite ops: every transform works) and the fused ``nn.MultiheadAttention`` /
    ``nn.TransformerEncoderLayer`` fast path off (it has no forward mode, and it is chosen or not
    depending on ``requires_grad``, so two evaluations of one model would differ in rounding)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)


def call(module: nn.Module, state: dict[str, Tensor], x: Inputs,
         output_fn: OutputFn = None) -> Tensor:
    """``f(state, x)``: ``module`` evaluated at the tensors ``state`` (name -> tensor; missing
    names keep the module's own), output selected. Shared parameters: ``tie_weights=True``."""
    args, kwargs = call_args(x)
    with math_attention():
        out = functional_call(module, state, args, kwargs, tie_weights=True)
    return select_output(out, output_fn)


# ---------------------------------------------------------------- forward mode
def double_vjp_jvp(f: Callable[[Any], Tensor], primal: Any, tangent: Any) -> tuple[Tensor, Tensor]:
    """``(f(p), J t)`` by the double-VJP identity: ``u -> J^T u`` is linear, its VJP with
    cotangent ``t`` is ``J t``. Exact; needs the backward to be differentiable. Cost: one forward
    and two backward passes."""
    with math_attention():
        out, pull = vjp(f, primal)
        _, pull2 = vjp(lambda u: pull(u)[0], torch.zeros_like(out))
        (jt,) = pull2(tangent)
    return out, jt


def jvp(f: Callable[[Any], Tensor], primal: Any, tangent: Any,
        mode: str = "auto") -> tuple[Tensor, Tensor]:
    """``(f(p), J(p) t)`` for one pytree argument ``p`` (e.g. a dict of parameters).

    ``mode``: ``"forward"`` (``torch.func.jvp``), ``"double_vjp"`` (:func:`double_vjp_jvp`) or
    ``"auto"``: forward mode, falling back to the double VJP when torch raises
    ``NotImplementedError`` (an op without a forward-mode rule; the random state is rewound so the
    retry draws the same dropout masks). Both run attention on the math backend. Exact in both
    cases (same value up to rounding), with one PyTorch convention to know: ``nn.Embedding``'s
    ``padding_idx`` row gets zero gradient in backward but not in forward mode, so the two agree
    on every direction that leaves that row fixed (training never moves it).
    """
    if mode == "double_vjp":
        return double_vjp_jvp(f, primal, tangent)
    start = rng_state()
    try:
        with math_attention():
            return torch.func.jvp(f, (primal,), (tangent,))
    except NotImplementedError:
        if mode == "forward":
            raise
    set_rng_state(start)  # the failed attempt may have drawn dropout masks: draw the same ones
    return double_vjp_jvp(f, primal, tangent)


def has_recurrent(module: nn.Module) -> bool:
    """Whether ``module`` contains an ``nn.RNN``/``nn.LSTM``/``nn.GRU`` (they break per-example vmap)."""
    return any(isinstance(m, nn.RNNBase) for m in module.modules())


# ---------------------------------------------------------------- randomness
def rng_state(device: torch.device | None = None) -> tuple:
    """The generator state(s) a forward pass may draw from: CPU, plus CUDA's (those of ``device``,
    or of every GPU when ``device`` is None and CUDA is initialised)."""
    cuda = None
    if device is not None and device.type == "cuda":
        cuda = ("one", torch.cuda.get_rng_state(device))
    elif device is None and torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = ("all", torch.cuda.get_rng_state_all())
    return torch.get_rng_state(), cuda


def set_rng_state(state: tuple, device: torch.device | None = None) -> None:
    """Restore a state from :func:`rng_state` (same ``device``)."""
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        kind, st = cuda
        if kind == "one":
            torch.cuda.set_rng_state(st, device)
        else:
            torch.cuda.set_rng_state_all(st)


# ---------------------------------------------------------------- buffers
@contextlib.contextmanager
def _untouched_rng(device: torch.device | None) -> Iterator[None]:
    st = rng_state(device)
    try:
        yield
    finally:
        set_rng_state(st, device)


def check_buffers_frozen(module: nn.Module, x: Inputs, who: str) -> None:
    """Refuse a model that updates a buffer in place during ``forward`` (in its current mode).

    One forward on the first example, with cloned buffers, random state restored afterwards: a
    clone whose version counter moved was written. BatchNorm is frozen by the regimes before this
    check (eval mode), so it passes. Raises ValueError naming the module and the buffer.
    """
    bufs = dict(module.named_buffers())
    if not bufs:
        return
    clones = {n: b.clone() for n, b in bufs.items()}
    versions = {n: c._version for n, c in clones.items()}
    dev = leaves(x)[0].device
    args, kwargs = call_args(take(x, slice(0, 1)))
    with torch.no_grad(), _untouched_rng(dev), math_attention():
        functional_call(module, clones, args, kwargs, tie_weights=True)
    written = [n for n, c in clones.items() if c._version != versions[n]]
    if written:
        name = written[0]
        owner = name.rpartition(".")[0]
        mod = module.get_submodule(owner) if owner else module
        raise ValueError(
            f"{who}: module {owner or '<root>'!r} ({type(mod).__name__}) updates its buffer "
            f"{name!r} in forward; a state change inside f(w, x) makes h(w) and h(w0) differ by "
            "call order. lazylab freezes BatchNorm statistics itself; for this module put it in "
            "eval mode (module.eval()) or stop the update, then build the regime/kernel again.")
