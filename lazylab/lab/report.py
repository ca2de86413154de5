"""Reports: records in the store -> ``summary.json``, ``figures/*.png`` and ``report.md``.

:func:`build_report` reads only the store (``results.sqlite``) and the experiment's ``report``
function, so ``lazylab report DIR`` rebuilds every output file without training, and
``lazylab report DIR --set KEY=VALUE`` re-judges the run with other report settings
(tolerances; see ``Experiment.report_settings``). All files are written atomically (tmp file +
``os.replace``).

Checks are shown in two groups: *claims* (the paper's statements: value as mean ± sd over seeds,
target, tolerance and its source, verdict "pass" / "not reproduced") and *sanity* identities
(true by construction when the code is right; tested in ``tests/``).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from lazylab.lab.config import make_config, parse_assignment, parse_value
from lazylab.lab.registry import Check, Experiment, Report, get_experiment
from lazylab.lab.store import Store, atomic_write_text, load_results

__all__ = ["build_report", "checks_markdown", "markdown_table", "report_overrides",
           "summary_dict"]


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
                 cells_total: int, report_settings: dict[str, Any] | None = None,
                 overridden: dict[str, Any] | None = None) -> dict[str, Any]:
    """The content of ``summary.json``.

    ``checks`` lists every check (with ``kind``, ``verdict``, ``source``, seed ``mean``/``sd``/``n``);
    ``claims`` counts the claims by verdict; ``all_claims_reproduced`` and ``all_checks_passed``
    (claims and sanity checks) are the verdicts; ``report_settings`` the values the report used
    and ``overridden`` those changed by ``lazylab report DIR --set``.
    """
    checks = []
    for c in rep.checks:
        d = c.to_dict()
        for k in ("value", "target", "mean", "sd"):
            d[k] = _json_num(d[k])
        checks.append(d)
    claims = [c for c in rep.checks if c.kind == "claim"]
    return {
        "experiment": experiment,
        "preset": preset,
        "metrics": {k: _json_num(v) for k, v in rep.metrics.items()},
        "checks": checks,
        "claims": {"total": len(claims), "passed": sum(bool(c.passed) for c in claims),
                   "not_reproduced": [c.name for c in claims if not c.passed]},
        "all_claims_reproduced": all(bool(c.passed) for c in claims),
        "all_checks_passed": all(c.passed for c in rep.checks),
        "report_settings": {k: _json_num(v) for k, v in (report_settings or {}).items()},
        "overridden": {k: _json_num(v) for k, v in (overridden or {}).items()},
        "cells": {"done": cells_done, "total": cells_total},
    }


def _value_text(c: Check) -> str:
    """``mean ± sd (n seeds)`` when the check has seed statistics, else the value."""
    if c.n is not None and c.n >= 2 and c.sd is not None:
        return f"{_fmt(float(c.value))} ± {_fmt(float(c.sd))} (n={c.n})"
    if c.n is not None:
        return f"{_fmt(float(c.value))} (n={c.n})"
    return _fmt(c.value)


def checks_markdown(checks: list[Check]) -> list[str]:
    """The ``## Claims`` and ``## Sanity checks`` sections of report.md (markdown lines)."""
    md: list[str] = []
    claims = [c for c in checks if c.kind == "claim"]
    sanity = [c for c in checks if c.kind == "sanity"]
    if claims:
        ok = sum(c.passed for c in claims)
        md += ["## Claims", "",
               f"{ok} of {len(claims)} claims reproduced at this scale. Value = mean ± sd over "
               "seeds (n = number of seeds) where the claim is measured per seed; a claim that "
               "is not reproduced is a result of this run, not an error.", "",
               "| verdict | claim | value | target | tolerance | source |",
               "|---|---|---|---|---|---|"]
        for c in claims:
            tol = c.tolerance + (f" ({c.note})" if c.note else "")
            md.append(f"| {'✔ pass' if c.passed else '✘ not reproduced'} | {_fmt(c.name)} | "
                      f"{_value_text(c)} | {_fmt(c.target)} | {_fmt(tol)} | {_fmt(c.source)} |")
        md.append("")
    if sanity:
        md += ["## Sanity checks", "",
               "Identities that hold by construction when the code is right (their tests are in "
               "`tests/`); shown to catch a broken run, not as results.", "",
               "| | check | value | target | tolerance |", "|---|---|---|---|---|"]
        for c in sanity:
            md.append(f"| {'✔' if c.passed else '✘'} | {_fmt(c.name)} | {_value_text(c)} | "
                      f"{_fmt(c.target)} | {_fmt(c.tolerance)} |")
        md.append("")
    return md


def report_overrides(exp: Experiment, sets: dict[str, Any] | list[str] | None
                     ) -> dict[str, Any]:
    """Parse ``lazylab report --set KEY=VALUE`` items into report-setting values.

    Raises ValueError when a key is not one of ``exp.report_settings`` (naming them), TypeError
    on a value of the wrong type.
    """
    from lazylab.lab.config import coerce, field_types

    if not sets:
        return {}
    if isinstance(sets, list):
        sets = dict(parse_assignment(s, "--set") for s in sets)
    types_ = field_types(exp.config)
    out = {}
    for k, v in sets.items():
        if k not in exp.report_settings:
            allowed = ", ".join(exp.report_settings) or "(none)"
            raise ValueError(f"report --set: {k!r} is not a report setting of {exp.name!r} "
                             f"(changing it needs new cells: `lazylab run`); report settings: "
                             f"{allowed}")
        out[k] = parse_value(v, types_[k], k) if isinstance(v, str) else coerce(v, types_[k], k)
    return out


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


def build_report(directory: str | os.PathLike,
                 sets: dict[str, Any] | list[str] | None = None) -> Path:
    """Rebuild ``summary.json``, ``figures/*.png`` and ``report.md`` of the run folder
    ``directory`` from its store; return the path of ``report.md``.

    ``sets``: new values of report settings (``["slope_tol=0.1"]`` or ``{"slope_tol": 0.1}``):
    the stored records are re-judged with them, nothing is recomputed, and the store is left as
    it was (the report says which values were overridden).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory = Path(directory)
    with Store.open_readonly(directory) as store:
        meta = store.meta()
        cells = store.cells()
    exp = get_experiment(meta["experiment"])
    overridden = report_overrides(exp, sets)
    done = [c for c in cells if c["status"] == "done"]
    df = load_results(directory)
    values = {**meta["config"], **overridden}
    for k, v in overridden.items():  # the config columns of the records, too
        if k in df.columns:
            df[k] = [tuple(v) if isinstance(v, list) else v] * len(df)
    base = make_config(exp.config, values)
    rep = _validate_report(exp.report(df, base), exp.name)
    used = {k: values[k] for k in exp.report_settings if k in values}

    fig_names = []
    for fname, fig in rep.figures.items():
        _save_figure(fig, directory / "figures" / f"{fname}.png")
        plt.close(fig)
        fig_names.append(fname)

    summary = summary_dict(exp.name, meta["preset"], rep, len(done), len(cells), used,
                           overridden)
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
    if overridden:
        md += ["> **Re-judged** with report settings "
               + ", ".join(f"`{k}={_fmt(v)}`" for k, v in overridden.items())
               + " (`lazylab report --set`; the stored run used "
               + ", ".join(f"`{k}={_fmt(meta['config'].get(k))}`" for k in overridden) + ").", ""]
    md += checks_markdown(rep.checks)
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
