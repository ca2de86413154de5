"""Reports: records in the store -> ``summary.json``, ``figures/*.png`` and ``report.md``.

:func:`build_report` reads only the store (``results.sqlite``) and the experiment's ``report``
function, so ``lazylab report DIR`` rebuilds every output file without training. All files are
written atomically (tmp file + ``os.replace``).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from lazylab.lab.config import make_config
from lazylab.lab.registry import Check, Report, get_experiment
from lazylab.lab.store import Store, atomic_write_text, load_results

__all__ = ["build_report", "markdown_table", "summary_dict"]


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4g}"
    if hasattr(v, "item") and callable(v.item):
        try:
            return _fmt(v.item())
        except (ValueError, RuntimeError):
            pass
    return str(v).replace("|", "\\|").replace("\n", " ")


def markdown_table(df: Any, max_rows: int = 200) -> str:
    """A pandas DataFrame as a GitHub markdown table (floats with 4 significant digits)."""
    if df is None or len(df.columns) == 0:
        return ""
    import pandas as pd

    show = df.head(max_rows)
    if not show.index.equals(pd.RangeIndex(len(show))):
        show = show.reset_index()
    cols = [str(c) for c in show.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in show.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(v) for v in row) + " |")
    if len(df) > max_rows:
        lines.append(f"\n({len(df) - max_rows} more rows not shown)")
    return "\n".join(lines)


def _json_num(v: Any) -> Any:
    if hasattr(v, "item") and callable(v.item):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else (1e308 if v > 0 else -1e308)
    return v


def summary_dict(experiment: str, preset: str, rep: Report, cells_done: int,
                 cells_total: int) -> dict[str, Any]:
    """The content of ``summary.json``."""
    checks = []
    for c in rep.checks:
        d = c.to_dict()
        d["value"] = _json_num(d["value"])
        d["target"] = _json_num(d["target"])
        checks.append(d)
    return {
        "experiment": experiment,
        "preset": preset,
        "metrics": {k: _json_num(v) for k, v in rep.metrics.items()},
        "checks": checks,
        "all_checks_passed": all(c.passed for c in rep.checks),
        "cells": {"done": cells_done, "total": cells_total},
    }


def _save_figure(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _validate_report(rep: Any, name: str) -> Report:
    if not isinstance(rep, Report):
        raise TypeError(f"{name}.report must return a lazylab.lab.registry.Report, got "
                        f"{type(rep).__name__}")
    for c in rep.checks:
        if not isinstance(c, Check):
            raise TypeError(f"{name}.report: checks must be Check objects, got {type(c).__name__}")
    for fname in rep.figures:
        if not fname or "/" in fname or fname.startswith("."):
            raise ValueError(f"{name}.report: bad figure name {fname!r}")
    return rep


def build_report(directory: str | os.PathLike) -> Path:
    """Rebuild ``summary.json``, ``figures/*.png`` and ``report.md`` of the run folder
    ``directory`` from its store; return the path of ``report.md``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory = Path(directory)
    with Store.open_readonly(directory) as store:
        meta = store.meta()
        cells = store.cells()
    exp = get_experiment(meta["experiment"])
    done = [c for c in cells if c["status"] == "done"]
    df = load_results(directory)
    base = make_config(exp.config, meta["config"])
    rep = _validate_report(exp.report(df, base), exp.name)

    fig_names = []
    for fname, fig in rep.figures.items():
        _save_figure(fig, directory / "figures" / f"{fname}.png")
        plt.close(fig)
        fig_names.append(fname)

    summary = summary_dict(exp.name, meta["preset"], rep, len(done), len(cells))
    atomic_write_text(directory / "summary.json",
                      json.dumps(summary, indent=2, allow_nan=False) + "\n")

    md = [f"# {exp.name}", "", exp.description, ""]
    if len(done) < len(cells):
        md += [f"> **Partial results:** {len(done)} of {len(cells)} cells finished; "
               f"`lazylab run {exp.name} --resume --out {directory}` completes the sweep.", ""]
    md += [f"- preset: `{meta['preset']}`",
           f"- cells: {len(done)}/{len(cells)}",
           f"- sweep: `{json.dumps(meta['sweep'])}`" if meta["sweep"] else "- sweep: none",
           f"- wall time of the cells: {sum(c['wall_s'] or 0 for c in done):.1f} s", ""]
    if rep.checks:
        md += ["## Checks", "", "| | check | value | target | tolerance |", "|---|---|---|---|---|"]
        for c in rep.checks:
            md.append(f"| {'✔' if c.passed else '✘'} | {_fmt(c.name)} | {_fmt(c.value)} | "
                      f"{_fmt(c.target)} | {_fmt(c.tolerance)} |")
        md.append("")
    if rep.metrics:
        md += ["## Metrics", "", "| metric | value |", "|---|---|"]
        md += [f"| {_fmt(k)} | {_fmt(v)} |" for k, v in rep.metrics.items()]
        md.append("")
    if fig_names:
        md += ["## Figures", ""]
        md += [f"![{f}](figures/{f}.png)\n" for f in fig_names]
    if rep.table is not None:
        md += ["## Table", "", markdown_table(rep.table), ""]
    if rep.notes:
        md += ["## Notes", "", rep.notes.strip(), ""]
    md += ["## Config", "", "| key | value |", "|---|---|"]
    md += [f"| {k} | {_fmt(v)} |" for k, v in meta["config"].items()]
    md += ["", "Files: `config.yaml` (resolved config and sweep), `results.sqlite` (records), "
           "`summary.json`, `environment.json`. Python: "
           f"`lazylab.load_results({str(directory)!r})`.", ""]
    path = directory / "report.md"
    atomic_write_text(path, "\n".join(md))
    return path
