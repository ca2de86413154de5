"""``chizat-trajectories``: 2-D teacher-student neuron dynamics (Chizat, Oyallon & Bach 2019,
Fig 1(a)(b) and App C.1 Fig 6).

Task (``illustration.jl``, docs/papers.md §1.2): inputs uniform on the unit circle (d = 2), ReLU teacher
``f*(x) = sum_k a*_k relu(<u_k, x>)`` with m0 = 3 unit directions ``u_k`` and ``a*_k = +-1``
(so ``||a*_k u_k|| = 1``), n train points. Student ``f(x) = sum_j a_j relu(<b_j, x>)`` (m units, no
biases, output scale 1) initialised as in the code: rows ``b_j`` uniform on the circle, ``a_j ~ U[0,1]``,
symmetrized (``h(w0) = 0``) or not, then every weight multiplied by tau; full-batch GD on
``(1/2n) sum_i (f(x_i) - y_i)^2``. tau = 0.1 is the non-lazy regime, tau = 2 the lazy one (tau acts
like alpha = tau^2, the net is 2-homogeneous).

Recorded at log-spaced steps: train/test loss, every neuron's point ``|a_j| b_j`` in R^2 and the
angular distance of each neuron's direction ``b_j/||b_j||`` to the nearest teacher direction, as a
mean weighted by the neuron's size ``|a_j| ||b_j||`` (``ang_dist``; neurons that shrink to nothing do
not count) and unweighted (``ang_dist_unweighted``).

Paper: both runs reach near-zero training loss; for tau = 0.1 the neurons travel to the teacher's
directions, for tau = 2 they barely move but still interpolate. Checks: train loss at the end below
1e-3 x the zero predictor's loss; ``ang_dist(end) / ang_dist(0) <= 0.5`` for tau <= 0.5 ("shrinks a
lot") and ``>= 0.8`` for tau >= 1 ("hardly").

Cost of one cell: ``steps`` GD steps of O(n m) (tiny; Python overhead dominates).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from lazylab.lab.registry import Check, Experiment, Preset, Report, RunContext, check, register
from lazylab.lab.rules import POSITIVE, Rule


@dataclass
class ChizatTrajectoriesConfig:
    seed: int = 0
    tau: float = 0.1
    m: int = 20                 # student width (paper Fig 1: 20; code: 16; Fig 6: 200)
    n_train: int = 15           # Fig 6: 200
    n_test: int = 200
    m0: int = 3
    symmetric: bool = True
    lr: float = 0.005           # illustration.jl
    steps: int = 100_000        # illustration.jl
    n_track: int = 100          # log-spaced tracked steps (the paths)
    lazy_tau: float = 1.0       # tau >= this: the lazy side of the checks; below: non-lazy

    RULES: ClassVar[dict[str, Rule]] = {
        "tau": POSITIVE, "m": POSITIVE, "n_train": POSITIVE, "n_test": POSITIVE, "m0": POSITIVE,
        "lr": POSITIVE, "steps": POSITIVE, "n_track": POSITIVE, "lazy_tau": POSITIVE}


class NeuronPaths:
    """Tracker: each neuron's point ``|a_j| b_j`` (keys ``px{j}``, ``py{j}``), the sign of ``a_j``
    (``sa{j}``) and the angular distances
    to the nearest of the teacher's unit directions ``U`` (m0, 2). Cost: O(m m0)."""

    def __init__(self, U: Any) -> None:
        self.U = U

    def __call__(self, state: Any) -> dict[str, float]:
        import torch

        net = state.model
        W = net.hidden.weight.detach()
        a = net.out.weight.detach()[0]
        pts = (a.abs()[:, None] * W).cpu().double()
        out: dict[str, float] = {}
        for j, ((x, y), s) in enumerate(zip(pts.tolist(), torch.sign(a).tolist())):
            out[f"px{j}"], out[f"py{j}"], out[f"sa{j}"] = x, y, s
        out.update(angular_distances(W.cpu().double(), a.cpu().double(), self.U.double()))
        return out


def angular_distances(W: Any, a: Any, U: Any) -> dict[str, float]:
    """Angle (radians) between each row of ``W`` (m, 2) and the nearest row of ``U`` (m0, 2, unit),
    averaged with weights ``|a_j| ||w_j||`` (``ang_dist``) and uniformly (``ang_dist_unweighted``)."""
    import torch

    norms = W.norm(dim=1)
    cos = (W / norms.clamp_min(1e-300)[:, None]) @ U.T
    ang = torch.arccos(cos.clamp(-1.0, 1.0)).min(dim=1).values
    mass = a.abs() * norms
    w = float((mass * ang).sum() / mass.sum()) if float(mass.sum()) > 0 else math.nan
    return {"ang_dist": w, "ang_dist_unweighted": float(ang.mean())}


def run_cell(cfg: ChizatTrajectoriesConfig, ctx: RunContext) -> list[dict]:
    """One cell (see the module docstring); torch threads: the run option ``--threads``."""
    from lazylab.lab.experiments._chizat_common import cell_threads

    with cell_threads(0):  # threads: the run option --threads
        return _run_cell(cfg, ctx)


def _run_cell(cfg: ChizatTrajectoriesConfig, ctx: RunContext) -> list[dict]:
    """GD on one (tau, m, n, symmetric) cell; one record per tracked step with the neuron points."""
    import torch

    from lazylab.lab.experiments._chizat_common import chizat_net, teacher_data
    from lazylab.trainer import train

    (X, y), (Xt, yt), U, a_star = teacher_data(2, cfg.m0, cfg.n_train, cfg.n_test, cfg.seed,
                                                dtype=torch.float64)
    net = chizat_net(2, cfg.m, cfg.tau, cfg.seed, symmetric=cfg.symmetric, init="unit",
                     dtype=torch.float64)
    hist = train(net, (X, y), test_data=(Xt, yt), loss="mse", optimizer="gd", lr=cfg.lr,
                 steps=cfg.steps, n_track=cfg.n_track, trackers=[NeuronPaths(U)], device=ctx.device,
                 seed=cfg.seed, progress=ctx.progress and cfg.steps >= 5000)
    zero_loss = 0.5 * float(y.pow(2).mean())
    teacher = {f"u{k}_{c}": float(U[k, i]) for k in range(U.shape[0]) for i, c in enumerate("xy")}
    teacher.update({f"a{k}": float(a_star[k]) for k in range(U.shape[0])})
    return [{**r, "zero_loss": zero_loss, **teacher} for r in hist.records]


def _label(row: Any) -> str:
    return (f"τ={row['tau']:g}, m={row['m']}, n={row['n_train']}, "
            f"{'symmetrized' if row['symmetric'] else 'not symmetrized'}")


SRC = "Chizat et al. 2019 Fig 1(a)(b) [P], docs/papers.md §1.2; thresholds ours (fixed before)"


def _claims(table, base) -> list[Check]:
    """Per setting (tau, m, n, symmetrized), over seeds: near-zero train loss (end / zero
    predictor's <= 1e-3); for tau >= lazy_tau the neurons' angular distance to the teacher hardly
    shrinks (end / init >= 0.8), below it it shrinks a lot (<= 0.5)."""
    checks: list[Check] = []
    for key, g in table.groupby(["tau", "m", "n_train", "symmetric"], sort=True):
        tau, m, n, sym = key
        tag = f"tau={tau:g},m={m},n={n},{'sym' if sym else 'nosym'}"
        checks.append(check(f"near-zero train loss [{tag}] (end / zero predictor's)", None, 1e-3,
                            op="<=", seeds=g["train_loss_rel"], source=SRC))
        if tau >= base.lazy_tau:
            checks.append(check(f"lazy: angular distance hardly shrinks [{tag}] (end / init)",
                                None, 0.8, op=">=", seeds=g["ang_ratio"], source=SRC))
        else:
            checks.append(check(f"non-lazy: angular distance shrinks a lot [{tag}] (end / init)",
                                None, 0.5, op="<=", seeds=g["ang_ratio"], source=SRC))
    return checks


def report(df, base: ChizatTrajectoriesConfig) -> Report:
    import matplotlib.pyplot as plt

    metrics: dict[str, float] = {}
    checks: list[Check] = []
    rows = []
    cells = list(df.groupby("cell_id", sort=False))
    ncol = min(len(cells), 3) or 1
    nrow = math.ceil(len(cells) / ncol) or 1
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 4.2 * nrow), squeeze=False)
    for ax in axes.flat[len(cells):]:
        ax.axis("off")
    for ax, (_, sub) in zip(axes.flat, cells):
        sub = sub.sort_values("step")
        first, last = sub.iloc[0], sub.iloc[-1]
        tag = (f"tau={first['tau']:g},m={first['m']},n={first['n_train']},"
               f"{'sym' if first['symmetric'] else 'nosym'},seed={first['seed']}")
        ratio = float(last["ang_dist"] / first["ang_dist"])
        loss_rel = float(last["train_loss"] / last["zero_loss"])
        rows.append({"tau": first["tau"], "m": first["m"], "n_train": first["n_train"],
                     "symmetric": first["symmetric"], "seed": first["seed"],
                     "train_loss_end": last["train_loss"], "train_loss_rel": loss_rel,
                     "test_loss_end": last["test_loss"], "ang_dist_0": first["ang_dist"],
                     "ang_dist_end": last["ang_dist"], "ang_ratio": ratio,
                     "ang_dist_unweighted_0": first["ang_dist_unweighted"],
                     "ang_dist_unweighted_end": last["ang_dist_unweighted"]})
        metrics[f"ang_dist_0[{tag}]"] = float(first["ang_dist"])
        metrics[f"ang_dist_end[{tag}]"] = float(last["ang_dist"])
        metrics[f"train_loss_end[{tag}]"] = float(last["train_loss"])
        _draw(ax, sub, first, last)
        ax.set_title(_label(first) + f"\nangular dist {first['ang_dist']:.2f} → {last['ang_dist']:.2f}",
                     fontsize=8)
    fig.suptitle("neuron paths |a_j| b_j (red: a_j > 0, blue: a_j < 0 at the end; arrows: teacher)",
                 fontsize=9)
    fig.tight_layout()
    import pandas as pd

    table = pd.DataFrame(rows)
    checks += _claims(table, base)
    notes = (
        "Chizat, Oyallon & Bach (2019) Fig 1(a)(b) / Fig 6 (`illustration.jl`): lines are the paths "
        "of |a_j| b_j over log-spaced GD steps, dots the end points, dotted: the unit circle, arrows: "
        "the teacher's unit directions (red a*>0, blue a*<0). `ang_dist` = mean over neurons of the "
        "angle to the nearest teacher direction, weighted by |a_j|·||b_j||; its end/init ratio is "
        "checked (≤ 0.5 non-lazy, ≥ 0.8 lazy, τ ≥ lazy_tau). Near-zero training loss: end loss ≤ "
        "1e-3 × the loss of the zero predictor (½·mean y²)."
    )
    return Report(metrics=metrics, checks=checks, figures={"chizat_trajectories": fig}, table=table,
                  notes=notes)


def _draw(ax: Any, sub: Any, first: Any, last: Any) -> None:
    m = int(first["m"])
    px = sub[[f"px{j}" for j in range(m)]].to_numpy(float)
    py = sub[[f"py{j}" for j in range(m)]].to_numpy(float)
    signs = last[[f"sa{j}" for j in range(m)]].to_numpy(float)  # colour: sign of a_j at the end
    t = np.linspace(0, 2 * np.pi, 200)
    ax.plot(np.cos(t), np.sin(t), ":", color="k", lw=1)
    k = 0
    while f"u{k}_x" in sub:
        col = "C3" if first[f"a{k}"] > 0 else "C0"
        ax.annotate("", xy=(first[f"u{k}_x"], first[f"u{k}_y"]), xytext=(0, 0),
                    arrowprops=dict(arrowstyle="-|>", color=col, lw=1.5))
        k += 1
    for j in range(m):
        col = "C3" if signs[j] > 0 else "C0"
        ax.plot(px[:, j], py[:, j], color=col, lw=0.8)
        ax.plot(px[-1, j], py[-1, j], "o", color=col, ms=3.5)
    b = max(1.1, 1.1 * float(np.nanmax(np.abs(np.concatenate([px.ravel(), py.ravel()])))))
    ax.set_xlim(-b, b)
    ax.set_ylim(-b, b)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


EXPERIMENT = register(Experiment(
    name="chizat-trajectories",
    description="Chizat et al. 2019 Fig 1(a,b)/Fig 6: 2-D teacher-student neuron paths, non-lazy "
                "(tau=0.1) vs lazy (tau=2)",
    config=ChizatTrajectoriesConfig,
    presets={
        "quick": Preset(set={"lr": 0.05, "steps": 10_000, "n_track": 60},
                        sweep={"tau": [0.1, 2.0], "seed": [0, 1, 2]}),
        "paper": Preset(sweep={"tau": [0.1, 2.0]}),  # Fig 1(a)(b)
        "paper-fig6": Preset(set={"m": 200, "n_train": 200},  # App C.1 Fig 6 (+ tau=0.1 unsymmetrized)
                             sweep={"tau": [0.1, 2.0], "symmetric": [True, False]}),
    },
    run_cell=run_cell,
    report=report,
    report_settings=("lazy_tau",),
))
