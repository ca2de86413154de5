"""Optimizers and learning-rate schedules as composable objects (the way optax composes).

An :class:`Optimizer` is a factory: ``opt.build(params_or_groups)`` makes the ``torch.optim``
optimizer, and ``opt.schedule`` maps each parameter group's base learning rate to the rate used at a
step. ``sgd(0.1, momentum=0.9).with_schedule(inverse(beta=0.5))`` is SGD whose rate is
``0.1 / (1 + 0.5 * epoch)``. Parameter groups (dicts with ``"params"`` and ``"lr"``) keep their own
base rate, so per-layer multipliers compose with any schedule: group rate = ``schedule(group lr)``.

Schedules are callables ``schedule(base_lr, step, epoch, total) -> lr`` (``epoch`` = completed
epochs, an int; ``total`` = the step budget):

- :func:`constant`: ``base_lr``;
- :func:`inverse`: ``base_lr / (1 + beta * epoch)`` (Chizat et al.'s per-epoch decay);
- :func:`cosine`: ``base_lr * (1 + cos(pi * step / total)) / 2``;
- :func:`absolute`: ``f(step, epoch)``, ignoring the base rate (the trainer's callable schedule);
- :func:`multiply`: ``base_lr * f(step)`` (e.g. step-wise drops).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

__all__ = ["Optimizer", "Schedule", "sgd", "adam", "constant", "inverse", "cosine", "absolute",
           "multiply", "prebuilt", "SCHEDULES", "OPTIMIZERS"]

Schedule = Callable[[float, int, int, int], float]
OPTIMIZERS = ("gd", "sgd", "adam")
SCHEDULES = ("constant", "inverse", "cosine")


def constant() -> Schedule:
    """``lr = base_lr``."""
    return lambda base, step, epoch, total: base


def inverse(beta: float) -> Schedule:
    """``lr = base_lr / (1 + beta * epoch)``."""
    return lambda base, step, epoch, total: base / (1.0 + beta * epoch)


def cosine() -> Schedule:
    """``lr = base_lr * (1 + cos(pi * step / total)) / 2``."""
    return lambda base, step, epoch, total: 0.5 * base * (1 + math.cos(math.pi * step / max(total, 1)))


def absolute(f: Callable[[int, int], float]) -> Schedule:
    """``lr = f(step, epoch)`` for every group."""
    return lambda base, step, epoch, total: float(f(step, epoch))


def multiply(f: Callable[[int], float]) -> Schedule:
    """``lr = base_lr * f(step)``."""
    return lambda base, step, epoch, total: base * f(step)


def _check_lr(lr: Any) -> float:
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    return lr


@dataclass(frozen=True)
class Optimizer:
    """``make(groups, lr) -> torch.optim.Optimizer`` and a :data:`Schedule`. Cost: that of ``make``."""

    make: Callable[[list[dict[str, Any]], float], torch.optim.Optimizer]
    lr: float
    schedule: Schedule = constant()
    name: str = "custom"

    def with_schedule(self, schedule: Schedule) -> Optimizer:
        """The same optimizer with another schedule."""
        return replace(self, schedule=schedule)

    def build(self, params: Sequence[Tensor] | Sequence[dict[str, Any]]) -> torch.optim.Optimizer:
        """The torch optimizer on ``params`` (tensors or groups); each group remembers its base rate."""
        if params and all(isinstance(g, dict) for g in params):
            groups = [dict(g) for g in params]
        else:
            groups = [{"params": list(params)}]
        for g in groups:
            g.setdefault("lr", self.lr)
        opt = self.make(groups, self.lr)
        for g in opt.param_groups:
            g["base_lr"] = g["lr"]
        return opt

    def set_lr(self, opt: torch.optim.Optimizer, step: int, epoch: int, total: int) -> float:
        """Set every group's rate for ``step``; returns the first group's."""
        for g in opt.param_groups:
            g["lr"] = self.schedule(g["base_lr"], step, epoch, total)
        return opt.param_groups[0]["lr"]


def sgd(lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> Optimizer:
    """``torch.optim.SGD`` (``momentum``, ``weight_decay``); full batch or not is the data's choice."""
    lr = _check_lr(lr)
    return Optimizer(lambda gs, r: torch.optim.SGD(gs, lr=r, momentum=momentum,
                                                   weight_decay=weight_decay), lr, name="sgd")


def adam(lr: float, weight_decay: float = 0.0) -> Optimizer:
    """``torch.optim.Adam`` (``weight_decay``)."""
    lr = _check_lr(lr)
    return Optimizer(lambda gs, r: torch.optim.Adam(gs, lr=r, weight_decay=weight_decay), lr,
                     name="adam")


def prebuilt(opt: torch.optim.Optimizer, schedule: Schedule | None = None) -> Optimizer:
    """The spec of an already built torch optimizer (e.g. per-layer groups from
    :func:`lazylab.parametrize.make_optimizer`): each group's current ``lr`` becomes its base rate,
    ``schedule`` (default :func:`constant`) maps it to the rate of a step; ``build`` returns
    ``opt`` itself. Cost: O(number of groups)."""
    if not isinstance(opt, torch.optim.Optimizer):
        raise TypeError(f"opt must be a torch.optim.Optimizer, got {type(opt).__name__}")
    for g in opt.param_groups:
        g["base_lr"] = g["lr"]
    return Optimizer(lambda gs, r: opt, opt.param_groups[0]["lr"],
                     constant() if schedule is None else schedule, type(opt).__name__.lower())
