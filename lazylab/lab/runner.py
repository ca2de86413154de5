"""``run_experiment``: config -> grid -> executor -> store -> report (one ``lazylab run``).

Everything that can be wrong with the request (unknown experiment or key, wrong type, empty
sweep, unreachable Dask scheduler, a folder from another run) is checked BEFORE anything is
written, so a bad command never touches an existing store.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
from pathlib import Path
from typing import Any

from lazylab.lab.config import ResolvedConfig, cell_hash, resolve
from lazylab.lab.environment import collect_environment
from lazylab.lab.executors import CellsFailedError, make_executor
from lazylab.lab.registry import get_experiment
from lazylab.lab.report import build_report
from lazylab.lab.rules import validate_cells
from lazylab.lab.store import STORE_NAME, Store, atomic_write_text
from lazylab.lab.sweep import Cell, grid

__all__ = ["default_out", "plan", "run_experiment"]


def default_out(name: str) -> Path:
    """``runs/NAME-YYYYmmdd-HHMMSS`` (UTC)."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{name}-{stamp}"


def plan(name: str, preset: str = "quick", set: dict | list | None = None,
         sweep: dict | list | None = None) -> tuple[Any, ResolvedConfig, list[Cell]]:
    """Validate a request: ``(experiment, resolved config, cells)``; writes nothing.

    Checks the experiment and preset names, every key and value type (:func:`resolve`), and every
    cell of the grid against the config's rules (:func:`lazylab.lab.rules.validate_cells`).
    """
    exp = get_experiment(name)
    if preset not in exp.presets:
        raise ValueError(f"--preset: experiment {name!r} has no preset {preset!r}; "
                         f"presets: {', '.join(exp.presets)}")
    resolved = resolve(exp.config, exp.presets[preset], set, sweep)
    cells = grid(resolved, exp.report_settings)
    validate_cells(exp.config, cells)  # ranges, choices, data files: every cell, before any write
    return exp, resolved, cells


def _check_device(device: str) -> None:
    import torch

    if device == "cpu":
        return
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available on this machine")
        return
    raise ValueError(f"--device: expected 'cpu' or 'cuda', got {device!r}")


def _config_yaml(exp: Any, preset: str, resolved: ResolvedConfig, n_cells: int) -> str:
    import yaml

    doc = {"experiment": exp.name, "preset": preset, "config": resolved.base,
           "sweep": resolved.sweep, "cells": n_cells}
    return yaml.safe_dump(doc, sort_keys=False)


def run_experiment(
    name: str,
    preset: str = "quick",
    set: dict | list | None = None,
    sweep: dict | list | None = None,
    out: str | os.PathLike | None = None,
    executor: str = "local",
    workers: int = 1,
    resume: bool = False,
    device: str = "cpu",
    progress: bool = True,
    threads: int = 1,
    argv: list[str] | None = None,
    echo: bool = True,
) -> Path:
    """Run (or with ``resume=True`` complete) experiment ``name``; return the path of report.md.

    ``set``: config overrides (``["k=v", ...]`` or ``{k: v}``); ``sweep``: grid additions
    (``["k=v1,v2", ...]`` or ``{k: [v1, v2]}``), combined with the preset's grid (these win on
    the same key). ``out`` defaults to ``runs/NAME-<timestamp>``; without ``resume`` it must be
    absent or empty. ``executor``: ``local`` | ``dask`` | ``dask://HOST:PORT``. ``threads``:
    torch threads per cell (default 1 on every executor: parallelism comes from the workers, and
    the same thread count everywhere gives the same records). ``echo``: print
    the per-cell lines and the report path.
    """
    from tqdm.auto import tqdm

    exp, resolved, cells = plan(name, preset, set, sweep)
    _check_device(device)
    out = Path(out) if out is not None else default_out(name)
    store_path = out / STORE_NAME
    cells, done, report_sets = _resume_state(out, resume, exp, preset, resolved, cells)
    todo = [c for c in cells if c.id not in done]

    failed: list[tuple[Cell, str]] = []
    say = (lambda msg: tqdm.write(msg, file=sys.stdout)) if echo else (lambda msg: None)
    # the executor connects (Dask) before anything is written: a bad address changes nothing
    with make_executor(executor, workers, threads=threads) as ex:
        if store_path.exists():
            store = Store.open(out)
        else:
            store = Store.create(out, experiment=exp.name, preset=preset, config=resolved.base,
                                 sweep=resolved.sweep, cells=cells, version=_lazylab_version())
        try:
            _write_run_files(out, exp, preset, resolved, cells, ex, device, threads, argv)
            say(f"lazylab: {exp.name} [{preset}] {len(cells)} cells, {len(done)} already done, "
                f"{len(todo)} to run on {ex.name} -> {out}")
            bar = tqdm(total=len(cells), initial=len(done), desc=exp.name, unit="cell",
                       disable=not progress, file=sys.stderr, dynamic_ncols=True)
            try:
                in_process = ex.workers == 1 and executor == "local"
                results = ex.run(exp.name, exp.run_cell.__module__, todo, device,
                                 progress and in_process)
                failed = _store_cells(results, store, len(cells), bar, say)
            finally:
                bar.close()
        finally:
            store.close()
    path = build_report(out, sets=report_sets or None)
    if echo:
        print(f"report: {path}")
    if failed:
        raise CellsFailedError(failed, str(out))
    _check_all_run(out, todo)
    return path


def _resume_state(out: Path, resume: bool, exp: Any, preset: str, resolved: ResolvedConfig,
                  cells: list[Cell]) -> tuple[list[Cell], frozenset[str], dict[str, Any]]:
    """Check the ``out`` folder (reading only) and return ``(cells, done ids, report_sets)``.

    Without ``resume`` the folder must be absent or empty. With ``resume`` and a store there, the
    store must be compatible with the request; ``cells`` get the ids their twins have in the store,
    and ``report_sets`` are the report settings whose value differs from the stored config."""
    store_path = out / STORE_NAME
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a folder")
    existing = out.is_dir() and any(out.iterdir())
    done: frozenset[str] = frozenset()
    report_sets: dict[str, Any] = {}
    if resume and store_path.exists():
        with Store.open_readonly(out) as st:
            st.check_compatible(exp.name, preset, resolved.base, resolved.sweep,
                                ignore=exp.report_settings)
            cells = _stored_ids(cells, st.cells(), exp.report_settings)
            done = frozenset(c for c, s in st.cell_status().items() if s == "done")
            stored = st.meta()["config"]
        report_sets = {k: resolved.base[k] for k in exp.report_settings
                       if stored.get(k) != resolved.base.get(k)}
    elif resume and existing:
        raise ValueError(f"--resume: {out} is not empty but has no {STORE_NAME}; "
                         "it is not a lazylab run folder")
    elif existing:
        raise FileExistsError(f"--out {out} already exists and is not empty; add --resume to "
                              "finish its missing cells, or choose a new --out")
    return cells, done, report_sets


def _write_run_files(out: Path, exp: Any, preset: str, resolved: ResolvedConfig, cells: list[Cell],
                     ex: Any, device: str, threads: int, argv: list[str] | None) -> None:
    """Write ``config.yaml`` (the resolved request) and ``environment.json`` (versions, device,
    seeds, executor) into ``out``, atomically."""
    atomic_write_text(out / "config.yaml", _config_yaml(exp, preset, resolved, len(cells)))
    seeds = sorted({c.config.get("seed") for c in cells})
    env = collect_environment(device=device, seeds=seeds, executor=ex.name,
                              workers=ex.workers, threads=threads, argv=argv)
    atomic_write_text(out / "environment.json", json.dumps(env, indent=2) + "\n")


def _check_all_run(out: Path, todo: list[Cell]) -> None:
    """Raise if the store lacks any cell of ``todo``: an executor that loses cells must not look
    like a finished run."""
    missing = _missing(out, todo)
    if missing:
        names = ", ".join(c.label() for c in missing[:5])
        raise RuntimeError(f"{len(missing)} cell(s) were not run ({names}); the others are stored "
                           f"in {out}; rerun with --resume")


def _store_cells(results: Any, store: Store, n_cells: int, bar: Any,
                 say: Any) -> list[tuple[Cell, str]]:
    """Write each ``(cell, result)`` from the executor to the store as it comes (one transaction
    per cell); a result ``{"error": ...}`` marks the cell failed. Returns the failed cells."""
    failed: list[tuple[Cell, str]] = []
    for cell, res in results:
        if "error" in res:  # its worker died twice: record, go on with the others
            store.mark_failed(cell.id)
            failed.append((cell, res["error"]))
            say(f"  cell {cell.index + 1}/{n_cells} {cell.label()}: FAILED, {res['error']}")
            continue
        store.write_cell(cell.id, res["records"], started=res["started"],
                         finished=res["finished"], pid=res["pid"], host=res["host"])
        bar.update(1)
        say(f"  cell {cell.index + 1}/{n_cells} {cell.label()}: {len(res['records'])} records, "
            f"{res['finished'] - res['started']:.1f} s" + _last_summary(res["records"]))
    return failed


def _missing(out: Path, todo: list[Cell]) -> list[Cell]:
    """The cells of ``todo`` that the store holds neither as done nor as failed."""
    with Store.open_readonly(out) as st:
        status = st.cell_status()
    return [c for c in todo if status.get(c.id) not in ("done", "failed")]


def _stored_ids(cells: list[Cell], stored: list[dict], report_settings: tuple[str, ...]
                ) -> list[Cell]:
    """``cells`` with the ids their twins have in the store: a store written before the report
    settings left the cell ids (their ids hash every key) keeps resuming."""
    import dataclasses

    by_key = {cell_hash(c["config"], report_settings): c["cell_id"] for c in stored}
    return [dataclasses.replace(c, id=by_key.get(c.id, c.id)) for c in cells]


def _last_summary(records: list[dict]) -> str:
    """A few numbers of the last record, for the one-line cell summary."""
    if not records:
        return ""
    last = records[-1]
    items = [(k, v) for k, v in last.items() if isinstance(v, float)][:3]
    return "".join(f", {k}={v:.4g}" for k, v in items)


def _lazylab_version() -> str:
    try:
        from lazylab import __version__

        return __version__
    except ImportError:  # pragma: no cover
        return ""
