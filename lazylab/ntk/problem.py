"""The functional view of a model that every NTK algorithm shares.

:class:`Problem` turns an ``nn.Module`` into ``f(params, x) -> (N, O)`` with the differentiated
parameters (``params``) separated from the frozen state (other parameters and buffers), resolves the
regime wrappers of :mod:`lazylab.regimes`, and applies the BatchNorm policy (eval mode, running
statistics). Inputs, output selection and shared parameters follow :mod:`lazylab.functional`
(a tensor of any dtype or a tuple/dict of batched tensors; ``output_fn``; ``tie_weights``).
Nothing here computes a kernel.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from lazylab import functional as fn
from lazylab.functional import Inputs, OutputFn
from lazylab.regimes import Linearized, _check_batchnorm

ParamSpec = Sequence[str] | Callable[[str, Tensor], bool] | None


def as_2d(out: object) -> Tensor:
    """Model output as ``(N, O)``: ``(N,)`` becomes ``(N, 1)``, ``(N, a, b, ...)`` is flattened."""
    if not isinstance(out, Tensor):
        raise TypeError(f"the model must return a Tensor, got {type(out).__name__}")
    if out.dim() == 0:
        raise ValueError("the model returned a scalar; expected a batch of outputs (N,) or (N, O)")
    if out.dim() == 1:
        return out.unsqueeze(1)
    return out.reshape(out.shape[0], -1)


def _unwrap(model: nn.Module) -> tuple[nn.Module, dict[str, Tensor], OutputFn]:
    """(module to differentiate, parameter values overriding its own ones, output selector)."""
    if isinstance(model, Linearized):
        return model.model, {k: v.detach() for k, v in model.params0.items()}, model.output_fn
    return model, {}, None


@dataclass
class Problem:
    """``f(params, x)`` for one model, with the parameter selection resolved.

    Attributes:
        module: the module whose parameters are differentiated.
        params: selected parameters (detached, on ``device`` in ``dtype``), name -> tensor.
        frozen: every other parameter and buffer, name -> tensor.
    """

    module: nn.Module
    params: dict[str, Tensor]
    frozen: dict[str, Tensor]
    device: torch.device
    dtype: torch.dtype
    output_fn: OutputFn = None
    _modes: dict[nn.Module, bool] = field(default_factory=dict)

    def f(self, params: dict[str, Tensor], x: Inputs) -> Tensor:
        """Batched outputs ``(N, O)`` at ``params`` (selected ones; the rest frozen)."""
        state = {**self.frozen, **params}
        return as_2d(fn.call(self.module, state, x, self.output_fn))

    def f_single(self, params: dict[str, Tensor], x: Inputs) -> Tensor:
        """Outputs ``(O,)`` of one example ``x`` (every leaf without its batch dim)."""
        return self.f(params, fn._map(lambda t: t.unsqueeze(0), x)).squeeze(0)

    @property
    def recurrent(self) -> bool:
        """Whether the module holds an RNN layer (per-example ``vmap`` is avoided for those)."""
        return fn.has_recurrent(self.module)

    @contextlib.contextmanager
    def eval_mode(self) -> Iterator[None]:
        """Evaluate in eval mode (BatchNorm running statistics, no dropout); restore the flags."""
        modes = {m: m.training for m in self.module.modules()}
        self.module.eval()
        try:
            yield
        finally:
            for m, t in modes.items():
                m.training = t

    def prep_input(self, x: Inputs) -> Inputs:
        """Inputs on ``device``; floating leaves in ``dtype``, integer leaves untouched."""
        return fn.cast_inputs(x, self.device, self.dtype)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.params.values())


def build_problem(
    model: nn.Module,
    params: ParamSpec = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    output_fn: OutputFn = None,
) -> Problem:
    """Resolve wrapper, parameter selection, dtype and device; refuse batch-coupled BatchNorm.

    ``output_fn`` selects the model's output (:func:`lazylab.functional.select_output`); for a
    :class:`~lazylab.regimes.Linearized` model its own selector is the default.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    module, override, own_fn = _unwrap(model)
    output_fn = own_fn if output_fn is None else output_fn
    _check_batchnorm(module, "ntk")  # eval-mode BatchNorm policy, shared with linearize()
    named = dict(module.named_parameters())
    if not named:
        raise ValueError("model has no parameters")
    first = next(iter(named.values()))
    dev = torch.device(device) if device is not None else first.device
    dt = dtype if dtype is not None else first.dtype
    if not dt.is_floating_point:
        raise TypeError(f"dtype must be a floating dtype, got {dt}")

    if params is None:
        chosen = [n for n, p in named.items() if p.requires_grad]
    elif callable(params):
        chosen = [n for n, p in named.items() if params(n, p)]
    else:
        if isinstance(params, str):
            params = [params]
        chosen = list(params)
        unknown = [n for n in chosen if n not in named]
        if unknown:
            raise ValueError(
                f"params names unknown parameter(s) {unknown}; the model's parameters are "
                f"{list(named)}"
            )
    if not chosen:
        raise ValueError("params selects no parameter (and the default needs requires_grad=True)")

    def conv(t: Tensor) -> Tensor:
        t = t.detach().to(dev)
        return t.to(dt) if t.is_floating_point() else t

    values = {n: override.get(n, p) for n, p in named.items()}
    sel = {n: conv(values[n]) for n in chosen}
    frozen = {n: conv(v) for n, v in values.items() if n not in sel}
    frozen.update({n: conv(b) for n, b in module.named_buffers()})
    return Problem(module=module, params=sel, frozen=frozen, device=dev, dtype=dt,
                   output_fn=output_fn)
