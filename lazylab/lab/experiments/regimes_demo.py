"""``regimes-demo``: a two-layer ReLU net trained fully (small alpha) and lazily (large alpha).

Task: teacher regression ``y = relu(<u, x>)`` with ``x ~ N(0, I_d)``, ``|u| = 1``.
Student: ``lazylab.TwoLayerNet(d, m)`` (NTK scaling, ReLU, no biases) wrapped as
``lazylab.lazy(net, alpha) = alpha * (h(w, x) - h(w0, x))`` and trained by full-batch gradient
descent on ``(1/alpha^2) * (1/2N) sum_i (f(x_i) - y_i)^2`` (Chizat, Oyallon & Bach 2019, eq. 2).
Records per tracked step: train/test loss and the relative weight change ``||w - w0|| / ||w0||``.

Theory (Chizat et al. 2019, Thm 2.2; see docs/papers.md §1.1): with ``h(w0) = 0``
(centering), ``sup_{t<=T} ||w_alpha(t) - w0|| = O(1/alpha)`` and the function-space trajectories
converge to the linearized model's as ``alpha -> inf`` (gap ``O(1/alpha)``). The report checks
the log-log slope of the final relative weight change against alpha (target -1) and that the
largest alphas give the same test loss (the lazy limit).

Cost of one cell: ``steps`` full-batch GD steps of O(n_train * d * m) each (two forwards per step,
at ``w`` and ``w0``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from lazylab.lab.registry import Check, Experiment, Preset, Report, RunContext, check, register
from lazylab.lab.rules import ACTIVATION, ALPHA, POSITIVE, Rule


@dataclass
class RegimesDemoConfig:
    seed: int = 0
    d: int = 10                 # input dimension
    m: int = 200                # hidden width
    n_train: int = 64
    n_test: int = 512
    alpha: float = 1.0          # output scale: small = feature learning, large = lazy
    lr: float = 1.0             # GD step size on the 1/alpha^2-scaled loss
    steps: int = 300
    n_track: int = 12           # number of log-spaced tracked steps
    activation: str = "relu"

    RULES: ClassVar[dict[str, Rule]] = {
        "d": POSITIVE, "m": POSITIVE, "n_train": POSITIVE, "n_test": POSITIVE, "alpha": ALPHA,
        "lr": POSITIVE, "steps": POSITIVE, "n_track": POSITIVE, "activation": ACTIVATION}


def _teacher_data(cfg: RegimesDemoConfig):
    import torch

    g = torch.Generator().manual_seed(10_000 + cfg.seed)
    u = torch.randn(cfg.d, generator=g)
    u = u / u.norm()
    X = torch.randn(cfg.n_train + cfg.n_test, cfg.d, generator=g)
    y = torch.relu(X @ u)
    return (X[:cfg.n_train], y[:cfg.n_train]), (X[cfg.n_train:], y[cfg.n_train:])


def run_cell(cfg: RegimesDemoConfig, ctx: RunContext) -> list[dict]:
    """Train one (alpha, seed) cell; one record per tracked step."""
    import torch

    from lazylab.models import TwoLayerNet
    from lazylab.regimes import lazy
    from lazylab.track import WeightChange
    from lazylab.trainer import train

    (X, y), (Xt, yt) = _teacher_data(cfg)
    torch.manual_seed(cfg.seed)
    net = TwoLayerNet(cfg.d, cfg.m, activation=cfg.activation, scaling="ntk")
    model = lazy(net, cfg.alpha, center="copy")
    hist = train(model, (X, y), test_data=(Xt, yt), loss="mse", optimizer="gd", lr=cfg.lr,
                 steps=cfg.steps, n_track=cfg.n_track, trackers=[WeightChange()],
                 device=ctx.device, seed=cfg.seed, progress=ctx.progress and cfg.steps >= 500)
    keys = ("step", "train_loss", "test_loss", "rel_weight_change")
    return [{k: r[k] for k in keys} for r in hist.records]


SRC = "Chizat et al. 2019 Thm 2.2 [P], docs/papers.md §1.1"

NOTES = (
    "Model `lazy(TwoLayerNet(d, m), alpha)` = alpha (h(w,x) - h(w0,x)), loss scaled by "
    "1/alpha² (Chizat, Oyallon & Bach 2019, eq. 2), full-batch GD with the same step size for "
    "every alpha (the function-space speed at init does not depend on alpha). Small alpha: "
    "the weights move far (feature learning); large alpha: lazy training. Theorem 2.2 of the "
    "paper: over a fixed horizon ||w_alpha(t) - w0|| = O(1/alpha), so the log-log slope of "
    "the relative weight change tends to -1 as alpha grows, and the trained functions "
    "converge to the linearized model's (the test losses of the largest alphas agree). "
    "The test-loss ratio between the largest and smallest alpha is reported as a metric, not "
    "checked: no theorem of the paper predicts its value for this teacher. This is a small CPU "
    "demo of the lab: numbers are means over the seeds of the sweep; the theorem is "
    "asymptotic, so the slope at small alpha deviates from -1."
)


def _claims(last, table, metrics: dict[str, float]) -> list[Check]:
    """The two claims of Thm 2.2 on the final records ``last`` (per seed), with their metrics added
    to ``metrics``: slope of log relative weight change vs log alpha over alpha >= 4 is -1 ± 0.15,
    and the test losses of the two largest alphas agree within 10 % (the lazy limit)."""
    from lazylab.lab.experiments._common import loglog_slope, per_seed

    alphas = table["alpha"].to_numpy(float)
    rel = table["rel_weight_change"].to_numpy(float)
    checks: list[Check] = []
    lazy_side = alphas >= 4
    if lazy_side.sum() >= 2:
        s = loglog_slope(alphas[lazy_side], rel[lazy_side])
        metrics["slope_log_rel_change_vs_log_alpha"] = s

        def slope(g):
            g = g[g["alpha"] >= 4].groupby("alpha")["rel_weight_change"].mean()
            return loglog_slope(g.index.to_numpy(float), g.to_numpy(float))

        checks.append(check("slope of log ||w-w0||/||w0|| vs log alpha (alpha >= 4)", None, -1.0,
                            atol=0.15, seeds=per_seed(last, slope),
                            source=SRC + " (O(1/alpha)); ±0.15 is ours"))
    if len(alphas) >= 2 and alphas[-1] >= 4:
        a1, a2 = alphas[-2], alphas[-1]

        def gap_of(g):
            t = g.groupby("alpha")["test_loss"].mean()
            return float(abs(t.get(a2, np.nan) - t.get(a1, np.nan)) / max(abs(t.get(a2, np.nan)),
                                                                             1e-12))

        c = check(f"test loss alpha={a1:g} vs {a2:g} (lazy limit; relative gap)", None, 0.1,
                  op="<", seeds=per_seed(last, gap_of), source=SRC + " (lazy limit); 10 % is ours")
        metrics["lazy_limit_test_loss_rel_gap"] = c.value
        checks.append(c)
    return checks


def _figure(df, table, base: RegimesDemoConfig):
    """Test loss vs GD step per alpha (mean over seeds), and the final relative weight change vs
    alpha (log-log) with a 1/alpha reference line."""
    import matplotlib.pyplot as plt

    alphas = table["alpha"].to_numpy(float)
    rel = table["rel_weight_change"].to_numpy(float)
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for a, sub in df.groupby("alpha"):
        curve = sub.groupby("step")["test_loss"].mean()
        ax[0].plot(curve.index.to_numpy(), curve.to_numpy(), marker="o", ms=3, label=f"α={a:g}")
    ax[0].set_xscale("symlog", linthresh=1)
    ax[0].set_yscale("log")
    ax[0].set_xlabel("GD step")
    ax[0].set_ylabel("test loss (mean over seeds)")
    ax[0].legend()
    ax[1].loglog(alphas, rel, "o-", label="measured")
    if len(alphas):
        ref = rel[-1] * alphas[-1] / alphas
        ax[1].loglog(alphas, ref, "k--", lw=1, label="∝ 1/α")
    ax[1].set_xlabel("α")
    ax[1].set_ylabel("final ||w - w0|| / ||w0||")
    ax[1].legend()
    fig.suptitle(f"two-layer ReLU net, d={base.d}, m={base.m}, n={base.n_train}")
    fig.tight_layout()
    return fig


def report(df, base: RegimesDemoConfig) -> Report:
    """Table (per alpha, mean over seeds of the final losses and relative weight change), metrics,
    the two Thm 2.2 claims, figure and notes of the records ``df`` of an alpha x seed sweep."""
    last = df.loc[df.groupby("cell_id")["step"].idxmax()]
    table = (last.groupby("alpha")[["train_loss", "test_loss", "rel_weight_change"]]
             .mean().reset_index())
    table["alpha_x_rel_change"] = table["alpha"] * table["rel_weight_change"]
    alphas = table["alpha"].to_numpy(float)
    rel = table["rel_weight_change"].to_numpy(float)

    metrics: dict[str, float] = {}
    for a, tl, rc in zip(alphas, table["test_loss"], rel):
        metrics[f"test_loss@alpha={a:g}"] = float(tl)
        metrics[f"rel_weight_change@alpha={a:g}"] = float(rc)
    checks = _claims(last, table, metrics)
    if len(alphas) >= 2:
        ratio = float(table["test_loss"].iloc[-1] / table["test_loss"].iloc[0])
        metrics[f"test_loss_ratio_alpha={alphas[-1]:g}_vs_{alphas[0]:g}"] = ratio
    figs = {"regimes": _figure(df, table, base)}
    notes = NOTES
    if np.isnan(rel).any():
        notes += "\n\nSome runs have NaN weight changes (diverged?)."
    return Report(metrics=metrics, checks=checks, figures=figs, table=table, notes=notes)


EXPERIMENT = register(Experiment(
    name="regimes-demo",
    description="train a two-layer net fully and lazily (alpha sweep) on a teacher task; "
                "test loss and relative weight change",
    config=RegimesDemoConfig,
    presets={
        "quick": Preset(set={}, sweep={"alpha": [0.25, 1.0, 4.0, 16.0, 64.0], "seed": [0, 1, 2]}),
        "paper": Preset(set={"m": 2000, "n_train": 256, "steps": 2000, "n_track": 30},
                        sweep={"alpha": [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0],
                               "seed": [0, 1, 2]}),
    },
    run_cell=run_cell,
    report=report,
))
