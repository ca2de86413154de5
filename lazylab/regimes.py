"""Training regimes over any ``nn.Module``: lazy scaling, linearization, random features.

Each function takes a module and returns a module, so a regime works in a plain PyTorch loop:

    lz = lazylab.lazy(net, alpha=100.0)              # output alpha * (h(w, x) - h(w0, x))
    loss = lz.loss_scale * criterion(lz(x), y)       # loss_scale = 1 / alpha**2  (Chizat et al. eq. 2)

    lin = lazylab.linearize(net)                     # h(w0, x) + J(w0, x) (w - w0)

    rf = lazylab.random_features(net)                # only the last layer trains

Chizat, Oyallon & Bach (2019): training ``F_alpha(w) = R(alpha * h(w)) / alpha**2`` is lazy for large
alpha: ``sup_t ||w(t) - w0|| = O(1/alpha)`` and the model follows its linearization.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from lazylab import functional as fn
from lazylab.checks import check_alpha, check_finite_tensors
from lazylab.functional import OutputFn

__all__ = [
    "Lazy",
    "Linearized",
    "lazy",
    "linearize",
    "random_features",
    "weights",
    "trainable_names",
    "CENTER_MODES",
    "REGIMES",
    "apply_regime",
]

CENTER_MODES = ("copy", "symmetric", "none")
_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


def _check_module(model: object, arg: str = "model") -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{arg} must be a torch.nn.Module, got {type(model).__name__}")
    if not any(True for _ in model.parameters()):
        raise ValueError(f"{arg} ({type(model).__name__}) has no parameters: nothing to train")
    return model


def trainable_names(model: nn.Module) -> list[str]:
    """Names of the parameters of ``model`` that require grad (shared parameters listed once)."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


def _in_functorch_transform() -> bool:
    """Whether a torch.func transform (vmap, grad, jvp, ...) is active around this call."""
    peek = getattr(torch._C._functorch, "peek_interpreter_stack", None)
    return peek is not None and peek() is not None


def _key(name: str) -> str:
    # ParameterDict / buffer names cannot contain '.'
    return name.replace(".", "__")


def _check_batchnorm(model: nn.Module, who: str) -> None:
    for name, mod in model.named_modules():
        if isinstance(mod, _BN_TYPES) and not mod.track_running_stats:
            raise ValueError(
                f"{who}: BatchNorm layer {name!r} has track_running_stats=False, so its output "
                "depends on the whole batch and the model has no per-example linearization. "
                "Use BatchNorm with running statistics (lazylab then freezes them, eval mode), "
                "or remove the layer."
            )


def _freeze_batchnorm(model: nn.Module) -> None:
    for mod in model.modules():
        if isinstance(mod, _BN_TYPES):
            mod.eval()


class Lazy(nn.Module):
    """``alpha * (h(w, x) - h(w0, x))``: the rescaled, centered model of Chizat et al. (2019).

    Train it with the loss multiplied by :attr:`loss_scale` ``= 1/alpha**2`` (lazylab's trainer does
    this itself); then gradient descent on ``R(alpha h(w)) / alpha**2`` moves ``w`` by ``O(1/alpha)``.

    Centering (``center``):

    - ``"copy"``: subtract the model at its initial weights ``w0`` (works for any module).
    - ``"symmetric"``: the doubling trick. Two copies ``a, b`` with identical init, both trained;
      output ``alpha * (h(w_a, x) - h(w_b, x)) / sqrt(2)``. ``h(w0) = 0`` exactly and, because of the
      ``1/sqrt(2)``, the tangent kernel at init is ``alpha**2 * K`` with ``K`` the original model's.
    - ``"none"``: ``alpha * h(w, x)``.

    Parametrization: the trainable parameters are the displacements ``delta = w - w0`` (they start at
    zero), held in ``self.delta`` (``self.delta_b`` for the second copy when symmetric); ``self.model``
    is a frozen copy of the model at ``w0`` (the caller's module is not modified). Moves of size
    ``1/alpha`` therefore keep full relative precision in float32.
    The forward pass evaluates ``h(w0 + delta) - h(w0)`` in ``compute_dtype``; by default float64
    whenever ``alpha * eps(dtype) > 1e-4`` (alpha > ~830 for float32), because in the model's own
    precision the difference of two O(1) outputs loses ``alpha * eps`` of absolute accuracy.
    :func:`weights` returns the effective weights ``w0 + delta``.

    BatchNorm: the policy of :func:`linearize` (eval-mode running statistics, never updated;
    BatchNorm without running statistics refused), so ``h(w0)`` and ``h(w)`` see the same statistics.
    Any other buffer written in ``forward`` is refused at the first call, naming the module.

    Dropout (train mode): every evaluation inside one forward (``h(w0 + delta)``, ``h(w0)``, the
    second copy) starts from the same random state, so all draw the *same* mask: the output is
    exactly zero at ``delta = 0`` and its gradient is ``alpha * grad h`` with that mask. The
    generator is left where one plain forward of the model would leave it.

    Inputs and outputs: ``x`` as in :mod:`lazylab.functional` (a tensor of any dtype, or a
    tuple/dict of batched tensors: ``lz(ids, mask)`` or ``lz(**batch)``); only floating leaves are
    cast to ``compute_dtype``. ``output_fn`` selects the output tensor (e.g. ``"logits"``).
    Weight tying: a shared tensor has one displacement (``functional_call`` ties it).

    Cost: one forward of the model per copy plus one at ``w0`` (copy centering).
    """

    def __init__(
        self,
        model: nn.Module,
        alpha: float,
        center: str = "copy",
        compute_dtype: torch.dtype | None = None,
        output_fn: OutputFn = None,
    ) -> None:
        super().__init__()
        _check_module(model)
        self.output_fn = output_fn
        self._checked: set[bool] = set()
        if center not in CENTER_MODES:
            raise ValueError(f"center must be one of {CENTER_MODES}, got {center!r}")
        # refused outside the float-precision safe range (lazylab.checks.alpha_range); NaN weights too
        self.alpha = check_alpha(alpha, next(model.parameters()).dtype, compute_dtype)
        check_finite_tensors(model.named_parameters(), "lazy")
        self.center = center
        self._names = trainable_names(model)
        if not self._names:
            raise ValueError("model has no trainable parameters (all have requires_grad=False)")
        _check_batchnorm(model, "lazy")
        self.model = copy.deepcopy(model)  # frozen w0; the caller's model is left untouched
        _freeze_batchnorm(self.model)  # same policy as linearize(): eval-mode running statistics
        for p in self.model.parameters():
            p.requires_grad_(False)
        named = dict(self.model.named_parameters())
        self.delta = nn.ParameterDict(
            {_key(n): nn.Parameter(torch.zeros_like(named[n])) for n in self._names}
        )
        if center == "symmetric":
            self.delta_b = nn.ParameterDict(
                {_key(n): nn.Parameter(torch.zeros_like(named[n])) for n in self._names}
            )
        self._compute_dtype = compute_dtype

    @property
    def loss_scale(self) -> float:
        """Multiply the loss by this: ``1 / alpha**2``."""
        return 1.0 / self.alpha**2

    def train(self, mode: bool = True) -> Lazy:
        super().train(mode)
        _freeze_batchnorm(self.model)
        return self

    def _cdtype(self, dtype: torch.dtype) -> torch.dtype:
        if self._compute_dtype is not None:
            return self._compute_dtype
        if dtype.is_floating_point and self.alpha * torch.finfo(dtype).eps > 1e-4:
            return torch.float64
        return dtype

    def _eval(self, base: dict[str, Tensor], x: fn.Inputs, delta: nn.ParameterDict | None
              ) -> Tensor:
        state = dict(base)
        if delta is not None:
            for n in self._names:
                state[n] = state[n] + delta[_key(n)].to(state[n].dtype)
        return fn.call(self.model, state, x, self.output_fn)

    def _other(self, base: dict[str, Tensor], x: fn.Inputs) -> Tensor:
        """The subtracted term: ``h(w0)`` (copy) or ``h(w0 + delta_b)`` (symmetric).

        ``h(w0)`` is a constant: it is evaluated without a graph, but with its weights flagged
        ``requires_grad`` so that torch picks the same kernels as for ``h(w0 + delta)`` (e.g. the
        RNN kernels differ in rounding with that flag): the difference is exactly 0 at init.
        """
        if self.center == "symmetric":
            return self._eval(base, x, self.delta_b)
        if _in_functorch_transform():  # requires_grad_ is illegal there; the term is a constant
            return self._eval({n: t.detach() for n, t in base.items()}, x, None)
        with torch.no_grad():
            flagged = {n: base[n].detach().requires_grad_() if n in self._names else t
                       for n, t in base.items()}
            return self._eval(flagged, x, None)

    def forward(self, *args: object, **kwargs: object) -> Tensor:
        """``alpha * (h(w0 + delta, x) - h(w0, x))``; ``x`` = ``args``/``kwargs`` as for the model."""
        x = fn.check_inputs(fn.pack_args(args, kwargs), "x", finite=False)
        ref = fn.float_dtype(x) or next(self.model.parameters()).dtype
        cdt = self._cdtype(ref)
        if self.training not in self._checked:
            fn.check_buffers_frozen(self.model, x, "lazy")
            self._checked.add(self.training)
        # w0 (and buffers) in the compute dtype, built once per forward and shared by every copy
        base = {n: t.to(cdt) if t.is_floating_point() else t
                for n, t in fn.state_of(self.model).items()}
        xc = fn.cast_inputs(x, dtype=cdt)
        dev = fn.leaves(xc)[0].device
        start = fn.rng_state(dev)  # every evaluation draws the same dropout masks
        out = self._eval(base, xc, self.delta)
        if self.center != "none":
            after = fn.rng_state(dev)
            fn.set_rng_state(start, dev)
            other = self._other(base, xc)
            fn.set_rng_state(after, dev)
            out = out - other
            if self.center == "symmetric":
                out = out / math.sqrt(2)
        return (self.alpha * out).to(ref)

    def effective_weights(self) -> dict[str, Tensor]:
        """The weights the model is evaluated at: ``w0 + delta`` (``a.`` / ``b.`` prefixed copies
        when symmetric)."""
        named = dict(self.model.named_parameters())
        if self.center != "symmetric":
            return {n: named[n] + self.delta[_key(n)] for n in self._names}
        out = {f"a.{n}": named[n] + self.delta[_key(n)] for n in self._names}
        out.update({f"b.{n}": named[n] + self.delta_b[_key(n)] for n in self._names})
        return out

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}, center={self.center!r}"


class Linearized(nn.Module):
    """The tangent model ``h(w0, x) + J(w0, x) (w - w0)`` (``center=True`` drops ``h(w0, x)``).

    ``self.model`` holds the trainable weights ``w`` (they start at ``w0``); ``self.params0`` the frozen
    ``w0``. The forward pass is one ``torch.func.jvp`` of ``w -> h(w, x)`` at ``w0`` in the direction
    ``w - w0``: cost about that of a forward plus a forward-mode pass; the gradient with respect to ``w``
    equals ``J(w0, x)^T`` applied to the output cotangent, for every ``w`` (the kernel is frozen).

    BatchNorm policy: BatchNorm layers are always evaluated with their running statistics (eval mode)
    and never update them, so the linearization is per-example; BatchNorm without running statistics is
    refused; any other buffer written in ``forward`` is refused at the first call, naming the
    module. Shared modules (weight tying) are handled: ``functional_call`` ties the shared weight.

    Dropout (train mode): ``h(w0, x)`` and ``J(w0, x)(w - w0)`` come from one forward pass, so they
    share one mask (a fresh one per call, as the model itself would draw).

    Forward mode: :func:`lazylab.functional.jvp` (``forward_mode="auto"``): ``torch.func.jvp``, or,
    for ops without a forward-mode rule (mkldnn RNNs, fused attention), the exact double-VJP
    identity. Inputs/outputs as in :mod:`lazylab.functional` (``lin(ids, mask)``,
    ``output_fn="logits"``).
    """

    def __init__(self, model: nn.Module, center: bool = False, output_fn: OutputFn = None,
                 forward_mode: str = "auto") -> None:
        super().__init__()
        _check_module(model)
        _check_batchnorm(model, "linearize")
        if forward_mode not in ("auto", "forward", "double_vjp"):
            raise ValueError("forward_mode must be 'auto', 'forward' or 'double_vjp', got "
                             f"{forward_mode!r}")
        check_finite_tensors(model.named_parameters(), "linearize")
        self.model = model
        self.center = bool(center)
        self.output_fn = output_fn
        self.forward_mode = forward_mode
        self._checked: set[bool] = set()
        self._names = trainable_names(model)
        if not self._names:
            raise ValueError("model has no trainable parameters (all have requires_grad=False)")
        named = dict(model.named_parameters())
        for n in self._names:
            self.register_buffer("w0__" + _key(n), named[n].detach().clone())
        _freeze_batchnorm(model)

    @property
    def params0(self) -> dict[str, Tensor]:
        """The frozen expansion point ``w0`` (names as in ``self.model.named_parameters()``)."""
        return {n: getattr(self, "w0__" + _key(n)) for n in self._names}

    def train(self, mode: bool = True) -> Linearized:
        super().train(mode)
        _freeze_batchnorm(self.model)
        return self

    def forward(self, *args: object, **kwargs: object) -> Tensor:
        """``h(w0, x) + J(w0, x)(w - w0)``; ``x`` = ``args``/``kwargs`` as for the model."""
        x = fn.check_inputs(fn.pack_args(args, kwargs), "x", finite=False)
        if self.training not in self._checked:
            fn.check_buffers_frozen(self.model, x, "linearize")
            self._checked.add(self.training)
        named = dict(self.model.named_parameters())
        w0 = self.params0
        tangent = {n: named[n] - w0[n] for n in self._names}

        def f(p: dict[str, Tensor]) -> Tensor:
            return fn.call(self.model, p, x, self.output_fn)

        out0, dout = fn.jvp(f, w0, tangent, mode=self.forward_mode)
        return dout if self.center else out0 + dout

    def effective_weights(self) -> dict[str, Tensor]:
        named = dict(self.model.named_parameters())
        return {n: named[n] for n in self._names}

    def extra_repr(self) -> str:
        return f"center={self.center}"


def lazy(
    model: nn.Module,
    alpha: float,
    center: str = "copy",
    compute_dtype: torch.dtype | None = None,
    output_fn: OutputFn = None,
) -> Lazy:
    """Rescaled model ``alpha * (h(w, x) - h(w0, x))`` with loss scale ``1/alpha**2``.

    Args:
        model: any module with trainable parameters; its current weights are ``w0``. A frozen copy
            is kept; ``model`` itself is not modified.
        alpha: scale inside :func:`lazylab.checks.alpha_range` (float32 weights: ``5.4e-20 ..
            4.5e11``; with ``compute_dtype=torch.float32``: ``.. 839``): beyond it the float
            rounding of ``w0 + delta`` swallows the update, so it is refused. Large alpha = lazy.
        center: ``"copy"`` | ``"symmetric"`` | ``"none"`` (see :class:`Lazy`).
        compute_dtype: dtype of the forward evaluation (default: float64 when alpha is too large for
            the input's precision, else the input's dtype).
        output_fn: which output to use when the model returns a tuple/dict/``ModelOutput`` (see
            :func:`lazylab.functional.select_output`; default: a tensor, or ``"logits"``).

    Returns:
        A :class:`Lazy` module; ``loss_scale`` = ``1/alpha**2``. In your own loop:
        ``loss = lz.loss_scale * criterion(lz(x), y)``.
    """
    return Lazy(model, alpha, center=center, compute_dtype=compute_dtype, output_fn=output_fn)


def linearize(model: nn.Module, center: bool = False, output_fn: OutputFn = None,
              forward_mode: str = "auto") -> Linearized:
    """Tangent model ``h(w0, x) + J(w0, x)(w - w0)`` around the model's current weights ``w0``.

    The returned module shares ``model`` (its parameters are the trainable ``w``); ``center=True``
    drops ``h(w0, x)``. ``output_fn`` selects the output (see :mod:`lazylab.functional`).
    Computed with ``torch.func.jvp``, or the exact double-VJP fallback where torch has no
    forward mode (``forward_mode``); see :class:`Linearized`.
    """
    return Linearized(model, center=center, output_fn=output_fn, forward_mode=forward_mode)


def _last_layer_names(model: nn.Module) -> list[str]:
    """Parameters of the last module owning any, under their canonical (first) names: a decoder
    tied to the embedding gives the shared tensor's name."""
    canonical = {id(p): n for n, p in model.named_parameters()}
    last: list[str] = []
    for mod in model.modules():
        own = [canonical[id(p)] for p in mod.parameters(recurse=False)]
        if own:
            last = own
    return last


def random_features(
    model: nn.Module, trainable: Iterable[str] | Callable[[str], bool] | None = None
) -> nn.Module:
    """Freeze every parameter except the last layer's (default) or the ``trainable`` ones.

    ``trainable`` is a list of parameter names or a predicate ``name -> bool``. The last layer is the
    last module (in registration order) that owns parameters. The model is modified in place
    (``requires_grad``) and returned. With the first layer frozen this is the random-features model
    ``f(x) = a^T sigma(W0 x)``: its tangent kernel is the RF kernel ``sigma(W0 x)^T sigma(W0 x')``.
    """
    _check_module(model)
    names = [n for n, _ in model.named_parameters()]
    if trainable is None:
        keep = set(_last_layer_names(model))
    elif callable(trainable):
        keep = {n for n in names if trainable(n)}
    else:
        if isinstance(trainable, str):
            trainable = [trainable]
        keep = set(trainable)
        unknown = sorted(keep - set(names))
        if unknown:
            raise ValueError(
                f"trainable names unknown parameter(s) {unknown}; the model's parameters are {names}"
            )
    if not keep:
        raise ValueError("trainable selects no parameter: nothing would train")
    for n, p in model.named_parameters():
        p.requires_grad_(n in keep)
    return model


def weights(model: nn.Module) -> dict[str, Tensor]:
    """The effective weights ``w`` of a model or regime wrapper (``w0 + delta`` for :class:`Lazy`,
    the trainable weights otherwise). Used by the weight-change trackers."""
    if isinstance(model, (Lazy, Linearized)):
        return model.effective_weights()
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


REGIMES = ("full", "lazy", "linearized", "random_features")


def apply_regime(model: nn.Module, regime: str, **kwargs: object) -> nn.Module:
    """A regime by name: ``"full"`` (the model itself), ``"lazy"`` (kwargs of :func:`lazy`: alpha,
    center, compute_dtype), ``"linearized"`` (kwargs of :func:`linearize`: center) or
    ``"random_features"`` (kwargs: trainable). For configs and command lines."""
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {REGIMES}, got {regime!r}")
    _check_module(model)
    if regime == "full":
        if kwargs:
            raise TypeError(f"regime 'full' takes no options, got {sorted(kwargs)}")
        return model
    fn = {"lazy": lazy, "linearized": linearize, "random_features": random_features}[regime]
    return fn(model, **kwargs)  # type: ignore[operator]
