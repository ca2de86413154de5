"""Learning-rate transfer across widths (muP's promise: the optimal lr does not move with width).

``lr_sweep(model_fn, widths, data, scheme=..., lrs=...)`` trains ``model_fn(n)`` re-parametrized as
``scheme`` (base ``model_fn(min(widths))``) for ``steps`` full-batch steps at every learning rate
of the grid and returns the final training loss per (width, lr, seed) (``inf`` when the run
diverged). ``optimal_lrs(df)`` gives the grid index of the best lr per width (seed-mean loss).
Cost: ``len(widths) * len(lrs) * len(seeds) * steps`` training steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lazylab.coord_check import check_widths, full_batch_steps
from lazylab.parametrize import parametrize
from lazylab.trainer import loss_fn

__all__ = ["lr_sweep", "optimal_lrs"]


def _final_loss(model: nn.Module, X: Tensor, y: Tensor, lr: float, optimizer: str, steps: int,
                crit: Any) -> float:
    """Final full-batch loss after ``steps`` steps on the one loop; ``inf`` once a loss is NaN/inf."""
    h = full_batch_steps(model, (X, y), lr, optimizer, steps, crit, on_divergence="stop")
    if h.stopped == "diverged":
        return math.inf
    with torch.no_grad():
        v = float(crit(model(X), y))
    return v if math.isfinite(v) else math.inf


def lr_sweep(
    model_fn: Callable[[int], nn.Module], widths: Sequence[int], data: tuple[Tensor, Tensor], *,
    scheme: str = "mup", lrs: Sequence[float] = tuple(2.0 ** k for k in range(-10, 1)),
    optimizer: str = "sgd", steps: int = 100, loss: str | Callable = "mse",
    seeds: Sequence[int] = (0,), gain: float = 1.0, zero_output: bool = False,
) -> Any:
    """Final training loss per ``width, lr, seed`` (pandas DataFrame; see the module docstring)."""
    import pandas as pd

    ws = check_widths(widths)
    if not lrs or any(not (isinstance(a, (int, float)) and a > 0) for a in lrs):
        raise ValueError(f"lrs must be a non-empty sequence of positive numbers, got {lrs!r}")
    X, y = data
    crit = loss_fn(loss)
    rows = []
    for seed in seeds:
        for w in ws:
            for i, lr in enumerate(lrs):
                base, delta = model_fn(ws[0]), model_fn(2 * ws[0])
                torch.manual_seed(int(seed))
                model = parametrize(model_fn(w), scheme, base=base, delta=delta, gain=gain,
                                    zero_output=zero_output)
                rows.append({"width": w, "lr": float(lr), "lr_index": i, "seed": int(seed),
                             "loss": _final_loss(model, X, y, float(lr), optimizer, steps, crit)})
    return pd.DataFrame(rows)


def optimal_lrs(df: Any) -> Any:
    """Per width: the grid index and value of the lr with the lowest seed-mean final loss."""
    m = df.groupby(["width", "lr_index", "lr"])["loss"].mean().reset_index()
    best = m.loc[m.groupby("width")["loss"].idxmin()]
    return best[["width", "lr_index", "lr", "loss"]].reset_index(drop=True)
