"""A kernel machine on the empirical NTK as an ``nn.Module`` differentiable in its input, so that
attacks (:mod:`lazylab.attacks`) can target ``x -> K(x, X_train) c``.

With ``J(x) = d f(w, x) / dw`` at the frozen weights ``w0`` (``(O, P)`` per example) and the full
empirical NTK ``K(x, x')_{ab} = J_a(x) . J_b(x')``,

    f_K(x)_a = sum_{n, b} K(x, X_n)_{ab} c_{n b} = J_a(x) . v,    v = J(X)^T c = sum_{n,b} c_{nb} J_b(X_n),

so ``f_K(x) = d/de f(w0 + e v, x)`` at ``e = 0``: one ``torch.func.jvp`` of the network in the fixed
parameter direction ``v`` (computed once with one ``vjp`` over the training set). The jvp is
differentiable in ``x`` with ordinary autograd, which gives ``grad_x K(x, X) c`` without ever forming
``K(x, X)`` or ``d K / dx``. It is also exactly the centered linearized model
``J(w0, x)(w - w0)`` at ``w - w0 = v``, i.e. what gradient flow on the MSE loss converges to from
``w = w0`` (``c = K(X, X)^{-1} y``).

Cost: construction one vjp over ``X_train`` (``~3`` forwards); each forward one jvp (``~3``
forwards); :meth:`KernelPredictor.fit` adds the ``(N O) x (N O)`` kernel and an ``O((N O)^3)`` solve.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import vjp

from lazylab import functional as fn

__all__ = ["KernelPredictor"]


def _as_2d(out: Tensor) -> Tensor:
    return out.unsqueeze(1) if out.dim() == 1 else out.reshape(out.shape[0], -1)


class KernelPredictor(nn.Module):
    """``x -> K(x, X_train) c`` with the full empirical NTK of ``model`` at its current weights.

    Args:
        model: the network (a :class:`lazylab.regimes.Linearized` is unwrapped to its model at
            ``params0``). It is deep-copied, put in eval mode and frozen; later changes to ``model``
            do not affect the predictor.
        X_train: ``(N, ...)`` training inputs.
        coef: ``(N,)`` or ``(N, O)`` coefficients ``c``.
        params: names of the differentiated parameters (default: those with ``requires_grad``).

    The output has the model's output shape (``(M,)`` for a model returning ``(M,)``, else
    ``(M, O)``). Attribute ``direction``: ``v = J(X)^T c`` (name -> tensor).

    Inputs and outputs as in :mod:`lazylab.functional`: ``X_train`` (and the predictor's input)
    may be integer tokens or a tuple/dict of tensors; ``output_fn`` selects the model output. The
    jvp falls back to the exact double-VJP identity for ops without forward mode.
    """

    def __init__(self, model: nn.Module, X_train: fn.Inputs, coef: Tensor,
                 params: list[str] | None = None, output_fn: fn.OutputFn = None) -> None:
        super().__init__()
        from lazylab.regimes import Linearized

        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not isinstance(coef, Tensor) or not isinstance(X_train, (Tensor, tuple, list, dict)):
            raise TypeError("X_train and coef must be torch.Tensors")
        X_train = fn.check_inputs(X_train, "X_train")
        base, w0 = (model.model, model.params0) if isinstance(model, Linearized) else (model, None)
        if isinstance(model, Linearized) and output_fn is None:
            output_fn = model.output_fn
        self.output_fn = output_fn
        self.net = copy.deepcopy(base).eval()
        named = dict(self.net.named_parameters())
        names = params if params is not None else (
            list(w0) if w0 is not None else [n for n, p in named.items() if p.requires_grad])
        unknown = [n for n in names if n not in named]
        if unknown or not names:
            raise ValueError(f"params must name parameters of the model, got {names}; "
                             f"known: {sorted(named)}")
        if w0 is not None:
            with torch.no_grad():
                for n in names:
                    named[n].copy_(w0[n])
        for p in self.net.parameters():
            p.requires_grad_(False)
        self._names = list(names)
        self._squeeze = False
        with torch.no_grad():
            probe = fn.apply(self.net, fn.take(X_train, slice(0, 1)), output_fn)
        self._squeeze = probe.dim() == 1
        o = _as_2d(probe).shape[1]
        c = coef.reshape(-1, 1) if coef.dim() == 1 else coef
        n = fn.batch_size(X_train)
        if c.shape != (n, o):
            raise ValueError(f"coef must have shape ({n},) or ({n}, {o}) "
                             f"for {n} training points and {o} outputs, got "
                             f"{tuple(coef.shape)}")
        p0 = self._params()
        _, pull = vjp(lambda p: _as_2d(self._f(p, X_train)), p0)
        (v,) = pull(c.to(dtype=probe.dtype, device=probe.device))
        for n in self._names:
            self.register_buffer("v__" + n.replace(".", "__"), v[n].detach().clone())

    def _params(self) -> dict[str, Tensor]:
        named = dict(self.net.named_parameters())
        return {n: named[n] for n in self._names}

    def _f(self, p: dict[str, Tensor], x: fn.Inputs) -> Tensor:
        return fn.call(self.net, p, x, self.output_fn)

    @property
    def direction(self) -> dict[str, Tensor]:
        """``v = J(X_train)^T c``, name -> tensor."""
        return {n: getattr(self, "v__" + n.replace(".", "__")) for n in self._names}

    def forward(self, *args: object, **kwargs: object) -> Tensor:
        x = fn.pack_args(args, kwargs)
        _, out = fn.jvp(lambda p: self._f(p, x), self._params(), self.direction)
        return out

    @classmethod
    def fit(cls, model: nn.Module, X_train: fn.Inputs, y_train: Tensor, *, ridge: float = 0.0,
            params: list[str] | None = None, output_fn: fn.OutputFn = None) -> KernelPredictor:
        """Kernel (ridge) regression on the empirical NTK: ``c = (K(X, X) + ridge I)^{-1} Y`` with
        ``Y = y`` (binary +-1 or real targets, one output) or one-hot ``y`` (integer labels, ``O``
        outputs), ``K`` the full ``(N O) x (N O)`` kernel (:func:`lazylab.ntk.ntk`, float64
        accumulation, solve in float64)."""
        from lazylab.kernel_methods import solve_psd
        from lazylab.ntk import ntk

        with torch.no_grad():
            o = _as_2d(fn.apply(model, fn.take(X_train, slice(0, 1)), output_fn)).shape[1]
        if y_train.is_floating_point():
            Y = y_train.reshape(-1, 1) if o == 1 else y_train
        else:
            Y = F.one_hot(y_train, o).to(torch.float64)
        K = ntk(model, X_train, output="full", params=params, accumulate_dtype=torch.float64,
                output_fn=output_fn)
        n = fn.batch_size(X_train)
        Kf = K.permute(0, 2, 1, 3).reshape(n * o, n * o)
        c = solve_psd(Kf, Y.reshape(n * o, 1).to(torch.float64), ridge).reshape(n, o)
        dt = fn.float_dtype(X_train) or next(model.parameters()).dtype
        return cls(model, X_train, c.to(dt), params=params, output_fn=output_fn)
