"""Trackers: quantities measured during :func:`lazylab.train` on a step schedule.

A tracker is any object with ``__call__(state) -> dict[str, float]`` (called at the tracked steps)
and optionally ``start(state)`` (before training), ``on_step(state, xb, yb)`` (after every optimizer
step) and ``state_dict()`` / ``load_state_dict()`` (checkpointing). ``state`` is a
:class:`lazylab.trainer.TrainState`. Train/test loss and accuracy are always recorded by the trainer.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn

from lazylab.regimes import linearize, weights

__all__ = ["WeightChange", "LinearizedTwin"]


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

    def __init__(self, points: Tensor) -> None:
        if not isinstance(points, Tensor) or points.shape[0] == 0:
            raise ValueError("points must be a non-empty tensor of inputs")
        self.points = points
        self.twin: nn.Module | None = None
        self.opt: torch.optim.Optimizer | None = None

    def start(self, state: Any) -> None:
        self.twin = linearize(copy.deepcopy(state.model))
        self.twin.train(state.model.training)
        self.opt = state.make_optimizer([p for p in self.twin.parameters() if p.requires_grad])
        self.points = self.points.to(state.X.device, state.X.dtype)

    def on_step(self, state: Any, xb: Tensor, yb: Tensor) -> None:
        assert self.twin is not None and self.opt is not None
        for g in self.opt.param_groups:
            g["lr"] = state.lr
        self.opt.zero_grad(set_to_none=True)
        (state.loss_scale * state.loss(self.twin(xb), yb)).backward()
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
        assert self.twin is not None and self.opt is not None
        return {"twin": self.twin, "opt": self.opt.state_dict()}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.twin = s["twin"]
        self.opt = torch.optim.SGD([p for p in self.twin.parameters() if p.requires_grad], lr=0.0)
        self.opt.load_state_dict(s["opt"])
