"""The trainer: gradient descent / SGD on any module or regime wrapper, with tracking.

``train(model, (X, y), loss="mse", optimizer="gd", lr=0.1, steps=1000)`` minimises
``loss_scale * L(model(X), y)`` where ``loss_scale = model.loss_scale`` for a :class:`~lazylab.Lazy`
model (``1/alpha**2``, Chizat et al. eq. 2) and 1 otherwise. Trackers are evaluated on a step
schedule (log-spaced by default) and their numbers collected in a :class:`History`.

Losses (``L``, averaged over the N samples of a batch; ``f`` the output, ``y`` the target):

- ``mse``: ``(1/2N) sum_i ||f_i - y_i||^2`` (integer labels with C > 1 outputs are one-hot encoded);
- ``cross_entropy``: softmax cross-entropy, integer labels;
- ``logistic``: ``(1/N) sum_i log(1 + exp(-y_i f_i))``, ``y in {-1, +1}``;
- ``hinge``: ``(1/N) sum_i max(0, 1 - y_i f_i)``, ``y in {-1, +1}``.

Data: ``(X, y)`` with ``X`` a tensor of any dtype (integer token ids are never cast) or a
tuple/dict of batched tensors (the model is called as ``model(*X)`` / ``model(**X)``), or a
``torch.utils.data.DataLoader`` yielding ``(X, y)`` batches (read once and concatenated; see
:func:`train`). A model returning a dict/``ModelOutput`` is trained on its ``"logits"``; any other
output is selected with :func:`lazylab.functional.with_output` (:mod:`lazylab.functional`).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lazylab import functional as fn
from lazylab.checks import check_finite_tensors, positive_int
from lazylab.regimes import _check_module

__all__ = ["train", "History", "TrainState", "DivergenceError", "LOSSES", "OPTIMIZERS",
           "SCHEDULES", "loss_fn", "log_schedule"]


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
OPTIMIZERS = ("gd", "sgd", "adam")
SCHEDULES = ("constant", "inverse", "cosine")


def loss_fn(name: str | Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """The loss function by name (one of :data:`LOSSES`) or a callable ``(out, y) -> scalar``."""
    if callable(name):
        return name
    if name not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)} or a callable, got {name!r}")
    return LOSSES[name]


class DivergenceError(RuntimeError):
    """The loss became NaN/inf. ``.history`` holds what was recorded up to then."""

    def __init__(self, msg: str, history: History) -> None:
        super().__init__(msg)
        self.history = history


@dataclass
class History:
    """Records of a run: one dict per tracked step (``step``, ``epoch``, ``lr``, tracker outputs).

    ``to_frame()`` gives a pandas DataFrame; ``history["test_loss"]`` a list; ``final`` the last record.
    ``stopped`` is ``"budget"``, ``"target_loss"`` or ``"diverged"``.
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    stopped: str = "budget"
    config: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame.from_records(self.records)

    def __getitem__(self, key: str) -> list[Any]:
        if not self.records or key not in self.records[-1]:
            known = sorted(self.records[-1]) if self.records else []
            raise KeyError(f"no tracked quantity {key!r}; recorded: {known}")
        return [r.get(key, float("nan")) for r in self.records]

    @property
    def final(self) -> dict[str, Any]:
        return dict(self.records[-1]) if self.records else {}

    def max(self, key: str) -> float:
        return float(np.nanmax(np.asarray(self[key], dtype=float)))

    def min(self, key: str) -> float:
        return float(np.nanmin(np.asarray(self[key], dtype=float)))


@dataclass
class TrainState:
    """What a tracker sees. ``objective`` = ``loss_scale * loss``."""

    model: nn.Module
    X: Tensor
    y: Tensor
    X_test: Tensor | None
    y_test: Tensor | None
    loss: Callable[[Tensor, Tensor], Tensor]
    loss_scale: float
    make_optimizer: Callable[[Sequence[Tensor]], torch.optim.Optimizer]
    eval_batch_size: int
    step: int = 0
    epoch: float = 0.0
    lr: float = 0.0
    batch_loss: float = float("nan")

    def predict(self, model: nn.Module, X: Tensor) -> Tensor:
        """Outputs of ``model`` on ``X`` in batches of ``eval_batch_size`` (no grad)."""
        with torch.no_grad():
            return torch.cat([fn.apply(model, fn.take(X, slice(i, i + self.eval_batch_size)))
                              for i in range(0, fn.batch_size(X), self.eval_batch_size)])

    def inputs_like_data(self, x: fn.Inputs) -> fn.Inputs:
        """``x`` on the training data's device, floating leaves in its floating dtype."""
        dev = fn.leaves(self.X)[0].device
        return fn.cast_inputs(x, dev, fn.float_dtype(self.X))


def log_schedule(total: int, n: int = 30) -> list[int]:
    """``n`` log-spaced steps in ``[0, total]`` (0, 1 and ``total`` always included)."""
    if total <= 0:
        return [0]
    pts = np.unique(np.round(np.geomspace(1, total, max(n - 1, 1))).astype(int))
    return sorted({0, *pts.tolist(), total})


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


def _accuracy(out: Tensor, y: Tensor) -> float | None:
    if out.dim() == 2 and out.shape[1] > 1 and y.dim() == 1 and not y.is_floating_point():
        return (out.argmax(1) == y).float().mean().item()
    o = out.reshape(-1)
    if o.shape == y.shape and y.dim() == 1:
        vals = torch.unique(y)
        if vals.numel() <= 2 and bool(((vals == 1) | (vals == -1)).all()):
            return (torch.sign(o) == y.to(o.dtype)).float().mean().item()
    return None


def _lr_at(schedule: str | Callable[[int, float], float], lr: float, beta: float, step: int,
           epoch: int, total: int) -> float:
    if callable(schedule):
        return float(schedule(step, epoch))
    if schedule == "constant":
        return lr
    if schedule == "inverse":  # Chizat et al.: eta_t = eta0 / (1 + beta * epoch), per epoch
        return lr / (1.0 + beta * epoch)
    return 0.5 * lr * (1 + math.cos(math.pi * step / max(total, 1)))  # cosine


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train(
    model: nn.Module,
    data: tuple[fn.Inputs, Tensor] | torch.utils.data.DataLoader,
    *,
    loss: str | Callable[[Tensor, Tensor], Tensor] = "mse",
    optimizer: str = "gd",
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
    epoch with a generator seeded by ``seed``; ``momentum``, ``weight_decay``) or ``"adam"``.
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
    _check_module(model)
    if batch_size is None and isinstance(data, torch.utils.data.DataLoader):
        batch_size = data.batch_size
    X, y = _check_data("data", *_as_pair(data, "data"))
    X_test = y_test = None
    if test_data is not None:
        X_test, y_test = _check_data("test_data", *_as_pair(test_data, "test_data"))
    crit = loss_fn(loss)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if not callable(schedule) and schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES} or a callable, got {schedule!r}")
    if on_divergence not in ("raise", "stop"):
        raise ValueError(f"on_divergence must be 'raise' or 'stop', got {on_divergence!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if (steps is None) == (epochs is None):
        raise ValueError("give exactly one of steps= or epochs=")
    n = fn.batch_size(X)
    bs = n if (optimizer == "gd" or batch_size is None) else int(batch_size)
    if bs < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    per_epoch = math.ceil(n / bs)
    total = (positive_int(steps, "steps", allow_zero=True) if steps is not None
             else positive_int(epochs, "epochs", allow_zero=True) * per_epoch)

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
    scale = float(getattr(model, "loss_scale", 1.0) if loss_scale is None else loss_scale)

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters (all have requires_grad=False)")
    check_finite_tensors(model.named_parameters(), "train")  # once, one sync

    def make_optimizer(ps: Sequence[Tensor]) -> torch.optim.Optimizer:
        if optimizer == "adam":
            return torch.optim.Adam(ps, lr=lr, weight_decay=weight_decay)
        return torch.optim.SGD(ps, lr=lr, momentum=momentum, weight_decay=weight_decay)

    opt = make_optimizer(params)
    gen = torch.Generator().manual_seed(int(seed))
    state = TrainState(model, X, y, X_test, y_test, crit, scale, make_optimizer, eval_batch_size)
    if track_steps is None:
        schedule_pts = set(log_schedule(total, n_track))
    elif isinstance(track_steps, int):
        schedule_pts = set(range(0, total + 1, max(track_steps, 1))) | {total}
    else:
        schedule_pts = {int(s) for s in track_steps if 0 <= int(s) <= total}
    history = History(config=dict(loss=str(loss), optimizer=optimizer, lr=lr, steps=total,
                                  batch_size=bs, momentum=momentum, weight_decay=weight_decay,
                                  schedule=str(schedule), beta=beta, seed=seed, loss_scale=scale))

    start = 0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    perm = torch.randperm(n, generator=gen)
    if resume and ckpt is not None and ckpt.exists():
        blob = torch.load(ckpt, map_location=dev, weights_only=False)
        model.load_state_dict(blob["model"])
        opt.load_state_dict(blob["optimizer"])
        gen.set_state(blob["generator"].cpu())  # map_location may have moved it off the CPU
        perm = blob["perm"]
        start = blob["step"]
        history.records = blob["records"]
        for t, s in zip(trackers, blob["trackers"]):
            if s is not None and hasattr(t, "load_state_dict"):
                t.load_state_dict(s)
    else:
        for t in trackers:
            if hasattr(t, "start"):
                t.start(state)

    def save(step: int) -> None:
        if ckpt is None:
            return
        _atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                      "generator": gen.get_state(), "perm": perm, "step": step,
                      "records": history.records,
                      "trackers": [t.state_dict() if hasattr(t, "state_dict") else None
                                   for t in trackers]}, ckpt)

    def record(step: int) -> None:
        rec: dict[str, Any] = {"step": step, "epoch": step / per_epoch, "lr": state.lr}
        for split, Xs, ys in (("train", X, y), ("test", X_test, y_test)):
            if Xs is None or ys is None:
                continue
            out = state.predict(model, Xs)
            rec[f"{split}_loss"] = crit(out, ys).item()
            acc = _accuracy(out, ys)
            if acc is not None:
                rec[f"{split}_acc"] = acc
        for t in trackers:
            rec.update(t(state))
        history.records.append(rec)

    show = progress if progress is not None else (
        sys.stderr.isatty() and total >= 500 and not os.environ.get("LAZYLAB_NO_PROGRESS"))
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=start, disable=not show, desc="train", leave=False)
    model.train()
    step = start
    try:
        while True:
            epoch = step // per_epoch
            state.step, state.epoch = step, step / per_epoch
            state.lr = _lr_at(schedule, lr, beta, step, epoch, total)
            if step in schedule_pts and not (history.records and history.records[-1]["step"] == step):
                model.eval()
                record(step)
                model.train()
            if step >= total:
                break
            if step % per_epoch == 0 and step > 0:
                perm = torch.randperm(n, generator=gen)
            i = step % per_epoch
            idx = perm[i * bs:(i + 1) * bs].to(dev) if bs < n else None
            xb = X if idx is None else fn.take(X, idx)
            yb = y if idx is None else y[idx]
            if augment is not None:
                xb = augment(xb, gen)
            for g in opt.param_groups:
                g["lr"] = state.lr
            opt.zero_grad(set_to_none=True)
            value = crit(fn.apply(model, xb), yb)
            if not torch.isfinite(value):
                history.stopped, history.steps = "diverged", step
                msg = (f"training diverged: loss is {value.item()} at step {step} "
                       f"(epoch {step / per_epoch:.2f}) with lr={state.lr:g}; lower the lr")
                if on_divergence == "raise":
                    raise DivergenceError(msg, history)
                import warnings

                warnings.warn(msg, stacklevel=2)
                return history
            (scale * value).backward()
            opt.step()
            state.batch_loss = value.item()
            for t in trackers:
                if hasattr(t, "on_step"):
                    t.on_step(state, xb, yb)
            step += 1
            bar.update(1)
            if checkpoint_every and step % checkpoint_every == 0:
                save(step)
            if target_loss is not None and state.batch_loss <= target_loss:
                history.stopped = "target_loss"
                state.step, state.epoch = step, step / per_epoch
                model.eval()
                record(step)
                model.train()
                break
    finally:
        bar.close()
    history.steps = step
    save(step)
    return history
