"""How lazy is this run? ``diagnose`` trains a model next to its linearization and says.

``diagnose(model, (X, y), steps=..., lr=...)`` trains a copy of ``model`` as given (regime "full",
or ``lazy(model, alpha)`` with ``alpha=``) next to its linearized twin (same batches, lr, loss
scale) and tracks the kernel (:class:`lazylab.track.KernelTracker`), the weights
(:class:`lazylab.track.WeightChange`), the distance to the twin
(:class:`lazylab.track.LinearizedTwin`) and the stability of ReLU activations; it also computes
Chizat's kappa at init. The :class:`DiagnosisReport` holds the numbers, the verdict and the curves
(data only: :mod:`lazylab.lab.diagnosis_render` draws and writes them; the lab's experiment
``diagnose`` runs it with a store, sweeps and resume).

``alpha_crossover(model_fn, data)`` finds the scale ``alpha*`` where the relative kernel change after
training crosses a threshold (bisection in log alpha; Geiger et al. 2019), with the test error and
kernel change at every evaluated alpha.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lazylab import functional as fn
from lazylab import metrics as M
from lazylab.regimes import Lazy, lazy
from lazylab.track import KernelTracker, LinearizedTwin, WeightChange
from lazylab.trainer import train

__all__ = ["diagnose", "alpha_crossover", "DiagnosisReport", "CrossoverResult", "THRESHOLDS",
           "verdict_from"]

#: Verdict thresholds on the final relative kernel change ``||K_T - K_0||_F / ||K_0||_F`` and the
#: relative distance to the linearized twin ``||f_w - f_lin|| / ||f_lin||`` on the probe points.
THRESHOLDS: dict[str, float] = {"lazy_kernel": 0.1, "lazy_lin_gap": 0.1, "feature_kernel": 0.5}


def _check_thresholds(thresholds: Mapping[str, float]) -> Mapping[str, float]:
    """Refuse keys that are not in :data:`THRESHOLDS` and values that are not finite numbers."""
    unknown = sorted(set(thresholds) - set(THRESHOLDS))
    if unknown:
        raise ValueError(f"thresholds: unknown key(s) {unknown}; known keys: {sorted(THRESHOLDS)}")
    for k, v in thresholds.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"thresholds[{k!r}] must be a finite number >= 0, got {v!r}")
    return thresholds


def verdict_from(kernel_change: float, lin_gap: float,
                 thresholds: Mapping[str, float] = THRESHOLDS) -> tuple[str, list[str]]:
    """The verdict and the reasons, from the final relative kernel change and linearization gap.

    - ``"lazy"``: kernel change < ``lazy_kernel`` (0.1) **and** linearization gap < ``lazy_lin_gap``
      (0.1): the network is, to 10%, the kernel machine of its initial tangent kernel;
    - ``"feature learning"``: kernel change >= ``feature_kernel`` (0.5): the tangent kernel moved by
      at least half its norm;
    - ``"intermediate"`` otherwise.
    """
    t = {**THRESHOLDS, **_check_thresholds(thresholds)}
    kc, gap = float(kernel_change), float(lin_gap)
    why = [f"relative kernel change ||K_T - K_0||/||K_0|| = {kc:.3g}",
           f"relative distance to the linearized twin ||f - f_lin||/||f_lin|| = {gap:.3g}"]
    if kc < t["lazy_kernel"] and gap < t["lazy_lin_gap"]:
        why.append(f"both below the lazy thresholds ({t['lazy_kernel']:g}, {t['lazy_lin_gap']:g})")
        return "lazy", why
    if kc >= t["feature_kernel"]:
        why.append(f"kernel change >= the feature-learning threshold {t['feature_kernel']:g}")
        return "feature learning", why
    why.append(f"between the thresholds (lazy: kernel < {t['lazy_kernel']:g} and gap < "
               f"{t['lazy_lin_gap']:g}; feature learning: kernel >= {t['feature_kernel']:g})")
    return "intermediate", why


class _ActivationStability:
    """Tracker: :func:`lazylab.metrics.activation_stability` of the model against its init."""

    def __init__(self, x: Tensor) -> None:
        self.x = x
        self.model0: nn.Module | None = None

    def start(self, state: Any) -> None:
        self.model0 = copy.deepcopy(state.model)
        self.x = state.inputs_like_data(self.x)

    def __call__(self, state: Any) -> dict[str, float]:
        assert self.model0 is not None
        return {"activation_stability": M.activation_stability(self.model0, state.model, self.x)}


class _Twin(LinearizedTwin):
    """LinearizedTwin that also records the twin's train/test loss (``lin_train_loss``, ...)."""

    def __call__(self, state: Any) -> dict[str, float]:
        out = super().__call__(state)
        assert self.twin is not None
        mode = self.twin.training
        self.twin.eval()
        for split, X, y in (("train", state.X, state.y), ("test", state.X_test, state.y_test)):
            if X is not None and y is not None:
                out[f"lin_{split}_loss"] = state.loss(state.predict(self.twin, X), y).item()
        self.twin.train(mode)
        return out


def _has_relu(model: nn.Module) -> bool:
    return any(isinstance(m, M.RELU_TYPES) for m in model.modules())


def _check_data(data: Any, arg: str) -> tuple[fn.Inputs, Tensor]:
    ok = isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[1], Tensor) and (
        isinstance(data[0], (Tensor, tuple, list, dict)))
    if not ok:
        raise TypeError(f"{arg} must be a pair (X, y) of tensors, got {type(data).__name__}")
    X, y = data
    X = fn.check_inputs(X, f"{arg} X", finite=False)
    n = fn.batch_size(X)
    if n != y.shape[0] or n < 2:
        raise ValueError(f"{arg}: X and y need the same number (>= 2) of rows, got {n} and "
                         f"{y.shape[0]}")
    return X, y


@dataclass
class DiagnosisReport:
    """What :func:`diagnose` found. ``verdict`` is ``"lazy"``, ``"intermediate"`` or
    ``"feature learning"`` (rules: :func:`verdict_from`); ``numbers`` the final values behind it;
    ``history`` the tracked curves (pandas DataFrame, one row per recorded step); ``kernel`` the
    kernel snapshots' metrics; ``spectra`` ``{"init": eigenvalues, "final": eigenvalues}``.
    Data only: the lab renders it (:mod:`lazylab.lab.diagnosis_render`: markdown, figures, files)."""

    verdict: str
    reasons: list[str]
    numbers: dict[str, float]
    history: Any
    kernel: Any
    spectra: dict[str, np.ndarray]
    config: dict[str, Any]
    thresholds: dict[str, float]


def diagnose(
    model: nn.Module,
    data: tuple[Tensor, Tensor],
    *,
    test_data: tuple[Tensor, Tensor] | None = None,
    alpha: float | None = None,
    steps: int = 500,
    lr: float = 0.1,
    loss: str = "mse",
    optimizer: str = "gd",
    batch_size: int | None = None,
    n_probe: int = 64,
    n_snapshots: int = 15,
    kappa: bool = True,
    transitions: bool = False,
    thresholds: Mapping[str, float] | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    trackers: Sequence[Any] = (),
    extra_keys: Sequence[str] = (),
    **train_kwargs: Any,
) -> DiagnosisReport:
    """Train a copy of ``model`` on ``data`` and report how lazy the run was.

    The model (``lazy(model, alpha)`` when ``alpha`` is given: output ``alpha (h(w) - h(w0))``, loss
    times ``1/alpha**2``) is trained with :func:`lazylab.train` (``loss``, ``optimizer``, ``lr``,
    ``steps``, ``batch_size`` and any other ``train_kwargs``) alongside its linearized twin. Tracked on
    ``n_probe`` probe points (drawn with ``seed`` from ``test_data`` if given, else from ``data``):
    the tangent kernel at ``n_snapshots`` log-spaced steps (:class:`lazylab.track.KernelTracker`),
    ``||f - f_lin|| / ||f_lin||`` (:class:`lazylab.track.LinearizedTwin`), the relative weight change
    and, for ReLU networks, the stability of activations; kappa (Chizat et al. eq. 1) at init on the
    probe points. ``transitions=True`` adds :mod:`lazylab.transitions` detectors on the probe
    (``departure_step``, ``eta_lambda0``, ``catapult`` in ``numbers``). The verdict follows
    :func:`verdict_from` with ``thresholds`` (default :data:`THRESHOLDS`). The caller's ``model``
    is not modified.

    Extensible: ``trackers`` (extra :mod:`lazylab.track`-style trackers, e.g. transition detectors)
    run with the built-in ones; the final values of their keys named in ``extra_keys`` join
    ``numbers``.

    Cost: the training run, about twice again for the twin, plus ``n_snapshots`` NTKs of
    ``n_probe`` points and kappa's Lanczos iterations (about 100 forward-backward passes on the probe).
    """
    X, y = _check_diagnose_args(model, data, test_data, steps, n_probe)
    thr = {**THRESHOLDS, **_check_thresholds(thresholds or {})}
    net = copy.deepcopy(model)
    if device is not None:
        net = net.to(device)
    run_model = lazy(net, alpha) if alpha is not None else net
    px, py = _probe_points(test_data if test_data is not None else (X, y), n_probe, seed,
                           next(run_model.parameters()).device)
    numbers: dict[str, float] = {}
    if kappa:
        numbers["kappa"] = float(M.laziness_kappa(run_model, px, py, n_iter=15, n_outer=3, n_restarts=1,
                                                   seed=seed))
    kt = KernelTracker(px, py, total_steps=steps, n_snapshots=n_snapshots)
    tracked: list[Any] = [WeightChange(), _Twin(px), kt, *trackers]
    inner = run_model.model if isinstance(run_model, Lazy) else run_model
    if _has_relu(inner):
        tracked.append(_ActivationStability(px))
    detectors = _transition_detectors(px, steps, n_snapshots) if transitions else []
    tracked += detectors
    torch.manual_seed(seed)
    hist = train(run_model, (X, y), test_data=test_data, loss=loss, optimizer=optimizer, lr=lr,
                 steps=steps, batch_size=batch_size, trackers=tracked, seed=seed, device=device,
                 progress=progress, **train_kwargs)
    numbers.update(_final_numbers(hist, kt, extra_keys))
    if detectors:
        numbers.update(_transition_numbers(detectors))
    verdict, reasons = verdict_from(numbers["kernel_rel_change"], numbers.get("lin_gap_rel", math.nan), thr)
    config = _run_config(model, alpha, loss, optimizer, lr, steps, batch_size, X, test_data, px, seed)
    spectra = {"init": kt.spectra[min(kt.spectra)], "final": kt.spectra[max(kt.spectra)]}
    return DiagnosisReport(verdict, reasons, numbers, hist.to_frame(), kt.to_frame(), spectra, config, thr)


def _run_config(model: nn.Module, alpha: float | None, loss: str, optimizer: str, lr: float,
                steps: int, batch_size: int | None, X: fn.Inputs, test_data: Any, px: fn.Inputs,
                seed: int) -> dict[str, Any]:
    """The settings of a :func:`diagnose` run, as its report shows them (``DiagnosisReport.config``)."""
    return {"model": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters()),
            "alpha": alpha if alpha is not None else "none (model as given)", "loss": loss,
            "optimizer": optimizer, "lr": lr, "steps": steps, "batch_size": batch_size or "full",
            "train points": fn.batch_size(X),
            "test points": fn.batch_size(test_data[0]) if test_data else 0,
            "probe points": fn.batch_size(px), "seed": seed}


def _check_diagnose_args(model: Any, data: Any, test_data: Any, steps: Any, n_probe: Any
                         ) -> tuple[fn.Inputs, Tensor]:
    """Refuse bad arguments of :func:`diagnose` (naming the argument); return ``data``'s ``(X, y)``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    X, y = _check_data(data, "data")
    if test_data is not None:
        _check_data(test_data, "test_data")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not isinstance(n_probe, int) or n_probe < 2:
        raise ValueError(f"n_probe must be an integer >= 2, got {n_probe!r}")
    return X, y


def _transition_detectors(px: fn.Inputs, steps: int, n_snapshots: int) -> list[Any]:
    """The :mod:`lazylab.transitions` detectors on the probe (departure from the kernel regime,
    catapult), each evaluated every ``max(steps // n_snapshots, 1)`` steps."""
    from lazylab.transitions import Catapult, DepartureTime
    every = max(steps // n_snapshots, 1)
    return [DepartureTime(px, every=every), Catapult(px, every=every)]


def _transition_numbers(detectors: list[Any]) -> dict[str, float]:
    """``departure_step``, ``eta_lambda0`` and ``catapult`` from :func:`_transition_detectors`' pair."""
    numbers = {"departure_step": float(detectors[0].result()["departure_step"])}
    numbers.update({k: float(detectors[1].result()[k]) for k in ("eta_lambda0", "catapult")})
    return numbers


def _probe_points(src: tuple[Any, Tensor], n_probe: int, seed: int, dev: torch.device
                  ) -> tuple[fn.Inputs, Tensor]:
    """``min(n_probe, N)`` points of ``src`` drawn without replacement with ``seed``, on ``dev``."""
    gen = torch.Generator().manual_seed(int(seed))
    n_src = fn.batch_size(src[0])
    idx = torch.randperm(n_src, generator=gen)[: min(n_probe, n_src)]
    return fn.cast_inputs(fn.take(src[0], idx), dev), src[1][idx].to(dev)


_FINAL_KEYS = ("rel_weight_change", "lin_gap_rel", "activation_stability", "train_loss", "test_loss",
               "test_acc", "lin_train_loss", "lin_test_loss")


def _final_numbers(hist: Any, kt: KernelTracker, extra_keys: Sequence[str] = ()) -> dict[str, float]:
    """The numbers behind the verdict: final tracked values, kernel metrics at the end (and kta /
    effective rank at init), the train loss at init and its relative drop."""
    numbers: dict[str, float] = {}
    fin = hist.final
    for key in (*_FINAL_KEYS, *extra_keys):
        if key in fin:
            numbers[key] = float(fin[key])
    last, first = kt.records[-1], kt.records[0]
    for key in ("kernel_rel_change", "kernel_dist", "kernel_cka0", "kernel_kta", "kernel_eff_rank"):
        if key in last:
            numbers[key] = float(last[key])
    for key in ("kernel_kta", "kernel_eff_rank"):
        if key in first:
            numbers[f"{key}_init"] = float(first[key])
    numbers["train_loss_init"] = float(hist.records[0]["train_loss"])
    numbers["steps"] = float(hist.steps)
    l0, l1 = numbers["train_loss_init"], numbers["train_loss"]
    numbers["train_loss_drop"] = (l0 - l1) / l0 if l0 > 0 else 0.0
    return numbers


# ----------------------------------------------------------------------------------- alpha crossover
@dataclass
class CrossoverResult:
    """``alpha_star`` (None when the threshold is not crossed in the range), ``table`` (pandas: one
    row per evaluated alpha: ``alpha, kernel_rel_change, test_error, train_loss, phase`` with phase
    ``grid`` or ``bisection``), ``threshold``, ``bracket`` (the final ``(lo, hi)``). Data only:
    :mod:`lazylab.lab.diagnosis_render` draws and writes it."""

    alpha_star: float | None
    table: Any
    threshold: float
    bracket: tuple[float, float] | None
    error_name: str
    message: str = ""

def _crossover_run(model_fn: Callable[[], nn.Module], alpha: float, X: Tensor, y: Tensor,
                   test_data: Any, px: Tensor, steps: int, lr: float, loss: str, seed: int,
                   train_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Train ``lazy(model_fn(), alpha)``; its kernel change, test error (and the error's name)."""
    torch.manual_seed(seed)
    net = model_fn()
    if not isinstance(net, nn.Module):
        raise TypeError(f"model_fn must return a torch.nn.Module, got {type(net).__name__}")
    kt = KernelTracker(px, schedule=[steps])
    hist = train(lazy(net, alpha), (X, y), test_data=test_data, loss=loss, lr=lr, steps=steps,
                 trackers=[kt], track_steps=[0, steps], seed=seed, on_divergence="stop", **train_kwargs)
    fin = hist.final
    if "test_acc" in fin:
        err, name = 1.0 - fin["test_acc"], "test error (1 - accuracy)"
    elif "test_loss" in fin:
        err, name = fin["test_loss"], f"test loss ({loss})"
    else:
        err, name = fin.get("train_loss", math.nan), f"train loss ({loss})"
    change = kt.records[-1]["kernel_rel_change"] if hist.stopped != "diverged" else math.nan
    return {"alpha": alpha, "kernel_rel_change": change, "test_error": err,
            "train_loss": fin.get("train_loss", math.nan), "stopped": hist.stopped, "error_name": name}


def alpha_crossover(
    model_fn: Callable[[], nn.Module],
    data: tuple[Tensor, Tensor],
    *,
    test_data: tuple[Tensor, Tensor] | None = None,
    threshold: float = 0.1,
    alpha_range: tuple[float, float] = (1e-2, 1e3),
    n_grid: int = 6,
    tol: float = 0.1,
    max_bisect: int = 20,
    steps: int = 300,
    lr: float = 0.5,
    loss: str = "mse",
    n_probe: int = 32,
    seed: int = 0,
    **train_kwargs: Any,
) -> CrossoverResult:
    """Find ``alpha*`` where the relative kernel change ``||K_T - K_0||_F / ||K_0||_F`` after training
    ``lazy(model_fn(), alpha)`` crosses ``threshold`` (Geiger et al. 2019: large alpha = lazy, small
    alpha = feature learning).

    ``model_fn()`` builds a fresh model (called after ``torch.manual_seed(seed)``, so every alpha
    starts from the same weights when ``model_fn`` draws them from torch's global generator). First a
    grid of ``n_grid`` log-spaced alphas in ``alpha_range`` (for the plot); then bisection in
    ``log10 alpha`` inside the grid interval where the change crosses ``threshold``, until the
    bracket is narrower than ``tol`` decades; ``alpha*`` is the bracket's geometric midpoint. The
    kernel is the tangent kernel on ``n_probe`` probe points (test set if given). Test error: 1 -
    accuracy for classification, the test loss otherwise (train loss without ``test_data``).
    Cost: ``n_grid + log2(width / tol)`` training runs of ``steps`` steps, two NTKs each.
    """
    lo, hi = (float(a) for a in alpha_range)
    if not (0 < lo < hi and math.isfinite(hi)):
        raise ValueError(f"alpha_range must be (lo, hi) with 0 < lo < hi, got {alpha_range!r}")
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold!r}")
    if not callable(model_fn):
        raise TypeError(f"model_fn must be a callable returning an nn.Module, got {type(model_fn).__name__}")
    X, y = _check_data(data, "data")
    src = test_data if test_data is not None else (X, y)
    idx = torch.randperm(src[0].shape[0], generator=torch.Generator().manual_seed(seed))[:n_probe]
    px = src[0][idx]
    rows: list[dict[str, Any]] = []
    error_name = ["error"]

    def run(alpha: float, phase: str) -> float:
        row = _crossover_run(model_fn, alpha, X, y, test_data, px, steps, lr, loss, seed, train_kwargs)
        error_name[0] = row.pop("error_name")
        rows.append({**row, "phase": phase})
        return row["kernel_rel_change"]

    grid = np.geomspace(lo, hi, max(n_grid, 2))
    changes = [run(float(a), "grid") for a in grid]
    bracket = None
    for a, b, ca, cb in zip(grid[:-1], grid[1:], changes[:-1], changes[1:]):
        if ca >= threshold > cb:
            bracket = (float(a), float(b))
            break
    import pandas as pd

    if bracket is None:
        msg = (f"the kernel change does not cross {threshold:g} from above in alpha_range "
               f"({changes[0]:.3g} at alpha={lo:g}, {changes[-1]:.3g} at alpha={hi:g}); widen the range")
        return CrossoverResult(None, pd.DataFrame(rows), threshold, None, error_name[0], msg)
    a, b = bracket
    for _ in range(max_bisect):
        if math.log10(b / a) <= tol:
            break
        mid = math.sqrt(a * b)
        c = run(mid, "bisection")
        if c >= threshold:
            a = mid
        else:
            b = mid
    return CrossoverResult(math.sqrt(a * b), pd.DataFrame(rows), threshold, (a, b), error_name[0])
