"""``diagnose``: how lazy is this run? :func:`lazylab.diagnose` as an experiment (store, sweep, resume,
report like every other), e.g. ``lazylab run diagnose --sweep alpha=0.1,100 --out runs/d``.

One cell = one ``diagnose`` run: a model (built-in name or ``module:function``, configured with
``model_set``, and ``width`` when > 0) trained on ``data`` (built-in or a ``.pt``/``.npz`` file,
configured with ``data_set``) — as given (``alpha = 0``) or as ``lazy(model, alpha)`` — next to its
linearized twin, with the tangent kernel on ``probe`` points at ``snapshots`` log-spaced steps
(models and data as in ``lazylab diagnose``: :mod:`lazylab.lab.diagnose_cli`). ``model_set`` and
``data_set`` are ``KEY=VALUE`` entries separated by ``;`` (``"m=1000;activation=relu"``).

Records per cell: ``kind="summary"`` (verdict, reasons, the numbers behind the verdict prefixed
``n_``), ``kind="history"`` (one per tracked step), ``kind="kernel"`` (one per kernel snapshot),
``kind="spectrum"`` (kernel eigenvalues at init and at the end). The report: a table of verdicts,
kernel change and linearization gap against the swept key, each cell's curves and spectrum, and
its verdict with reasons (rendering: :mod:`lazylab.lab.diagnosis_render`). There is no paper check:
the verdict's thresholds are :data:`lazylab.diagnosis.THRESHOLDS`.

Cost of one cell: that of :func:`lazylab.diagnose` (the run, about twice again for the twin,
``snapshots`` NTKs of ``probe`` points, kappa's Lanczos iterations).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from lazylab.lab.registry import Experiment, Preset, Report, RunContext, register
from lazylab.lab.rules import NONNEG, POSITIVE, Rule, one_of

_WIDTH_KEY = {"two_layer": "m", "small_cnn": "width", "mlp": "widths"}


@dataclass
class DiagnoseConfig:
    seed: int = 0
    model: str = "two_layer"     # built-in (two_layer, mlp, small_cnn) or module:function
    model_set: str = ""          # "KEY=VALUE;KEY=VALUE" model settings
    width: int = 0               # > 0: the built-in's width (m / width / every hidden width)
    alpha: float = 0.0           # 0: the model as given; > 0: lazy(model, alpha)
    data: str = "teacher"        # built-in (teacher, digits) or a .pt/.npz file
    data_set: str = ""           # "KEY=VALUE;KEY=VALUE" data settings
    steps: int = 300
    lr: float = 1.0
    loss: str = "mse"
    optimizer: str = "gd"
    batch_size: int = 0          # 0: full batch
    probe: int = 32              # probe points of the kernel
    snapshots: int = 10          # kernel snapshots (log-spaced)
    kappa: bool = True           # Chizat's kappa at init

    RULES: ClassVar[dict[str, Rule]] = {
        "width": NONNEG, "alpha": NONNEG, "steps": POSITIVE, "lr": POSITIVE, "batch_size": NONNEG,
        "probe": Rule(ge=2), "snapshots": POSITIVE,
        "loss": one_of("mse", "cross_entropy", "logistic", "hinge"),
        "optimizer": one_of("gd", "sgd", "adam")}


def _sets(text: str, flag: str) -> dict[str, Any]:
    from lazylab.lab.diagnose_cli import _parse_sets

    return _parse_sets([t for t in text.split(";") if t.strip()], flag)


def run_cell(cfg: DiagnoseConfig, ctx: RunContext) -> list[dict]:
    """One diagnose run (same model, data and seeds as ``lazylab diagnose`` with these settings)."""
    import torch

    from lazylab.diagnosis import diagnose
    from lazylab.lab.diagnose_cli import build_model, load_data

    (X, y), test = load_data(cfg.data, _sets(cfg.data_set, "data_set"))
    ms = _sets(cfg.model_set, "model_set")
    if cfg.width:
        if cfg.model not in _WIDTH_KEY:
            raise ValueError(f"width applies to the built-in models {sorted(_WIDTH_KEY)}, not "
                             f"{cfg.model!r}; set the width in model_set")
        ms[_WIDTH_KEY[cfg.model]] = [cfg.width] * 2 if cfg.model == "mlp" else cfg.width
    torch.manual_seed(cfg.seed)  # the model's initial weights follow the seed
    model, X = build_model(cfg.model, ms, X, y)
    if test is not None and X.dim() == 2:
        test = (test[0].flatten(1), test[1])
    rep = diagnose(model, (X, y), test_data=test, alpha=cfg.alpha or None, steps=cfg.steps,
                   lr=cfg.lr, loss=cfg.loss, optimizer=cfg.optimizer,
                   batch_size=cfg.batch_size or None, n_probe=cfg.probe,
                   n_snapshots=cfg.snapshots, kappa=cfg.kappa, seed=cfg.seed, device=ctx.device,
                   progress=False)
    return records(rep)


def records(rep: Any) -> list[dict]:
    """A :class:`~lazylab.diagnosis.DiagnosisReport` as flat records (see the module docstring)."""
    recs: list[dict] = [{"kind": "summary", "verdict": rep.verdict, "reasons": " | ".join(rep.reasons),
                         **{f"n_{k}": float(v) for k, v in rep.numbers.items()},
                         **{f"thr_{k}": float(v) for k, v in rep.thresholds.items()}}]
    for kind, frame in (("history", rep.history), ("kernel", rep.kernel)):
        for r in frame.to_dict("records"):
            rec = {"kind": kind, **{k: _flat(v) for k, v in r.items()}}
            rec["step"] = int(rec["step"])
            recs.append(rec)
    for which, lam in rep.spectra.items():
        recs += [{"kind": "spectrum", "which": which, "index": i, "eigenvalue": float(v)}
                 for i, v in enumerate(lam)]
    return recs


def _flat(v: Any) -> Any:
    v = v.item() if hasattr(v, "item") else v  # numpy scalars
    return v if isinstance(v, (str, int, float, bool)) or v is None else float(v)


def from_records(df: Any) -> Any:
    """The :class:`~lazylab.diagnosis.DiagnosisReport` of one cell, rebuilt from its records."""
    import numpy as np

    from lazylab.diagnosis import DiagnosisReport

    def part(kind: str) -> Any:
        return df[df["kind"] == kind].dropna(axis=1, how="all").reset_index(drop=True)

    s = part("summary").iloc[0]
    numbers = {k[2:]: float(v) for k, v in s.items() if k.startswith("n_") and not _nan(v)}
    thr = {k[4:]: float(v) for k, v in s.items() if k.startswith("thr_")}
    sp = part("spectrum")
    spectra = {w: sp[sp["which"] == w].sort_values("index")["eigenvalue"].to_numpy(float)
               for w in ("init", "final")}
    config = {k: s[k] for k in ("model", "alpha", "width", "data", "steps", "lr", "seed") if k in s}
    return DiagnosisReport(str(s["verdict"]), str(s["reasons"]).split(" | "), numbers,
                           part("history").sort_values("step"), part("kernel").sort_values("step"),
                           {k: np.asarray(v) for k, v in spectra.items()}, config, thr)


def _nan(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def report(df: Any, base: DiagnoseConfig) -> Report:
    """Verdicts per cell, kernel change and linearization gap against the swept key, each cell's
    figures and reasons."""
    import pandas as pd

    from lazylab.lab import diagnosis_render as render

    fields = [f for f in DiagnoseConfig.__dataclass_fields__ if f in df.columns]
    cells = list(dict.fromkeys(df["cell_id"]))
    swept = [f for f in fields if df.groupby("cell_id")[f].first().nunique() > 1]
    rows, figures, notes, metrics = [], {}, [], {}
    for i, cid in enumerate(cells):
        rep = from_records(df[df["cell_id"] == cid])
        first = df[df["cell_id"] == cid].iloc[0]
        label = ", ".join(f"{k}={first[k]}" for k in swept) or f"cell {i}"
        n = rep.numbers
        rows.append({**{k: first[k] for k in swept}, "verdict": rep.verdict,
                     **{k: n.get(k, math.nan) for k in ("kernel_rel_change", "lin_gap_rel",
                                                        "rel_weight_change", "train_loss",
                                                        "test_loss", "kappa")}})
        for k in ("kernel_rel_change", "lin_gap_rel"):
            metrics[f"{k}[{label}]"] = n.get(k, math.nan)
        for name, fig in render.figures(rep).items():
            figures[f"diagnose_{name}_{i}"] = fig
        notes.append(f"### {label}: **{rep.verdict}**\n\n" + "\n".join(f"- {r}" for r in rep.reasons))
    table = pd.DataFrame(rows)
    if len(cells) > 1 and swept:
        figures["diagnose_sweep"] = _sweep_figure(table, swept[0])
    return Report(metrics=metrics, checks=[], figures=figures, table=table, notes="\n\n".join(notes))


def _sweep_figure(table: Any, key: str) -> Any:
    from matplotlib.figure import Figure

    t = table.sort_values(key)
    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
    for col, lab in (("kernel_rel_change", "‖K_T − K_0‖/‖K_0‖"), ("lin_gap_rel", "‖f − f_lin‖/‖f_lin‖"),
                     ("rel_weight_change", "‖w − w0‖/‖w0‖")):
        ax.plot(t[key].to_numpy(float), t[col].to_numpy(float), "o-", label=lab)
    numeric = bool((t[key].to_numpy(float) > 0).all())
    ax.set(xscale="log" if numeric else "linear", yscale="log", xlabel=key,
           title="how lazy, across the sweep")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


register(Experiment(
    name="diagnose",
    description="How lazy is this run? A model trained next to its linearization: kernel change, "
                "linearization gap, weight change, verdict (lazy / intermediate / feature learning).",
    config=DiagnoseConfig,
    presets={
        "quick": Preset(set={"model_set": "", "width": 200, "data_set": "d=10;n=100;n_test=100",
                             "steps": 200, "probe": 16, "snapshots": 6},
                        sweep={"alpha": [0.1, 100.0]}),
        "paper": Preset(set={"width": 1000, "data_set": "d=10;n=200;n_test=200", "steps": 500,
                             "probe": 64, "snapshots": 15},
                        sweep={"alpha": [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0]}),
    },
    run_cell=run_cell,
    report=report,
))
