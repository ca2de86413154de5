"""``chizat-kernel-limit``: the tangent kernel of a wide two-layer ReLU net vs its m -> inf limit.

Chizat, Oyallon & Bach (2019), App A.2, eq. (8) and Fig 4 (docs/papers.md §1.1).
Model ``f_m(w, x) = m^{-1/2} sum_j b_j relu(a_j . x)`` (inputs *not* scaled by 1/sqrt(d)), all
parameters N(0, 1) (so ``E b^2 = 1``, ``E ||a||^2 = d``), x on the unit sphere of R^d, d = 10.
Its tangent kernel ``k_m = k_m^(a) + k_m^(b)`` with

    k_m^(a)(x, x') = (1/m) sum_j (x . x') b_j^2 relu'(a_j . x) relu'(a_j . x'),
    k_m^(b)(x, x') = (1/m) sum_j relu(a_j . x) relu(a_j . x'),

tends (law of large numbers, fluctuations O(m^{-1/2})) to, with phi = angle(x, x'),

    k^(a) = (x . x') E(b^2) (pi - phi) / (2 pi),
    k^(b) = |x| |x'| E(|a|^2) ((pi - phi) cos phi + sin phi) / (2 pi d).

The empirical kernel is computed by :func:`lazylab.ntk.ntk` on ``lazylab.TwoLayerNet(d, m,
scaling="ntk", input_scale=1)`` (float64); the limit by :func:`lazylab.kernels.two_layer_ntk` with
``input_scale=1, init_std=1``, which is eq. (8) with these conventions (checked against Monte-Carlo
in tests/test_chizat_kernel_limit.py). Measured: ``||K_m - K||_F / ||K||_F`` on ``n_points`` random
sphere points, per width and seed; the report fits the log-log slope (theory: -1/2).

Cost of one cell: the NTK of ``n_points`` inputs, O(n_points^2 m d) plus the curve's ``n_angles``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from lazylab.lab.registry import Check, Experiment, Preset, Report, RunContext, check, register
from lazylab.lab.rules import POSITIVE, Rule


@dataclass
class KernelLimitConfig:
    seed: int = 0
    d: int = 10               # input dimension (sphere of R^d)
    m: int = 100              # hidden width
    n_points: int = 40        # random sphere points for the Frobenius error
    n_angles: int = 60        # points of the Fig 4 curve k(x0, x(phi)), phi in [0, pi]
    init_std: float = 1.0     # the net's parameter std (the limit assumes 1; != 1: negative control)

    RULES: ClassVar[dict[str, Rule]] = {
        "d": Rule(ge=2), "m": POSITIVE, "n_points": Rule(ge=2), "n_angles": Rule(ge=2)}


def limit_kernel(x1, x2=None, parts: bool = False):
    """Eq. (8) of Chizat et al. App A.2 for N(0, 1) parameters: ``k^(a) + k^(b)`` (or the pair
    when ``parts``), inputs unscaled. Delegates to :func:`lazylab.kernels.two_layer_ntk`."""
    from lazylab.kernels import two_layer_ntk

    return two_layer_ntk(x1, x2, "relu", input_scale=1.0, init_std=1.0, bias=False, parts=parts)


def empirical_kernel(net, x1, x2=None, parts: bool = False):
    """The empirical tangent kernel of ``net`` (float64, :func:`lazylab.ntk.ntk`); with ``parts``
    the pair (input-weight part k^(a), output-weight part k^(b))."""
    import torch

    from lazylab.ntk import ntk

    kw = dict(dtype=torch.float64, method="jacobian")
    if not parts:
        return ntk(net, x1, x2, **kw)
    return (ntk(net, x1, x2, params=["hidden.weight"], **kw),
            ntk(net, x1, x2, params=["out.weight"], **kw))


def angle_curve(d: int, n: int, dtype=None):
    """``(phi, x0, X)``: ``x0 = e_1`` and ``X[k] = cos(phi_k) e_1 + sin(phi_k) e_2``,
    ``phi_k`` evenly spaced in [0, pi] (``n`` points)."""
    import torch

    dtype = dtype or torch.float64
    phi = torch.linspace(0, math.pi, n, dtype=dtype)
    X = torch.zeros(n, d, dtype=dtype)
    X[:, 0], X[:, 1] = torch.cos(phi), torch.sin(phi)
    x0 = torch.zeros(1, d, dtype=dtype)
    x0[0, 0] = 1.0
    return phi, x0, X


def run_cell(cfg: KernelLimitConfig, ctx: RunContext) -> list[dict]:
    """One (m, seed): Frobenius errors of K_m, k_m^(a), k_m^(b) and the curve k_m(x0, x(phi))."""
    import torch

    from lazylab.data.synthetic import sphere
    from lazylab.models import TwoLayerNet

    if cfg.d < 2 or cfg.m < 1 or cfg.n_points < 2 or cfg.n_angles < 2:
        raise ValueError(f"need d >= 2, m >= 1, n_points >= 2, n_angles >= 2; got {cfg}")
    x = sphere(cfg.n_points, cfg.d, seed=500 + cfg.seed, dtype=torch.float64).to(ctx.device)
    torch.manual_seed(cfg.seed)
    net = TwoLayerNet(cfg.d, cfg.m, activation="relu", scaling="ntk", input_scale=1.0,
                      init_std=cfg.init_std).to(ctx.device, torch.float64)
    ka, kb = empirical_kernel(net, x, parts=True)
    la, lb = limit_kernel(x, parts=True)

    def rel(a, b):
        return float((a - b).norm() / b.norm())

    rec = {"kind": "error", "rel_err": rel(ka + kb, la + lb), "rel_err_a": rel(ka, la),
           "rel_err_b": rel(kb, lb), "max_abs_err": float((ka + kb - la - lb).abs().max())}
    phi, x0, X = angle_curve(cfg.d, cfg.n_angles)
    X, x0 = X.to(ctx.device), x0.to(ctx.device)
    kc = empirical_kernel(net, x0, X)[0]
    lc = limit_kernel(x0, X)[0]
    curve = [{"kind": "curve", "phi": float(p), "k_emp": float(k), "k_lim": float(lim)}
             for p, k, lim in zip(phi.tolist(), kc.tolist(), lc.tolist())]
    return [rec, *curve]


def report(df, base: KernelLimitConfig) -> Report:
    import matplotlib.pyplot as plt

    from lazylab.lab.experiments._chizat_common import loglog_slope

    err = df[df["kind"] == "error"]
    table = err.groupby("m")[["rel_err", "rel_err_a", "rel_err_b", "max_abs_err"]].mean().reset_index()
    table["n_seeds"] = err.groupby("m").size().to_numpy()
    ms = table["m"].to_numpy(float)
    e = table["rel_err"].to_numpy(float)
    metrics: dict[str, float] = {f"rel_err@m={int(m)}": float(v) for m, v in zip(ms, e)}
    checks: list[Check] = []
    if len(ms) >= 3:
        from lazylab.lab.experiments._common import per_seed

        s = loglog_slope(ms, e)
        metrics["slope_log_err_vs_log_m"] = s
        metrics["slope_k_a"] = loglog_slope(ms, table["rel_err_a"].to_numpy(float))
        metrics["slope_k_b"] = loglog_slope(ms, table["rel_err_b"].to_numpy(float))
        src = "Chizat et al. 2019 App A.2 eq. (8) [P], docs/papers.md §1.1; Monte Carlo rate m^-1/2"
        slopes = per_seed(err, lambda g: loglog_slope(g["m"].to_numpy(float),
                                                      g["rel_err"].to_numpy(float)))
        checks.append(check("log-log slope of ||K_m - K||_F/||K||_F vs m (theory -1/2)", None,
                            -0.5, atol=0.15, seeds=slopes, source=src + "; ±0.15 is ours"))
        top = per_seed(err[err["m"] == ms[-1]], lambda g: float(g["rel_err"].mean()))
        checks.append(check(f"relative error at the largest m = {int(ms[-1])} (< 3 m^-1/2)",
                            None, 3 / math.sqrt(ms[-1]), op="<", seeds=top,
                            source=src + "; constant 3 is ours"))

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    curve = df[(df["kind"] == "curve") & (df["seed"] == df["seed"].min())]
    shown = sorted(curve["m"].unique())
    if len(shown) > 3:
        shown = [shown[0], shown[len(shown) // 2], shown[-1]]
    lim = None
    for m in shown:
        c = curve[curve["m"] == m].sort_values("phi")
        ax[0].plot(c["phi"], c["k_emp"], lw=1, label=f"k_m, m = {int(m)}")
        lim = c
    if lim is not None:
        ax[0].plot(lim["phi"], lim["k_lim"], "k--", lw=2, label="limit k = k^(a) + k^(b), eq. (8)")
    ax[0].set_xlabel(f"angle φ between x and x' (unit sphere of R^{base.d})")
    ax[0].set_ylabel("tangent kernel k(x, x')")
    ax[0].legend(fontsize=8)
    ax[0].set_title("Fig 4: random tangent kernels vs the limit", fontsize=9)
    ax[1].loglog(ms, e, "o-", label="mean ||K_m - K||_F / ||K||_F")
    for s_, name in (("rel_err_a", "k^(a) part"), ("rel_err_b", "k^(b) part")):
        ax[1].loglog(ms, table[s_].to_numpy(float), ".:", label=name)
    if len(ms):
        ax[1].loglog(ms, e[0] * np.sqrt(ms[0] / ms), "k--", lw=1, label="∝ m^(-1/2)")
    ax[1].set_xlabel("width m")
    ax[1].set_ylabel("relative Frobenius error")
    ax[1].legend(fontsize=8)
    ax[1].set_title(f"{base.n_points} random points, mean over seeds", fontsize=9)
    fig.tight_layout()
    notes = ("Two-layer ReLU net f_m = m^(-1/2) Σ_j b_j relu(a_j·x), parameters N(0,1), inputs on "
             f"the unit sphere of R^{base.d} (Chizat et al. 2019 App A.2, eq. 8). Empirical kernel: "
             "lazylab.ntk.ntk (float64 Jacobians); limit: lazylab.kernels.two_layer_ntk with "
             "input_scale=1. The error is a sum of m i.i.d. centred terms divided by m, so it "
             "decays like m^(-1/2) (CLT).")
    return Report(metrics=metrics, checks=checks, figures={"chizat_kernel_limit": fig},
                  table=table, notes=notes)


_QUICK_M = [10, 32, 100, 316, 1000, 3162, 10000]
EXPERIMENT = register(Experiment(
    name="chizat-kernel-limit",
    description="Chizat et al. 2019 App A.2 / Fig 4: empirical tangent kernel of a two-layer ReLU "
                "net vs its infinite-width limit; m^(-1/2) rate",
    config=KernelLimitConfig,
    presets={
        "quick": Preset(set={"n_points": 40}, sweep={"m": _QUICK_M, "seed": [0, 1, 2, 3]}),
        "paper": Preset(set={"n_points": 100, "n_angles": 100},
                        sweep={"m": [*_QUICK_M, 31623, 100000], "seed": list(range(10))}),
    },
    run_cell=run_cell,
    report=report,
))
