"""Config rules: ranges, choices and files an experiment's config fields must satisfy.

An experiment's config dataclass declares its rules in a class variable ``RULES`` (a ``ClassVar``,
so it is not a config field)::

    @dataclass
    class MyConfig:
        seed: int = 0
        lr: float = 0.1
        steps: int = 100
        activation: str = "relu"
        RULES: ClassVar[dict[str, Rule]] = {
            "lr": POSITIVE, "steps": NONNEG, "activation": ACTIVATION,
        }

:func:`validate_cells` checks every cell of the grid against them, and the runner calls it
before anything is written, so a bad value (``--set lr=-1``, a bad alpha inside a sweep, a
missing ``data_dir``) is a one-line error that names the key, the value and the accepted range,
instead of a traceback from inside the first cell. Types are checked earlier, when the config is
resolved (:mod:`lazylab.lab.config`).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ACTIVATION",
    "ALPHA",
    "NONNEG",
    "POSITIVE",
    "UNIT_INTERVAL",
    "Rule",
    "cifar10_dir",
    "config_rules",
    "mnist_dir",
    "one_of",
    "validate_cells",
    "validate_config",
]


@dataclass(frozen=True)
class Rule:
    """A constraint on one config field.

    ``gt``/``ge``/``lt``/``le``: bounds for numbers (with a bound, NaN and inf are refused); ``choices``: the
    allowed values; ``check(value, cfg) -> message | None``: anything else (``cfg`` is the cell's
    whole config dict, for rules that depend on other keys); ``each``: apply the rule to every
    element of a list/tuple value; ``when(cfg) -> bool``: the rule applies only when true (e.g. a
    data folder only for the dataset that needs it).
    """

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    choices: tuple | None = None
    check: Callable[[Any, Mapping[str, Any]], str | None] | None = None
    each: bool = False
    when: Callable[[Mapping[str, Any]], bool] | None = None

    def error(self, value: Any, cfg: Mapping[str, Any]) -> str | None:
        """What is wrong with ``value`` (None when it satisfies the rule)."""
        if self.when is not None and not self.when(cfg):
            return None
        if self.each and isinstance(value, (list, tuple)):
            for v in value:
                msg = self._one(v, cfg)
                if msg:
                    return f"element {v!r}: {msg}"
            return None
        return self._one(value, cfg)

    def _one(self, v: Any, cfg: Mapping[str, Any]) -> str | None:
        if self.choices is not None and v not in self.choices:
            return f"expected one of {list(self.choices)}, got {v!r}"
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            bounded = any(b is not None for b in (self.gt, self.ge, self.lt, self.le))
            if bounded and not math.isfinite(v):
                return f"must be a finite number {self._range()}, got {v!r}"
            for bound, op in ((self.gt, operator.gt), (self.ge, operator.ge),
                              (self.lt, operator.lt), (self.le, operator.le)):
                if bound is not None and not op(v, bound):
                    return f"must be {self._range()}, got {v!r}"
        if self.check is not None:
            return self.check(v, cfg)
        return None

    def _range(self) -> str:
        parts = [f"{s} {b:g}" for b, s in ((self.gt, ">"), (self.ge, ">="), (self.lt, "<"),
                                            (self.le, "<=")) if b is not None]
        return " and ".join(parts)


def one_of(*choices: Any, when: Callable[[Mapping[str, Any]], bool] | None = None) -> Rule:
    """The value must be one of ``choices``."""
    return Rule(choices=tuple(choices), when=when)


POSITIVE = Rule(gt=0)
NONNEG = Rule(ge=0)
UNIT_INTERVAL = Rule(ge=0, le=1)


def _alpha(v: Any, cfg: Mapping[str, Any]) -> str | None:
    """alpha inside :func:`lazylab.checks.alpha_range` for the cell's dtype / compute dtype."""
    import torch

    from lazylab.checks import check_alpha

    dt = getattr(torch, str(cfg.get("dtype", "float32")), torch.float32)
    cdt = cfg.get("compute_dtype")
    cdt = getattr(torch, cdt) if cdt in ("float32", "float64") else None
    try:
        check_alpha(v, dt, cdt, arg="alpha")
    except (TypeError, ValueError) as e:
        return str(e)
    return None


#: the lazy scale: inside the float-precision safe range of :func:`lazylab.checks.alpha_range`
ALPHA = Rule(check=_alpha)


def _activation(v: Any, cfg: Mapping[str, Any]) -> str | None:
    from lazylab.models import ACTIVATIONS

    return None if v in ACTIVATIONS else f"expected one of {sorted(ACTIVATIONS)}, got {v!r}"


#: an activation name of :data:`lazylab.models.ACTIVATIONS`
ACTIVATION = Rule(check=_activation)


def _cifar_missing(v: Any, cfg: Mapping[str, Any]) -> str | None:
    import importlib

    cifar = importlib.import_module("lazylab.data.cifar")

    if not v:
        return ("the folder holding cifar-10-batches-py/ is needed for the cifar10 dataset "
                "(--set data_dir=/path/to/folder)")
    folder = cifar._folder(v)
    missing = [f for f in (*cifar.TRAIN_FILES, *cifar.TEST_FILES) if not (folder / f).is_file()]
    return cifar._missing_message(folder, missing) if missing else None


def _mnist_missing(v: Any, cfg: Mapping[str, Any]) -> str | None:
    import importlib
    from pathlib import Path

    mnist = importlib.import_module("lazylab.data.mnist")  # the module, not the function

    if not v:
        return "the folder holding the MNIST idx files is needed (--set data_dir=/path/to/folder)"
    root = Path(v).expanduser()
    names = [n for split in mnist.MNIST_FILES.values() for n in split]
    missing = [n for n in names if mnist._find(root, n) is None]
    return mnist._missing_message(root, missing) if missing else None


def cifar10_dir(key: str = "dataset", value: str = "cifar10") -> Rule:
    """``data_dir`` must hold CIFAR-10 (python version) when ``cfg[key] == value``."""
    return Rule(check=_cifar_missing, when=lambda c: c.get(key) == value)


def mnist_dir(key: str = "dataset", value: str = "mnist") -> Rule:
    """``data_dir`` must hold the MNIST idx files when ``cfg[key] == value``."""
    return Rule(check=_mnist_missing, when=lambda c: c.get(key) == value)


def config_rules(config_cls: type) -> dict[str, Rule]:
    """The ``RULES`` class variable of a config dataclass (empty when it declares none)."""
    rules = getattr(config_cls, "RULES", None) or {}
    if not isinstance(rules, Mapping) or not all(isinstance(r, Rule) for r in rules.values()):
        raise TypeError(f"config {config_cls.__name__}.RULES must be a dict of field name -> Rule")
    return dict(rules)


def validate_config(config_cls: type, values: Mapping[str, Any], where: str = "") -> None:
    """Check ``values`` (one cell's full config) against the rules of ``config_cls``.

    Raises ValueError ``"config key 'lr'<where>: must be > 0, got -1.0"`` for the first broken
    rule. Cost: one call per rule (a file-system lookup for data folders).
    """
    for key, rule in config_rules(config_cls).items():
        if key not in values:
            continue
        msg = rule.error(values[key], values)
        if msg:
            raise ValueError(f"config key {key!r}{where}: {msg}")


def validate_cells(config_cls: type, cells: Iterable[Any]) -> None:
    """:func:`validate_config` for every cell of a grid (objects with ``.config``, ``.params``
    and ``.label()``); when the bad value comes from a sweep, the message names the cell."""
    rules = config_rules(config_cls)
    for cell in cells:
        for key, rule in rules.items():
            msg = rule.error(cell.config[key], cell.config) if key in cell.config else None
            if msg:
                where = f" (swept; cell {cell.label()})" if key in cell.params else ""
                raise ValueError(f"config key {key!r}{where}: {msg}")
