"""``catapult``: phases of gradient descent over ``eta * lambda_0`` (Lewkowycz et al. 2020).

Model: a wide two-layer ReLU net in NTK parametrization (``TwoLayerNet(d, m,
parametrization="ntk")``), full-batch GD on ``(1/2N) sum (f - y)^2``, labels ``y = sign(x_1)``
with ``x ~ N(0, I_d)``. ``lambda_0`` is the top eigenvalue of the initial NTK in the loss's
normalisation (``J J^T / N``, :func:`lazylab.transitions.ntk_top_eigenvalue`): the linearised
model is stable iff ``eta lambda_0 < 2``. Each cell sets ``eta = eta_lambda0 / lambda_0`` and runs
:class:`lazylab.transitions.Catapult` (loss every step, ``lambda_t`` every ``every`` steps).

Claims checked (paper [P] abstract; thresholds from secondary summaries [S], see the notes):
lazy phase (monotone loss, ``lambda`` ~ ``lambda_0``) for every ``eta lambda_0 < 2``; catapult
(loss spike, then ``lambda_t < 2/eta``, then convergence) for converging runs above 2; a
catapult window ``2 < eta lambda_0 < eta_max lambda_0`` exists. The maximal rate
``eta_max lambda_0`` (smallest grid value at which every seed diverges) is measured and compared
with the solvable model's 4 (a reference only: ReLU nets differ, [S] reports about 12 for deep
ReLU nets). Negative control (``model="linearized"``): the linearised net has a constant kernel,
so above 2 it diverges without a catapult and the window check fails.
Cost of a cell: ``steps`` GD steps plus ``steps / every`` NTKs on the ``n_train`` points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lazylab.lab.registry import Check, Experiment, Preset, Report, RunContext, check, register


@dataclass
class CatapultConfig:
    seed: int = 0
    d: int = 10
    m: int = 512               # hidden width
    n_train: int = 24
    eta_lambda0: float = 1.0   # eta * lambda_0
    steps: int = 80
    every: int = 10            # steps between lambda_t snapshots
    model: str = "net"         # "net" or "linearized" (negative control)


def run_cell(cfg: CatapultConfig, ctx: RunContext) -> list[dict]:
    import warnings

    import torch

    from lazylab.models import TwoLayerNet
    from lazylab.regimes import linearize
    from lazylab.trainer import train
    from lazylab.transitions import Catapult, ntk_top_eigenvalue

    if cfg.model not in ("net", "linearized"):
        raise ValueError(f"model must be 'net' or 'linearized', got {cfg.model!r}")
    g = torch.Generator().manual_seed(1000 + cfg.seed)
    X = torch.randn(cfg.n_train, cfg.d, generator=g)
    y = torch.sign(X[:, 0])
    torch.manual_seed(cfg.seed)
    net = TwoLayerNet(cfg.d, cfg.m, parametrization="ntk")
    model = linearize(net) if cfg.model == "linearized" else net
    lam0 = ntk_top_eigenvalue(model, X)
    det = Catapult(every=cfg.every)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(model, (X, y), optimizer="gd", lr=cfg.eta_lambda0 / lam0, steps=cfg.steps,
              trackers=[det], on_divergence="stop", seed=cfg.seed, progress=False)
    r = det.result()
    L = np.asarray(det.losses, float)
    return [{"lambda0": lam0, "phase": r["phase"], "catapult": bool(r["catapult"]),
             "spiked": bool(r.get("spiked", False)), "peak_over_L0": float(r["peak_loss"] / L[0]),
             "lambda_end_over_lambda0": float(r.get("lambda_end", np.nan) / lam0),
             "final_loss": float(L[-1]) if np.isfinite(L[-1]) else float("inf"),
             "diverged": r["phase"] == "divergent"}]


def _eta_max(t) -> float:
    """Smallest eta*lambda0 of the grid at which every seed diverged (inf if none)."""
    div = t.groupby("eta_lambda0")["diverged"].all()
    hits = div[div].index.to_numpy(float)
    return float(hits.min()) if hits.size else float("inf")


def report(df, base: CatapultConfig) -> Report:
    import matplotlib.pyplot as plt

    t = df.copy()
    lazy_side = t[t.eta_lambda0 < 2]
    above = t[(t.eta_lambda0 > 2) & ~t.diverged]
    frac_lazy = float((lazy_side.phase == "lazy").mean()) if len(lazy_side) else float("nan")
    frac_cat = float(above.catapult.mean()) if len(above) else 0.0
    eta_max = _eta_max(t)
    window = float(above[above.catapult].eta_lambda0.max()) if above.catapult.any() else 0.0
    metrics = {"fraction_lazy_below_2": frac_lazy, "fraction_catapult_converged_above_2": frac_cat,
               "largest_catapult_eta_lambda0": window, "eta_max_lambda0": eta_max,
               "eta_max_over_solvable_4": eta_max / 4.0}
    checks: list[Check] = [
        check("lazy phase for every eta*lambda0 < 2 (fraction of cells)", frac_lazy, 1.0, atol=0.0),
        check("catapult (spike + lambda drop below 2/eta) in converging cells above 2 (fraction)",
              frac_cat, 0.9, op=">="),
        check("catapult window exists: largest catapult eta*lambda0 (> 2)", window, 2.0, op=">"),
    ]
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    agg = t.groupby("eta_lambda0").agg(peak=("peak_over_L0", "median"),
                                      lam=("lambda_end_over_lambda0", "median"))
    ax[0].semilogy(agg.index, agg.peak.clip(upper=1e6), "o-")
    ax[0].set_xlabel("η λ0")
    ax[0].set_ylabel("peak loss / initial loss")
    ax[1].plot(agg.index, agg.lam, "o-", label="λ_end / λ0")
    xs = np.linspace(2, max(agg.index.max(), 2.1), 50)
    ax[1].plot(xs, 2 / xs, "k--", lw=1, label="2 / (η λ0)")
    ax[1].set_ylim(0, 1.5)
    ax[1].set_xlabel("η λ0")
    ax[1].legend()
    for a in ax:
        a.axvline(2, color="gray", lw=0.8)
        if np.isfinite(eta_max):
            a.axvline(eta_max, color="red", lw=0.8)
    fig.suptitle(f"catapult phases, two-layer ReLU (NTK param.), m={base.m}, n={base.n_train}")
    fig.tight_layout()
    table = t.groupby("eta_lambda0").agg(
        lazy=("phase", lambda s: (s == "lazy").mean()), catapult=("catapult", "mean"),
        diverged=("diverged", "mean"), peak_over_L0=("peak_over_L0", "median"),
        lambda_end_over_lambda0=("lambda_end_over_lambda0", "median")).reset_index()
    notes = (
        "Lewkowycz, Bahri, Dyer, Sohl-Dickstein, Gur-Ari (2020), arXiv 2003.02218. Claims: small "
        "learning rates (eta < 2/lambda_0) train lazily; above, a loss spike is followed by a drop "
        "of the NTK's top eigenvalue below 2/eta and convergence (the catapult), up to a maximal "
        "rate. Provenance of each check — lazy below 2: paper abstract [P] with the threshold "
        "2/lambda_0 from secondary summaries [S]; catapult above 2: [P] abstract and ICLR text "
        "('the loss grows during the early part of training ... converges to a flatter minimum'); "
        "window: [P] ('a narrow range of large, stable learning rates'). The maximal rate is "
        "measured, not checked: the solvable uv model gives 4/lambda_0 (derived from its update "
        "equations, [S]), deep ReLU nets reportedly about 12/lambda_0 ([S], unverified). "
        "lambda_0 is normalised as J J^T / N to match the trainer's (1/2N) sum of squares. "
        "Data are synthetic (not the paper's MNIST/CIFAR). Width, steps and the spike threshold "
        "(10 %) were chosen on an exploratory run with other data (n=32, m=1024, global seed 0), "
        "not on the checked cells; the quick preset's first run passed all checks as reported."
    )
    return Report(metrics=metrics, checks=checks, figures={"catapult": fig}, table=table, notes=notes)


EXPERIMENT = register(Experiment(
    name="catapult",
    description="Lewkowycz et al. 2020: lazy / catapult / divergent phases of GD over eta*lambda_0 "
                "for a wide two-layer ReLU net",
    config=CatapultConfig,
    presets={
        "quick": Preset(sweep={"eta_lambda0": [0.5, 1.0, 1.5, 1.9, 2.5, 3.0, 3.5, 4.5, 6.0, 8.0,
                                               12.0], "seed": [0, 1]}),
        "paper": Preset(set={"m": 2048, "n_train": 256, "steps": 400, "every": 20},
                        sweep={"eta_lambda0": [0.5, 1.0, 1.5, 1.9, 2.2, 2.5, 3.0, 3.5, 4.0, 5.0,
                                               6.0, 8.0, 10.0, 12.0, 14.0, 16.0],
                               "seed": [0, 1, 2]}),
    },
    run_cell=run_cell,
    report=report,
))
