"""lazylab: lazy training vs feature learning in PyTorch.

The public API is flat: every name below is importable as ``lazylab.<name>``. Names are
resolved lazily (PEP 562) so ``import lazylab`` stays cheap and the lab layer (pandas, dask,
matplotlib) is only imported when one of its names is used.

Library (tensor in, tensor out):
    lazy, linearize, random_features           regimes over any nn.Module   (lazylab.regimes)
    with_output                                 pick a model's output        (lazylab.functional)
    TwoLayerNet, MLP, SmallCNN, vgg11, resnet18 built-in models              (lazylab.models)
    train, History                              the trainer                  (lazylab.trainer)
                                                over the one training loop   (lazylab.training)
    ntk                                         empirical NTK                (lazylab.ntk)
    kernel_regression, gradient_flow, max_stable_lr   kernel methods      (lazylab.kernel_methods)
    kernel_regression_cg, gradient_flow_krylov, StoredKernel, NTKOperator
                                                matrix-free solvers       (lazylab.kernel_solvers)
    diagnose, alpha_crossover                   how lazy is this run?        (lazylab.diagnosis)
    parametrize, param_groups                   SP/NTK/MF/muP for any module (lazylab.parametrize)
    coord_check, regime_map                     which layers are lazy?       (lazylab.coord_check,
                                                                              lazylab.regime_map)
Submodules: lazylab.kernels (analytic kernels), lazylab.metrics, lazylab.attacks,
lazylab.functional (the model as f(params, x): inputs, outputs, forward mode),
lazylab.tensor (tensor decomposition), lazylab.track (trackers), lazylab.data.

Lab (experiments, files, CLI):
    load_results, run_experiment, list_experiments   (lazylab.lab)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # regimes
    "lazy": "lazylab.regimes",
    "linearize": "lazylab.regimes",
    "random_features": "lazylab.regimes",
    "Lazy": "lazylab.regimes",
    "Linearized": "lazylab.regimes",
    "apply_regime": "lazylab.regimes",
    "with_output": "lazylab.functional",
    "alpha_range": "lazylab.checks",  # the safe range of alpha per dtype (issue "Nothing silent")
    # models
    "TwoLayerNet": "lazylab.models",
    "MLP": "lazylab.models",
    "SmallCNN": "lazylab.models",
    "vgg11": "lazylab.models",
    "resnet18": "lazylab.models",
    # training
    "train": "lazylab.trainer",
    "History": "lazylab.trainer",
    # kernels
    "ntk": "lazylab.ntk",
    "pseudo_ntk": "lazylab.ntk.approx",
    "projected_ntk": "lazylab.ntk.approx",
    "kernel_regression": "lazylab.kernel_methods",
    "gradient_flow": "lazylab.kernel_methods",
    "max_stable_lr": "lazylab.kernel_methods",
    "kernel_regression_cg": "lazylab.kernel_solvers",
    "gradient_flow_krylov": "lazylab.kernel_solvers",
    "StoredKernel": "lazylab.kernel_solvers",
    "NTKOperator": "lazylab.kernel_solvers",
    # diagnostics
    "diagnose": "lazylab.diagnosis",
    "alpha_crossover": "lazylab.diagnosis",
    # per-layer regimes, parametrizations, transitions
    "parametrize": "lazylab.parametrize",
    "param_groups": "lazylab.parametrize",
    "coord_check": "lazylab.coord_check",
    "regime_map": "lazylab.regime_map",
    "RegimeMap": "lazylab.regime_map",
    "TinyTransformer": "lazylab.transformer",
    "CausalDecoder": "lazylab.transformer",
    "lr_sweep": "lazylab.transfer",
    "DepartureTime": "lazylab.transitions",
    "Catapult": "lazylab.transitions",
    "EdgeOfStability": "lazylab.transitions",
    "SilentAlignment": "lazylab.transitions",
    # lab
    "load_results": "lazylab.lab",
    "run_experiment": "lazylab.lab",
    "list_experiments": "lazylab.lab",
}

_SUBMODULES = {
    "regimes", "functional", "models", "trainer", "track", "ntk", "kernels", "kernel_methods",
    "metrics", "kernel_solvers", "attacks", "adversarial", "kernel_predictor", "tensor", "data",
    "diagnosis", "risks", "lab", "checks", "transitions", "layer_plots", "transformer", "transfer",
    "training",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"lazylab.{name}")
    raise AttributeError(f"module 'lazylab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | _SUBMODULES)
