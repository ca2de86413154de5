"""Tests of lazylab.lab.store: schema, one transaction per cell, load_results, compatibility."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field

import pandas as pd
import pytest

from lazylab.lab.config import resolve
from lazylab.lab.registry import Preset
from lazylab.lab.store import (
    IncompatibleStoreError,
    Store,
    atomic_write_text,
    load_results,
    run_hash,
)
from lazylab.lab.sweep import grid


@dataclass
class Cfg:
    seed: int = 0
    lr: float = 0.1
    widths: list[int] = field(default_factory=lambda: [4, 4])


def _make(tmp_path, sweep=None):
    r = resolve(Cfg, Preset(sweep=sweep or {"seed": [0, 1], "lr": [0.1, 0.2]}))
    cells = grid(r)
    store = Store.create(tmp_path, experiment="exp", preset="quick", config=r.base,
                         sweep=r.sweep, cells=cells)
    return store, r, cells


def test_create_and_write_cells(tmp_path):
    store, r, cells = _make(tmp_path)
    assert set(store.cell_status().values()) == {"pending"}
    recs = [{"step": s, "loss": 1.0 / (s + 1), "tag": "x", "ok": True, "none": None}
            for s in range(3)]
    store.write_cell(cells[1].id, recs, started=10.0, finished=12.5, pid=7, host="h")
    status = store.cell_status()
    assert status[cells[1].id] == "done"
    assert sum(v == "done" for v in status.values()) == 1
    row = [c for c in store.cells() if c["cell_id"] == cells[1].id][0]
    assert row["wall_s"] == 2.5 and row["pid"] == 7 and row["n_records"] == 3
    assert row["params"] == cells[1].params and row["config"] == cells[1].config
    assert [rec for _, rec in store.records()] == recs
    m = store.meta()
    assert m["experiment"] == "exp" and m["config"] == r.base and m["sweep"] == r.sweep
    assert m["hash"] == run_hash("exp", r.base, r.sweep)
    store.close()
    with pytest.raises(FileExistsError):
        _make(tmp_path)


def test_write_cell_is_one_transaction(tmp_path):
    """A failure after the records were inserted rolls the whole cell back."""
    store, _, cells = _make(tmp_path)
    real = store.conn

    class FailingUpdate:
        def __getattr__(self, name):
            return getattr(real, name)

        def __enter__(self):
            return real.__enter__()

        def __exit__(self, *exc):
            return real.__exit__(*exc)

        def execute(self, sql, *args):
            if sql.startswith("UPDATE cells"):
                raise sqlite3.OperationalError("disk on fire")
            return real.execute(sql, *args)

    store.conn = FailingUpdate()
    with pytest.raises(sqlite3.OperationalError):
        store.write_cell(cells[0].id, [{"step": 0, "v": 1.0}], started=0, finished=1)
    store.conn = real
    assert real.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 0
    assert store.cell_status()[cells[0].id] == "pending"
    with pytest.raises(KeyError, match="not part of this run"):
        store.write_cell("deadbeef", [], started=0, finished=1)


def test_load_results_one_row_per_record_with_config_columns(tmp_path):
    store, r, cells = _make(tmp_path)
    for c in cells[:3]:
        store.write_cell(c.id, [{"step": s, "loss": c.config["lr"] * s} for s in range(4)],
                         started=0, finished=1)
    store.close()
    df = load_results(tmp_path)
    assert isinstance(df, pd.DataFrame)
    assert len(df) == 3 * 4  # only the 3 finished cells, 4 steps each
    assert list(df.columns[:3]) == ["seed", "lr", "widths"]
    assert {"cell_id", "step", "loss"} <= set(df.columns)
    assert df["widths"].iloc[0] == (4, 4)  # lists as tuples: groupable
    for c in cells[:3]:
        sub = df[df.cell_id == c.id]
        assert (sub.seed == c.config["seed"]).all() and (sub.lr == c.config["lr"]).all()
        assert sub.loss.tolist() == [c.config["lr"] * s for s in range(4)]
    assert df.groupby(["seed", "lr"]).size().tolist() == [4, 4, 4]


def test_readonly_store_cannot_write(tmp_path):
    store, _, cells = _make(tmp_path)
    store.close()
    with Store.open_readonly(tmp_path) as ro:
        with pytest.raises(sqlite3.OperationalError):
            ro.write_cell(cells[0].id, [{"v": 1}], started=0, finished=1)
    with pytest.raises(FileNotFoundError, match="results.sqlite"):
        Store.open_readonly(tmp_path / "nowhere")


def test_check_compatible(tmp_path):
    store, r, _ = _make(tmp_path)
    store.check_compatible("exp", "quick", r.base, r.sweep)  # same run: fine
    with pytest.raises(IncompatibleStoreError, match="holds experiment 'exp', not 'other'"):
        store.check_compatible("other", "quick", r.base, r.sweep)
    with pytest.raises(IncompatibleStoreError, match="lr: stored 0.1 != requested 0.3"):
        store.check_compatible("exp", "quick", {**r.base, "lr": 0.3}, r.sweep)
    with pytest.raises(IncompatibleStoreError, match="sweep"):
        store.check_compatible("exp", "quick", r.base, {"seed": [0]})
    with pytest.raises(IncompatibleStoreError, match="preset"):
        store.check_compatible("exp", "paper", r.base, r.sweep)


def test_atomic_write_text(tmp_path):
    p = tmp_path / "sub" / "f.json"
    atomic_write_text(p, "one")
    atomic_write_text(p, "two")
    assert p.read_text() == "two"
    assert os.listdir(p.parent) == ["f.json"]  # no temporary files left behind
