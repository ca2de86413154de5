"""One training loop for every run (:mod:`lazylab.training.loop`), with its parts one per module:
losses, optimizer/schedule factories, data sources, hooks and checkpoints. :func:`lazylab.train` is
the keyword front over it; adversarial training, population SGD and the tensor fits use it too."""

from lazylab.training.checkpoint import Checkpoint
from lazylab.training.hooks import AtSteps, Augment, Hook, Stop, TargetLoss, Trackers
from lazylab.training.loop import DivergenceError, History, LoopState, log_schedule, run
from lazylab.training.losses import LOSSES, accuracy, loss_fn
from lazylab.training.optim import Optimizer, adam, sgd
from lazylab.training.sources import Batches, NoData, Stream

__all__ = ["run", "History", "LoopState", "DivergenceError", "log_schedule", "Hook", "Stop",
           "Augment", "TargetLoss", "AtSteps", "Trackers", "Checkpoint", "LOSSES", "loss_fn",
           "accuracy", "Optimizer", "sgd", "adam", "Batches", "Stream", "NoData"]
