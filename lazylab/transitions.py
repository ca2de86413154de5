"""Transition detectors: when does a run leave the kernel regime? Trackers for :func:`lazylab.train`.

Each detector is a tracker (see :mod:`lazylab.track`): ``start(state)``, ``on_step(state, xb, yb)``,
``__call__(state) -> dict`` (history columns) and a ``result()`` dict with the verdict.

- :class:`DepartureTime` — first step at which the kernel distance to init
  ``S(K_t, K_0) = 1 - <K_t, K_0>_F / (||K_t|| ||K_0||)`` (Fort et al. 2020) exceeds ``threshold``.
- :class:`Catapult` — Lewkowycz et al. (2020): with ``lambda_0`` the top eigenvalue of the initial
  NTK in the loss's normalisation (``J J^T / N`` for the trainer's ``(1/2N) sum ||f - y||^2``,
  times the loss scale), gradient descent on the linearised model is stable iff
  ``eta lambda_0 < 2``. A catapult is ``eta lambda_0 > 2`` together with a loss spike (the loss rises
  above ``(1 + spike) L_0``) followed by a drop of ``lambda_t`` below ``2 / eta`` while the loss
  comes back down; divergence is a non-finite or still growing loss.
- :class:`EdgeOfStability` — Cohen et al. (2021): the sharpness (top eigenvalue of the Hessian of
  the full-batch training objective, by Lanczos — ``scipy.sparse.linalg.eigsh`` — on Hessian-vector
  products) rises to ``2 / eta`` and hovers there while the loss keeps decreasing.
- :class:`SilentAlignment` — Atanasov, Bordelon & Pehlevan (2022): from a small initialisation the
  kernel's top-``k`` eigenspace aligns with the target early (``y``'s energy fraction in it), while
  the kernel norm ``||K_t|| / ||K_0||`` is still small, and grows afterwards.

Costs: kernel detectors one NTK on the probe (``N_p^2`` entries) per snapshot plus an ``O(N_p^3)``
eigendecomposition; :class:`EdgeOfStability` ``n_iter`` Hessian-vector products (each about two
backward passes on the training set) per snapshot.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["DepartureTime", "Catapult", "EdgeOfStability", "SilentAlignment", "sharpness",
           "ntk_top_eigenvalue"]


def _kernel(model: nn.Module, x: Tensor, method: str, full: bool = False) -> Tensor:
    from lazylab.ntk import ntk

    K = ntk(model, x, method=method, output="full" if full else "trace",
            accumulate_dtype=torch.float64, progress=False)
    if full:  # (N, N, O, O) -> (N O, N O)
        n, _, o, _ = K.shape
        K = K.permute(0, 2, 1, 3).reshape(n * o, n * o)
    return K


def ntk_top_eigenvalue(model: nn.Module, x: Tensor, method: str = "auto") -> float:
    """``lambda_max(J J^T / N)`` on inputs ``x`` (N, ...), ``J`` the (N O, P) Jacobian of all
    outputs: the curvature of ``(1/2N) sum_n ||f(x_n) - y_n||^2`` seen by GD on the linearised
    model (stable iff ``eta lambda < 2``). Cost: one full NTK (``(N O)^2`` entries) + eigvalsh."""
    K = _kernel(model, x, method, full=True)
    return float(torch.linalg.eigvalsh(0.5 * (K + K.T))[-1]) / x.shape[0]


def _check_probe(x: Any, arg: str = "probe_x") -> Tensor:
    if not isinstance(x, Tensor) or x.dim() == 0 or x.shape[0] < 2:
        raise ValueError(f"{arg} must be a tensor of at least 2 inputs (N, ...)")
    return x


def _check_every(every: Any) -> int:
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise ValueError(f"every must be a positive int (steps between snapshots), got {every!r}")
    return every


class _Snapshots:
    """Kernel snapshots on a schedule (every ``every`` steps, plus step 0)."""

    def __init__(self, probe_x: Tensor, every: int, method: str) -> None:
        self.probe_x, self.every, self.method = _check_probe(probe_x), _check_every(every), method
        self.steps: list[int] = []

    def _kernel_now(self, state: Any) -> Tensor:
        self.probe_x = self.probe_x.to(state.X.device, state.X.dtype)
        return _kernel(state.model, self.probe_x, self.method)

    def start(self, state: Any) -> None:
        self._record(state, int(state.step), self._kernel_now(state))

    def on_step(self, state: Any, xb: Tensor, yb: Tensor) -> None:
        step = int(state.step) + 1
        if step % self.every == 0:
            self._record(state, step, self._kernel_now(state))

    def _record(self, state: Any, step: int, K: Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class DepartureTime(_Snapshots):
    """Departure from the kernel regime: ``departure_step`` is the first snapshot step with
    ``S(K_t, K_0) > threshold`` (NaN while none). History columns ``kernel_dist0`` and
    ``departure_step``; ``result()`` adds the ``dists`` per step and ``departed``."""

    def __init__(self, probe_x: Tensor, threshold: float = 0.05, every: int = 1,
                 method: str = "auto") -> None:
        super().__init__(probe_x, every, method)
        if not 0 < threshold < 2:
            raise ValueError(f"threshold must be in (0, 2) (kernel distance), got {threshold!r}")
        self.threshold = float(threshold)
        self.K0: Tensor | None = None
        self.dists: list[float] = []
        self.departure_step = math.nan

    def _record(self, state: Any, step: int, K: Tensor) -> None:
        from lazylab.metrics import kernel_distance

        if self.K0 is None:
            self.K0 = K
        d = kernel_distance(K, self.K0)
        self.steps.append(step)
        self.dists.append(d)
        if d > self.threshold and math.isnan(self.departure_step):
            self.departure_step = float(step)

    def __call__(self, state: Any) -> dict[str, float]:
        return {"kernel_dist0": self.dists[-1] if self.dists else math.nan,
                "departure_step": self.departure_step}

    def result(self) -> dict[str, Any]:
        return {"departed": not math.isnan(self.departure_step),
                "departure_step": self.departure_step, "steps": list(self.steps),
                "dists": list(self.dists), "threshold": self.threshold}


class Catapult:
    """Catapult detector (module docstring). ``probe_x``: the inputs whose NTK defines
    ``lambda`` (default: the training inputs; keep it small, the full NTK has ``(N O)^2``
    entries); ``every``: steps between ``lambda_t`` snapshots; ``spike``: relative loss rise that
    counts as a spike. The loss is the full-batch training loss the trainer reports after each step
    (``state.batch_loss``, exact for ``optimizer="gd"``). History columns ``eta_lambda0``,
    ``ntk_lambda`` and ``catapult`` (0/1 so far)."""

    def __init__(self, probe_x: Tensor | None = None, every: int = 1, spike: float = 0.1,
                 method: str = "auto") -> None:
        self.probe_x = None if probe_x is None else _check_probe(probe_x)
        self.every, self.spike, self.method = _check_every(every), float(spike), method
        self.lambda0 = math.nan
        self.eta = math.nan
        self.losses: list[float] = []
        self.lambdas: dict[int, float] = {}

    def _lam(self, state: Any) -> float:
        return state.loss_scale * ntk_top_eigenvalue(state.model, self.probe_x, self.method)

    def start(self, state: Any) -> None:
        if self.probe_x is None:
            self.probe_x = state.X
        self.probe_x = self.probe_x.to(state.X.device, state.X.dtype)
        self.lambda0 = self._lam(state)
        self.lambdas[int(state.step)] = self.lambda0
        with torch.no_grad():
            self.losses.append(float(state.loss(state.model(state.X), state.y)))

    def on_step(self, state: Any, xb: Tensor, yb: Tensor) -> None:
        self.eta = state.lr
        step = int(state.step) + 1
        with torch.no_grad():  # loss after the step, full batch
            self.losses.append(float(state.loss(state.model(state.X), state.y)))
        if step % self.every == 0:
            self.lambdas[step] = self._lam(state)

    def __call__(self, state: Any) -> dict[str, float]:
        eta = state.lr if math.isnan(self.eta) else self.eta
        last = self.lambdas[max(self.lambdas)] if self.lambdas else math.nan
        return {"eta_lambda0": eta * self.lambda0, "ntk_lambda": last,
                "catapult": float(self.result(eta)["catapult"])}

    def result(self, eta: float | None = None) -> dict[str, Any]:
        """``phase`` in ``{"lazy", "catapult", "divergent", "unclear"}`` with the evidence."""
        eta = self.eta if eta is None else eta
        L = np.asarray(self.losses, float)
        lam_steps = sorted(self.lambdas)
        lam = np.asarray([self.lambdas[s] for s in lam_steps], float)
        out: dict[str, Any] = {"eta_lambda0": eta * self.lambda0, "lambda0": self.lambda0,
                               "catapult": False}
        if L.size < 2:
            out["phase"] = "unclear"
            return out
        peak = int(np.nanargmax(np.where(np.isfinite(L), L, np.inf)))
        spiked = bool(L[peak] > (1 + self.spike) * L[0])
        diverged = bool(not np.isfinite(L).all() or (spiked and peak == L.size - 1))
        after = lam[np.asarray(lam_steps) >= peak] if spiked else lam[-1:]
        lam_end = float(after[-1]) if after.size else math.nan
        dropped = bool(lam_end < 2 / eta and lam_end < self.lambda0)
        recovered = bool(np.isfinite(L[-1]) and L[-1] < L[0])
        out.update(spike_step=peak if spiked else None, peak_loss=float(L[peak]),
                   lambda_end=lam_end, spiked=spiked, lambda_dropped=dropped, recovered=recovered)
        out["catapult"] = bool(eta * self.lambda0 > 2 and spiked and dropped and recovered)
        out["phase"] = ("divergent" if diverged else "catapult" if out["catapult"] else
                        "lazy" if (eta * self.lambda0 < 2 and not spiked) else "unclear")
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"lambda0": self.lambda0, "losses": self.losses, "lambdas": self.lambdas}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.lambda0, self.losses, self.lambdas = s["lambda0"], s["losses"], s["lambdas"]


def sharpness(model: nn.Module, X: Tensor, y: Tensor, loss: Any = "mse", scale: float = 1.0,
              n_iter: int = 20, tol: float = 1e-6, seed: int = 0) -> float:
    """Top eigenvalue of the Hessian of ``scale * loss(model(X), y)`` w.r.t. the trainable
    parameters, by Lanczos (``scipy.sparse.linalg.eigsh``, ``which="LA"``) on Hessian-vector
    products (reverse-over-reverse autograd, in the model's dtype; the Lanczos vectors in float64).
    Cost: up to ``n_iter`` restarts' worth of HVPs (each ~2 backward passes on ``X``)."""
    from scipy.sparse.linalg import LinearOperator, eigsh

    from lazylab.trainer import loss_fn

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    crit = loss_fn(loss)
    was = model.training
    model.eval()
    try:
        obj = scale * crit(model(X), y)
        grads = torch.autograd.grad(obj, params, create_graph=True)
        flat = torch.cat([g.reshape(-1) for g in grads])
        n = flat.numel()

        def hvp(v: np.ndarray) -> np.ndarray:
            vt = torch.as_tensor(np.ravel(v), dtype=flat.dtype, device=flat.device)
            hv = torch.autograd.grad(flat, params, vt, retain_graph=True)
            return torch.cat([h.reshape(-1) for h in hv]).double().cpu().numpy()

        op = LinearOperator((n, n), matvec=hvp, dtype=np.float64)
        v0 = np.random.default_rng(seed).standard_normal(n)
        val = eigsh(op, k=1, which="LA", v0=v0, ncv=min(n, max(n_iter, 3)), tol=tol,
                    return_eigenvectors=False)
    finally:
        model.train(was)
    return float(val[0])


class EdgeOfStability:
    """Edge-of-stability detector (module docstring). Every ``every`` steps: the sharpness of the
    full-batch objective on ``(X, y)`` (default the training set) and ``ratio = sharpness * eta / 2``.
    ``eos_step``: first snapshot with ``ratio >= 1 - tol``; ``result()["eos"]``: reached, still at
    ``ratio >= 1 - tol`` on at least half the later snapshots (hovering, not collapsing) and the
    loss at the end below its value at ``eos_step`` (training goes on). History columns
    ``sharpness``, ``sharpness_ratio``."""

    def __init__(self, every: int = 10, X: Tensor | None = None, y: Tensor | None = None,
                 tol: float = 0.1, n_iter: int = 20) -> None:
        self.every, self.tol, self.n_iter = _check_every(every), float(tol), int(n_iter)
        self.X, self.y = X, y
        self.eta = math.nan  # the run's lr, read at the first step (state.lr is 0 before it)
        self.records: list[tuple[int, float, float]] = []  # step, sharpness, loss

    def _snap(self, state: Any, step: int) -> None:
        X = state.X if self.X is None else self.X.to(state.X.device, state.X.dtype)
        y = state.y if self.y is None else self.y.to(state.X.device)
        s = sharpness(state.model, X, y, state.loss, state.loss_scale, self.n_iter, tol=1e-3)
        with torch.no_grad():
            L = float(state.loss(state.model(X), y))
        self.records.append((step, s, L))

    def start(self, state: Any) -> None:
        self._snap(state, int(state.step))

    def on_step(self, state: Any, xb: Tensor, yb: Tensor) -> None:
        if math.isnan(self.eta):
            self.eta = float(state.lr)
        if (int(state.step) + 1) % self.every == 0:
            self._snap(state, int(state.step) + 1)

    def __call__(self, state: Any) -> dict[str, float]:
        eta = state.lr if state.lr > 0 else self.eta
        s = self.records[-1][1] if self.records else math.nan
        return {"sharpness": s, "sharpness_ratio": s * eta / 2}

    def result(self) -> dict[str, Any]:
        """``steps``, ``sharpness``, ``ratio`` (``sharpness * eta / 2``), ``eos``, ``eos_step``."""
        steps = [r[0] for r in self.records]
        sharp = np.asarray([r[1] for r in self.records], float)
        ratio = sharp * self.eta / 2
        loss = np.asarray([r[2] for r in self.records], float)
        hit = np.flatnonzero(ratio >= 1 - self.tol)
        out: dict[str, Any] = {"steps": steps, "sharpness": sharp.tolist(), "ratio": ratio.tolist(),
                               "eos": False,
                               "eos_step": None, "max_ratio": float(np.nanmax(ratio))}
        if hit.size:
            i = int(hit[0])
            later = ratio[i:]
            out["eos_step"] = steps[i]
            out["eos"] = bool((later >= 1 - self.tol).mean() >= 0.5 and loss[-1] < loss[i]
                              and np.isfinite(loss[-1]))
        return out


class SilentAlignment(_Snapshots):
    """Silent-alignment detector (module docstring). Every ``every`` steps on ``(probe_x, probe_y)``:
    ``align`` (fraction of ``probe_y``'s energy in the top-``k`` eigenspace of ``K_t``) and
    ``norm_ratio`` ``||K_t||_F / ||K_0||_F``. ``result()``: ``t_align`` first step with ``align``
    >= 90 % of its largest value, ``t_norm`` first step at which ``log norm_ratio`` reaches half its
    final value; ``silent`` iff the largest alignment is >= ``min_align``, the norm grows by at
    least ``min_growth`` and ``t_align <= t_norm`` (aligned before the kernel grew). The largest,
    not the final, alignment: late in training an isotropic part of the kernel (e.g. the
    ``||a||^2 x.x'`` term of a two-layer linear net) grows too and dilutes it."""

    def __init__(self, probe_x: Tensor, probe_y: Tensor, k: int = 1, every: int = 1,
                 min_align: float = 0.5, min_growth: float = 10.0, method: str = "auto") -> None:
        super().__init__(probe_x, every, method)
        if not isinstance(probe_y, Tensor) or probe_y.shape[0] != probe_x.shape[0]:
            raise ValueError(f"probe_y must be a tensor with {probe_x.shape[0]} rows")
        self.probe_y, self.k = probe_y, int(k)
        self.min_align, self.min_growth = float(min_align), float(min_growth)
        self.align: list[float] = []
        self.norms: list[float] = []

    def _record(self, state: Any, step: int, K: Tensor) -> None:
        from lazylab.metrics import spectrum_summary

        spec = spectrum_summary(K, self.probe_y.to(K.device), k=min(self.k, K.shape[0]))
        self.steps.append(step)
        self.align.append(float(spec["y_topk_fraction"]))
        self.norms.append(float(torch.linalg.matrix_norm(K)))

    def __call__(self, state: Any) -> dict[str, float]:
        if not self.norms:
            return {}
        return {"kernel_align_topk": self.align[-1], "kernel_norm_ratio": self.norms[-1] / self.norms[0]}

    def result(self) -> dict[str, Any]:
        a = np.asarray(self.align)
        g = np.log(np.asarray(self.norms) / self.norms[0])
        t_align = self.steps[int(np.flatnonzero(a >= 0.9 * a.max())[0])]
        t_norm = self.steps[int(np.flatnonzero(g >= 0.5 * g[-1])[0])] if g[-1] > 0 else math.inf
        growth = float(np.exp(g[-1]))
        silent = bool(a.max() >= self.min_align and growth >= self.min_growth and t_align <= t_norm)
        return {"silent": silent, "t_align": t_align, "t_norm": t_norm, "final_align": float(a[-1]),
                "max_align": float(a.max()),
                "initial_align": float(a[0]), "norm_growth": growth}
