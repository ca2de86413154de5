"""``wang-lazy-attack``: Wang, Ullah, Mianjy & Arora (2022), "Adversarial Robustness is at Odds with
Lazy Training" (see docs/papers.md §5; protocol from the authors' code).

Network (authors' code): ``f(x) = sum_s a_s relu(w_s . x + b_s) + b_out`` with ``w_s, b_s ~ N(0, 1)``
trained, ``a_s, b_out = +-1/sqrt(m)`` random signs, frozen (``TwoLayerNet(d, m, scaling=1/sqrt(m),
input_scale=1, bias=True)`` with the output layer reset and frozen). Logistic loss, SGD.

Part 1 (E5.1, every cell): lazy training, stopped as soon as a step would take a neuron
``(w_s, b_s)`` farther than ``C0/sqrt(m)`` from its init (:class:`lazylab.adversarial.NeuronBall`,
``ball_mode="stop"``), then for each correctly classified test point the walk of
:func:`lazylab.attacks.sign_flip_walk` along ``-sign(f) grad_x f / ||grad_x f||`` (steps of ``step``)
until the sign flips: ``delta``; we report ``delta / ||x||``. Data: ``synthetic`` = points on the
sphere of radius ``sqrt(d)`` with label ``s = +-1`` and ``<u, x> = s * margin * sqrt(d)`` (so the
Bayes classifier needs a perturbation of ``margin * ||x||``); ``digits`` = sklearn digits 0 vs 1
resized to ``size x size``, ``size = sqrt(d)`` (``mnist`` = MNIST 0 vs 1 from idx files, paper preset).
Theory (Bubeck et al. 2021, Wang et al. 2022): ``delta = Theta(1) = Theta(||x|| / sqrt(d))``, so
``delta / ||x||`` scales like ``d^{-1/2}``.

Part 2 (E5.2/E5.3, cells with ``d == gap_d`` and ``width == gap_width`` on image data): inputs
L2-normalised (``||x|| = 1``, as in ``advtrain.py``), adversarial training with L2 PGD
(``eps``, ``attack_steps``) and projection of every neuron onto the ball of radius ``r`` around its
init after each step, for every ``r`` in ``radii``; then robust test accuracy under L2 PGD
(``eval_attack_steps``). Wang et al. (Fig 4) find robustness improves as the allowed radius grows.

Cost of one cell: ``epochs * n_train / batch_size`` SGD steps of O(batch d m), the walk (about
``max_steps/64 + 64`` forwards per test point), and for part 2
``len(radii) * epochs_gap * n_train/batch * (attack_steps + 1)`` passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from lazylab.lab.registry import Check, Experiment, Preset, Report, RunContext, check, register
from lazylab.lab.rules import NONNEG, POSITIVE, UNIT_INTERVAL, Rule, mnist_dir, one_of


@dataclass
class WangConfig:
    seed: int = 0
    dataset: str = "synthetic"       # "synthetic" | "digits" | "mnist"
    data_dir: str = "data"           # for mnist (idx files)
    d: int = 64                      # input dimension (images: size x size with size = sqrt(d))
    width: int = 200                 # m
    C0: float = 10.0                 # lazy radius C0 / sqrt(m)
    epochs: int = 50
    lr: float = 0.1
    batch_size: int = 64
    n_train: int = 400               # synthetic: points drawn; images: subsample (0 or more = all)
    n_test: int = 200
    margin: float = 0.5              # synthetic: |<u, x>| / ||x||
    step: float = 1e-3               # walk step
    max_steps: int = 20000
    gap_d: int = 64                  # part 2 runs in cells with this d ...
    gap_width: int = 200             # ... and this width, on image data
    radii: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0, 3.0)
    eps: float = 0.3                 # L2 radius of part 2 (inputs have norm 1)
    epochs_gap: int = 40
    lr_gap: float = 1.0
    batch_size_gap: int = 32
    attack_steps: int = 10
    eval_attack_steps: int = 20
    train: str = "lazy"              # part 1: "lazy" (the paper) | "adversarial" (negative control:
    eps_train: float = 0.4           # L2 PGD training, no lazy ball, radius eps_train * ||x||)
    min_acc: float = 0.9             # report: claims need nets that learned (test acc >= this)
    gap_labels: str = "true"         # part 2: "true" | "flipped" (negative control: -y)

    RULES: ClassVar[dict[str, Rule]] = {
        "dataset": one_of("synthetic", "digits", "mnist"), "data_dir": mnist_dir(),
        "d": POSITIVE, "width": POSITIVE, "C0": POSITIVE, "epochs": POSITIVE, "lr": POSITIVE,
        "batch_size": POSITIVE, "n_train": NONNEG, "n_test": NONNEG, "margin": UNIT_INTERVAL,
        "step": POSITIVE, "max_steps": POSITIVE, "gap_d": POSITIVE, "gap_width": POSITIVE,
        "radii": Rule(gt=0, each=True), "eps": NONNEG, "epochs_gap": POSITIVE,
        "lr_gap": POSITIVE, "batch_size_gap": POSITIVE, "attack_steps": POSITIVE,
        "eval_attack_steps": POSITIVE, "gap_labels": one_of("true", "flipped")}


def wang_net(d: int, m: int, seed: int):
    """The authors' two-layer ReLU net (see the module docstring); output layer frozen."""
    import torch

    from lazylab.models import TwoLayerNet

    torch.manual_seed(seed)
    net = TwoLayerNet(d, m, activation="relu", scaling=1.0 / math.sqrt(m), input_scale=1.0,
                      bias=True, init_std=1.0)
    g = torch.Generator().manual_seed(seed + 7919)
    with torch.no_grad():
        net.out.weight.copy_(torch.where(torch.rand(1, m, generator=g) < 0.5, -1.0, 1.0))
        sign = 1.0 if float(torch.rand(1, generator=g)) < 0.5 else -1.0
        net.out.bias.fill_(sign / math.sqrt(m))  # added after the 1/sqrt(m) scale: b_out = +-1/sqrt(m)
    net.out.weight.requires_grad_(False)
    net.out.bias.requires_grad_(False)
    return net


def sphere_task(n: int, d: int, margin: float, seed: int):
    """``x = sqrt(d) (s * margin * u + sqrt(1 - margin^2) z)``, ``z`` uniform on the unit sphere of
    ``u``'s orthogonal complement, ``s = +-1`` the label: ``||x|| = sqrt(d)``, ``<u, x> = s margin
    sqrt(d)``. Returns ``(X (n, d), y (n,))``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=g, dtype=torch.float64)
    u /= u.norm()
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    z -= (z @ u)[:, None] * u
    z /= z.norm(dim=1, keepdim=True)
    s = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).double()
    x = math.sqrt(d) * (margin * s[:, None] * u + math.sqrt(1 - margin**2) * z)
    return x.float(), s.float()


def _images(cfg: WangConfig):
    """Digits 0 vs 1 (labels -1/+1) resized to size x size, flattened: ((X, y), (Xt, yt))."""
    import torch

    from lazylab.data.mnist import resize

    size = int(round(math.sqrt(cfg.d)))
    if size * size != cfg.d:
        raise ValueError(f"d must be a perfect square for image data (size = sqrt(d)), got {cfg.d}")
    if cfg.dataset == "digits":
        from lazylab.data import digits

        (X, y), (Xt, yt) = digits(classes=[0, 1], seed=0, binary_labels=True)
    elif cfg.dataset == "mnist":
        from lazylab.data.mnist import mnist

        out = []
        for split in ("train", "test"):
            Xs, ys = mnist(cfg.data_dir, split)
            keep = (ys == 0) | (ys == 1)
            out.append((Xs[keep], ys[keep].float() * 2 - 1))
        (X, y), (Xt, yt) = out
    else:
        raise ValueError(f"dataset must be 'synthetic', 'digits' or 'mnist', got {cfg.dataset!r}")
    g = torch.Generator().manual_seed(4321)
    if 0 < cfg.n_train < X.shape[0]:
        idx = torch.randperm(X.shape[0], generator=g)[:cfg.n_train]
        X, y = X[idx], y[idx]
    if 0 < cfg.n_test < Xt.shape[0]:
        idx = torch.randperm(Xt.shape[0], generator=g)[:cfg.n_test]
        Xt, yt = Xt[idx], yt[idx]
    X = resize(X, size).clamp(0, 1).flatten(1)
    Xt = resize(Xt, size).clamp(0, 1).flatten(1)
    return (X, y), (Xt, yt)


def run_cell(cfg: WangConfig, ctx: RunContext) -> list[dict]:
    """One (dataset, d, width, seed) cell: part 1 (walk record), part 2 (gap records) if it applies."""
    from lazylab.adversarial import NeuronBall, adversarial_train
    from lazylab.attacks import accuracy, robust_accuracy, sign_flip_walk

    dev = ctx.device
    if cfg.dataset == "synthetic":
        X, y = sphere_task(cfg.n_train + cfg.n_test, cfg.d, cfg.margin, 1000 + cfg.seed)
        (X, y), (Xt, yt) = (X[:cfg.n_train], y[:cfg.n_train]), (X[cfg.n_train:], y[cfg.n_train:])
    else:
        (X, y), (Xt, yt) = _images(cfg)
    net = wang_net(cfg.d, cfg.width, cfg.seed).to(dev)
    radius = cfg.C0 / math.sqrt(cfg.width)
    ball = NeuronBall(net.hidden, radius)
    if cfg.epochs == 0:  # an untrained net (negative control of the claims)
        hist = None
    elif cfg.train == "lazy":
        hist = adversarial_train(net, (X, y), epochs=cfg.epochs, lr=cfg.lr,
                                 batch_size=cfg.batch_size, mode="clean", clip=None, ball=ball,
                                 ball_mode="stop", seed=cfg.seed, device=dev)
    elif cfg.train == "adversarial":  # far outside the lazy ball: robust, the claim must fail
        eps = cfg.eps_train * float(X.flatten(1).norm(dim=1).mean())
        hist = adversarial_train(net, (X, y), epochs=cfg.epochs, lr=cfg.lr,
                                 batch_size=cfg.batch_size, mode="adversarial", eps=eps,
                                 norm="l2", attack_steps=cfg.attack_steps, clip=None, ball=None,
                                 seed=cfg.seed, device=dev)
    else:
        raise ValueError(f"train must be 'lazy' or 'adversarial', got {cfg.train!r}")
    Xt_d, yt_d = Xt.to(dev), yt.to(dev)
    walk = sign_flip_walk(net, Xt_d, yt_d, step=cfg.step, max_steps=cfg.max_steps)
    ok = walk.flipped.cpu()
    xnorm = Xt.flatten(1).norm(dim=1)
    recs = [{
        "kind": "walk", "clean_acc": accuracy(net, Xt_d, yt_d),
        "stopped": hist.stopped if hist else "untrained", "sgd_steps": hist.steps if hist else 0,
        "lazy_radius": radius, "max_deviation": ball.max_deviation(),
        "frac_flipped": float(ok.float().mean()),
        "delta_mean": float(walk.delta.cpu()[ok].mean()) if ok.any() else math.nan,
        "delta_median": float(walk.delta.cpu()[ok].median()) if ok.any() else math.nan,
        "rel_delta_mean": float(walk.rel_delta.cpu()[ok].mean()) if ok.any() else math.nan,
        "grad_norm_mean": float(walk.grad_norm.cpu()[walk.walked.cpu()].mean()),
        "eta_mean": float(walk.eta.cpu()[ok].mean()) if ok.any() else math.nan,
        "x_norm_mean": float(xnorm.mean()),
    }]
    if cfg.dataset != "synthetic" and cfg.d == cfg.gap_d and cfg.width == cfg.gap_width:
        Xn = X / X.norm(dim=1, keepdim=True).clamp_min(1e-12)
        y_gap = y if cfg.gap_labels == "true" else -y  # flipped: the further, the more wrong
        Xtn = (Xt / Xt.norm(dim=1, keepdim=True).clamp_min(1e-12)).to(dev)
        for r in cfg.radii:
            net_r = wang_net(cfg.d, cfg.width, cfg.seed).to(dev)
            ball_r = NeuronBall(net_r.hidden, r)
            if cfg.epochs_gap > 0:
                adversarial_train(net_r, (Xn, y_gap), epochs=cfg.epochs_gap, lr=cfg.lr_gap,
                                  batch_size=cfg.batch_size_gap, mode="adversarial", eps=cfg.eps,
                                  norm="l2", attack_steps=cfg.attack_steps, clip=(0.0, 1.0),
                                  ball=ball_r, ball_mode="project", seed=cfg.seed, device=dev)
            recs.append({"kind": "gap", "radius": float(r), "clean_acc": accuracy(net_r, Xtn, yt_d),
                         "robust_acc": robust_accuracy(net_r, Xtn, yt_d, cfg.eps, norm="l2",
                                                       steps=cfg.eval_attack_steps, seed=cfg.seed),
                         "max_deviation": ball_r.max_deviation()})
    return recs


SRC_S = "Wang et al. 2022 [P] abstract + [S] summary, docs/papers.md §5"


def _walk_claims(syn, base: WangConfig) -> list[Check]:
    """Part 1 claims on the synthetic sphere task, per seed. The paper's claim is about nets that
    LEARNED (random nets are fragile too): (1) the lazily trained nets reach test accuracy >=
    ``min_acc`` at every d; (2) on such nets the flip distance delta/||x|| falls like d^(-1/2)
    (slope -0.5 ± 0.15; it fails when (1) fails: with ||x|| = sqrt(d), slope -1/2 alone only says
    delta = Θ(1), which an untrained net also shows); (3) at the largest d the flip distance is
    below half the Bayes margin (delta / (margin ||x||) <= 0.5): the net is fooled by far less
    than a robust classifier needs."""
    from lazylab.lab.experiments._common import loglog_slope, per_seed

    if not len(syn) or syn["d"].nunique() < 2:
        return []
    acc = per_seed(syn, lambda g: float(g["clean_acc"].min()))
    c1 = check("synthetic: lazy nets learned (min test accuracy over d)", None, base.min_acc,
               op=">=", seeds=acc, source=SRC_S + "; well above chance 0.5 (our threshold)")

    def slope(g):
        per_d = g.groupby("d")["rel_delta_mean"].mean()
        return loglog_slope(per_d.index.to_numpy(float), per_d.to_numpy(float))

    c2 = check("synthetic: log-log slope of delta/||x|| vs d (nets that learned)", None, -0.5,
               atol=0.15, seeds=per_seed(syn, slope),
               source=SRC_S + "; delta = Θ(||x||/sqrt(d)), [D] Bubeck et al.")
    c2.passed = bool(c2.passed and c1.passed)
    c2.tolerance += f" and test acc >= {base.min_acc:g}"
    dmax = syn["d"].max()
    ratio = per_seed(syn[syn["d"] == dmax],
                     lambda g: float(g["rel_delta_mean"].mean()) / float(base.margin))
    c3 = check(f"synthetic: flip distance / Bayes margin at d={int(dmax)}", None, 0.5, op="<=",
               seeds=ratio, source=SRC_S + "; Bayes margin = margin·||x|| (our task); 0.5 is ours")
    c3.passed = bool(c3.passed and c1.passed)
    return [c1, c2, c3]


def _radius_claims(gap) -> list[Check]:
    """Part 2 (Fig 4's phase transition), per seed: robust accuracy rises by >= 0.2 from the
    smallest to the largest allowed radius, and never drops by more than 0.05 along the grid."""
    from lazylab.lab.experiments._common import per_seed

    def curve(g):
        return g.groupby("radius")["robust_acc"].mean().to_numpy(float)

    def rise(g):
        ra = curve(g)
        return float(ra[-1] - ra[0])

    def drop(g):
        ra = curve(g)
        return float(np.max(np.maximum(ra[:-1] - ra[1:], 0))) if len(ra) > 1 else 0.0

    src = SRC_S + " (Fig 4: robustness improves with the allowed deviation)"
    return [check("robust accuracy rises with the allowed radius (largest - smallest)", None, 0.2,
                  op=">=", seeds=per_seed(gap, rise), source=src + "; 0.2 is ours"),
            check("robust accuracy non-decreasing in the radius (largest drop)", None, 0.05,
                  op="<=", seeds=per_seed(gap, drop), source=src + "; 0.05 = seed noise (ours)")]


def report(df, base: WangConfig) -> Report:
    import matplotlib.pyplot as plt

    from lazylab.lab.experiments._chizat_common import loglog_slope

    walk = df[df["kind"] == "walk"]
    gap = df[df["kind"] == "gap"]
    metrics: dict[str, float] = {}
    checks: list[Check] = []
    table = (walk.groupby(["dataset", "d", "width"])[
        ["clean_acc", "frac_flipped", "delta_mean", "rel_delta_mean", "grad_norm_mean", "eta_mean",
         "max_deviation", "lazy_radius"]].mean().reset_index())
    figs = {}
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for ds, sub in table.groupby("dataset"):
        per_d = sub.groupby("d")["rel_delta_mean"].mean()
        dd, rel = per_d.index.to_numpy(float), per_d.to_numpy(float)
        if len(dd) >= 2 and np.all(np.isfinite(rel)):
            metrics[f"slope_rel_delta_vs_d_{ds}"] = loglog_slope(dd, rel)
        for w, sw in sub.groupby("width"):
            ax[0].loglog(sw["d"], sw["rel_delta_mean"], "o-", label=f"{ds}, m={w}")
        for d_, r_ in zip(dd, rel):
            metrics[f"rel_delta_{ds}_d={int(d_)}"] = float(r_)
    checks += _walk_claims(walk[walk["dataset"] == "synthetic"], base)
    if len(table):
        dmin, dmax = table["d"].min(), table["d"].max()
        ref0 = table[table["d"] == dmin]["rel_delta_mean"].mean()
        xs = np.array([dmin, dmax], float)
        ax[0].loglog(xs, ref0 * np.sqrt(dmin / xs), "k--", lw=1, label="∝ d^(-1/2)")
    ax[0].set_xlabel("input dimension d")
    ax[0].set_ylabel("sign-flip perturbation δ / ||x||")
    ax[0].legend(fontsize=7)
    ax[0].set_title("lazy-trained nets: walk along the input gradient")
    if len(gap):
        g = gap.groupby("radius")[["clean_acc", "robust_acc", "max_deviation"]].mean().reset_index()
        r, ra = g["radius"].to_numpy(float), g["robust_acc"].to_numpy(float)
        ax[1].semilogx(r, ra, "o-", label=f"robust (L2 PGD, eps={base.eps:g})")
        ax[1].semilogx(r, g["clean_acc"], "s--", label="clean")
        ax[1].set_xlabel("allowed per-neuron deviation radius r")
        ax[1].set_ylabel("test accuracy")
        ax[1].set_ylim(-0.02, 1.02)
        ax[1].legend()
        ax[1].set_title(f"projected adversarial training, d={base.gap_d}, m={base.gap_width}")
        for rr, a in zip(r, ra):
            metrics[f"robust_acc_radius={rr:g}"] = float(a)
        checks += _radius_claims(gap)
    else:
        ax[1].set_visible(False)
    fig.tight_layout()
    figs["wang_lazy_attack"] = fig
    notes = (
        "Wang et al. (2022) prove that lazily trained two-layer ReLU nets are fooled by a single "
        "gradient step of size O(1/sqrt(d)) relative to ||x|| (docs/papers.md §5; the paper's figure "
        "values were not available to us, so only the scaling and the direction of the radius effect "
        "are checked). Synthetic data: the true margin is margin*||x||, far larger than the measured "
        "delta for large d. Images: digits are resized from 8x8, so d > 64 adds no information; the "
        "slope for digits is reported, not checked. Part 2 uses PGD on each batch at the current "
        "weights (the authors attack the whole training set once per epoch)."
    )
    return Report(metrics=metrics, checks=checks, figures=figs, table=table, notes=notes)


EXPERIMENT = register(Experiment(
    name="wang-lazy-attack",
    description="Wang et al. 2022: sign-flip perturbation of lazily trained two-layer ReLU nets vs d "
                "(synthetic sphere, digits 0/1) and projected adversarial training vs the lazy radius",
    config=WangConfig,
    presets={
        "quick": Preset(set={}, sweep={"dataset": ["synthetic", "digits"], "d": [16, 64, 256, 1024],
                                       "width": [200], "seed": [1, 2, 3]}),  # lr_gap tuned on seed 0
        "paper": Preset(set={"dataset": "mnist", "epochs": 1000, "lr": 0.1, "batch_size": 64,
                             "C0": 10.0, "n_train": 0, "n_test": 0, "max_steps": 5000,
                             "gap_d": 784, "gap_width": 1000, "eps": 0.2, "attack_steps": 100,
                             "eval_attack_steps": 100, "epochs_gap": 1000, "lr_gap": 0.01,
                             "radii": (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)},
                        sweep={"d": [25, 100, 196, 400, 784], "width": [1000]}),
    },
    run_cell=run_cell,
    report=report,
    report_settings=("min_acc",),
))
