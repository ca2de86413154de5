from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lazylab import functional as fn
from lazylab.checks import check_finite_tensors, positive_int
from lazylab.regimes import _check_module
from lazylab.training import hooks as H
from lazylab.training import optim as O
from lazylab.training.checkpoint import Checkpoint
from lazylab.training.loop import DivergenceError, History, LoopState, log_schedule, run
from lazylab.training.losses import LOSSES, accuracy, loss_fn
from lazylab.training.optim import OPTIMIZERS, SCHEDULES
from lazylab.training.sources import Batches

__all__ = ["train", "History", "TrainState", "DivergenceError", "LOSSES", "OPTIMIZERS",
           "SCHEDULES", "loss_fn", "log_schedule"]


@dataclass(kw_only=True)
class TrainState(LoopState):
    """What a tracker sees: the loop's :class:`~lazylab.training.loop.LoopState` (model, step,
    epoch, lr, batch_loss, ``loss_scale`` ...) plus the data. ``objective`` = ``loss_scale * loss``."""

    X: Tensor
    y: Tensor
    X_test: Tensor | None
    y_test: Tensor | None
    loss: Callable[[Tensor, Tensor], Tensor]
    make_optimizer: Callable[[Sequence[Tensor]], torch.optim.Optimizer]
    eval_batch_size: int

    def predict(self, model: nn.Module, X: Tensor) -> Tensor:
        """Outputs of ``model`` on ``X`` in batches of ``eval_batch_size`` (no grad)."""
        with torch.no_grad():
            return torch.cat([fn.apply(model, fn.take(X, slice(i, i + self.eval_batch_size)))
                              for i in range(0, fn.batch_size(X), self.eval_batch_size)])

    def inputs_like_data(self, x: fn.Inputs) -> fn.Inputs:
        """``x`` on the training data's device, floating leaves in its floating dtype."""
        dev = fn.leaves(self.X)[0].device
        return fn.cast_inputs(x, dev, fn.float_dtype(self.X))


def _check_data(name: str, X: Any, y: Any) -> tuple[fn.Inputs, Tensor]:
    if not isinstance(y, Tensor) or not isinstance(X, (Tensor, tuple, list, dict)):
        raise TypeError(f"{name} must be a pair (X, y) of tensors (X may be a tuple/dict of "
                        f"tensors), got ({type(X).__name__}, {type(y).__name__})")
    if isinstance(X, Tensor) and X.shape[0] == 0:
        raise ValueError(f"{name}: empty dataset (X has 0 rows)")
    try:
        X = fn.check_inputs(X, f"{name} X", finite=False)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None
    n = fn.batch_size(X)
    if n != y.shape[0]:
        raise ValueError(f"{name}: X has {n} rows but y has {y.shape[0]}")
    if not all(bool(torch.isfinite(t).all()) for t in fn.leaves(X) if t.is_floating_point()):
        raise ValueError(f"{name}: X contains NaN or inf")
    if y.is_floating_point() and not torch.isfinite(y).all():
        raise ValueError(f"{name}: y contains NaN or inf")
    return X, y


def _from_loader(loader: Any, name: str) -> tuple[fn.Inputs, Tensor]:
    """Concatenate the ``(X, y)`` batches of a DataLoader (one pass)."""
    xs, ys = [], []
    for i, batch in enumerate(loader):
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise TypeError(f"{name}: the DataLoader must yield (X, y) pairs; batch {i} is a "
                            f"{type(batch).__name__}")
        xs.append(fn.check_inputs(batch[0], f"{name} batch {i} X", finite=False))
        ys.append(batch[1])
    if not xs:
        raise ValueError(f"{name}: the DataLoader yields no batch")
    first = xs[0]
    if isinstance(first, Tensor):
        X: fn.Inputs = torch.cat(xs)
    elif isinstance(first, dict):
        X = {k: torch.cat([x[k] for x in xs]) for k in first}
    else:
        X = tuple(torch.cat([x[j] for x in xs]) for j in range(len(first)))
    return X, torch.cat(ys)


def _as_pair(data: Any, name: str) -> tuple[Any, Any]:
    if isinstance(data, torch.utils.data.DataLoader):
        return _from_loader(data, name)
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(f"{name} must be a pair (X, y) of tensors or a DataLoader, got "
                        f"{type(data).__name__}")
    return data[0], data[1]


class _Metrics(H.Hook):
    """The trainer's own record: ``epoch``, ``lr``, then ``train_loss``/``test_loss`` (unscaled ``L``
    on the whole set) and ``train_acc``/``test_acc`` for a classification task."""

    def record(self, state: Any) -> dict[str, Any]:
        rec: dict[str, Any] = {"epoch": state.epoch, "lr": state.lr}
        for split, Xs, ys in (("train", state.X, state.y), ("test", state.X_test, state.y_test)):
            if Xs is None or ys is None:
                continue
            out = state.predict(state.model, Xs)
            rec[f"{split}_loss"] = state.loss(out, ys).item()
            acc = accuracy(out, ys)
            if acc is not None:
                rec[f"{split}_acc"] = acc
        return rec


def _objective(state: TrainState, batch: tuple[fn.Inputs, Tensor]) -> tuple[Tensor, None]:
    return state.loss(fn.apply(state.model, batch[0]), batch[1]), None


def _optimizer(optimizer: str | O.Optimizer, lr: float, momentum: float, weight_decay: float,
               schedule: str | Callable[[int, int], float], beta: float) -> O.Optimizer:
    """The :class:`~lazylab.training.Optimizer` spec the keyword arguments describe."""
    if not callable(schedule) and schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES} or a callable, got {schedule!r}")
    if isinstance(optimizer, O.Optimizer):
        spec = optimizer
    elif optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS} or a lazylab.training.Optimizer, "
                         f"got {optimizer!r}")
    else:
        spec = (O.adam(lr, weight_decay) if optimizer == "adam"
                else O.sgd(lr, momentum, weight_decay))
    if callable(schedule):
        return spec.with_schedule(O.absolute(schedule))
    if schedule == "inverse":  # Chizat et al.: eta_t = eta0 / (1 + beta * epoch), per epoch
        return spec.with_schedule(O.inverse(beta))
    return spec.with_schedule(O.cosine()) if schedule == "cosine" else spec


def _load(model: nn.Module, data: Any, test_data: Any, batch_size: int | None) -> tuple[Any, ...]:
    """Checked ``X, y, X_test, y_test`` and the batch size a DataLoader implies."""
    _check_module(model)
    if batch_size is None and isinstance(data, torch.utils.data.DataLoader):
        batch_size = data.batch_size
    X, y = _check_data("data", *_as_pair(data, "data"))
    X_test = y_test = None
    if test_data is not None:
        X_test, y_test = _check_data("test_data", *_as_pair(test_data, "test_data"))
    return X, y, X_test, y_test, batch_size


def _place(model: nn.Module, X: Any, y: Tensor, X_test: Any, y_test: Tensor | None,
           device: Any, dtype: torch.dtype | None) -> tuple[Any, ...]:
    """Model and data on ``device`` (default: the model's), floating parts in ``dtype``."""
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    if dtype is not None:
        model.to(dtype)
        y = y.to(dtype) if y.is_floating_point() else y
        if X_test is not None and y_test is not None:
            y_test = y_test.to(dtype) if y_test.is_floating_point() else y_test
    model.to(dev)
    X, y = fn.cast_inputs(X, dev, dtype), y.to(dev)  # only floating leaves are cast
    if X_test is not None and y_test is not None:
        X_test, y_test = fn.cast_inputs(X_test, dev, dtype), y_test.to(dev)
    return dev, X, y, X_test, y_test


def _probe(model: nn.Module, X: Any, y: Tensor, crit: Callable[[Tensor, Tensor], Tensor]) -> None:
    """Apply the model and the loss to two samples: a clear error naming shapes and dtypes early."""
    n = fn.batch_size(X)
    try:
        with torch.no_grad():
            probe = fn.apply(model, fn.take(X, slice(0, min(2, n))))
    except Exception as e:  # the model rejects the data: say which shapes
        shapes = [(tuple(t.shape), str(t.dtype)) for t in fn.leaves(X)]
        if fn.float_dtype(X) is None:
            raise TypeError(
                f"model {type(model).__name__} cannot be applied to the integer X (dtype "
                f"{shapes[0][1]}): {e}. Integer inputs reach the model untouched (token ids); "
                "give X as floating point if the model expects real-valued inputs") from e
        raise ValueError(f"model {type(model).__name__} cannot be applied to X of shape "
                         f"{shapes[0][0] if len(shapes) == 1 else shapes} and dtype "
                         f"{shapes[0][1]}: {e}") from e
    crit(probe, y[: min(2, n)])  # raises a clear shape error early


def _track_points(track_steps: int | Sequence[int] | None, total: int, n_track: int) -> set[int]:
    if track_steps is None:
        return set(log_schedule(total, n_track))
    if isinstance(track_steps, int):
        return set(range(0, total + 1, max(track_steps, 1))) | {total}
    return {int(s) for s in track_steps if 0 <= int(s) <= total}


def _budget(steps: int | None, epochs: int | None, n: int, optimizer: Any,
            batch_size: int | None) -> tuple[int, int]:
    """``(batch size, total steps)``; one epoch = ceil(N / batch_size) steps."""
    if (steps is None) == (epochs is None):
        raise ValueError("give exactly one of steps= or epochs=")
    bs = n if (optimizer == "gd" or batch_size is None) else int(batch_size)
    if bs < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    total = (positive_int(steps, "steps", allow_zero=True) if steps is not None
             else positive_int(epochs, "epochs", allow_zero=True) * math.ceil(n / bs))
    return bs, total


def train(
    model: nn.Module,
    data: tuple[fn.Inputs, Tensor] | torch.utils.data.DataLoader,
    *,
    loss: str | Callable[[Tensor, Tensor], Tensor] = "mse",
    optimizer: str | O.Optimizer = "gd",
    lr: float = 0.1,
    steps: int | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    schedule: str | Callable[[int, float], float] = "constant",
    beta: float = 0.0,
    target_loss: float | None = None,
    test_data: tuple[Tensor, Tensor] | None = None,
    trackers: Sequence[Any] = (),
    track_steps: int | Sequence[int] | None = None,
    n_track: int = 30,
    loss_scale: float | None = None,
    augment: Callable[[Tensor, torch.Generator], Tensor] | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    seed: int = 0,
    eval_batch_size: int = 4096,
    progress: bool | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    on_divergence: str = "raise",
) -> History:
    """Train ``model`` on ``data = (X, y)`` and return the tracked :class:`History`.

    ``data`` (and ``test_data``) may be a ``DataLoader`` of ``(X, y)`` batches: it is read once and
    concatenated, then batched by the trainer (``batch_size`` defaults to the loader's, shuffling
    follows ``seed``), so runs are reproducible and resumable. ``X`` may hold integer tokens or be a
    tuple/dict of tensors (see the module docstring).

    Objective: ``loss_scale * L(model(X_batch), y_batch)`` (see the module docstring for ``L``).
    ``optimizer``: ``"gd"`` (full batch), ``"sgd"`` (mini-batches of ``batch_size``, shuffled each
    epoch with a generator seeded by ``seed``; ``momentum``, ``weight_decay``), ``"adam"``, or a
    :class:`lazylab.training.Optimizer` (then ``lr``/``momentum``/``weight_decay`` are its own).
    Budget: ``steps`` or ``epochs`` (one epoch = ceil(N / batch_size) steps); stop early once the
    batch loss is ``<= target_loss``. ``schedule``: ``"constant"``, ``"inverse"``
    (``lr / (1 + beta * epoch)``), ``"cosine"`` or ``f(step, epoch) -> lr``.

    Tracking: at ``track_steps`` (an int = every k steps, a list, or None = :func:`log_schedule` with
    ``n_track`` points) the trainer records ``train_loss`` / ``test_loss`` (unscaled ``L`` on the
    whole set) and ``train_acc`` / ``test_acc`` when the task is classification, then each tracker's
    dict (trackers: objects with ``__call__(state) -> dict`` and optional ``start(state)`` and
    ``on_step(state, xb, yb)`` hooks; see :mod:`lazylab.track`).

    NaN/inf loss raises :class:`DivergenceError` naming the step and lr (``on_divergence="stop"``
    returns the history instead). ``checkpoint``: a file written atomically every
    ``checkpoint_every`` steps and at the end; ``resume=True`` continues from it (same seed and
    arguments give the same numbers as an uninterrupted run).
    """
    X, y, X_test, y_test, batch_size = _load(model, data, test_data, batch_size)
    crit = loss_fn(loss)
    spec = _optimizer(optimizer, lr, momentum, weight_decay, schedule, beta)
    if on_divergence not in ("raise", "stop"):
        raise ValueError(f"on_divergence must be 'raise' or 'stop', got {on_divergence!r}")
    bs, total = _budget(steps, epochs, fn.batch_size(X), optimizer, batch_size)
    dev, X, y, X_test, y_test = _place(model, X, y, X_test, y_test, device, dtype)
    _probe(model, X, y, crit)
    scale = float(getattr(model, "loss_scale", 1.0) if loss_scale is None else loss_scale)
    params = _trainable(model)
    state = TrainState(model=model, loss_scale=scale, X=X, y=y, X_test=X_test, y_test=y_test,
                       loss=crit, make_optimizer=spec.build, eval_batch_size=eval_batch_size)
    history = History(config=dict(loss=str(loss), optimizer=getattr(optimizer, "name", optimizer),
                                  lr=spec.lr, steps=total, batch_size=bs, momentum=momentum,
                                  weight_decay=weight_decay, schedule=str(schedule), beta=beta,
                                  seed=seed, loss_scale=scale))
    ckpt = None if checkpoint is None else Checkpoint(checkpoint, checkpoint_every, resume)
    return run(state, Batches(X, y, bs, torch.Generator().manual_seed(int(seed))), _objective, spec,
               spec.build(params), total, hooks=_hooks(trackers, augment, target_loss),
               track=_track_points(track_steps, total, n_track), checkpoint=ckpt,
               on_divergence="raise" if on_divergence == "raise" else "warn", history=history,
               progress=_bar(progress, total), device=dev)


def _trainable(model: nn.Module) -> list[Tensor]:
    """The parameters to train (refused: none, or NaN/inf weights)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters (all have requires_grad=False)")
    check_finite_tensors(model.named_parameters(), "train")  # once, one sync
    return params


def _hooks(trackers: Sequence[Any], augment: Any, target_loss: float | None) -> list[Any]:
    """The trainer's hooks: its own metrics, the trackers, augmentation, early stop."""
    hooks: list[Any] = [_Metrics(), H.Trackers(trackers)]
    if augment is not None:
        hooks.append(H.Augment(augment))
    if target_loss is not None:
        hooks.append(H.TargetLoss(target_loss))
    return hooks


def _bar(progress: bool | None, total: int) -> Any:
    """A tqdm bar, shown by default on a terminal for runs of >= 500 steps."""
    from tqdm.auto import tqdm

    show = progress if progress is not None else (
        sys.stderr.isatty() and total >= 500 and not os.environ.get("LAZYLAB_NO_PROGRESS"))
    return tqdm(total=total, disable=not show, desc="train", leave=False)
