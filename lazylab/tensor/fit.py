"""Three ways to fit ``T(u, c) = sum_i c_i u_i^{(x)l}`` to a target T*: lazy, plain GD, variant.

All report the relative error ``||T - T*||_F / ||T*||_F`` computed from inner products.

- ``fit_lazy``: the lazy / NTK fit. The linearized model ``T0 + J (w - w0)`` trained by gradient
  flow on ``||. - T*||_F^2`` converges to the least-squares solution in the tangent space, which
  ``fit_lazy`` computes exactly (``tangent.tangent_lstsq``): ``min_delta ||T* - T0 - J delta||``.
- ``fit_gd``: plain full-batch gradient descent on the over-parameterized objective
  ``||T(u, c) - T*||^2 / ||T*||^2`` from the model's init; with ``alpha`` the lazy-scaled objective
  ``||alpha (T(w) - T(w0)) - T*||^2 / (alpha^2 ||T*||^2)`` of Chizat et al. (output centred at
  init, loss scaled by 1/alpha^2, as in ``lazylab.lazy``).
- ``fit_variant``: *our* "beyond lazy" variant in the spirit of Wang et al. (2020), whose
  pseudo-code was not found. Every detail below is our choice: the 2-homogeneous parametrization
  (``TensorModel(parametrization="homogeneous")``: component ``c_i ||u_i|| (u_i/||u_i||)^{(x)l}``),
  small random init, the penalty ``reg * (1/2) sum_i (c_i^2 + ||u_i||^2)`` (an l1 penalty on the
  component weights at balance), and every ``reinit_every`` steps the component with the smallest
  weight ``|c_i| ||u_i||`` is re-drawn from the init distribution at scale ``reinit_scale`` (a
  fresh random direction: the escape mechanism), but only while the current relative error
  exceeds ``reinit_above`` (default 0.05; None = always), so a finished fit is not broken up.
  The last ``polish_frac`` of the steps run with no penalty and no re-initialization, to remove
  the l1 shrinkage bias. Not implemented: the paper's "coefficient mode switches" and any epoch
  structure (details not found).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lazylab import training
from lazylab.tensor.model import TensorModel
from lazylab.tensor.symmetric import SymCP
from lazylab.tensor.tangent import tangent_lstsq
from lazylab.training.hooks import Hook, Stop

__all__ = ["FitResult", "fit_lazy", "fit_gd", "fit_variant", "relative_error"]


@dataclass
class FitResult:
    """rel_error = ||T - T*||_F / ||T*||_F at the end; history: list of (step, rel_error)."""

    rel_error: float
    steps: int
    history: list[tuple[int, float]] = field(default_factory=list)
    info: dict = field(default_factory=dict)


def relative_error(t: SymCP, target: SymCP) -> float:
    """``||T - T*||_F / ||T*||_F`` from inner products (O(m^2 d + m r d))."""
    tt = target.norm_sq()
    val = t.norm_sq() - 2 * t.inner(target) + tt
    return float(val.clamp_min(0).sqrt() / tt.sqrt())


def _difference(a: SymCP, b: SymCP, scale: float = 1.0) -> SymCP:
    """CP form of ``scale * (a - b)``."""
    return SymCP(torch.cat([scale * a.coefs, -scale * b.coefs]),
                 torch.cat([a.vectors, b.vectors]), a.order)


def _check_common(model: TensorModel, target: SymCP, steps: int, lr: float) -> None:
    if not isinstance(model, TensorModel):
        raise TypeError(f"model must be a TensorModel, got {type(model).__name__}")
    model._check_target(target)
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")


def fit_lazy(model: TensorModel, target: SymCP, **lstsq_kwargs) -> FitResult:
    """Exact lazy fit: the best ``T0 + J delta`` in the tangent space at the model's current point.

    Computed in float64 from the Gram matrix (``tangent_lstsq``; kwargs: solver, rcond, tol, ...).
    ``info`` holds the solver, rank or CG iterations. The model is not modified.
    """
    model._check_target(target)
    with torch.no_grad():
        p = model.cp()
        point = SymCP(p.coefs.double(), p.vectors.double(), p.order)
        tgt = target.to(dtype=torch.float64, device=point.coefs.device)
        resid = _difference(tgt, point)                     # T* - T0
        out = tangent_lstsq(point, resid, **lstsq_kwargs)
        rel = (max(out["residual_sq"], 0.0) / float(tgt.norm_sq())) ** 0.5
    info = {k: v for k, v in out.items() if k != "delta"}
    return FitResult(rel_error=rel, steps=0, history=[(0, rel)], info=info)


class _Fit(Hook):
    """Tensor GD on the loop: records ``(step, rel. error)`` every ``record_every`` steps from the
    objective's own forward, stops before the update once the error is ``<= tol`` (from step
    ``stop_from``) or the budget is spent; ``hook(step)`` after each update."""

    def __init__(self, steps: int, record_every: int, tol: float, hook=None, stop_from: int = 0):
        self.steps, self.every, self.tol = steps, record_every, tol
        self.hook, self.stop_from = hook, stop_from
        self.hist: list[tuple[int, float]] = []

    def after_forward(self, state, value, err) -> None:
        step = state.step
        done = (err <= self.tol and step >= self.stop_from) or step == self.steps
        if step % self.every == 0 or done:
            self.hist.append((step, err))
        if done:
            raise Stop("done")

    def end_step(self, state) -> None:
        if self.hook is not None:
            self.hook(state.step)


def _run_gd(model: TensorModel, objective, steps: int, lr: float, record_every: int,
            tol: float, hook=None, stop_from: int = 0) -> tuple[list[tuple[int, float]], int, bool]:
    """Full-objective GD (``torch.optim.SGD``) on the one training loop; ``objective(step) ->
    (loss, rel. error)``. Returns the history, the last step and whether the loss diverged."""
    spec = training.sgd(lr)
    fit = _Fit(steps, record_every, tol, hook, stop_from)
    h = training.run(training.LoopState(model), training.NoData(),
                     lambda st, _: objective(st.step), spec, spec.build(list(model.parameters())),
                     steps + 1, hooks=[fit], on_divergence="stop")
    return fit.hist, h.steps, h.stopped == "diverged"


def fit_gd(model: TensorModel, target: SymCP, *, steps: int = 2000, lr: float = 0.05,
           alpha: float | None = None, record_every: int = 50, tol: float = 1e-3) -> FitResult:
    """Plain gradient descent (``torch.optim.SGD``, no momentum) on the normalized objective.

    Stops early once the relative error is <= tol. With ``alpha`` the lazy-scaled objective (module
    docstring); the reported error is then that of ``alpha (T(w) - T(w0))``. Cost per step
    O(m^2 d + m r d). Modifies ``model`` in place.
    """
    _check_common(model, target, steps, lr)
    if alpha is not None and not alpha > 0:
        raise ValueError(f"alpha must be > 0 or None, got {alpha!r}")
    tgt = target.to(dtype=model.u.dtype, device=model.u.device)
    tt = tgt.norm_sq().detach()
    with torch.no_grad():
        p0 = model.cp()
        t0 = SymCP(p0.coefs.clone(), p0.vectors.clone(), p0.order)

    def objective(step):
        t = model.cp() if alpha is None else _difference(model.cp(), t0, alpha)
        val = t.norm_sq() - 2 * t.inner(tgt) + tt
        err = float(val.detach().clamp_min(0).sqrt() / tt.sqrt())
        scale = 1.0 if alpha is None else 1.0 / alpha ** 2
        return val / tt * scale, err

    hist, step, div = _run_gd(model, objective, steps, lr, record_every, tol)
    rel = hist[-1][1] if hist and not div else float("nan")
    return FitResult(rel_error=rel, steps=step, history=hist, info={"diverged": div})


def fit_variant(model: TensorModel, target: SymCP, *, steps: int = 3000, lr: float = 0.1,
                reg: float = 1e-3, reinit_every: int = 100, reinit_scale: float | None = None,
                polish_frac: float = 0.2, record_every: int = 50, tol: float = 1e-3,
                reinit_above: float | None = 0.05,
                generator: torch.Generator | None = None) -> FitResult:
    """Our "beyond lazy" variant (module docstring): GD on
    ``||T - T*||^2/||T*||^2 + reg * (1/2) sum_i (c_i^2 + ||u_i||^2)`` for a homogeneous model, with
    periodic re-initialization of the weakest component (every ``reinit_every`` steps, only while
    the relative error is above ``reinit_above``; None: always). Early stop at rel. error <= tol
    during the polish phase. ``info['reinits']`` counts re-initializations. Modifies ``model`` in place.
    """
    _check_common(model, target, steps, lr)
    if model.parametrization != "homogeneous":
        raise ValueError("fit_variant needs TensorModel(parametrization='homogeneous'), "
                         f"got {model.parametrization!r}")
    if reg < 0:
        raise ValueError(f"reg must be >= 0, got {reg!r}")
    if not isinstance(reinit_every, int) or reinit_every < 1:
        raise ValueError(f"reinit_every must be a positive int, got {reinit_every!r}")
    if not 0 <= polish_frac <= 1:
        raise ValueError(f"polish_frac must be in [0, 1], got {polish_frac!r}")
    tgt = target.to(dtype=model.u.dtype, device=model.u.device)
    tt = tgt.norm_sq().detach()
    polish_start = int(round(steps * (1 - polish_frac)))
    if reinit_above is not None and not reinit_above >= 0:
        raise ValueError(f"reinit_above must be >= 0 or None, got {reinit_above!r}")
    n_reinit = [0]
    last_err = [float("inf")]

    def objective(step):
        t = model.cp()
        val = t.norm_sq() - 2 * t.inner(tgt) + tt
        err = float(val.detach().clamp_min(0).sqrt() / tt.sqrt())
        loss = val / tt
        if step < polish_start and reg > 0:
            loss = loss + reg * model.regularizer()
        last_err[0] = err
        return loss, err

    def hook(step):
        if reinit_above is not None and last_err[0] <= reinit_above:
            return
        if step < polish_start and step % reinit_every == 0:
            i = int(model.component_weights().argmin())
            model.reinit_(i, scale=reinit_scale, generator=generator)
            n_reinit[0] += 1

    # no early stop before the polish phase (the penalty biases the fit)
    hist, step, div = _run_gd(model, objective, steps, lr, record_every, tol, hook,
                              stop_from=polish_start)
    with torch.no_grad():
        rel = float("nan") if div else relative_error(model.cp(), tgt)
    return FitResult(rel_error=rel, steps=step, history=hist,
                     info={"diverged": div, "reinits": n_reinit[0]})
