"""Rendering of :func:`lazylab.diagnose` and :func:`lazylab.alpha_crossover` results (the lab's
side: the library returns data, this module writes markdown, figures and CSV files).

- :func:`to_markdown`, :func:`figures`, :func:`save` for a :class:`~lazylab.diagnosis.DiagnosisReport`:
  verdict with its numbers and thresholds, a table of final metrics, the configuration; the curves
  figure (losses, kernel change, distance from the linearization, alignment and stability) and the
  kernel spectrum at init and at the end. ``save(rep, dir)`` writes ``report.md``,
  ``figures/diagnose_*.png``, ``history.csv`` and ``kernel.csv``.
- :func:`crossover_markdown`, :func:`crossover_figure_of`, :func:`save_crossover` for a
  :class:`~lazylab.diagnosis.CrossoverResult`.

Figures are ``matplotlib.figure.Figure`` objects built without pyplot (no global state, any backend).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from lazylab.diagnosis import CrossoverResult, DiagnosisReport

__all__ = ["to_markdown", "figures", "save", "crossover_markdown", "crossover_figure_of",
           "save_crossover", "LABELS"]


def figures(rep: DiagnosisReport) -> dict[str, Any]:
    """``{"curves": Figure, "spectrum": Figure}`` (``matplotlib.figure.Figure`` objects, built on
    first access without pyplot)."""
    return {"curves": _curves_figure(rep), "spectrum": _spectrum_figure(rep)}

def to_markdown(rep: DiagnosisReport, figure_dir: str = "figures") -> str:
    """The report: verdict with its numbers and thresholds, a table of final metrics, the
    configuration, and links to ``figure_dir/diagnose_<name>.png``."""
    n = rep.numbers
    lines = [f"# How lazy is this run? Verdict: **{rep.verdict}**", ""]
    lines += [f"- {r}" for r in rep.reasons]
    lines += ["", "Thresholds: lazy if kernel change < {lazy_kernel:g} and linearization gap < "
              "{lazy_lin_gap:g}; feature learning if kernel change >= {feature_kernel:g}; "
              "intermediate otherwise.".format(**rep.thresholds), ""]
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
    for key, label in LABELS.items():
        if key in n and n[key] is not None and not (isinstance(n[key], float) and math.isnan(n[key])):
            lines.append(f"| {label} | {n[key]:.4g} |")
    lines += ["", "## Setup", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rep.config.items()]
    lines += ["", "## Figures", ""]
    for name in ("curves", "spectrum"):
        lines.append(f"![{name}]({figure_dir}/diagnose_{name}.png)")
    lines += ["", "Metric definitions: `lazylab.metrics` (kernel change: Geiger et al. 2019; kernel "
              "distance: Fort et al. 2020; kappa: Chizat et al. 2019 eq. 1; activation stability: "
              "Chizat et al. 2019 App C.2)."]
    return "\n".join(lines) + "\n"

def save(rep: DiagnosisReport, out: str | os.PathLike) -> Path:
    """Write ``out/report.md``, ``out/figures/diagnose_*.png``, ``out/history.csv`` and
    ``out/kernel.csv``; returns the path of report.md."""
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    for name, fig in figures(rep).items():
        fig.savefig(out / "figures" / f"diagnose_{name}.png", dpi=110, bbox_inches="tight")
    rep.history.to_csv(out / "history.csv", index=False)
    rep.kernel.to_csv(out / "kernel.csv", index=False)
    path = out / "report.md"
    path.write_text(to_markdown(rep))
    return path


LABELS = {
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


def crossover_figure_of(res: CrossoverResult) -> Any:
    return _crossover_figure(res)

def crossover_markdown(res: CrossoverResult) -> str:
    head = (f"alpha* = {res.alpha_star:.4g} (kernel change crosses {res.threshold:g}; bracket "
            f"{res.bracket[0]:.4g} .. {res.bracket[1]:.4g})" if res.alpha_star is not None
            and res.bracket is not None else f"no crossover: {res.message}")
    return f"# Alpha crossover\n\n{head}\n\n{_md_table(res.table)}\n\n" \
           "![crossover](figures/alpha_crossover.png)\n"

def save_crossover(res: CrossoverResult, out: str | os.PathLike) -> Path:
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    _crossover_figure(res).savefig(out / "figures" / "alpha_crossover.png", dpi=110, bbox_inches="tight")
    res.table.to_csv(out / "alpha_crossover.csv", index=False)
    path = out / "crossover.md"
    path.write_text(crossover_markdown(res))
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
