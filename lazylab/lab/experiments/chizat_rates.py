"""``chizat-rates``: the lazy-training rates of Chizat, Oyallon & Bach (2019), Theorems 2.2 / 2.4.

Model: a smooth two-layer net ``h = lazylab.TwoLayerNet(d, m, activation)`` (tanh by default, NTK
scaling), wrapped as ``lazylab.lazy(h, alpha, center)``: ``alpha * (h(w) - h(w0))`` (``copy``) or
``alpha * (h(w_a) - h(w_b)) / sqrt(2)`` with ``w_a(0) = w_b(0)`` (``symmetric``, the doubling trick),
trained by full-batch GD on ``R(alpha h) / alpha^2`` (eq. 2; lazylab's trainer applies
``loss_scale = 1/alpha^2``) with the same step for every alpha: a fixed horizon T in the theorem's
time. ``lazylab.track.LinearizedTwin`` trains the linearized model ``alpha hbar`` in step (same
batches, step, loss scale), and every ``track_every`` steps we record

- ``sup_w``: ``sup_t ||w(t) - w0||`` (both copies for ``symmetric``),
- ``sup_f``: ``sup_t ||alpha h(w(t)) - alpha hbar(wbar(t))||`` on the training inputs (Frobenius),
- ``sup_p``: ``sup_t ||w(t) - wbar(t)||``.

Theorem 2.2 (``h(w0) = 0``, finite horizon): ``sup_w = O(1/alpha)``, ``sup_f = O(1/alpha)``,
``sup_p = O(1/alpha^2)``: log-log slopes -1, -1, -2. With the symmetrized model the second-order
term of ``h(w_a) - h(w_b)`` cancels (``w_a - w0 = -(w_b - w0)`` to first order), so the function gap
falls faster than 1/alpha (docs/papers.md §1.1 [D]).

Cost of one cell: ``steps`` GD steps on n points, each about 3-4 forwards of O(n d m) (model, its
centering copy, the linearized twin's jvp).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from lazylab.lab.registry import Check, Experiment, Preset, Report, RunContext, check, register
from lazylab.lab.rules import ACTIVATION, ALPHA, POSITIVE, Rule, one_of

GAPS = (("sup_w", r"$\sup_t\|w-w_0\|$", -1.0),
        ("sup_f", r"$\sup_t\|\alpha h(w)-\alpha\bar h(\bar w)\|$", -1.0),
        ("sup_p", r"$\sup_t\|w-\bar w\|$", -2.0))


@dataclass
class ChizatRatesConfig:
    seed: int = 0
    alpha: float = 1.0
    center: str = "copy"        # copy | symmetric
    d: int = 5
    m: int = 50
    m0: int = 3                 # teacher width
    n: int = 40
    activation: str = "tanh"    # smooth (Assumption 2.1: Dh locally Lipschitz)
    lr: float = 0.5
    steps: int = 200
    track_every: int = 10
    slope_tol: float = 0.2      # |slope - expected| allowed in the checks

    RULES: ClassVar[dict[str, Rule]] = {
        "alpha": ALPHA, "center": one_of("copy", "symmetric"), "d": POSITIVE, "m": POSITIVE,
        "m0": POSITIVE, "n": POSITIVE, "activation": ACTIVATION, "lr": POSITIVE, "steps": POSITIVE,
        "track_every": POSITIVE, "slope_tol": POSITIVE}


def run_cell(cfg: ChizatRatesConfig, ctx: RunContext) -> list[dict]:
    """One cell (see the module docstring); torch threads: the run option ``--threads``."""
    from lazylab.lab.experiments._chizat_common import cell_threads

    with cell_threads(0):  # threads: the run option --threads
        return _run_cell(cfg, ctx)


def _run_cell(cfg: ChizatRatesConfig, ctx: RunContext) -> list[dict]:
    """Train ``lazy(net, alpha, center)`` with its linearized twin; one record of the sup gaps."""
    import torch

    from lazylab.lab.experiments._chizat_common import teacher_data
    from lazylab.models import TwoLayerNet
    from lazylab.regimes import lazy
    from lazylab.track import LinearizedTwin, WeightChange
    from lazylab.trainer import train

    if cfg.center not in ("copy", "symmetric"):
        raise ValueError(f"center must be 'copy' or 'symmetric', got {cfg.center!r}")
    (X, y), _, _, _ = teacher_data(cfg.d, cfg.m0, cfg.n, 1, cfg.seed, dtype=torch.float64)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
        torch.manual_seed(cfg.seed)
        net = TwoLayerNet(cfg.d, cfg.m, activation=cfg.activation, scaling="ntk").double()
    model = lazy(net, cfg.alpha, center=cfg.center)
    hist = train(model, (X, y), loss="mse", optimizer="gd", lr=cfg.lr, steps=cfg.steps,
                 trackers=[WeightChange(), LinearizedTwin(X)], track_steps=max(cfg.track_every, 1),
                 device=ctx.device, seed=cfg.seed, progress=False)
    return [{"step": int(hist.steps), "sup_w": hist.max("weight_dist"), "sup_f": hist.max("lin_gap"),
             "sup_p": hist.max("param_gap"), "train_loss_end": float(hist.final["train_loss"]),
             "train_loss_0": float(hist.records[0]["train_loss"])}]


def _fit(sub) -> dict[str, float]:
    from lazylab.lab.experiments._chizat_common import loglog_slope

    mean = sub.groupby("alpha")[[k for k, _, _ in GAPS]].mean()
    a = mean.index.to_numpy(float)
    return {k: loglog_slope(a, mean[k].to_numpy(float)) for k, _, _ in GAPS}


SRC = "Chizat et al. 2019 Thm 2.2 [P], docs/papers.md §1.1; tolerance slope_tol"


def report(df, base: ChizatRatesConfig) -> Report:
    import matplotlib.pyplot as plt

    from lazylab.lab.experiments._common import per_seed

    metrics: dict[str, float] = {}
    checks: list[Check] = []
    centers = [c for c in ("copy", "symmetric") if c in set(df["center"])]
    fig, axes = plt.subplots(1, len(centers), figsize=(5 * len(centers), 4), squeeze=False)
    tol = base.slope_tol
    for ax, center in zip(axes[0], centers):
        sub = df[df["center"] == center]
        slopes = _fit(sub)
        mean = sub.groupby("alpha")[[k for k, _, _ in GAPS]].mean()
        a = mean.index.to_numpy(float)
        for (k, label, _), col in zip(GAPS, ("C0", "C1", "C2")):
            metrics[f"slope_{k}_{center}"] = slopes[k]
            ax.loglog(a, mean[k], "o-", color=col, label=f"{label}: slope {slopes[k]:.2f}")
        ax.set_xlabel(r"$\alpha$")
        ax.set_title(f"center = {center}")
        ax.legend(fontsize=8)
        per = {k: per_seed(sub, lambda g, k=k: _fit(g)[k]) for k, _, _ in GAPS}
        if center == "copy":
            for k, _, target in GAPS:
                checks.append(check(f"copy: log-log slope of {k} vs alpha", None, target,
                                    atol=tol, source=SRC + " (rates -1, -1, -2)", seeds=per[k]))
        else:
            checks.append(check("symmetric: log-log slope of sup_w vs alpha", None, -1.0,
                                atol=tol, source=SRC, seeds=per["sup_w"]))
            checks.append(check("symmetric: slope of sup_f (function gap) faster than 1/alpha",
                                None, -1.0 - 2.5 * tol, op="<", seeds=per["sup_f"],
                                source="our derivation [D], docs/papers.md §1.1 (second-order "
                                "term cancels)"))
    axes[0][0].set_ylabel("gap (sup over the tracked steps)")
    fig.suptitle(f"Chizat et al. Thm 2.2: {base.activation} two-layer net, d={base.d}, m={base.m}, "
                 f"n={base.n}, {base.steps} GD steps (lr {base.lr:g})", fontsize=9)
    fig.tight_layout()
    if set(centers) == {"copy", "symmetric"}:
        c = df[df["center"] == "copy"].groupby("alpha")["sup_f"].mean()
        s = df[df["center"] == "symmetric"].groupby("alpha")["sup_f"].mean()
        metrics["sup_f_copy_over_symmetric@max_alpha"] = float(c.iloc[-1] / s.iloc[-1])
    table = (df.groupby(["center", "alpha"])[["sup_w", "sup_f", "sup_p", "train_loss_0",
                                               "train_loss_end"]].mean().reset_index())
    notes = (
        "Theorem 2.2 of Chizat, Oyallon & Bach (2019) with h(w0) = 0: over a fixed horizon "
        "sup‖w − w0‖ = O(1/α), sup‖αh(w) − αh̄(w̄)‖ = O(1/α), sup‖w − w̄‖ = O(1/α²). Slopes are "
        "least-squares fits of log gap against log α over all α of the sweep (means over seeds). "
        "Sups are taken over the tracked steps (every track_every steps). With the symmetrized "
        "(doubling) model the function gap falls faster than 1/α (the check asks for a slope below "
        f"{-1 - 2.5 * tol:g}); its parameter gap is reported, not checked (no theorem for it). "
        "Float64 throughout."
    )
    if not math.isfinite(sum(metrics.values())):
        notes += "\n\nSome slopes are NaN (a gap was 0 or not finite)."
    return Report(metrics=metrics, checks=checks, figures={"chizat_rates": fig}, table=table,
                  notes=notes)


EXPERIMENT = register(Experiment(
    name="chizat-rates",
    description="Chizat et al. 2019 Thm 2.2/2.4: sup ||w-w0||, function and parameter gaps to the "
                "linearized model vs alpha (copy / symmetric centering), log-log slopes",
    config=ChizatRatesConfig,
    presets={
        "quick": Preset(sweep={"alpha": [1.0, 10.0, 100.0, 1000.0], "center": ["copy", "symmetric"],
                               "seed": [0, 1, 2]}),
        "paper": Preset(set={"m": 500, "n": 100, "d": 10, "steps": 1000, "track_every": 10},
                        sweep={"alpha": [1.0, 3.16, 10.0, 31.6, 100.0, 316.0, 1000.0, 3160.0, 10000.0],
                               "center": ["copy", "symmetric"], "seed": [0, 1, 2]}),
    },
    run_cell=run_cell,
    report=report,
    report_settings=("slope_tol",),
))
