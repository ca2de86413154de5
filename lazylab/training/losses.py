"""Training losses ``L(out, y)`` (averaged over the N samples of a batch) and accuracy.

- ``mse``: ``(1/2N) sum_i ||f_i - y_i||^2`` (integer labels with C > 1 outputs are one-hot encoded);
- ``cross_entropy``: softmax cross-entropy, integer labels;
- ``logistic``: ``(1/N) sum_i log(1 + exp(-y_i f_i))``, ``y in {-1, +1}``;
- ``hinge``: ``(1/N) sum_i max(0, 1 - y_i f_i)``, ``y in {-1, +1}``.

Cost: O(N * outputs) each.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LOSSES", "loss_fn", "accuracy"]


def _mse(out: Tensor, y: Tensor) -> Tensor:
    if out.dim() == 2 and y.dim() == 1 and not y.is_floating_point():
        y = F.one_hot(y, out.shape[1]).to(out.dtype)
    if out.shape != y.shape:
        raise ValueError(f"mse: model output shape {tuple(out.shape)} != target shape {tuple(y.shape)}")
    return 0.5 * (out - y).pow(2).reshape(out.shape[0], -1).sum(1).mean()


def _ce(out: Tensor, y: Tensor) -> Tensor:
    if out.dim() != 2 or y.dim() != 1 or y.is_floating_point():
        raise ValueError(
            "cross_entropy: needs outputs (N, C) and integer labels (N,), "
            f"got outputs {tuple(out.shape)} and labels {tuple(y.shape)} of dtype {y.dtype}"
        )
    return F.cross_entropy(out, y)


def _margin(out: Tensor, y: Tensor, name: str) -> Tensor:
    out = out.reshape(-1) if out.dim() == 2 and out.shape[1] == 1 else out
    if out.shape != y.shape:
        raise ValueError(f"{name}: output shape {tuple(out.shape)} != label shape {tuple(y.shape)}")
    return y.to(out.dtype) * out


LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "mse": _mse,
    "cross_entropy": _ce,
    "logistic": lambda out, y: F.softplus(-_margin(out, y, "logistic")).mean(),
    "hinge": lambda out, y: F.relu(1 - _margin(out, y, "hinge")).mean(),
}


def loss_fn(name: str | Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """The loss function by name (one of :data:`LOSSES`) or a callable ``(out, y) -> scalar``."""
    if callable(name):
        return name
    if name not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)} or a callable, got {name!r}")
    return LOSSES[name]


def accuracy(out: Tensor, y: Tensor) -> float | None:
    """Fraction of correct predictions: argmax for ``(N, C)`` outputs with integer labels, sign for a
    scalar output with labels in {-1, +1}; None when the task is not classification."""
    if out.dim() == 2 and out.shape[1] > 1 and y.dim() == 1 and not y.is_floating_point():
        return (out.argmax(1) == y).float().mean().item()
    o = out.reshape(-1)
    if o.shape == y.shape and y.dim() == 1:
        vals = torch.unique(y)
        if vals.numel() <= 2 and bool(((vals == 1) | (vals == -1)).all()):
            return (torch.sign(o) == y.to(o.dtype)).float().mean().item()
    return None
