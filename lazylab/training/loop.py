"""The training loop: every run of the library and the lab goes through :func:`run`.

One step: take the source's batch, let the hooks turn it into the batches trained on (usually one),
and for each: ``value = objective(state, batch)``, stop on NaN/inf, backward of
``loss_scale * value`` (``loss_scale = 1/alpha**2`` for a :class:`~lazylab.Lazy` model, Chizat et
al. eq. 2), ``optimizer.step()`` with the scheduled rates. Records (``{"step": k}`` plus every
hook's ``record(state)``) are taken at the ``track`` steps, before the step's update, model in eval
mode. A checkpoint is written every ``checkpoint.every`` steps and at the end; ``resume`` continues
from it exactly. Cost per step: that of the objective's forward/backward per trained batch plus
the hooks'.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lazylab.training.checkpoint import Checkpoint
from lazylab.training.hooks import Stop
from lazylab.training.optim import Optimizer

__all__ = ["run", "History", "LoopState", "DivergenceError", "log_schedule"]


class DivergenceError(RuntimeError, FloatingPointError):
    """The loss became NaN/inf. ``.history`` holds what was recorded up to then."""

    def __init__(self, msg: str, history: History) -> None:
        super().__init__(msg)
        self.history = history


@dataclass
class History:
    """Records of a run: one dict per tracked step (``step``, then the hooks' numbers).

    ``to_frame()`` gives a pandas DataFrame; ``history["test_loss"]`` a list; ``final`` the last record.
    ``stopped`` is ``"budget"``, ``"diverged"`` or the reason a hook gave (``"target_loss"``, ...).
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
class LoopState:
    """What hooks and objectives see (fronts may pass a richer object with these attributes)."""

    model: nn.Module
    loss_scale: float = 1.0
    step: int = 0
    epoch: float = 0.0
    lr: float = 0.0
    batch_loss: float = float("nan")
    aux: Any = None
    generator: torch.Generator | None = None
    optimizer: torch.optim.Optimizer | None = None


def log_schedule(total: int, n: int = 30) -> list[int]:
    """``n`` log-spaced steps in ``[0, total]`` (0, 1 and ``total`` always included)."""
    if total <= 0:
        return [0]
    pts = np.unique(np.round(np.geomspace(1, total, max(n - 1, 1))).astype(int))
    return sorted({0, *pts.tolist(), total})


Objective = Callable[[Any, Any], tuple[Tensor, Any]]


@dataclass
class _Run:
    """The loop's fixed parts (one run)."""

    state: Any
    source: Any
    objective: Objective
    optim: Optimizer
    opt: torch.optim.Optimizer
    total: int
    hooks: Sequence[Any]
    history: History
    on_divergence: str
    label: str

    def calls(self, name: str, *args: Any) -> None:
        for h in self.hooks:
            f = getattr(h, name, None)
            if f is not None:
                f(*args)

    def record(self, step: int) -> None:
        model = self.state.model
        model.eval()
        rec: dict[str, Any] = {"step": step}
        for h in self.hooks:
            if hasattr(h, "record"):
                rec.update(h.record(self.state))
        self.history.records.append(rec)
        model.train()

    def diverged(self, value: Tensor, step: int) -> None:
        st, h = self.state, self.history
        h.stopped, h.steps = "diverged", step
        per = self.source.per_epoch
        msg = (f"{self.label}training diverged: loss is {value.item()} at step {step} "
               f"(epoch {step / per:.2f}) with lr={st.lr:g}; lower the lr")
        if self.on_divergence == "raise":
            raise DivergenceError(msg, h)
        if self.on_divergence == "warn":
            warnings.warn(msg, stacklevel=4)
        raise Stop("diverged")

    def update(self, batch: Any, step: int) -> None:
        """One optimizer update on ``batch``."""
        st = self.state
        st.model.train()
        self.opt.zero_grad(set_to_none=True)
        value, aux = self.objective(st, batch)
        if self.on_divergence != "continue" and not torch.isfinite(value):
            self.diverged(value, step)
        st.aux = aux
        self.calls("after_forward", st, value, aux)
        (st.loss_scale * value).backward()
        self.calls("before_update", st)
        self.opt.step()
        st.batch_loss = value.item()
        self.calls("after_update", st)

    def step(self, step: int) -> None:
        """All updates of one step (one per batch the hooks make of the source's batch)."""
        st = self.state
        it: Iterator[Any] = iter([self.source.batch(step)])
        for h in self.hooks:
            if hasattr(h, "batches"):
                it = h.batches(st, it)
        last = None
        for batch in it:
            self.update(batch, step)
            last = batch
        xb, yb = last if isinstance(last, (tuple, list)) and len(last) == 2 else (last, None)
        self.calls("after_step", st, xb, yb)

    def set_step(self, step: int, lr: bool = True) -> None:
        st, per = self.state, self.source.per_epoch
        st.step, st.epoch = step, step / per
        if lr:
            st.lr = self.optim.set_lr(self.opt, step, step // per, self.total)

    def save(self, ckpt: Checkpoint | None, step: int) -> None:
        if ckpt is not None:
            ckpt.save({"model": self.state.model.state_dict(), "optimizer": self.opt.state_dict(),
                       **self.source.state_dict(), "step": step, "records": self.history.records,
                       "hooks": [h.state_dict() if hasattr(h, "state_dict") else None
                                 for h in self.hooks]})

    def resume(self, ckpt: Checkpoint | None, device: torch.device | None) -> int:
        """Load the checkpoint (returns its step) or start the hooks (returns 0)."""
        if ckpt is None or not ckpt.resume or not ckpt.exists():
            self.calls("start", self.state)
            return 0
        blob = ckpt.load(device)
        self.state.model.load_state_dict(blob["model"])
        self.opt.load_state_dict(blob["optimizer"])
        self.source.load_state_dict(blob)
        self.history.records = blob["records"]
        for h, s in zip(self.hooks, blob.get("hooks", [])):
            if s is not None and hasattr(h, "load_state_dict"):
                h.load_state_dict(s)
        return int(blob["step"])


def run(state: Any, source: Any, objective: Objective, optim: Optimizer,
        opt: torch.optim.Optimizer, total: int, *, hooks: Sequence[Any] = (),
        track: set[int] | frozenset[int] = frozenset(), checkpoint: Checkpoint | None = None,
        on_divergence: str = "raise", history: History | None = None, progress: Any = None,
        device: torch.device | None = None, label: str = "") -> History:
    """Train ``state.model`` for ``total`` steps; returns the :class:`History`.

    ``source``: a :mod:`lazylab.training.sources` object; ``objective(state, batch) -> (loss,
    aux)`` the unscaled loss of one batch (``aux`` is kept in ``state.aux``); ``optim`` the
    :class:`~lazylab.training.optim.Optimizer` spec whose schedule sets ``opt``'s rates each step;
    ``hooks``: see :mod:`lazylab.training.hooks`; ``track``: the steps recorded; ``on_divergence``:
    ``"raise"`` (:class:`DivergenceError`), ``"warn"`` or ``"stop"`` (return, ``stopped =
    "diverged"``), or ``"continue"`` (no check: the steps go on with the non-finite loss, for
    measurements that report NaN for a diverged run); ``progress``: an object with
    ``update(n)`` and ``close()`` (a tqdm bar).
    """
    if on_divergence not in ("raise", "warn", "stop", "continue"):
        raise ValueError("on_divergence must be 'raise', 'warn', 'stop' or 'continue', got "
                         f"{on_divergence!r}")
    r = _Run(state, source, objective, optim, opt, total, hooks,
             history if history is not None else History(), on_divergence, label)
    state.optimizer, state.generator = opt, getattr(source, "generator", None)
    step = r.resume(checkpoint, device)
    if progress is not None and step:
        progress.update(step)
    state.model.train()
    try:
        while True:
            r.set_step(step)
            if step in track and not (r.history.records and r.history.records[-1]["step"] == step):
                r.record(step)
            if step >= total:
                break
            try:
                r.step(step)
                step += 1
                if progress is not None:
                    progress.update(1)
                if checkpoint is not None and checkpoint.every and step % checkpoint.every == 0:
                    r.save(checkpoint, step)
                r.set_step(step, lr=False)  # the rate of the new step is set at its start
                r.calls("end_step", state)
            except Stop as s:
                r.history.stopped = s.reason
                if s.reason == "diverged":
                    return r.history
                if s.record:
                    r.record(step)
                break
    finally:
        if progress is not None:
            progress.close()
    r.history.steps = step
    r.save(checkpoint, step)
    return r.history
