"""Data sources of the training loop: what one step trains on.

- :class:`Batches`: mini-batches of a fixed dataset ``(X, y)``: a permutation drawn from the
  loop's generator at step 0 and at the start of every epoch, batch ``i`` of an epoch =
  ``perm[i*bs:(i+1)*bs]`` (the whole set, unpermuted, when ``bs >= N`` unless ``always_index``).
- :class:`Stream`: a fresh sample ``sample(generator)`` at every step (population SGD); one step =
  one epoch.
- :class:`NoData`: the objective needs no batch (full-objective gradient descent, e.g. tensor fits).

Each has ``per_epoch`` (steps per epoch), ``batch(step)``, and ``state_dict``/``load_state_dict``
for exact resume (generator state and current permutation).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from lazylab import functional as fn

__all__ = ["Batches", "Stream", "NoData"]


class Batches:
    """Shuffled mini-batches of ``(X, y)`` (``X`` any input structure of :mod:`lazylab.functional`).
    Cost per step: one gather of ``bs`` rows."""

    def __init__(self, X: fn.Inputs, y: Tensor, batch_size: int, generator: torch.Generator,
                 always_index: bool = False) -> None:
        self.X, self.y, self.generator = X, y, generator
        self.n = fn.batch_size(X)
        self.bs = int(batch_size)
        self.per_epoch = math.ceil(self.n / self.bs)
        self.always_index = always_index
        self.device = y.device
        self.perm = torch.randperm(self.n, generator=generator)

    def batch(self, step: int) -> tuple[fn.Inputs, Tensor]:
        if step % self.per_epoch == 0 and step > 0:
            self.perm = torch.randperm(self.n, generator=self.generator)
        if self.bs >= self.n and not self.always_index:
            return self.X, self.y
        i = step % self.per_epoch
        idx = self.perm[i * self.bs:(i + 1) * self.bs].to(self.device)
        return fn.take(self.X, idx), self.y[idx]

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "perm": self.perm}

    def load_state_dict(self, blob: dict[str, Any]) -> None:
        self.generator.set_state(blob["generator"].cpu())  # map_location may have moved it
        self.perm = blob["perm"]


class Stream:
    """``batch(step) = sample(generator)``: a fresh draw each step (population SGD)."""

    per_epoch = 1

    def __init__(self, sample: Callable[[torch.Generator], Any], generator: torch.Generator) -> None:
        self.sample, self.generator = sample, generator

    def batch(self, step: int) -> Any:
        return self.sample(self.generator)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, blob: dict[str, Any]) -> None:
        self.generator.set_state(blob["generator"].cpu())


class NoData:
    """No batch: the objective is a function of the parameters alone."""

    per_epoch = 1
    generator = None

    def batch(self, step: int) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, blob: dict[str, Any]) -> None:
        pass
