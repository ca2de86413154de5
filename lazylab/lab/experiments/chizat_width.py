"""``chizat-width``: test loss vs width m for alpha(m) = 1/sqrt(m) vs 1/m (Chizat, Oyallon & Bach 2019,
Fig 2(a)).

Task (``test_vs_m.jl``, docs/papers.md §1.2): inputs uniform on the unit sphere of R^d (d = 100), ReLU teacher
with m0 = 3 unit-norm units, output weights +-1, outputs multiplied by 100; n = 1000 train and test.
Student ``h(w, x) = sum_j a_j relu(<b_j, x>)`` with every weight N(0, 1) (not symmetrized), trained as
``lazylab.lazy(h, alpha(m), center="none")`` = ``alpha h`` on the objective ``R(alpha h) / alpha^2``
(the code's GD: step ``stepsize / scaling`` on the unscaled gradient), by full-batch GD with

- ``alpha = 1/sqrt(m)`` (NTK scaling, lazy for large m) and step ``1/m``,
- ``alpha = 1/m`` (mean-field scaling, not lazy) and step ``0.05/m``,

for ``steps`` steps (paper: 25 000). Loss: ½·MSE; the paper plots 0.1 x the end-of-training test loss,
mean over trials (paper text: 5, code: 10).

Paper (Fig 2(a), read off, plot units): both ≈ 1.7 at m = 2, minimum ≈ 0 for m ≈ 4-8; at m = 512:
1/sqrt(m) ≈ 0.9, 1/m ≈ 0.18. Check: at the largest m the 1/sqrt(m) loss is >= 3x the 1/m loss
(paper preset; the quick preset checks >= 2x at its largest m, a shape check).

Cost of one cell: ``steps`` GD steps of O(n d m).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from lazylab.lab.registry import Check, Experiment, Preset, Report, RunContext, check, register
from lazylab.lab.rules import POSITIVE, Rule, one_of

UNITS = 0.1                     # test_vs_m.jl: ss = .1
SCALINGS = {"sqrt": ("1/\u221am", 1.0), "mean_field": ("1/m", 0.05)}  # label, step size x m
PAPER_MS = [2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256, 512]


@dataclass
class ChizatWidthConfig:
    seed: int = 0               # trial: teacher, data and init
    m: int = 64
    scaling: str = "sqrt"       # sqrt: alpha = 1/sqrt(m), step 1/m | mean_field: alpha = 1/m, step 0.05/m
    d: int = 100
    m0: int = 3
    n_train: int = 1000
    n_test: int = 1000
    teacher_scale: float = 100.0
    steps: int = 25_000
    n_track: int = 20
    ratio_target: float = 3.0   # check: loss(1/sqrt m) / loss(1/m) at the largest m >= this
    rise_target: float = 2.0    # check: 1/sqrt(m) loss at the largest m / its minimum over m >= this

    RULES: ClassVar[dict[str, Rule]] = {
        "m": POSITIVE, "scaling": one_of("sqrt", "mean_field"), "d": POSITIVE, "m0": POSITIVE,
        "n_train": POSITIVE, "n_test": POSITIVE, "teacher_scale": POSITIVE, "steps": POSITIVE,
        "n_track": POSITIVE, "ratio_target": POSITIVE}


def alpha_and_lr(m: int, scaling: str) -> tuple[float, float]:
    """``(alpha(m), step)``: ``(1/sqrt(m), 1/m)`` for ``"sqrt"``, ``(1/m, 0.05/m)`` for ``"mean_field"``."""
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {sorted(SCALINGS)}, got {scaling!r}")
    if not isinstance(m, int) or m < 1:
        raise ValueError(f"m must be a positive integer, got {m!r}")
    alpha = 1.0 / math.sqrt(m) if scaling == "sqrt" else 1.0 / m
    return alpha, SCALINGS[scaling][1] / m


def run_cell(cfg: ChizatWidthConfig, ctx: RunContext) -> list[dict]:
    """One cell (see the module docstring); torch threads: the run option ``--threads``."""
    from lazylab.lab.experiments._chizat_common import cell_threads

    with cell_threads(0):  # threads: the run option --threads
        return _run_cell(cfg, ctx)


def _run_cell(cfg: ChizatWidthConfig, ctx: RunContext) -> list[dict]:
    """Train ``lazy(h, alpha(m), "none")`` at one (m, scaling, trial); one record per tracked step."""
    from lazylab.lab.experiments._chizat_common import chizat_net, teacher_data
    from lazylab.regimes import lazy
    from lazylab.trainer import train

    alpha, lr = alpha_and_lr(cfg.m, cfg.scaling)
    (X, y), (Xt, yt), _, _ = teacher_data(cfg.d, cfg.m0, cfg.n_train, cfg.n_test, cfg.seed,
                                          output_scale=cfg.teacher_scale)
    # seed offset: a different N(0, 1) draw for each width, as in the code (W_init = randn(m, d+1))
    net = chizat_net(cfg.d, cfg.m, 1.0, 7919 * cfg.seed + cfg.m, symmetric=False)
    model = lazy(net, alpha, center="none")
    hist = train(model, (X, y), test_data=(Xt, yt), loss="mse", optimizer="gd", lr=lr, steps=cfg.steps,
                 n_track=cfg.n_track, device=ctx.device, seed=cfg.seed, on_divergence="stop",
                 progress=ctx.progress and cfg.steps >= 2000)
    return [{"step": r["step"], "train_loss": r["train_loss"], "test_loss": r["test_loss"],
             "alpha": alpha, "lr": lr, "diverged": hist.stopped == "diverged"} for r in hist.records]


SRC = "Chizat et al. 2019 Fig 2(a) [F], docs/papers.md §1.2"


def _claims(last, base: ChizatWidthConfig, metrics: dict) -> list[Check]:
    """Fig 2(a)'s claims, measured per trial (seed): at the largest m common to both scalings the
    1/sqrt(m) loss is >= ``ratio_target`` x the 1/m loss (figure: ≈ 0.9 vs ≈ 0.18, ratio ≈ 5; paper
    preset 3, quick 2 — a loose quick threshold), and the 1/sqrt(m) loss grows with m: at the
    largest m it is >= ``rise_target`` x its minimum over m (figure: from ≈ 0 near m = 4-8 to ≈ 0.9)."""
    from lazylab.lab.experiments._common import per_seed

    checks: list[Check] = []
    both = set(last[last["scaling"] == "sqrt"]["m"]) & set(last[last["scaling"] == "mean_field"]["m"])
    if not both:
        return checks
    mmax = max(both)

    def loss(g, sc, m):
        return float(g[(g["scaling"] == sc) & (g["m"] == m)]["test_u"].mean())

    ratios = per_seed(last, lambda g: loss(g, "sqrt", mmax) / max(loss(g, "mean_field", mmax), 1e-300))
    c = check(f"test loss 1/sqrt(m) over 1/m at m={mmax}", None, base.ratio_target, op=">=",
              seeds=ratios, source=SRC + "; ≈0.9 / ≈0.18 at m = 512",
              note="" if base.ratio_target >= 3 else "loose quick-preset threshold")
    metrics[f"ratio_sqrt_over_mf@m={mmax}"] = c.value
    checks.append(c)
    sq = last[last["scaling"] == "sqrt"]
    ms = sorted(set(sq["m"]))
    if len(ms) >= 2:
        def rise(g):
            s = g[g["scaling"] == "sqrt"].groupby("m")["test_u"].mean()
            return float(s.loc[max(s.index)] / max(s.min(), 1e-300))

        c = check(f"1/sqrt(m): test loss grows with m (m={ms[-1]} over the minimum over m)", None,
                  base.rise_target, op=">=", seeds=per_seed(last, rise),
                  source=SRC + "; ≈0 near m = 4-8 to ≈0.9 at m = 512")
        metrics[f"sqrt_loss_m={ms[-1]}_over_min"] = c.value
        checks.append(c)
    return checks


def report(df, base: ChizatWidthConfig) -> Report:
    import matplotlib.pyplot as plt

    last = df.loc[df.groupby("cell_id")["step"].idxmax()].copy()
    last["test_u"] = UNITS * last["test_loss"]
    table = (last.groupby(["scaling", "m"]).agg(test_mean=("test_u", "mean"), test_std=("test_u", "std"),
                                                 train_end=("train_loss", "mean"),
                                                 trials=("seed", "nunique"),
                                                 diverged=("diverged", "sum")).reset_index())
    metrics: dict[str, float] = {"n_diverged": float(table["diverged"].sum())}
    checks: list[Check] = []
    fig, ax = plt.subplots(figsize=(4.8, 4))
    for (sc, (label, _)), col in zip(SCALINGS.items(), ("k", "0.5")):
        sub = table[table["scaling"] == sc]
        if not len(sub):
            continue
        pts = last[last["scaling"] == sc]
        ax.semilogx(pts["m"], pts["test_u"], "o", color=col, ms=2)
        ax.semilogx(sub["m"], sub["test_mean"], "-", color=col, lw=2.5, label=f"scaling {label}")
        for m, v in zip(sub["m"], sub["test_mean"]):
            metrics[f"test_0.1x[{sc}, m={m}]"] = float(v)
    ax.set_xlabel("m")
    ax.set_ylabel("test loss (× 0.1)")
    ax.set_title(f"d={base.d}, n={base.n_train}, {base.steps} GD steps", fontsize=9)
    ax.legend()
    fig.tight_layout()
    checks += _claims(last, base, metrics)
    notes = (
        "Chizat, Oyallon & Bach (2019) Fig 2(a) (`test_vs_m.jl`): end-of-training test loss (½·MSE, "
        "× 0.1 as plotted in the paper) vs width; dots: trials, lines: means. α(m) = 1/√m with GD "
        "step 1/m is lazy for large m (m·α(m) → ∞), α(m) = 1/m with step 0.05/m is the mean-field "
        "scaling. Model: `lazy(TwoLayerNet(d, m, scaling=1, input_scale=1), α, center='none')`, "
        "loss scale 1/α². Paper (read off the figure): at m = 512, ≈ 0.9 (1/√m) vs ≈ 0.18 (1/m)."
    )
    if table["diverged"].sum():
        notes += "\n\nSome cells diverged (NaN loss): see the table."
    return Report(metrics=metrics, checks=checks, figures={"chizat_width": fig}, table=table,
                  notes=notes)


EXPERIMENT = register(Experiment(
    name="chizat-width",
    description="Chizat et al. 2019 Fig 2(a): test loss vs width m, alpha(m)=1/sqrt(m) (lazy) vs 1/m "
                "(mean field), d=100 teacher-student",
    config=ChizatWidthConfig,
    presets={
        "quick": Preset(set={"steps": 2000, "ratio_target": 2.0},
                        sweep={"m": [4, 16, 64, 256], "scaling": ["sqrt", "mean_field"],
                               "seed": [0, 1, 2]}),
        "paper": Preset(sweep={"m": PAPER_MS, "scaling": ["sqrt", "mean_field"],
                               "seed": [0, 1, 2, 3, 4]}),
    },
    run_cell=run_cell,
    report=report,
    report_settings=("ratio_target", "rise_target"),
))
