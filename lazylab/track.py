"""Trackers: quantities measured during :func:`lazylab.train` on a step schedule.

A tracker is any object with ``__call__(state) -> dict[str, float]`` (called at the tracked steps)
and optionally ``start(state)`` (before training), ``on_step(state, xb, yb)`` (after every optimizer
step) and ``state_dict()`` / ``load_state_dict()`` (checkpointing). ``state`` is a
:class:`lazylab.trainer.TrainState`. Train/test loss and accuracy are always recorded by the trainer.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lazylab import functional as fn
from lazylab.regimes import linearize, weights
from lazylab.trainer import log_schedule

__all__ = ["WeightChange", "LinearizedTwin", "KernelTracker"]


class WeightChange:
    """Relative weight change ``||w - w0|| / ||w0||`` (Frobenius over all trainable weights) and,
    with ``per_layer``, ``||w_l - w0_l|| / ||w0_l||`` for each parameter tensor ``l``; also the
    absolute ``||w - w0||`` (``weight_dist``). Weights are the effective ones
    (:func:`lazylab.regimes.weights`: ``w0 + delta`` for a lazy model). Cost: O(#params)."""

    def __init__(self, per_layer: bool = False) -> None:
        self.per_layer = per_layer
        self.w0: dict[str, Tensor] = {}

    def start(self, state: Any) -> None:
        self.w0 = {n: w.detach().clone() for n, w in weights(state.model).items()}

    def __call__(self, state: Any) -> dict[str, float]:
        w = weights(state.model)
        num = den = 0.0
        out: dict[str, float] = {}
        with torch.no_grad():
            for n, w0 in self.w0.items():
                d2 = (w[n] - w0).pow(2).sum().item()
                n2 = w0.pow(2).sum().item()
                num, den = num + d2, den + n2
                if self.per_layer:
                    out[f"rel_change/{n}"] = math.sqrt(d2 / n2) if n2 > 0 else math.sqrt(d2)
        out["weight_dist"] = math.sqrt(num)
        out["rel_weight_change"] = math.sqrt(num / den) if den > 0 else math.nan
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"w0": self.w0}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.w0 = s["w0"]


class LinearizedTwin:
    """Trains ``linearize(copy of the model at init)`` in step with the model (same batches, same lr
    and optimizer, same loss scale) and reports, on the given ``points`` (N, ...):

    - ``lin_gap``: ``||f_w(points) - f_lin(points)||`` (Frobenius norm over points and outputs);
    - ``lin_gap_rel``: that divided by ``||f_lin(points)||``;
    - ``param_gap``: ``||theta - theta_lin||`` over the trainable parameters (for a lazy model these
      are the displacements, so this is ``||w - w_lin||``).

    For ``lazy(model, alpha)`` the twin is ``alpha * Dh(w0)(w - w0)``, i.e. Chizat et al.'s
    ``alpha * hbar``; Theorem 2.2 predicts ``lin_gap = O(1/alpha)`` and ``param_gap = O(1/alpha**2)``.
    Cost per step: one linearized training step (about 2-3 model steps).
    """

    def __init__(self, points: fn.Inputs) -> None:
        if not isinstance(points, (Tensor, tuple, list, dict)) or (
                isinstance(points, Tensor) and (points.dim() == 0 or points.shape[0] == 0)):
            raise ValueError("points must be a non-empty tensor of inputs")
        self.points = fn.check_inputs(points, "points", finite=False)
        self.twin: nn.Module | None = None
        self.opt: torch.optim.Optimizer | None = None
        self._opt_state: dict[str, Any] | None = None  # set by load_state_dict until the next step

    def start(self, state: Any) -> None:
        self.twin = linearize(copy.deepcopy(state.model))
        self.twin.train(state.model.training)
        self.opt = state.make_optimizer([p for p in self.twin.parameters() if p.requires_grad])
        self.points = state.inputs_like_data(self.points)

    def on_step(self, state: Any, xb: Tensor, yb: Tensor) -> None:
        assert self.twin is not None
        if self.opt is None:  # resumed: rebuild the run's own optimizer, then restore its state
            self.opt = state.make_optimizer([p for p in self.twin.parameters() if p.requires_grad])
            if self._opt_state is not None:
                self.opt.load_state_dict(self._opt_state)
                self._opt_state = None
        for g in self.opt.param_groups:
            g["lr"] = state.lr
        self.opt.zero_grad(set_to_none=True)
        (state.loss_scale * state.loss(fn.apply(self.twin, xb), yb)).backward()
        self.opt.step()

    def __call__(self, state: Any) -> dict[str, float]:
        assert self.twin is not None
        f = state.predict(state.model, self.points)
        g = state.predict(self.twin, self.points)
        ps = [p for p in state.model.parameters() if p.requires_grad]
        qs = [p for p in self.twin.model.parameters() if p.requires_grad]
        with torch.no_grad():
            gap = (f - g).norm().item()
            pgap = math.sqrt(sum((p - q).pow(2).sum().item() for p, q in zip(ps, qs)))
            ref = g.norm().item()
        return {"lin_gap": gap, "lin_gap_rel": gap / ref if ref > 0 else math.nan,
                "param_gap": pgap}

    def state_dict(self) -> dict[str, Any]:
        assert self.twin is not None
        return {"twin": self.twin,
                "opt": self.opt.state_dict() if self.opt is not None else self._opt_state}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.twin = s["twin"]
        self.opt, self._opt_state = None, s["opt"]


class KernelTracker:
    """Snapshots of the empirical NTK ``K_t = J_t J_t^T`` on a fixed probe set during training, with
    kernel metrics against the initial and the previous snapshot (:mod:`lazylab.metrics`).

    ``K_t`` is ``lazylab.ntk.ntk(model, probe_x, output="trace")`` (summed over outputs, (N, N),
    accumulated in float64) of the model being trained, with respect to its trainable parameters:
    for ``lazy(model, alpha)`` that is ``alpha**2`` times the tangent kernel of ``h`` at ``w0 + delta``
    (the metrics below are scale-invariant or relative, so the factor cancels in all but ``top_eig``);
    for a :class:`~lazylab.regimes.Linearized` model it is the frozen kernel (zero change).

    Reported at each snapshot (also the values of ``__call__``, i.e. the trainer's history columns):

    - ``kernel_rel_change`` ``||K_t - K_0||_F / ||K_0||_F`` and ``kernel_dist``
      ``1 - <K_t, K_0>_F / (||K_t|| ||K_0||)`` (against the initial kernel); ``kernel_cka0`` CKA(K_t, K_0);
    - ``kernel_rel_change_prev``, ``kernel_dist_prev`` against the previous snapshot ``K_s`` and
      ``kernel_velocity`` ``= kernel_dist_prev / (t - s)`` (per step);
    - ``kernel_norm`` ``||K_t||_F``, ``kernel_top_eig``, ``kernel_eff_rank`` (entropy effective rank);
    - with ``probe_y``: ``kernel_kta`` (kernel-target alignment) and ``kernel_topk_y`` (fraction of
      ``probe_y`` in the top-``k`` eigenspace).

    Schedule (``schedule``): None -> at every step the trainer records (its default schedule is
    log-spaced), or, with ``total_steps``, at ``log_schedule(total_steps, n_snapshots)``; an int ``k``
    -> every ``k`` steps; a sequence -> those steps. Explicit schedules are honoured even between the
    trainer's record steps (via ``on_step``); ``__call__`` then reports the latest snapshot.

    ``store``: a folder; each snapshot is written with ``np.savez_compressed`` to
    ``store/kernel_step{t:08d}.npz`` (arrays ``K`` (N, N) float64 and ``step``), the probe set to
    ``store/probe.npz``. ``keep=True`` also keeps every kernel in ``self.kernels`` (memory N^2 each).
    After training: ``records`` (one dict per snapshot), ``to_frame()``, ``spectra`` (step ->
    eigenvalues, descending), ``K0``, ``K_last``.

    Cost per snapshot: one NTK on N probe points (see :func:`lazylab.ntk.ntk`) plus an O(N^3)
    eigendecomposition.
    """

    def __init__(
        self,
        probe_x: fn.Inputs,
        probe_y: Tensor | None = None,
        schedule: int | Sequence[int] | None = None,
        total_steps: int | None = None,
        n_snapshots: int = 20,
        store: str | os.PathLike | None = None,
        keep: bool = False,
        k: int = 10,
        method: str = "auto",
    ) -> None:
        ok = isinstance(probe_x, (tuple, list, dict)) or (
            isinstance(probe_x, Tensor) and probe_x.dim() > 0)
        if not ok or fn.batch_size(fn.check_inputs(probe_x, "probe_x", finite=False)) < 2:
            raise ValueError("probe_x must be a tensor (or tuple/dict of tensors) of at least 2 "
                             "inputs (N, ...)")
        n_probe = fn.batch_size(probe_x)
        if probe_y is not None:
            if not isinstance(probe_y, Tensor) or probe_y.shape[0] != n_probe:
                raise ValueError(f"probe_y must be a tensor with {n_probe} rows "
                                 "(one per probe input)")
        self.probe_x, self.probe_y = probe_x, probe_y
        self.every: int | None = None
        self.steps: set[int] | None = None  # None and every None: follow the trainer's record steps
        if isinstance(schedule, int) and not isinstance(schedule, bool):
            if schedule < 1:
                raise ValueError(f"schedule as an int is a period in steps (>= 1), got {schedule}")
            self.every = schedule
        elif schedule is not None:
            self.steps = {int(s) for s in schedule} | {0}
        elif total_steps is not None:
            self.steps = set(log_schedule(int(total_steps), n_snapshots))
        self.store = Path(store) if store is not None else None
        self.keep, self.k, self.method = keep, k, method
        self.records: list[dict[str, float]] = []
        self.spectra: dict[int, np.ndarray] = {}
        self.kernels: dict[int, Tensor] = {}
        self.K0: Tensor | None = None
        self.K_last: Tensor | None = None
        self.last_step = -1

    def _scheduled(self, step: int) -> bool:
        if self.every is not None:
            return step % self.every == 0
        return self.steps is None or step in self.steps

    def _kernel(self, state: Any) -> Tensor:
        from lazylab.ntk import ntk

        self.probe_x = state.inputs_like_data(self.probe_x)  # also after a resume
        return ntk(state.model, self.probe_x, method=self.method, output="trace",
                   accumulate_dtype=torch.float64, progress=False)

    def _snapshot(self, state: Any, step: int) -> None:
        from lazylab import metrics as M

        K = self._kernel(state)
        spec = M.spectrum_summary(K, self.probe_y, k=min(self.k, K.shape[0]))
        rec: dict[str, float] = {"step": float(step), "kernel_norm": float(torch.linalg.vector_norm(K)),
                                 "kernel_top_eig": float(spec["top"][0]),
                                 "kernel_eff_rank": spec["effective_rank"]}
        if self.K0 is None:
            self.K0 = K
            rec.update(kernel_rel_change=0.0, kernel_dist=0.0, kernel_cka0=1.0, kernel_rel_change_prev=0.0,
                       kernel_dist_prev=0.0, kernel_velocity=0.0)
        else:
            assert self.K_last is not None
            dprev = M.kernel_distance(self.K_last, K)
            rec.update(kernel_rel_change=M.relative_kernel_change(K, self.K0),
                       kernel_dist=M.kernel_distance(K, self.K0), kernel_cka0=M.cka(K, self.K0),
                       kernel_rel_change_prev=M.relative_kernel_change(K, self.K_last),
                       kernel_dist_prev=dprev, kernel_velocity=dprev / max(step - self.last_step, 1))
        if self.probe_y is not None:
            rec["kernel_kta"] = M.kernel_target_alignment(K, self.probe_y)
            rec["kernel_topk_y"] = spec["y_topk_fraction"]
        self.K_last, self.last_step = K, step
        self.records.append(rec)
        self.spectra[step] = spec["eigenvalues"]
        if self.keep:
            self.kernels[step] = K.detach().cpu()
        if self.store is not None:
            np.savez_compressed(self.store / f"kernel_step{step:08d}.npz", K=K.detach().cpu().numpy(),
                                step=np.int64(step))

    def start(self, state: Any) -> None:
        self.probe_x = state.inputs_like_data(self.probe_x)
        if self.store is not None:
            self.store.mkdir(parents=True, exist_ok=True)
            px = self.probe_x
            named = {"x": px} if isinstance(px, Tensor) else {
                f"x_{k}": v for k, v in (px.items() if isinstance(px, dict) else enumerate(px))}
            arrays = {k: v.detach().cpu().numpy() for k, v in named.items()}
            if self.probe_y is not None:
                arrays["y"] = self.probe_y.detach().cpu().numpy()
            np.savez_compressed(self.store / "probe.npz", **arrays)
        self._snapshot(state, int(state.step))

    def on_step(self, state: Any, xb: Tensor, yb: Tensor) -> None:
        step = int(state.step) + 1  # the weights after this optimizer step
        if (self.every is not None or self.steps is not None) and self._scheduled(step):
            if step != self.last_step:
                self._snapshot(state, step)

    def __call__(self, state: Any) -> dict[str, float]:
        step = int(state.step)
        if step != self.last_step and self._scheduled(step) and self.every is None and self.steps is None:
            self._snapshot(state, step)
        return {k: v for k, v in self.records[-1].items() if k != "step"} if self.records else {}

    def to_frame(self) -> Any:
        """The snapshots' metrics as a pandas DataFrame (one row per snapshot)."""
        import pandas as pd

        return pd.DataFrame.from_records(self.records)

    def state_dict(self) -> dict[str, Any]:
        return {"K0": self.K0, "K_last": self.K_last, "last_step": self.last_step,
                "records": self.records, "spectra": self.spectra, "kernels": self.kernels}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.K0, self.K_last, self.last_step = s["K0"], s["K_last"], s["last_step"]
        self.records, self.spectra, self.kernels = s["records"], s["spectra"], s["kernels"]
