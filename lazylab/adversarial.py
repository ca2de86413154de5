"""Adversarial training and lazy-ball training.

- :func:`adversarial_train`: mini-batch SGD where each batch is replaced by (``mode="adversarial"``)
  or complemented with (``mode="clean+adversarial"``, Loo et al. 2022: one clean SGD step, then one
  step on PGD examples generated at the updated parameters) PGD examples from
  :func:`lazylab.attacks.pgd`; ``mode="clean"`` is standard training with the same loop.
- :class:`NeuronBall`: the lazy ball of Wang, Ullah, Mianjy & Arora (2022): every hidden neuron
  ``(w_s, b_s)`` of a linear layer stays within L2 distance ``radius`` of its initialization,
  ``max_s ||(w_s, b_s) - (w_s(0), b_s(0))||_2 <= radius`` (the (2, inf) ball ``B_{2,inf}(W0, R)``).
  With ``ball_mode="project"`` every SGD step is followed by the Euclidean projection onto it
  (``advtrain.py``); with ``ball_mode="stop"`` training stops at the first step that would leave it,
  keeping the last weights inside (``ntk_normal.py`` early-stops once outside).

Loss (``"auto"``): the mean of :func:`lazylab.attacks.attack_loss` over the batch (logistic for a
scalar output with labels +-1, cross-entropy for ``(N, C)`` outputs).
Cost per batch: ``attack_steps + 1`` forward/backward passes (``+ 2`` for ``clean+adversarial``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lazylab import training
from lazylab.attacks import _check_eps, _check_norm, _check_steps, attack_loss, pgd
from lazylab.training.hooks import Hook, Stop

__all__ = ["NeuronBall", "AdvHistory", "BallHook", "adversarial_train", "MODES"]

MODES = ("clean", "adversarial", "clean+adversarial")


class NeuronBall:
    """Per-neuron L2 ball around the init of ``layer`` (an ``nn.Linear``; neuron ``s`` = row ``s`` of
    the weight, with its bias entry if any). Cost of :meth:`project`: O(#layer parameters)."""

    def __init__(self, layer: nn.Linear, radius: float) -> None:
        if not isinstance(layer, nn.Linear):
            raise TypeError(f"layer must be an nn.Linear, got {type(layer).__name__}")
        self.radius = _check_eps(radius, "radius")
        self.layer = layer
        self.w0 = layer.weight.detach().clone()
        self.b0 = None if layer.bias is None else layer.bias.detach().clone()

    def _rows(self) -> Tensor:
        d = self.layer.weight.detach() - self.w0
        if self.b0 is not None:
            d = torch.cat([d, (self.layer.bias.detach() - self.b0).unsqueeze(1)], 1)
        return d

    def deviation(self) -> Tensor:
        """``(m,)``: ``||(w_s, b_s) - (w_s(0), b_s(0))||_2`` per neuron (float64)."""
        return self._rows().to(torch.float64).norm(dim=1)

    def max_deviation(self) -> float:
        return float(self.deviation().max())

    def project(self) -> None:
        """In place: rows farther than ``radius`` from their init are pulled back radially onto the
        sphere (computed in float64). Afterwards ``max_deviation() <= radius`` holds exactly: rows
        that float rounding leaves outside are shrunk a little more, and a row whose radius is below
        the float resolution of its init is reset to the init."""
        lay = self.layer
        dt = self.w0.dtype
        with torch.no_grad():
            dev = self.deviation()
            if not bool((dev > self.radius).any()):
                return
            w0 = self.w0.double()
            b0 = None if self.b0 is None else self.b0.double()
            dw = lay.weight.double() - w0
            db = None if b0 is None else lay.bias.double() - b0
            for i in range(10):
                bad = dev > self.radius
                if not bool(bad.any()):
                    return
                f = (self.radius / dev.clamp_min(1e-300)) * (1.0 - 4.0 * 2.0**i * torch.finfo(dt).eps)
                s = torch.where(bad, f.clamp_min(0.0), torch.ones_like(dev))
                dw, db = dw * s[:, None], (None if db is None else db * s)
                lay.weight.copy_((w0 + dw).to(dt))
                if db is not None:
                    lay.bias.copy_((b0 + db).to(dt))
                dev = self.deviation()
            bad = dev > self.radius
            lay.weight[bad] = self.w0[bad]
            if self.b0 is not None:
                lay.bias[bad] = self.b0[bad]


@dataclass
class AdvHistory:
    """One record per epoch (``epoch``, ``loss``, ``clean_batch_acc``, ``max_deviation`` with a ball);
    ``stopped`` = ``"budget"`` or ``"left_ball"``; ``steps`` = SGD steps taken."""

    records: list[dict[str, Any]] = field(default_factory=list)
    stopped: str = "budget"
    steps: int = 0

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame.from_records(self.records)


def _batch_correct(out: Tensor, y: Tensor) -> int:
    if out.dim() == 1 or (out.dim() == 2 and out.shape[1] == 1):
        pred = torch.where(out.reshape(-1) >= 0, 1.0, -1.0)
        return int((pred == y.to(pred.dtype)).sum())
    return int((out.argmax(1) == y).sum())


class _Attack(Hook):
    """"Attack each batch": the step's batch becomes a clean and/or a PGD batch (``mode``); keeps
    the epoch's loss and clean batch accuracy and appends one record per epoch."""

    def __init__(self, mode: str, attack: dict[str, Any], hist: AdvHistory, per_epoch: int,
                 ball: NeuronBall | None) -> None:
        self.mode, self.attack, self.hist, self.per_epoch, self.ball = mode, attack, hist, per_epoch, ball
        self.tot_loss, self.tot_correct, self.seen = 0.0, 0, 0

    def batches(self, state: Any, it: Iterator[Any]) -> Iterator[Any]:
        for xb, yb in it:
            n = xb.shape[0]
            if self.mode in ("clean", "clean+adversarial"):
                yield xb, yb
                self.tot_loss += state.batch_loss * n
                self.tot_correct += _batch_correct(state.aux, yb)
                self.seen += n
            if self.mode in ("adversarial", "clean+adversarial"):
                state.model.eval()
                xa = pgd(state.model, xb, yb, generator=state.generator, **self.attack).x_adv
                yield xa, yb
                if self.mode == "adversarial":
                    self.tot_loss, self.seen = self.tot_loss + state.batch_loss * n, self.seen + n
                    with torch.no_grad():
                        self.tot_correct += _batch_correct(state.model(xb), yb)

    def end_step(self, state: Any) -> None:
        if state.step % self.per_epoch:
            return
        rec: dict[str, Any] = {"epoch": state.step // self.per_epoch,
                               "loss": self.tot_loss / self.seen,
                               "clean_batch_acc": self.tot_correct / self.seen}
        if self.ball is not None:
            rec["max_deviation"] = self.ball.max_deviation()
        self.hist.records.append(rec)
        self.tot_loss, self.tot_correct, self.seen = 0.0, 0, 0


class BallHook(Hook):
    """"After each step": project onto the lazy ball (``mode="project"``), or undo the step that
    left it and stop (``mode="stop"``, ``stopped = "left_ball"``)."""

    def __init__(self, ball: NeuronBall, mode: str) -> None:
        if mode not in ("project", "stop"):
            raise ValueError(f"ball_mode must be 'project' or 'stop', got {mode!r}")
        self.ball, self.mode = ball, mode
        self.saved: list[Tensor] = []

    def _params(self, state: Any) -> list[Tensor]:
        return [p for p in state.model.parameters() if p.requires_grad]

    def before_update(self, state: Any) -> None:
        if self.mode == "stop":
            self.saved = [p.detach().clone() for p in self._params(state)]

    def after_update(self, state: Any) -> None:
        if self.mode == "project":
            self.ball.project()
        elif self.ball.max_deviation() > self.ball.radius:
            with torch.no_grad():
                for p, s in zip(self._params(state), self.saved):
                    p.copy_(s)
            raise Stop("left_ball")


def _objective(state: Any, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    xb, yb = batch
    out = state.model(xb)
    return attack_loss(out, yb) / xb.shape[0], out.detach()


def adversarial_train(
    model: nn.Module,
    data: tuple[Tensor, Tensor],
    *,
    epochs: int,
    lr: float,
    batch_size: int = 64,
    momentum: float = 0.0,
    mode: str = "adversarial",
    eps: float = 0.0,
    norm: str = "linf",
    attack_steps: int = 10,
    step_size: float | None = None,
    clip: tuple[float, float] | None = (0.0, 1.0),
    ball: NeuronBall | None = None,
    ball_mode: str = "project",
    callback: Callable[[float, nn.Module], None] | None = None,
    callback_epochs: Sequence[float] = (),
    seed: int = 0,
    device: str | torch.device | None = None,
    loss_scale: float | None = None,
) -> AdvHistory:
    """SGD (``lr``, ``momentum``, shuffled batches from a generator seeded by ``seed``) for ``epochs``,
    on the one training loop (:func:`lazylab.training.run`).

    Objective: ``loss_scale * mean_i attack_loss(model(x_i), y_i)`` with ``loss_scale =
    model.loss_scale`` for a :class:`~lazylab.Lazy` model (``1/alpha**2``) and 1 otherwise.
    ``mode``: ``"clean"``, ``"adversarial"`` (train on ``pgd(model, xb, yb, eps, steps=attack_steps,
    step_size, norm, clip)``), ``"clean+adversarial"`` (Loo et al.: a clean step, then an adversarial
    step, per batch). The attack runs with the model in eval mode. ``ball``/``ball_mode``: see the
    module docstring. ``callback(epoch, model)`` is called before training (epoch 0) if 0 is in
    ``callback_epochs`` and after the step at which each (fractional) epoch in ``callback_epochs`` is
    reached (``round(e * steps_per_epoch)``). A NaN/inf loss raises
    :class:`~lazylab.training.DivergenceError` (a ``FloatingPointError``).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    ball_hook = None if ball is None else BallHook(ball, ball_mode)
    if ball is None and ball_mode not in ("project", "stop"):
        raise ValueError(f"ball_mode must be 'project' or 'stop', got {ball_mode!r}")
    epochs = _check_steps(epochs, "epochs")
    batch_size = _check_steps(batch_size, "batch_size")
    attack = dict(eps=_check_eps(eps), steps=_check_steps(attack_steps, "attack_steps"),
                  step_size=step_size, norm=_check_norm(norm), clip=clip)
    spec = training.sgd(lr, momentum)
    X, y = data
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"data: X has {X.shape[0]} rows but y has {y.shape[0]}")
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(dev)
    if ball is not None:  # its copy of the init must follow the layer to dev
        ball.w0 = ball.w0.to(dev)
        ball.b0 = None if ball.b0 is None else ball.b0.to(dev)
    X, y = X.to(dev), y.to(dev)
    source = training.Batches(X, y, batch_size, torch.Generator().manual_seed(int(seed)),
                              always_index=True)
    snap: dict[int, list[float]] = {}
    for e in callback_epochs:
        snap.setdefault(int(round(float(e) * source.per_epoch)), []).append(float(e))
    hist = AdvHistory()
    hooks: list[Any] = [] if ball_hook is None else [ball_hook]
    hooks.append(_Attack(mode, attack, hist, source.per_epoch, ball))
    if callback is not None:
        hooks.append(training.AtSteps(callback, snap))
    scale = float(getattr(model, "loss_scale", 1.0) if loss_scale is None else loss_scale)
    state = training.LoopState(model, loss_scale=scale)
    params = [p for p in model.parameters() if p.requires_grad]
    h = training.run(state, source, _objective, spec, spec.build(params), epochs * source.per_epoch,
                     hooks=hooks, device=dev, label="adversarial_train: ")
    hist.stopped, hist.steps = h.stopped, h.steps
    model.eval()
    return hist
