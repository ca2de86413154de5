"""How lazy is this run? ``diagnose`` trains a model next to its linearization and says.

``diagnose(model, (X, y), steps=..., lr=...)`` trains a copy of ``model`` as given (regime "full",
or ``lazy(model, alpha)`` with ``alpha=``) next to its linearized twin (same batches, lr, loss
scale) and tracks the kernel (:class:`lazylab.track.KernelTracker`), the weights
(:class:`lazylab.track.WeightChange`), the distance to the twin
(:class:`lazylab.track.LinearizedTwin`) and the stability of ReLU activations; it also computes
Chizat's kappa at init. The :class:`DiagnosisReport` holds the numbers, the verdict, figures and a
markdown report.

``alpha_crossover(model_fn, data)`` finds the scale ``alpha*`` where the relative kernel change after
training crosses a threshold (bisection in log alpha; Geiger et al. 2019) and plots test error and
kernel change against alpha.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lazylab import metrics as M
from lazylab.regimes import Lazy, lazy
from lazylab.track import KernelTracker, LinearizedTwin, WeightChange
from lazylab.trainer import train

__all__ = ["diagnose", "alpha_crossover", "DiagnosisReport", "CrossoverResult", "THRESHOLDS",
           "verdict_from"]

#: Verdict thresholds on the final relative kernel change ``||K_T - K_0||_F / ||K_0||_F`` and the
#: relative distance to the linearized twin ``||f_w - f_lin|| / ||f_lin||`` on the probe points.
THRESHOLDS: dict[str, float] = {"lazy_kernel": 0.1, "lazy_lin_gap": 0.1, "feature_kernel": 0.5}


def verdict_from(kernel_change: float, lin_gap: float,
                 thresholds: Mapping[str, float] = THRESHOLDS) -> tuple[str, list[str]]:
    """The verdict and the reasons, from the final relative kernel change and linearization gap.

    - ``"lazy"``: kernel change < ``lazy_kernel`` (0.1) **and** linearization gap < ``lazy_lin_gap``
      (0.1): the network is, to 10%, the kernel machine of its initial tangent kernel;
    - ``"feature learning"``: kernel change >= ``feature_kernel`` (0.5): the tangent kernel moved by
      at least half its norm;
    - ``"intermediate"`` otherwise.
    """
    t = {**THRESHOLDS, **thresholds}
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
        self.x = self.x.to(state.X.device, state.X.dtype)

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


def _check_data(data: Any, arg: str) -> tuple[Tensor, Tensor]:
    if not isinstance(data, (tuple, list)) or len(data) != 2 or not all(isinstance(t, Tensor) for t in data):
        raise TypeError(f"{arg} must be a pair (X, y) of tensors, got {type(data).__name__}")
    X, y = data
    if X.shape[0] != y.shape[0] or X.shape[0] < 2:
        raise ValueError(f"{arg}: X and y need the same number (>= 2) of rows, got {X.shape[0]} and "
                         f"{y.shape[0]}")
    return X, y


@dataclass
class DiagnosisReport:
    """What :func:`diagnose` found. ``verdict`` is ``"lazy"``, ``"intermediate"`` or
    ``"feature learning"`` (rules: :func:`verdict_from`); ``numbers`` the final values behind it;
    ``history`` the tracked curves (pandas DataFrame, one row per recorded step); ``kernel`` the
    kernel snapshots' metrics; ``spectra`` ``{"init": eigenvalues, "final": eigenvalues}``.
    ``figures`` (name -> matplotlib Figure), ``to_markdown()``, ``save(dir)``."""

    verdict: str
    reasons: list[str]
    numbers: dict[str, float]
    history: Any
    kernel: Any
    spectra: dict[str, np.ndarray]
    config: dict[str, Any]
    thresholds: dict[str, float]
    _figures: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def figures(self) -> dict[str, Any]:
        """``{"curves": Figure, "spectrum": Figure}`` (``matplotlib.figure.Figure`` objects, built on
        first access without pyplot)."""
        if self._figures is None:
            self._figures = {"curves": _curves_figure(self), "spectrum": _spectrum_figure(self)}
        return self._figures

    def to_markdown(self, figure_dir: str = "figures") -> str:
        """The report: verdict with its numbers and thresholds, a table of final metrics, the
        configuration, and links to ``figure_dir/diagnose_<name>.png``."""
        n = self.numbers
        lines = [f"# How lazy is this run? Verdict: **{self.verdict}**", ""]
        lines += [f"- {r}" for r in self.reasons]
        lines += ["", "Thresholds: lazy if kernel change < {lazy_kernel:g} and linearization gap < "
                  "{lazy_lin_gap:g}; feature learning if kernel change >= {feature_kernel:g}; "
                  "intermediate otherwise.".format(**self.thresholds), ""]
        for key, who in (("lin_train_loss", "linearized twin"), ("train_loss", "model")):
            if key in n and not math.isfinite(n[key]):
                lines += [f"**Warning**: the {who}'s training diverged (train loss {n[key]}); the lr is "
                          "above its stability limit (about 2 / largest eigenvalue of the loss Hessian). "
                          "Lower the lr; the numbers below are not meaningful.", ""]
        if n.get("train_loss_drop", 1.0) < 0.1 and math.isfinite(n.get("train_loss", 0.0)):
            lines += ["**Warning**: the training loss fell by less than 10% "
                      f"({100 * n['train_loss_drop']:.1f}%); the run barely trained, so little can "
                      "have changed. Train longer or with a larger lr before trusting the verdict.", ""]
        lines += ["## Numbers (end of training unless stated)", "", "| quantity | value |", "|---|---|"]
        for key, label in _LABELS.items():
            if key in n and n[key] is not None and not (isinstance(n[key], float) and math.isnan(n[key])):
                lines.append(f"| {label} | {n[key]:.4g} |")
        lines += ["", "## Setup", "", "| setting | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in self.config.items()]
        lines += ["", "## Figures", ""]
        for name in ("curves", "spectrum"):
            lines.append(f"![{name}]({figure_dir}/diagnose_{name}.png)")
        lines += ["", "Metric definitions: `lazylab.metrics` (kernel change: Geiger et al. 2019; kernel "
                  "distance: Fort et al. 2020; kappa: Chizat et al. 2019 eq. 1; activation stability: "
                  "Chizat et al. 2019 App C.2)."]
        return "\n".join(lines) + "\n"

    def save(self, out: str | os.PathLike) -> Path:
        """Write ``out/report.md``, ``out/figures/diagnose_*.png``, ``out/history.csv`` and
        ``out/kernel.csv``; returns the path of report.md."""
        out = Path(out)
        (out / "figures").mkdir(parents=True, exist_ok=True)
        for name, fig in self.figures.items():
            fig.savefig(out / "figures" / f"diagnose_{name}.png", dpi=110, bbox_inches="tight")
        self.history.to_csv(out / "history.csv", index=False)
        self.kernel.to_csv(out / "kernel.csv", index=False)
        path = out / "report.md"
        path.write_text(self.to_markdown())
        return path


_LABELS = {
    "kernel_rel_change": "relative kernel change ‖K_T − K_0‖/‖K_0‖",
    "kernel_dist": "kernel distance 1 − cos(K_T, K_0)",
    "kernel_cka0": "CKA(K_T, K_0)",
    "lin_gap_rel": "distance to linearized twin ‖f − f_lin‖/‖f_lin‖ (probe)",
    "rel_weight_change": "relative weight change ‖w − w0‖/‖w0‖",
    "activation_stability": "ReLU activation stability (fraction of signs kept)",
    "kappa": "Chizat's kappa at init (probe)",
    "kernel_kta_init": "kernel-target alignment at init",
    "kernel_kta": "kernel-target alignment at the end",
    "kernel_eff_rank_init": "kernel effective rank at init",
    "kernel_eff_rank": "kernel effective rank at the end",
    "train_loss_init": "train loss at init",
    "train_loss": "train loss",
    "lin_train_loss": "train loss of the linearized twin",
    "test_loss": "test loss",
    "lin_test_loss": "test loss of the linearized twin",
    "test_acc": "test accuracy",
    "steps": "steps trained",
}


def _plot_xy(ax: Any, x: np.ndarray, y: np.ndarray, label: str, **kw: Any) -> None:
    ok = np.isfinite(y)
    ax.plot(np.maximum(x[ok], 0.5), y[ok], marker=".", label=label, **kw)


def _curves_figure(rep: DiagnosisReport) -> Any:
    from matplotlib.figure import Figure  # no pyplot: no global state, any backend

    h, k = rep.history, rep.kernel
    fig = Figure(figsize=(10, 7))
    axes = fig.subplots(2, 2)
    s = h["step"].to_numpy(float)
    ax = axes[0, 0]
    for col, lab, ls in (("train_loss", "train (model)", "-"), ("lin_train_loss", "train (linearized)", "--"),
                         ("test_loss", "test (model)", "-"), ("lin_test_loss", "test (linearized)", "--")):
        if col in h:
            _plot_xy(ax, s, h[col].to_numpy(float), lab, ls=ls)
    ax.set(xscale="log", yscale="log", xlabel="step (0 drawn at 0.5)", title="loss")
    ax.legend(fontsize=8)
    ax = axes[0, 1]
    ks = k["step"].to_numpy(float)
    for col, lab in (("kernel_rel_change", "‖K_t − K_0‖/‖K_0‖"), ("kernel_dist", "1 − cos(K_t, K_0)")):
        _plot_xy(ax, ks, k[col].to_numpy(float), lab)
    ax.axhline(rep.thresholds["lazy_kernel"], color="g", ls=":", lw=1, label="lazy threshold")
    ax.axhline(rep.thresholds["feature_kernel"], color="r", ls=":", lw=1, label="feature threshold")
    ax.set(xscale="log", xlabel="step", title="kernel change")
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax = axes[1, 0]
    for col, lab in (("rel_weight_change", "‖w − w0‖/‖w0‖"), ("lin_gap_rel", "‖f − f_lin‖/‖f_lin‖")):
        if col in h:
            _plot_xy(ax, s, h[col].to_numpy(float), lab)
    ax.set(xscale="log", xlabel="step", title="distance from the linearization")
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax = axes[1, 1]
    if "activation_stability" in h:
        _plot_xy(ax, s, h["activation_stability"].to_numpy(float), "ReLU sign stability")
    if "kernel_kta" in k:
        _plot_xy(ax, ks, k["kernel_kta"].to_numpy(float), "kernel-target alignment")
    _plot_xy(ax, ks, k["kernel_cka0"].to_numpy(float), "CKA(K_t, K_0)")
    ax.set(xscale="log", xlabel="step", title="alignment and stability", ylim=(-0.05, 1.05))
    ax.legend(fontsize=8)
    fig.suptitle(f"verdict: {rep.verdict}  (kernel change {rep.numbers['kernel_rel_change']:.3g}, "
                 f"linearization gap {rep.numbers.get('lin_gap_rel', float('nan')):.3g})")
    fig.tight_layout()
    return fig


def _spectrum_figure(rep: DiagnosisReport) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
    for name, ls in (("init", "-"), ("final", "--")):
        lam = rep.spectra[name]
        lam = lam[lam > 0] / lam.max()
        ax.plot(np.arange(1, lam.size + 1), lam, ls, marker=".", label=f"K at {name}")
    ax.set(xscale="log", yscale="log", xlabel="index", ylabel="eigenvalue / largest",
           title="tangent kernel spectrum on the probe set")
    ax.legend()
    fig.tight_layout()
    return fig


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
    :func:`verdict_from` with ``thresholds`` (default
    :data:`THRESHOLDS`). The caller's ``model`` is not modified.

    Cost: the training run, about twice again for the twin, plus ``n_snapshots`` NTKs of
    ``n_probe`` points and kappa's Lanczos iterations (about 100 forward-backward passes on the probe).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    X, y = _check_data(data, "data")
    if test_data is not None:
        _check_data(test_data, "test_data")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not isinstance(n_probe, int) or n_probe < 2:
        raise ValueError(f"n_probe must be an integer >= 2, got {n_probe!r}")
    thr = {**THRESHOLDS, **(thresholds or {})}
    net = copy.deepcopy(model)
    if device is not None:
        net = net.to(device)
    run_model = lazy(net, alpha) if alpha is not None else net
    src = test_data if test_data is not None else (X, y)
    gen = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(src[0].shape[0], generator=gen)[: min(n_probe, src[0].shape[0])]
    dev = next(run_model.parameters()).device
    px, py = src[0][idx].to(dev), src[1][idx].to(dev)

    numbers: dict[str, float] = {}
    if kappa:
        numbers["kappa"] = float(M.laziness_kappa(run_model, px, py, n_iter=15, n_outer=3, n_restarts=1,
                                                   seed=seed))
    kt = KernelTracker(px, py, total_steps=steps, n_snapshots=n_snapshots)
    trackers: list[Any] = [WeightChange(), _Twin(px), kt]
    inner = run_model.model if isinstance(run_model, Lazy) else run_model
    if _has_relu(inner):
        trackers.append(_ActivationStability(px))
    if transitions:  # detectors of lazylab.transitions (departure from the kernel regime, catapult)
        from lazylab.transitions import Catapult, DepartureTime
        every = max(steps // n_snapshots, 1)
        trackers += [DepartureTime(px, every=every), Catapult(px, every=every)]
    torch.manual_seed(seed)
    hist = train(run_model, (X, y), test_data=test_data, loss=loss, optimizer=optimizer, lr=lr,
                 steps=steps, batch_size=batch_size, trackers=trackers, seed=seed, device=device,
                 progress=progress, **train_kwargs)
    h = hist.to_frame()
    kf = kt.to_frame()
    fin = hist.final
    for key in ("rel_weight_change", "lin_gap_rel", "activation_stability", "train_loss", "test_loss",
                "test_acc", "lin_train_loss", "lin_test_loss"):
        if key in fin:
            numbers[key] = float(fin[key])
    last, first = kt.records[-1], kt.records[0]
    for key in ("kernel_rel_change", "kernel_dist", "kernel_cka0", "kernel_kta", "kernel_eff_rank"):
        if key in last:
            numbers[key] = float(last[key])
    for key in ("kernel_kta", "kernel_eff_rank"):
        if key in first:
            numbers[f"{key}_init"] = float(first[key])
    if transitions:
        numbers.update({k: float(v) for k, v in trackers[-2].result().items() if k == "departure_step"})
        numbers.update({k: float(trackers[-1].result()[k]) for k in ("eta_lambda0", "catapult")})
    numbers["train_loss_init"] = float(hist.records[0]["train_loss"])
    numbers["steps"] = float(hist.steps)
    l0, l1 = numbers["train_loss_init"], numbers["train_loss"]
    numbers["train_loss_drop"] = (l0 - l1) / l0 if l0 > 0 else 0.0
    verdict, reasons = verdict_from(numbers["kernel_rel_change"], numbers.get("lin_gap_rel", math.nan), thr)
    config = {"model": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters()),
              "alpha": alpha if alpha is not None else "none (model as given)", "loss": loss,
              "optimizer": optimizer, "lr": lr, "steps": steps, "batch_size": batch_size or "full",
              "train points": X.shape[0], "test points": test_data[0].shape[0] if test_data else 0,
              "probe points": px.shape[0], "seed": seed}
    spectra = {"init": kt.spectra[min(kt.spectra)], "final": kt.spectra[max(kt.spectra)]}
    return DiagnosisReport(verdict, reasons, numbers, h, kf, spectra, config, thr)


# ----------------------------------------------------------------------------------- alpha crossover
@dataclass
class CrossoverResult:
    """``alpha_star`` (None when the threshold is not crossed in the range), ``table`` (pandas: one
    row per evaluated alpha: ``alpha, kernel_rel_change, test_error, train_loss, phase`` with phase
    ``grid`` or ``bisection``), ``threshold``, ``bracket`` (the final ``(lo, hi)``), ``figure``,
    ``save(dir)``."""

    alpha_star: float | None
    table: Any
    threshold: float
    bracket: tuple[float, float] | None
    error_name: str
    message: str = ""
    _figure: Any = field(default=None, repr=False)

    @property
    def figure(self) -> Any:
        if self._figure is None:
            self._figure = _crossover_figure(self)
        return self._figure

    def to_markdown(self) -> str:
        head = (f"alpha* = {self.alpha_star:.4g} (kernel change crosses {self.threshold:g}; bracket "
                f"{self.bracket[0]:.4g} .. {self.bracket[1]:.4g})" if self.alpha_star is not None
                and self.bracket is not None else f"no crossover: {self.message}")
        return f"# Alpha crossover\n\n{head}\n\n{_md_table(self.table)}\n\n" \
               "![crossover](figures/alpha_crossover.png)\n"

    def save(self, out: str | os.PathLike) -> Path:
        out = Path(out)
        (out / "figures").mkdir(parents=True, exist_ok=True)
        self.figure.savefig(out / "figures" / "alpha_crossover.png", dpi=110, bbox_inches="tight")
        self.table.to_csv(out / "alpha_crossover.csv", index=False)
        path = out / "crossover.md"
        path.write_text(self.to_markdown())
        return path


def _md_table(df: Any) -> str:
    """A pandas DataFrame as a markdown table (floats with 4 significant digits)."""
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    rows = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    rows += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join(rows)


def _crossover_figure(res: CrossoverResult) -> Any:
    from matplotlib.figure import Figure

    t = res.table.sort_values("alpha")
    t = t.assign(test_error=t["test_error"].where(t["stopped"] != "diverged"))  # no curve through blow-ups
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(t["alpha"], t["kernel_rel_change"], "o-", color="C0", label="‖K_T − K_0‖/‖K_0‖")
    ax.axhline(res.threshold, color="C0", ls=":", lw=1)
    if res.alpha_star is not None:
        ax.axvline(res.alpha_star, color="k", ls="--", lw=1, label=f"α* = {res.alpha_star:.3g}")
    ax.set(xscale="log", yscale="log", xlabel="α", ylabel="relative kernel change")
    ax2 = ax.twinx()
    ax2.plot(t["alpha"], t["test_error"], "s-", color="C3", label=res.error_name)
    ax2.set_ylabel(res.error_name, color="C3")
    lines = ax.get_legend_handles_labels()
    l2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + l2[0], lines[1] + l2[1], fontsize=8, loc="center right")
    div = res.table.loc[res.table["stopped"] == "diverged", "alpha"]
    ax.set_title("lazy ↔ feature crossover" + (f" (diverged: α = {', '.join(f'{a:g}' for a in div)})"
                                                if len(div) else ""))
    fig.tight_layout()
    return fig


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
        torch.manual_seed(seed)
        net = model_fn()
        if not isinstance(net, nn.Module):
            raise TypeError(f"model_fn must return a torch.nn.Module, got {type(net).__name__}")
        kt = KernelTracker(px, schedule=[steps])
        hist = train(lazy(net, alpha), (X, y), test_data=test_data, loss=loss, lr=lr, steps=steps,
                     trackers=[kt], track_steps=[0, steps], seed=seed, on_divergence="stop", **train_kwargs)
        fin = hist.final
        if "test_acc" in fin:
            err, error_name[0] = 1.0 - fin["test_acc"], "test error (1 - accuracy)"
        elif "test_loss" in fin:
            err, error_name[0] = fin["test_loss"], f"test loss ({loss})"
        else:
            err, error_name[0] = fin.get("train_loss", math.nan), f"train loss ({loss})"
        change = kt.records[-1]["kernel_rel_change"] if hist.stopped != "diverged" else math.nan
        rows.append({"alpha": alpha, "kernel_rel_change": change, "test_error": err,
                     "train_loss": fin.get("train_loss", math.nan), "stopped": hist.stopped, "phase": phase})
        return change

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
