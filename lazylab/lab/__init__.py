"""The lab layer: experiments, sweeps, the result store, executors, reports and the CLI.

Public names (resolved lazily so importing the lab stays cheap):
    load_results(DIR) -> pandas.DataFrame      all records of a run folder, config columns included
    run_experiment(name, ...) -> pathlib.Path  run (or resume) an experiment; returns report.md path
    list_experiments() -> list[Experiment]     the registered experiments
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load_results": "lazylab.lab.store",
    "run_experiment": "lazylab.lab.runner",
    "list_experiments": "lazylab.lab.registry",
    "get_experiment": "lazylab.lab.registry",
    "register": "lazylab.lab.registry",
    "Experiment": "lazylab.lab.registry",
    "Preset": "lazylab.lab.registry",
    "Report": "lazylab.lab.registry",
    "Check": "lazylab.lab.registry",
    "RunContext": "lazylab.lab.registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lazylab.lab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
