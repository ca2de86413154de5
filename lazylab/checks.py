"""Argument checks shared by the library and the lab: one place for "is this value usable?".

Every checker raises ``TypeError`` (wrong kind of value) or ``ValueError`` (right kind, unusable
value) with a message that names the argument and what was expected, and returns the value
normalized (``int``/``float``), so call sites read ``n = positive_int(n, "n")``.

The safe range of the lazy scale ``alpha`` (:func:`alpha_range`) lives here too, with its
derivation from the float precision of the displacement update.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "ALPHA_REL_TOL",
    "alpha_range",
    "check_alpha",
    "check_finite_tensors",
    "positive_finite",
    "positive_int",
]

#: Largest relative rounding error of the displacement ``w - w0`` that :func:`alpha_range` accepts;
#: the same tolerance :class:`lazylab.regimes.Lazy` uses to switch its forward pass to float64.
ALPHA_REL_TOL = 1e-4


def positive_int(value: Any, arg: str, *, allow_zero: bool = False) -> int:
    """``value`` as an ``int`` > 0 (>= 0 with ``allow_zero``); bools and non-integral numbers
    (``2.5``) are refused, integral floats (``3.0``) accepted."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{arg} must be an integer, got {value!r} ({type(value).__name__})")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{arg} must be an integer, got {value!r}")
    v = int(value)
    if v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{arg} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return v


def positive_finite(value: Any, arg: str) -> float:
    """``value`` as a finite ``float`` > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"{arg} must be a positive finite number, got {value!r}") from None
    v = float(value)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{arg} must be a positive finite number, got {value!r}")
    return v


def alpha_range(param_dtype: torch.dtype = torch.float32,
                compute_dtype: torch.dtype | None = None) -> tuple[float, float]:
    """``(alpha_min, alpha_max)``: the scales at which ``lazy(model, alpha)`` still trains.

    Derivation. :class:`lazylab.regimes.Lazy` trains the displacement ``delta = w - w0`` (stored
    in the parameters' dtype, so it has full relative precision) and evaluates the model at
    ``w0 + delta`` in the compute dtype ``c``. Gradient descent on ``R(alpha h(w)) / alpha**2``
    moves ``w`` by ``||delta|| = D / alpha`` with ``D = O(1)`` independent of ``alpha`` in the lazy
    regime (Chizat et al. 2019, Thm 2.2). The sum ``w0 + delta`` is rounded to ``eps_c |w0|``
    (``eps_c = torch.finfo(c).eps``), i.e. a relative error ``rho = eps_c |w0| alpha / D``
    ~ ``alpha * eps_c`` on the displacement that reaches the model. At ``alpha * eps_c ~ 1`` the
    update no longer moves the evaluated weights at all (``w0 + delta == w0``: the loss stalls),
    and beyond, ``loss_scale = 1/alpha**2`` underflows and ``alpha**2`` overflows. We accept
    ``rho <= ALPHA_REL_TOL = 1e-4`` (the tolerance at which ``Lazy`` switches to float64):

    * ``alpha_max = min(1e-4 / eps_c, 1 / sqrt(tiny_p))``; the second term keeps the loss scale
      ``1/alpha**2`` a normal number of the parameters' dtype ``p`` (it only binds for float16).
    * ``alpha_min = 1 / sqrt(max_p)``: below it ``1/alpha**2`` overflows the parameters' dtype.

    ``compute_dtype=None`` means Lazy's default (float64 whenever ``alpha * eps_p > 1e-4``), so
    ``c = float64``. Values (``p = float32``): default ``(5.4e-20, 4.5e11)``; ``c = float32``
    ``(5.4e-20, 839)``; ``p = float16``: ``(3.9e-3, 128)``. Cost: O(1).
    """
    for name, dt in (("param_dtype", param_dtype), ("compute_dtype", compute_dtype)):
        if dt is not None and not (isinstance(dt, torch.dtype) and dt.is_floating_point):
            raise TypeError(f"{name} must be a floating torch.dtype, got {dt!r}")
    c = compute_dtype if compute_dtype is not None else torch.float64
    fp = torch.finfo(param_dtype)
    hi = min(ALPHA_REL_TOL / torch.finfo(c).eps, 1.0 / math.sqrt(fp.tiny))
    return 1.0 / math.sqrt(fp.max), hi


def check_alpha(alpha: Any, param_dtype: torch.dtype = torch.float32,
                compute_dtype: torch.dtype | None = None, arg: str = "alpha") -> float:
    """``alpha`` as a float inside :func:`alpha_range`; ValueError naming the range otherwise."""
    a = positive_finite(alpha, arg)
    lo, hi = alpha_range(param_dtype, compute_dtype)
    if not lo <= a <= hi:
        cdt = str(compute_dtype or torch.float64).replace("torch.", "")
        raise ValueError(
            f"{arg}={a:g} is outside the safe range [{lo:.3g}, {hi:.3g}] for "
            f"{str(param_dtype).replace('torch.', '')} weights computed in {cdt}: beyond it "
            "the training update no longer moves the weights (see lazylab.checks.alpha_range)")
    return a


def check_finite_tensors(named: Iterable[tuple[str, Tensor]], who: str) -> None:
    """Raise ValueError naming the first tensor of ``named`` that holds NaN or inf.

    Cost: one fused ``isfinite().all()`` per floating tensor, reduced on the device, and ONE
    host synchronisation for all of them (the names are searched only when a check fails).
    """
    items = [(n, t) for n, t in named if t.is_floating_point() or t.is_complex()]
    if not items:
        return
    flags = torch.stack([torch.isfinite(t.detach()).all().to(items[0][1].device)
                         for _, t in items])
    if bool(flags.all()):
        return
    bad = [n for (n, _), ok in zip(items, flags.tolist()) if not ok]
    raise ValueError(f"{who}: parameter {bad[0]!r} contains NaN or inf values"
                     + (f" (also {bad[1:]})" if len(bad) > 1 else "")
                     + "; re-initialize the model or load finite weights")
