"""Hooks of the training loop (:func:`lazylab.training.loop.run`).

A hook is an object with any of these methods (all optional; :class:`Hook` gives no-op defaults),
called with the loop's state (``state.model``, ``state.step``, ``state.epoch``, ``state.lr``,
``state.batch_loss``, ``state.aux``, ``state.generator``, ``state.optimizer``):

- ``start(state)``: once before the first step of a fresh (not resumed) run;
- ``batches(state, it)``: turn the step's batch stream ``it`` into the batches actually trained on,
  one optimizer update each (``yield``; code after a ``yield`` runs after that update: e.g.
  :class:`Augment`, "attack each batch" in :mod:`lazylab.adversarial`);
- ``after_forward(state, value, aux)``: after the loss of an update is computed, before backward;
- ``before_update(state)`` / ``after_update(state)``: around ``optimizer.step()`` (e.g. a projection
  "after each step");
- ``after_step(state, xb, yb)``: after the step's updates, ``state.step`` still the old step;
- ``end_step(state)``: after the step counter moved to ``state.step``;
- ``record(state) -> dict``: numbers recorded at the tracked steps;
- ``state_dict()`` / ``load_state_dict(d)``: saved in checkpoints.

Any hook may raise :class:`Stop` (``reason``): the loop ends, ``stopped = reason``. Raised before
``end_step`` the current step is not counted; with ``record=True`` the loop records once more.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Hook", "Stop", "Augment", "TargetLoss", "AtSteps", "Trackers"]


class Stop(Exception):
    """Raised by a hook to end training (``reason`` becomes ``History.stopped``)."""

    def __init__(self, reason: str, record: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.record = reason, record


class Hook:
    """No-op base: subclasses override what they need."""

    def start(self, state: Any) -> None:
        pass

    def batches(self, state: Any, it: Iterator[Any]) -> Iterator[Any]:
        return it

    def after_forward(self, state: Any, value: Tensor, aux: Any) -> None:
        pass

    def before_update(self, state: Any) -> None:
        pass

    def after_update(self, state: Any) -> None:
        pass

    def after_step(self, state: Any, xb: Any, yb: Any) -> None:
        pass

    def end_step(self, state: Any) -> None:
        pass

    def record(self, state: Any) -> dict[str, Any]:
        return {}


class Augment(Hook):
    """Replace each batch ``(x, y)`` by ``(augment(x, generator), y)``."""

    def __init__(self, augment: Callable[[Tensor, torch.Generator], Tensor]) -> None:
        self.augment = augment

    def batches(self, state: Any, it: Iterator[Any]) -> Iterator[Any]:
        for xb, yb in it:
            yield self.augment(xb, state.generator), yb


class TargetLoss(Hook):
    """Stop (and record) once the batch loss of a step is ``<= target``."""

    def __init__(self, target: float) -> None:
        self.target = target

    def end_step(self, state: Any) -> None:
        if state.batch_loss <= self.target:
            raise Stop("target_loss", record=True)


class AtSteps(Hook):
    """``callback(label, model)`` (model in eval mode) at given steps: ``{step: [labels]}``; step 0
    is called at start."""

    def __init__(self, callback: Callable[[Any, nn.Module], None], at: dict[int, list[Any]]) -> None:
        self.callback, self.at = callback, at

    def _call(self, state: Any, step: int) -> None:
        if step in self.at:
            state.model.eval()
            for label in self.at[step]:
                self.callback(label, state.model)

    def start(self, state: Any) -> None:
        if 0 in self.at:
            for label in self.at[0]:
                self.callback(label, state.model)

    def end_step(self, state: Any) -> None:
        self._call(state, state.step)


class Trackers(Hook):
    """Adapter for :mod:`lazylab.track` trackers: ``__call__(state) -> dict`` at tracked steps and
    optional ``start(state)``, ``on_step(state, xb, yb)``, ``state_dict``/``load_state_dict``."""

    def __init__(self, trackers: Sequence[Any]) -> None:
        self.trackers = list(trackers)

    def start(self, state: Any) -> None:
        for t in self.trackers:
            if hasattr(t, "start"):
                t.start(state)

    def after_step(self, state: Any, xb: Any, yb: Any) -> None:
        for t in self.trackers:
            if hasattr(t, "on_step"):
                t.on_step(state, xb, yb)

    def record(self, state: Any) -> dict[str, Any]:
        rec: dict[str, Any] = {}
        for t in self.trackers:
            rec.update(t(state))
        return rec

    def state_dict(self) -> list[Any]:
        return [t.state_dict() if hasattr(t, "state_dict") else None for t in self.trackers]

    def load_state_dict(self, states: list[Any]) -> None:
        for t, s in zip(self.trackers, states):
            if s is not None and hasattr(t, "load_state_dict"):
                t.load_state_dict(s)
