"""Coordinate check: per-layer activation and update sizes over widths (Yang et al., muP).

For each width ``n`` and seed: build ``model_fn(n)``, re-parametrize it (:func:`lazylab.parametrize`,
``base = model_fn(base_width)``), train ``steps`` full-batch steps of SGD or Adam with the
scheme's per-layer learning rates (:func:`lazylab.parametrize.param_groups`) on ``data = (X, y)``,
and record at every step ``t`` the output ``h_t`` of every parametrized layer on the fixed inputs
``X`` (forward hooks; a tuple output, e.g. attention's, contributes its first element):

- ``act_rms``   ``sqrt(mean h_t^2)``           (size of a coordinate of the activation),
- ``delta_rms`` ``sqrt(mean (h_t - h_0)^2)``   (size of a coordinate of its change since init).

Under muP ``delta_rms`` of every width-sized layer is ``Theta(1)`` in ``n`` after a few steps; under
NTK scaling it falls like ``n^(-1/2)``; :func:`width_exponents` fits the log-log slope per layer.
Cost: ``len(widths) * len(seeds) * (steps + 1)`` forward passes on ``X`` plus ``steps`` backward.
"""

from __future__ import annotations

import sys as _sys
import types as _types
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lazylab.parametrize import get_parametrization, make_optimizer, parametrize
from lazylab.trainer import loss_fn

__all__ = ["coord_check", "width_exponents", "fit_exponent", "record_layers", "check_widths"]


def check_widths(widths: Sequence[int]) -> list[int]:
    """``widths`` as a sorted list of at least 2 distinct positive ints (ValueError otherwise)."""
    ws = list(widths) if isinstance(widths, (list, tuple, range)) else None
    if not ws or len(set(ws)) < 2 or any(not isinstance(w, int) or w < 1 for w in ws):
        raise ValueError(f"widths must be a sequence of at least 2 distinct positive ints, "
                         f"got {widths!r}")
    return sorted(set(ws))


def fit_exponent(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope of ``log y`` on ``log x`` and its standard error (NaN with < 2 points;
    se NaN with 2). Non-positive or non-finite points are dropped."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if ok.sum() < 2:
        return float("nan"), float("nan")
    lx, ly = np.log(x[ok]), np.log(y[ok])
    slope, icpt = np.polyfit(lx, ly, 1)
    if ok.sum() == 2:
        return float(slope), float("nan")
    resid = ly - (slope * lx + icpt)
    se = np.sqrt(resid @ resid / (ok.sum() - 2) / ((lx - lx.mean()) @ (lx - lx.mean())))
    return float(slope), float(se)


def _layer_modules(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """module name -> (module, role of its weight) for every parametrized module with a matrix."""
    out: dict[str, tuple[nn.Module, str]] = {}
    for s in get_parametrization(model).layers:
        if s.kind != "vector" and s.module not in out:
            out[s.module] = (model.get_submodule(s.module), s.role)
    return out


def record_layers(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """Outputs (detached) of every parametrized weight layer of ``model`` on ``x``, by module name
    (one forward pass with hooks; attention's tuple output -> its first element)."""
    acts: dict[str, Tensor] = {}
    handles = []
    for name, (mod, _) in _layer_modules(model).items():
        def hook(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
            acts[name] = (out[0] if isinstance(out, tuple) else out).detach().clone()
        handles.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return acts


def full_batch_steps(model: nn.Module, data: tuple[Tensor, Tensor], lr: float, optimizer: str,
                     steps: int, crit: Callable[[Tensor, Tensor], Tensor], *, hooks: Sequence[Any] = (),
                     on_divergence: str = "continue") -> Any:
    """``steps`` full-batch updates of ``crit(model(X), y)`` with the per-layer rates of
    :func:`lazylab.parametrize.make_optimizer`, on the one training loop (:func:`lazylab.training.run`,
    data source ``NoData``); returns its ``History``. Cost: ``steps`` forward/backward passes on ``X``."""
    from lazylab import training
    from lazylab.training.optim import prebuilt

    X, y = data
    opt = make_optimizer(model, lr, optimizer)
    return training.run(training.LoopState(model), training.NoData(),
                        lambda st, _: (crit(st.model(X), y), None), prebuilt(opt), opt, steps,
                        hooks=hooks, on_divergence=on_divergence)


class _Record:
    """Hook: the rows of every layer's activations on ``X`` at step 0 and after every step."""

    def __init__(self, X: Tensor, roles: dict[str, str], width: int, seed: int) -> None:
        self.X, self.roles, self.width, self.seed = X, roles, width, seed
        self.rows: list[dict[str, Any]] = []
        self.h0: dict[str, Tensor] = {}

    def _add(self, t: int, ht: dict[str, Tensor]) -> None:
        for k, h in ht.items():
            self.rows.append({"width": self.width, "seed": self.seed, "step": t, "layer": k,
                              "role": self.roles[k], "act_rms": h.pow(2).mean().sqrt().item(),
                              "delta_rms": (h - self.h0[k]).pow(2).mean().sqrt().item()})

    def start(self, state: Any) -> None:
        self.h0 = record_layers(state.model, self.X)
        self._add(0, self.h0)

    def end_step(self, state: Any) -> None:
        self._add(state.step, record_layers(state.model, self.X))


def _one_run(model: nn.Module, data: tuple[Tensor, Tensor], optimizer: str, lr: float, steps: int,
             loss: Any, width: int, seed: int) -> list[dict[str, Any]]:
    rec = _Record(data[0], {k: r for k, (_, r) in _layer_modules(model).items()}, width, seed)
    full_batch_steps(model, data, lr, optimizer, steps, loss_fn(loss), hooks=[rec])
    return rec.rows


def coord_check(
    model_fn: Callable[[int], nn.Module], widths: Sequence[int], data: tuple[Tensor, Tensor], *,
    scheme: str = "mup", base_width: int | None = None, optimizer: str = "sgd", lr: float = 0.1,
    steps: int = 3, loss: str | Callable[[Tensor, Tensor], Tensor] = "mse",
    seeds: Sequence[int] = (0,), gain: float = 1.0, zero_output: bool = False,
    device: str | torch.device | None = None,
) -> Any:
    """The coordinate check (module docstring) as a long pandas DataFrame with columns
    ``width, seed, step, layer, role, act_rms, delta_rms``; ``base_width`` defaults to
    ``min(widths)``; ``gain`` and ``zero_output`` go to :func:`lazylab.parametrize`.
    Same seeds, same numbers. ``device``: where models and data live."""
    import pandas as pd

    ws = check_widths(widths)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if not (isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor)
                                                                       for t in data)):
        raise TypeError("data must be a pair (X, y) of tensors")
    bw = ws[0] if base_width is None else base_width
    dev = torch.device(device) if device is not None else data[0].device
    X, y = data[0].to(dev), data[1].to(dev)
    rows: list[dict[str, Any]] = []
    for seed in seeds:
        for w in ws:
            base, delta = model_fn(bw), model_fn(2 * bw)
            torch.manual_seed(int(seed))
            model = parametrize(model_fn(w), scheme, base=base, delta=delta, gain=gain,
                                zero_output=zero_output).to(dev)
            rows += _one_run(model, (X, y), optimizer, lr, steps, loss, w, int(seed))
    return pd.DataFrame(rows)


def width_exponents(df: Any, value: str = "delta_rms", step: int | None = None) -> Any:
    """Per layer: the fitted exponent ``p`` of ``value ~ width^p`` (seed means) at ``step``
    (default: the last) with its standard error. Columns ``layer, role, exponent, se``."""
    import pandas as pd

    if value not in df.columns:
        raise ValueError(f"value must be a column of the frame ({sorted(df.columns)}), got {value!r}")
    t = int(df["step"].max()) if step is None else step
    sub = df[df["step"] == t].groupby(["layer", "role", "width"], sort=False)[value].mean()
    rows = []
    for (layer, role), s in sub.groupby(level=[0, 1], sort=False):
        p, se = fit_exponent(s.index.get_level_values("width"), s.to_numpy())
        rows.append({"layer": layer, "role": role, "exponent": p, "se": se})
    return pd.DataFrame(rows)


class _CallableModule(_types.ModuleType):
    """``lazylab.coord_check`` is both this module and the function (the package attribute becomes the
    module once it is imported, so the module forwards calls to the function)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return coord_check(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
