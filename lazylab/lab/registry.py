"""The experiment registry: what an experiment is, and the table of known ones.

An :class:`Experiment` bundles

* ``config`` — a ``@dataclass`` type with typed defaults (one field must be ``seed: int``),
* ``presets`` — named overrides (``Preset.set``) and grids (``Preset.sweep``); at least ``quick``
  (minutes on 2 CPU cores) and ``paper`` (the paper's own sizes),
* ``run_cell(cfg, ctx) -> list[dict]`` — runs ONE cell of the grid (a fully resolved config) and
  returns flat records (str/int/float/bool/None values, optionally a ``"step"`` key),
* ``report(df, base_cfg) -> Report`` — turns all records (one row per record, config columns
  included) into metrics, checks against the paper/theory, figures, a table and notes.

Experiment modules live in ``lazylab/lab/experiments/<name>.py`` and call
``register(Experiment(...))`` at import. The registry imports every module of the package
``lazylab.lab.experiments`` (via :mod:`pkgutil`) on the first lookup, so a new module needs no
other edit.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import pkgutil
import sys
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import matplotlib.figure
    import pandas as pd

__all__ = [
    "Check",
    "Experiment",
    "Preset",
    "Report",
    "RunContext",
    "UnknownExperimentError",
    "check",
    "seed_stats",
    "get_experiment",
    "list_experiments",
    "register",
]

REQUIRED_PRESETS = ("quick", "paper")
PLUGIN_ENV = "LAZYLAB_EXPERIMENTS"


@dataclass(frozen=True)
class Preset:
    """Named config overrides.

    ``set``: field -> value applied over the config defaults.
    ``sweep``: field -> list of values; the cartesian product of all lists is the grid of cells.
    """

    set: dict[str, Any] = field(default_factory=dict)
    sweep: dict[str, list] = field(default_factory=dict)


CHECK_KINDS = ("claim", "sanity")


@dataclass
class Check:
    """A measured number compared with the paper's or the theory's value.

    ``target`` is a number or a description such as ``"< 0.1"``; ``tolerance`` says how close
    counts as agreement (e.g. ``"±10 %"``); ``passed`` is the verdict.

    ``kind``: ``"claim"`` (what the paper says; a claim that fails is a result, reported as
    "not reproduced") or ``"sanity"`` (an identity that holds by construction when the code is
    right; its real test lives in ``tests/``). ``source``: where the target and the tolerance
    come from (paper section, figure read-off, authors' code or our derivation; see
    ``docs/papers.md``). ``mean``/``sd``/``n``: the statistic over seeds when ``value`` is a mean
    over ``n`` seeds (``sd`` is the sample standard deviation, ddof = 1; NaN for n = 1).
    ``note``: e.g. "loose quick-preset threshold".
    """

    name: str
    value: float
    target: str | float
    passed: bool
    tolerance: str = ""
    kind: str = "claim"
    source: str = ""
    mean: float | None = None
    sd: float | None = None
    n: int | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if self.kind not in CHECK_KINDS:
            raise ValueError(f"Check.kind must be one of {CHECK_KINDS}, got {self.kind!r}")

    @property
    def verdict(self) -> str:
        """``"pass"``; else ``"not reproduced"`` for a claim, ``"fail"`` for a sanity check."""
        if self.passed:
            return "pass"
        return "not reproduced" if self.kind == "claim" else "fail"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "value": _plain(self.value),
            "target": _plain(self.target),
            "passed": bool(self.passed),
            "verdict": self.verdict,
            "tolerance": self.tolerance,
            "source": self.source,
            "mean": _plain(self.mean),
            "sd": _plain(self.sd),
            "n": None if self.n is None else int(self.n),
            "note": self.note,
        }


def seed_stats(values: Any) -> tuple[float, float, int]:
    """``(mean, sd, n)`` of the finite entries of ``values`` (one number per seed); ``sd`` is the
    sample standard deviation (ddof = 1), NaN when ``n < 2``; mean NaN when ``n = 0``."""
    import numpy as np

    v = np.asarray(list(values) if not hasattr(values, "__array__") else values, float).ravel()
    v = v[np.isfinite(v)]
    n = int(v.size)
    mean = float(v.mean()) if n else float("nan")
    sd = float(v.std(ddof=1)) if n >= 2 else float("nan")
    return mean, sd, n


def check(
    name: str, value: float | None, target: float, *, rtol: float | None = None,
    atol: float | None = None, op: str | None = None, lo: float | None = None,
    hi: float | None = None, kind: str = "claim", source: str = "", seeds: Any = None,
    note: str = "",
) -> Check:
    """Convenience constructor for a :class:`Check`.

    With ``op`` in ``{"<", "<=", ">", ">="}``: passes iff ``value op target``.
    With ``lo``/``hi`` (a band, e.g. read off a figure): passes iff ``lo <= value <= hi``.
    Otherwise passes iff ``|value - target| <= atol + rtol * |target|`` (missing tolerances are 0;
    at least one must be given).

    ``seeds``: the per-seed values; then ``value`` may be None and is their mean, and the check
    records mean, sd and n (see :func:`seed_stats`). ``kind``, ``source``, ``note``: see
    :class:`Check`. A NaN value never passes.
    """
    mean = sd = None
    n = None
    if seeds is not None:
        mean, sd, n = seed_stats(seeds)
        if value is None:
            value = mean
    if value is None:
        raise ValueError("check() needs a value or seeds=")
    value = float(value)
    extra = dict(kind=kind, source=source, mean=mean, sd=sd, n=n, note=note)
    if op is not None:
        ops = {"<": value < target, "<=": value <= target, ">": value > target,
               ">=": value >= target}
        if op not in ops:
            raise ValueError(f"check(op=...) must be one of {sorted(ops)}, got {op!r}")
        return Check(name, value, f"{op} {target:g}", bool(ops[op]), "", **extra)
    if lo is not None or hi is not None:
        lo_ = -math.inf if lo is None else float(lo)
        hi_ = math.inf if hi is None else float(hi)
        return Check(name, value, float(target), bool(lo_ <= value <= hi_),
                     f"band [{lo_:g}, {hi_:g}]", **extra)
    if rtol is None and atol is None:
        raise ValueError("check() needs rtol=, atol=, lo=/hi= or op=")
    r, a = rtol or 0.0, atol or 0.0
    passed = abs(value - target) <= a + r * abs(target)
    tol = " + ".join(s for s in (f"±{r:.0%}" if r else "", f"±{a:g}" if a else "") if s)
    return Check(name, value, float(target), bool(passed), tol, **extra)


@dataclass
class Report:
    """What an experiment's ``report`` returns.

    ``figures`` maps a name to a matplotlib Figure (saved as ``figures/<name>.png``);
    ``table`` a DataFrame rendered as markdown; ``notes`` markdown (theory source, caveats).
    """

    metrics: dict[str, float]
    checks: list[Check]
    figures: dict[str, matplotlib.figure.Figure]
    table: pd.DataFrame | None = None
    notes: str = ""


@dataclass
class RunContext:
    """What the lab hands to ``run_cell`` besides the config.

    ``device``: where to build tensors/models (``"cpu"`` or ``"cuda"``).
    ``progress``: whether to show progress bars inside the cell.
    """

    device: str = "cpu"
    progress: bool = True

    def bar(self, iterable: Iterable | None = None, total: int | None = None,
            desc: str | None = None):
        """A tqdm bar over ``iterable`` inside a cell (disabled when ``progress`` is False)."""
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, disable=not self.progress, leave=False,
                    file=sys.stderr, dynamic_ncols=True)


@dataclass(frozen=True)
class Experiment:
    """One reproducible experiment (see the module docstring).

    ``report_settings``: config keys read only by ``report`` (tolerances, which checks to run).
    They are left out of the cell ids (:func:`cell_key`), cannot be swept, and
    ``lazylab report DIR --set KEY=VALUE`` changes them to re-judge a finished run.
    """

    name: str
    description: str
    config: type
    presets: dict[str, Preset]
    run_cell: Callable[[Any, RunContext], list[dict]]
    report: Callable[[pd.DataFrame, Any], Report]
    report_settings: tuple[str, ...] = ()

    def config_fields(self) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(self.config)}


class UnknownExperimentError(KeyError):
    """Raised by :func:`get_experiment` for a name that is not registered."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


_REGISTRY: dict[str, Experiment] = {}
_DISCOVERED = False
_BROKEN: dict[str, str] = {}  # module -> import error (shown when a lookup fails)


def register(exp: Experiment) -> Experiment:
    """Add ``exp`` to the registry and return it.

    Raises ValueError on a duplicate name or missing ``quick``/``paper`` preset, TypeError when
    ``config`` is not a dataclass with an ``int`` field ``seed``. Preset keys are validated
    against the config fields.
    """
    if not isinstance(exp, Experiment):
        raise TypeError(f"register() expects an Experiment, got {type(exp).__name__}")
    if not exp.name or not isinstance(exp.name, str):
        raise ValueError("Experiment.name must be a non-empty string")
    if exp.name in _REGISTRY and _REGISTRY[exp.name] is not exp:
        raise ValueError(f"an experiment named {exp.name!r} is already registered")
    if not (isinstance(exp.config, type) and dataclasses.is_dataclass(exp.config)):
        raise TypeError(f"Experiment {exp.name!r}: config must be a @dataclass type")
    fields = exp.config_fields()
    if "seed" not in fields:
        raise TypeError(f"Experiment {exp.name!r}: config {exp.config.__name__} needs a field "
                        "`seed: int`")
    _check_config_fields(exp)
    missing = [p for p in REQUIRED_PRESETS if p not in exp.presets]
    if missing:
        raise ValueError(f"Experiment {exp.name!r}: missing preset(s) {missing}; "
                         f"required: {list(REQUIRED_PRESETS)}")
    for pname, preset in exp.presets.items():
        bad = [k for k in (*preset.set, *preset.sweep) if k not in fields]
        if bad:
            raise ValueError(f"Experiment {exp.name!r}, preset {pname!r}: unknown config key(s) "
                             f"{bad}; valid keys: {sorted(fields)}")
        both = sorted(set(preset.set) & set(preset.sweep))
        if both:
            raise ValueError(f"Experiment {exp.name!r}, preset {pname!r}: key(s) {both} are both "
                             "set and swept; the sweep would override the set value")
        empty = [k for k, v in preset.sweep.items() if len(list(v)) == 0]
        if empty:
            raise ValueError(f"Experiment {exp.name!r}, preset {pname!r}: empty sweep for {empty}")
    bad = [k for k in exp.report_settings if k not in fields or k == "seed"]
    if bad:
        raise ValueError(f"Experiment {exp.name!r}: report_settings {bad} are not config keys "
                         f"(or are 'seed'); valid keys: {sorted(fields)}")
    for pname, preset in exp.presets.items():
        swept = [k for k in preset.sweep if k in exp.report_settings]
        if swept:
            raise ValueError(f"Experiment {exp.name!r}, preset {pname!r}: report setting(s) "
                             f"{swept} cannot be swept (they do not change the cells)")
    _REGISTRY[exp.name] = exp
    return exp


def _check_config_fields(exp: Experiment) -> None:
    """Run-time settings are run options, not config fields; ``RULES`` names only fields."""
    from lazylab.lab.config import RUN_OPTION_KEYS
    from lazylab.lab.rules import config_rules

    fields = exp.config_fields()
    runtime = [k for k in RUN_OPTION_KEYS if k in fields]
    if runtime:
        raise TypeError(f"Experiment {exp.name!r}: config field(s) {runtime} are run-time settings; "
                        "remove them: they come from the run options (--threads, --device, "
                        "--workers) and must not change a cell's results or id")
    bad = sorted(set(config_rules(exp.config)) - set(fields))
    if bad:
        raise ValueError(f"Experiment {exp.name!r}: {exp.config.__name__}.RULES names unknown "
                         f"field(s) {bad}; valid keys: {sorted(fields)}")


def _discover() -> None:
    """Import every module of ``lazylab.lab.experiments`` once (each registers itself), then
    the modules named in the environment variable ``LAZYLAB_EXPERIMENTS`` (comma-separated
    importable module names: experiments that live outside lazylab; worker processes inherit
    the variable, so they find them too)."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    pkg = importlib.import_module("lazylab.lab.experiments")
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        modname = f"{pkg.__name__}.{info.name}"
        try:
            importlib.import_module(modname)
        except Exception as e:  # one broken module must not hide the others
            _BROKEN[modname] = f"{type(e).__name__}: {e}"
            warnings.warn(f"lazylab: experiment module {modname} failed to import "
                          f"({_BROKEN[modname]})", RuntimeWarning, stacklevel=2)
    for mod in os.environ.get(PLUGIN_ENV, "").split(","):
        if mod.strip():
            try:
                importlib.import_module(mod.strip())
            except ImportError as e:
                raise ImportError(f"{PLUGIN_ENV}: cannot import experiment module "
                                  f"{mod.strip()!r}: {e}") from e


def get_experiment(name: str) -> Experiment:
    """The registered experiment ``name``.

    Raises UnknownExperimentError (a KeyError) listing the known names otherwise.
    """
    _discover()
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY)) or "(none)"
        broken = "".join(f"; module {m} failed to import: {e}" for m, e in _BROKEN.items())
        raise UnknownExperimentError(f"unknown experiment {name!r}; known experiments: {known}"
                                     + broken)
    return _REGISTRY[name]


def list_experiments() -> list[Experiment]:
    """All registered experiments, sorted by name."""
    _discover()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def _plain(v: Any) -> Any:
    """numpy/torch scalars -> Python scalars (for JSON)."""
    if hasattr(v, "item") and callable(v.item):
        try:
            return v.item()
        except (ValueError, RuntimeError):
            return v
    return v
