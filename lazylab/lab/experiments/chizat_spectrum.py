"""``chizat-spectrum``: the spectrum of a CNN's tangent kernel at init and after training
(Chizat, Oyallon & Bach 2019, App C.3, Fig 7(b)).

The tangent kernel ``K = Dh(w0) Dh(w0)^T`` of the network on ``n_probe`` inputs with C outputs is
an (n C) x (n C) matrix (:func:`lazylab.ntk` with ``output="full"``, float64). Its eigenvalues,
sorted and divided by the largest, are the figure's curve, for training images (``inputs="data"``)
and for uniform random pixels (``inputs="random"``). Paper (docs/papers.md §1.2, [P] + read off
Fig 7(b)): a gap of about one order of magnitude after the top ≈ 0.2 % eigenvalues (≈ the first
C = 10 of 5000), then a decay ≈ 1/i, the same for both inputs.

Per cell we also train the centered model ``alpha (h(w) - h(w0))`` (SGD on the square loss /
alpha², as ``chizat-cnn``) and recompute the spectrum at the trained weights, with the kernel
distance ``1 - <K0, K1>_F / (||K0|| ||K1||)``: our addition (the paper shows the kernel at init).

Claims, per seed (at init): gap ``lambda_C / lambda_{C+1} >= gap_min`` (10^0.5: one order of
magnitude, with half a decade of read-off tolerance on the log plot) and the log-log slope of
``lambda_i`` over ``i in [2C, nC/4]`` within ``-1 ± slope_tol`` (0.5).
Negative control (tests): ``model="linear"`` on ``inputs="gaussian"`` (white noise): its kernel
``X X^T ⊗ I_C`` has C-fold degenerate eigenvalues and a flat bulk — no gap after C, no 1/i decay.

Presets: ``quick`` = SmallCNN on sklearn digits, 100 probe images (a 1000 x 1000 kernel);
``paper`` = VGG-11 on CIFAR-10, 500 images (5000 x 5000), needs the data and a GPU; not run here.

Cost of one cell: two NTKs, O(n² C² p) (p parameters), two eigendecompositions O((nC)³), and the
training of ``chizat-cnn`` for ``epochs``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lazylab.lab.registry import Check, Experiment, Preset, Report, RunContext, check, register

SRC = "Chizat et al. 2019 App C.3, Fig 7(b) [P]+[F], docs/papers.md §1.2"


@dataclass
class ChizatSpectrumConfig:
    seed: int = 0
    dataset: str = "digits"       # digits | cifar10
    data_dir: str = ""
    model: str = "smallcnn"       # smallcnn | vgg11 | linear (negative control)
    width: int = 32
    gain: float = 2.0             # VGG-11 Xavier gain (extract_kernel.py default)
    inputs: str = "data"          # data (training images) | random (uniform pixels) | gaussian
    n_probe: int = 100
    alpha: float = 1.0            # scale of the trained centered model
    eta0: float = 3.0
    epochs: int = 10
    batch_size: int = 128
    gap_min: float = 10 ** 0.5    # report: lambda_C / lambda_{C+1} >= this
    slope_tol: float = 0.5        # report: bulk slope within -1 ± this


def _probe(cfg: ChizatSpectrumConfig, X):
    import torch

    g = torch.Generator().manual_seed(77 + cfg.seed)
    idx = torch.randperm(X.shape[0], generator=g)[:cfg.n_probe]
    if cfg.inputs == "data":
        return X[idx].double()
    if cfg.inputs == "random":  # uniform pixels in the normalized range of the data
        lo, hi = float(X.min()), float(X.max())
        return (lo + (hi - lo) * torch.rand(cfg.n_probe, *X.shape[1:], generator=g)).double()
    if cfg.inputs == "gaussian":
        return torch.randn(cfg.n_probe, *X.shape[1:], generator=g, dtype=torch.float64)
    raise ValueError(f"inputs must be 'data', 'random' or 'gaussian', got {cfg.inputs!r}")


def _spectrum(net, P):
    """Sorted eigenvalues (descending, divided by the largest) of the full tangent kernel, and
    the kernel as an (nC, nC) float64 tensor."""
    import torch

    from lazylab.ntk import ntk

    K = ntk(net, P, output="full", dtype=torch.float64)          # (n, n, C, C)
    n, _, C, _ = K.shape
    M = K.permute(0, 2, 1, 3).reshape(n * C, n * C)
    ev = torch.linalg.eigvalsh(0.5 * (M + M.T)).flip(0).clamp_min(0)
    return (ev / ev[0]).cpu().numpy(), M


def spectrum_stats(ev: np.ndarray, C: int) -> dict[str, float]:
    """``gap = lambda_C / lambda_{C+1}`` and the log-log slope of ``lambda_i`` over
    ``i in [2C, N/4]`` (1-based ranks)."""
    from lazylab.lab.experiments._common import loglog_slope

    N = len(ev)
    i = np.arange(1, N + 1)
    sel = (i >= 2 * C) & (i <= N // 4)
    return {"gap": float(ev[C - 1] / max(ev[C], 1e-300)), "slope": loglog_slope(i[sel], ev[sel])}


def run_cell(cfg: ChizatSpectrumConfig, ctx: RunContext) -> list[dict]:
    """Spectrum at init, training, spectrum at the trained weights (see the module docstring)."""
    import torch
    from torch import nn

    from lazylab.lab.experiments.chizat_cnn import (
        ChizatCNNConfig,
        build_model,
        effective_network,
        load_data,
    )
    from lazylab.metrics import kernel_distance
    from lazylab.regimes import lazy
    from lazylab.trainer import train

    ccfg = ChizatCNNConfig(seed=cfg.seed, dataset=cfg.dataset, data_dir=cfg.data_dir,
                           model="smallcnn" if cfg.model == "linear" else cfg.model,
                           width=cfg.width, gain=cfg.gain, alpha=cfg.alpha, eta0=cfg.eta0,
                           epochs=cfg.epochs, batch_size=cfg.batch_size)
    (X, y), (Xt, yt), aug = load_data(ccfg)
    C = int(y.max().item()) + 1
    torch.manual_seed(cfg.seed)
    if cfg.model == "linear":
        net = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(X.shape[1:])), C, bias=False))
    else:
        net = build_model(ccfg, X.shape[1], C)
    net = net.to(ctx.device)
    P = _probe(cfg, X).to(ctx.device)
    ev0, K0 = _spectrum(net.double(), P)
    net = net.float()
    recs: list[dict] = []
    lz = lazy(net, cfg.alpha, center="copy")
    test_acc = math.nan
    if cfg.epochs > 0:
        hist = train(lz, (X, y), test_data=(Xt, yt), loss="mse", optimizer="sgd",
                     lr=cfg.eta0 * 2.0 / C, momentum=0.9, batch_size=cfg.batch_size,
                     epochs=cfg.epochs, schedule="inverse", beta=1 / 3, augment=aug, n_track=2,
                     device=ctx.device, seed=cfg.seed, on_divergence="stop")
        test_acc = float(hist.final.get("test_acc", math.nan))
    eff = effective_network(lz, torch.float64).requires_grad_(True)  # w0 + delta
    ev1, K1 = _spectrum(eff, P)
    s0, s1 = spectrum_stats(ev0, C), spectrum_stats(ev1, C)
    recs.append({"kind": "summary", "C": C, "gap_init": s0["gap"], "slope_init": s0["slope"],
                 "gap_trained": s1["gap"], "slope_trained": s1["slope"], "test_acc": test_acc,
                 "kernel_distance": kernel_distance(K0, K1)})
    recs += [{"kind": "eig", "i": i + 1, "eig_init": float(a), "eig_trained": float(b)}
             for i, (a, b) in enumerate(zip(ev0, ev1))]
    return recs


def report(df, base: ChizatSpectrumConfig) -> Report:
    import matplotlib.pyplot as plt

    from lazylab.lab.experiments._common import per_seed

    summ = df[df["kind"] == "summary"]
    eig = df[df["kind"] == "eig"]
    checks: list[Check] = []
    metrics: dict[str, float] = {}
    for inp, s in summ.groupby("inputs"):
        C = int(s["C"].iloc[0])
        checks.append(check(f"{inp}: gap lambda_C / lambda_(C+1) at init (C = {C})", None,
                            base.gap_min, op=">=", seeds=per_seed(s, lambda g: float(g["gap_init"].mean())),
                            source=SRC + "; one order of magnitude, half a decade of read-off"))
        checks.append(check(f"{inp}: log-log slope of the bulk (i in [2C, nC/4]) at init", None,
                            -1.0, atol=base.slope_tol,
                            seeds=per_seed(s, lambda g: float(g["slope_init"].mean())),
                            source=SRC + "; decay ≈ 1/i"))
        for k in ("gap_trained", "slope_trained", "kernel_distance", "test_acc"):
            metrics[f"{k}[{inp}]"] = float(s[k].mean())
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for (inp, col) in zip(sorted(set(eig["inputs"])), ("C0", "C1", "C2")):
        e = eig[eig["inputs"] == inp].groupby("i")[["eig_init", "eig_trained"]].mean()
        ax.loglog(e.index, e["eig_init"], "-", color=col, label=f"{inp}, init")
        ax.loglog(e.index, e["eig_trained"], "--", color=col, label=f"{inp}, trained (α={base.alpha:g})")
    ax.set_xlabel("rank i")
    ax.set_ylabel("λ_i / λ_1")
    ax.set_title(f"tangent kernel spectrum, {base.model} on {base.dataset}, n = {base.n_probe}",
                 fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    notes = ("Fig 7(b) of Chizat et al.: normalized sorted eigenvalues of the full tangent kernel "
             "(n inputs × C outputs). Claims at init, per seed; the trained spectra and the kernel "
             "distance init → trained are our addition (metrics). Report settings: gap_min, "
             "slope_tol.")
    table = summ.groupby("inputs")[["gap_init", "slope_init", "gap_trained", "slope_trained",
                                     "kernel_distance", "test_acc"]].mean().reset_index()
    return Report(metrics=metrics, checks=checks, figures={"chizat_spectrum": fig}, table=table,
                  notes=notes)


EXPERIMENT = register(Experiment(
    name="chizat-spectrum",
    description="Chizat et al. 2019 Fig 7(b): tangent-kernel spectrum of a CNN at init and after "
                "training (data vs random inputs)",
    config=ChizatSpectrumConfig,
    presets={
        "quick": Preset(sweep={"inputs": ["data", "random"], "seed": [1, 2, 3]}),
        "paper": Preset(set={"dataset": "cifar10", "model": "vgg11", "n_probe": 500, "eta0": 1.0,
                             "epochs": 70},
                        sweep={"inputs": ["data", "random"]}),
    },
    run_cell=run_cell,
    report=report,
    report_settings=("gap_min", "slope_tol"),
))
