"""The result store: ``DIR/results.sqlite`` (SQLite, one transaction per finished cell).

Schema::

    run(id=1, experiment, preset, config_json, sweep_json, hash, created, lazylab_version)
    cells(cell_id PK, idx, params_json, config_json, status 'pending'|'done'|'failed',
          started, finished, wall_s, pid, host, n_records)
    records(cell_id, rec_idx, step, data_json, PK(cell_id, rec_idx))

Only the client process writes (workers send records back), so no shared file system or
locking between machines is needed. A cell's records and its ``status='done'`` are committed in
one transaction: a crash (even SIGKILL) leaves either the whole cell or none of it.

Also here: :func:`atomic_write_text` (tmp file + ``os.replace``) for the other output files, and
:func:`load_results` (``DIR`` -> pandas DataFrame).
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lazylab.lab.config import RUN_OPTION_KEYS, canonical_json, config_hash

__all__ = [
    "STORE_NAME",
    "IncompatibleStoreError",
    "Store",
    "UnreadableStoreError",
    "atomic_write_text",
    "load_results",
    "run_hash",
]

STORE_NAME = "results.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS run (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    experiment TEXT NOT NULL, preset TEXT NOT NULL,
    config_json TEXT NOT NULL, sweep_json TEXT NOT NULL, hash TEXT NOT NULL,
    created REAL NOT NULL, lazylab_version TEXT
);
CREATE TABLE IF NOT EXISTS cells (
    cell_id TEXT PRIMARY KEY, idx INTEGER NOT NULL,
    params_json TEXT NOT NULL, config_json TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    started REAL, finished REAL, wall_s REAL, pid INTEGER, host TEXT, n_records INTEGER
);
CREATE TABLE IF NOT EXISTS records (
    cell_id TEXT NOT NULL REFERENCES cells(cell_id), rec_idx INTEGER NOT NULL,
    step INTEGER, data_json TEXT NOT NULL,
    PRIMARY KEY (cell_id, rec_idx)
);
"""


class IncompatibleStoreError(ValueError):
    """``--resume`` on a store written by another experiment, preset or config."""


class UnreadableStoreError(ValueError):
    """``results.sqlite`` exists but is not a readable lazylab store (corrupt, truncated, empty)."""


def _unreadable(path: Path, err: BaseException) -> UnreadableStoreError:
    return UnreadableStoreError(
        f"{path} cannot be read as a lazylab result store ({type(err).__name__}: {err}): the file "
        "is corrupt, truncated or empty; restore it from a backup, or move it away and run again "
        f"with a new --out (its cells must be recomputed)")


def _guarded(method: Any) -> Any:
    """Turn sqlite3.DatabaseError raised while reading into :class:`UnreadableStoreError`."""
    import functools

    @functools.wraps(method)
    def wrapper(self: Store, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as e:
            raise _unreadable(self.path, e) from None

    return wrapper


def run_hash(experiment: str, config: dict, sweep: dict) -> str:
    """Identity of a run: hash of experiment name, resolved base config and sweep."""
    return config_hash({"experiment": experiment, "config": config, "sweep": sweep})


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class Store:
    """A run's SQLite store. Use :meth:`create`, :meth:`open` or :meth:`open_readonly`."""

    def __init__(self, conn: sqlite3.Connection, path: Path):
        self.conn = conn
        self.path = path

    # ---------------------------------------------------------------- opening
    @classmethod
    def create(cls, directory: str | os.PathLike, *, experiment: str, preset: str,
               config: dict, sweep: dict, cells: Iterable[Any], version: str = "") -> Store:
        """Create ``directory/results.sqlite`` with the run row and every cell 'pending'."""
        path = Path(directory) / STORE_NAME
        if path.exists():
            raise FileExistsError(f"{path} already exists")
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=30)
        conn.executescript(_SCHEMA)
        with conn:
            conn.execute(
                "INSERT INTO run VALUES (1, ?, ?, ?, ?, ?, ?, ?)",
                (experiment, preset, _ordered_json(config), _ordered_json(sweep),
                 run_hash(experiment, config, sweep), time.time(), version))
            conn.executemany(
                "INSERT INTO cells (cell_id, idx, params_json, config_json) VALUES (?, ?, ?, ?)",
                [(c.id, c.index, _ordered_json(c.params), _ordered_json(c.config))
                 for c in cells])
        return cls(conn, path)

    @classmethod
    def open(cls, directory: str | os.PathLike) -> Store:
        """Open an existing store for writing."""
        path = Path(directory) / STORE_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no result store {path}")
        return cls(sqlite3.connect(path, timeout=30), path)._checked()

    @classmethod
    def open_readonly(cls, directory: str | os.PathLike) -> Store:
        """Open an existing store read-only (nothing can be written through it)."""
        path = Path(directory) / STORE_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no result store {path} (is {directory} a lazylab run "
                                    "folder?)")
        try:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        except sqlite3.DatabaseError as e:
            raise _unreadable(path, e) from None
        return cls(conn, path)._checked()

    def _checked(self) -> Store:
        """Read the run row and count the cells and records once: a file that is not a store
        (or lost its tables) fails here, with its path, instead of deep inside a command."""
        try:
            self.meta()
            self.conn.execute("SELECT COUNT(*) FROM cells").fetchone()
            self.conn.execute("SELECT COUNT(*) FROM records").fetchone()
        except (UnreadableStoreError, ValueError, sqlite3.DatabaseError) as e:
            self.conn.close()
            raise e if isinstance(e, UnreadableStoreError) else _unreadable(self.path, e) from None
        return self

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---------------------------------------------------------------- reading
    @_guarded
    def meta(self) -> dict[str, Any]:
        """The run row: experiment, preset, config, sweep, hash, created, lazylab_version."""
        row = self.conn.execute(
            "SELECT experiment, preset, config_json, sweep_json, hash, created, lazylab_version "
            "FROM run WHERE id = 1").fetchone()
        if row is None:
            raise _unreadable(self.path, ValueError("no run metadata"))
        try:
            return {"experiment": row[0], "preset": row[1], "config": json.loads(row[2]),
                    "sweep": json.loads(row[3]), "hash": row[4], "created": row[5],
                    "lazylab_version": row[6]}
        except (TypeError, ValueError) as e:
            raise _unreadable(self.path, e) from None

    def check_compatible(self, experiment: str, preset: str, config: dict, sweep: dict,
                         ignore: tuple[str, ...] = ()) -> None:
        """Raise IncompatibleStoreError unless this store is the same run (for ``--resume``).

        Keys in ``ignore`` (the experiment's report settings) may differ: they do not change
        the cells."""
        m = self.meta()
        where = self.path.parent
        if m["experiment"] != experiment:
            raise IncompatibleStoreError(
                f"--resume: {where} holds experiment {m['experiment']!r}, not {experiment!r}; "
                "use a new --out")
        diffs = [f"{k}: stored {m['config'].get(k)!r} != requested {v!r}"
                 for k, v in config.items() if k not in ignore
                 and canonical_json(m["config"].get(k)) != canonical_json(v)]
        for k, v in m["config"].items():
            if k in config or k in ignore:
                continue
            if k in RUN_OPTION_KEYS:
                diffs.append(f"{k}: stored {v!r} as a config key, which is now the run option "
                             f"--{k} (its cell ids hold the old key: finish it with the lazylab "
                             "version that wrote it; `lazylab report` still reads it)")
            else:
                diffs.append(f"{k}: stored {v!r}, no longer a config key")
        if canonical_json(m["sweep"]) != canonical_json(sweep):
            diffs.append(f"sweep: stored {m['sweep']} != requested {sweep}")
        if m["preset"] != preset:
            diffs.append(f"preset: stored {m['preset']!r} != requested {preset!r}")
        same = {k: v for k, v in config.items() if k not in ignore}
        stored = {k: v for k, v in m["config"].items() if k not in ignore}
        if diffs or (m["hash"] != run_hash(experiment, config, sweep)
                     and run_hash(experiment, stored, m["sweep"])
                     != run_hash(experiment, same, sweep)):
            raise IncompatibleStoreError(
                f"--resume: {where} was run with another config of {experiment!r} ("
                + "; ".join(diffs or ["config hash differs"]) + "); use a new --out")

    @_guarded
    def cell_status(self) -> dict[str, str]:
        """cell id -> status."""
        return dict(self.conn.execute("SELECT cell_id, status FROM cells"))

    @_guarded
    def cells(self) -> list[dict[str, Any]]:
        """All cell rows as dicts (params/config decoded), in grid order."""
        cur = self.conn.execute(
            "SELECT cell_id, idx, params_json, config_json, status, started, finished, wall_s, "
            "pid, host, n_records FROM cells ORDER BY idx")
        out = []
        for r in cur:
            out.append({"cell_id": r[0], "idx": r[1], "params": json.loads(r[2]),
                        "config": json.loads(r[3]), "status": r[4], "started": r[5],
                        "finished": r[6], "wall_s": r[7], "pid": r[8], "host": r[9],
                        "n_records": r[10]})
        return out

    @_guarded
    def records(self) -> list[tuple[str, dict[str, Any]]]:
        """(cell id, record) for every stored record, in grid then record order."""
        cur = self.conn.execute(
            "SELECT r.cell_id, r.data_json FROM records r JOIN cells c USING (cell_id) "
            "ORDER BY c.idx, r.rec_idx")
        return [(cid, json.loads(d)) for cid, d in cur]

    # ---------------------------------------------------------------- writing
    def write_cell(self, cell_id: str, records: list[dict[str, Any]], *, started: float,
                   finished: float, pid: int | None = None, host: str | None = None) -> None:
        """Store one finished cell: its records and status 'done', in ONE transaction."""
        rows = []
        for i, rec in enumerate(records):
            step = rec.get("step")
            rows.append((cell_id, i, step if isinstance(step, int) else None,
                         _ordered_json(rec)))
        with self.conn:  # BEGIN ... COMMIT (ROLLBACK on error)
            status = self.conn.execute("SELECT status FROM cells WHERE cell_id = ?",
                                       (cell_id,)).fetchone()
            if status is None:
                raise KeyError(f"cell {cell_id} is not part of this run")
            self.conn.execute("DELETE FROM records WHERE cell_id = ?", (cell_id,))
            self.conn.executemany("INSERT INTO records VALUES (?, ?, ?, ?)", rows)
            self.conn.execute(
                "UPDATE cells SET status='done', started=?, finished=?, wall_s=?, pid=?, host=?, "
                "n_records=? WHERE cell_id=?",
                (started, finished, finished - started, pid, host, len(rows), cell_id))


    def mark_failed(self, cell_id: str) -> None:
        """Set a cell that could not be computed (its worker died twice) to status 'failed';
        ``--resume`` runs it again."""
        with self.conn:
            self.conn.execute("UPDATE cells SET status='failed' WHERE cell_id=? AND status!='done'",
                              (cell_id,))


def load_results(directory: str | os.PathLike, *, include_pending: bool = False):
    """All records of the run in ``directory`` as a pandas DataFrame.

    One row per record (cell x step). Columns: every config field (the cell's resolved value;
    list values as tuples so they can be grouped on), ``cell_id``, then the record's own keys.
    Only finished cells are included. A record key that equals a config field name overrides
    the config column for that row.
    """
    import pandas as pd

    with Store.open_readonly(directory) as store:
        meta = store.meta()
        cells = {c["cell_id"]: c for c in store.cells()}
        recs = store.records()
    config_cols = list(meta["config"])
    rows = []
    rec_cols: dict[str, None] = {}
    for cid, rec in recs:
        cell = cells[cid]
        if cell["status"] != "done" and not include_pending:
            continue
        row = {k: _hashable(v) for k, v in cell["config"].items()}
        row["cell_id"] = cid
        row.update(rec)
        rec_cols.update(dict.fromkeys(rec))
        rows.append(row)
    cols = config_cols + ["cell_id"] + [c for c in rec_cols if c not in config_cols]
    return pd.DataFrame(rows, columns=cols)


def _ordered_json(obj: Any) -> str:
    """JSON keeping the key order (config field order); hashes use canonical_json instead."""
    return json.dumps(obj, allow_nan=True)


def _hashable(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    return v
