"""Executors: where the cells of a sweep run.

* ``local`` with ``workers=1`` — in the client process, one cell after the other.
* ``local`` with ``workers=N>1`` — a :class:`concurrent.futures.ProcessPoolExecutor` of N
  processes started with the ``spawn`` context (forking a process that holds torch state is
  unsafe); each worker uses one torch thread.
* ``dask`` — a fresh ``distributed.LocalCluster(n_workers=N, threads_per_worker=1,
  processes=True)``.
* ``dask://HOST:PORT`` — an existing Dask scheduler (``dask scheduler`` + ``dask worker``
  processes on any machines with lazylab installed); the connection fails fast.

Every executor yields ``(cell, result)`` pairs *as they complete*; the result carries the
records, which the client alone writes to the store (no shared file system is needed), or
``{"error": why}`` for a cell whose worker process died again on its one retry (the run goes on).
Pool workers die with the client (``prctl(PR_SET_PDEATHSIG)`` on Linux, a watchdog thread
elsewhere: :func:`_die_with_parent`), so ``kill -9`` of a run leaves no worker behind.
A cell is a pure function of its config: :func:`execute_cell` seeds ``random``, ``numpy`` and
``torch`` with the cell's ``seed`` before calling the experiment's ``run_cell``, and runs it with
the same number of torch threads (``threads``, default 1) on every executor, so reductions are
computed in the same order and the records are bit-identical.
"""

from __future__ import annotations

import importlib
import os
import socket
import time
from collections.abc import Iterator, Sequence
from typing import Any

from lazylab.checks import positive_int
from lazylab.lab.memory import tune_malloc
from lazylab.lab.sweep import Cell

__all__ = [
    "CellError",
    "CellsFailedError",
    "DaskExecutor",
    "Executor",
    "LocalExecutor",
    "execute_cell",
    "make_executor",
    "validate_records",
]

DASK_CONNECT_TIMEOUT_S = 5.0


class CellsFailedError(RuntimeError):
    """Some cells could not be computed (their worker process died, also on the retry); the
    other cells are stored and the report is written."""

    def __init__(self, failed: list[tuple[Cell, str]], out: str):
        self.failed = failed
        what = "; ".join(f"cell {c.index + 1} ({c.label()}, id {c.id}): {why}" for c, why in failed)
        super().__init__(f"{len(failed)} cell(s) failed: {what}; the other cells are stored in "
                         f"{out}; rerun the failed ones with --resume")


class CellError(RuntimeError):
    """A cell's ``run_cell`` raised; carries the cell and the original error text."""

    def __init__(self, cell: Cell, error: BaseException):
        self.cell = cell
        self.error = error
        super().__init__(f"cell {cell.index} ({cell.label()}, id {cell.id}) failed: "
                         f"{type(error).__name__}: {error}")


def _plain(v: Any) -> Any:
    if isinstance(v, (str, bool, int)) or v is None:
        return v
    if isinstance(v, float):
        return float(v)  # also turns numpy.float64 (a float subclass) into a float
    if hasattr(v, "item") and callable(v.item) and getattr(v, "ndim", 0) == 0:
        return _plain(v.item())
    return v


def validate_records(records: Any, experiment: str) -> list[dict[str, Any]]:
    """Check that ``records`` is a list of flat dicts of str/int/float/bool/None.

    numpy/torch scalars are converted to Python scalars. Raises TypeError naming the experiment,
    the record index and the offending key otherwise. ``"step"``, when present, must be an int.
    """
    if not isinstance(records, list):
        raise TypeError(f"{experiment}.run_cell must return a list of dicts, got "
                        f"{type(records).__name__}")
    out = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise TypeError(f"{experiment}.run_cell record {i}: expected a dict, got "
                            f"{type(rec).__name__}")
        clean = {}
        for k, v in rec.items():
            if not isinstance(k, str):
                raise TypeError(f"{experiment}.run_cell record {i}: keys must be str, got {k!r}")
            pv = _plain(v)
            if not (pv is None or isinstance(pv, (str, bool, int, float))):
                raise TypeError(f"{experiment}.run_cell record {i}, key {k!r}: values must be "
                                f"str/int/float/bool/None, got {type(v).__name__}")
            clean[k] = pv
        if "step" in clean and clean["step"] is not None and (
                isinstance(clean["step"], bool) or not isinstance(clean["step"], int)):
            raise TypeError(f"{experiment}.run_cell record {i}: 'step' must be an int")
        out.append(clean)
    return out


def execute_cell(experiment: str, module: str | None, config: dict[str, Any], device: str,
                 progress: bool, threads: int | None = None) -> dict[str, Any]:
    """Run one cell (in any process) and return ``{"records", "started", "finished", "pid",
    "host"}``.

    Imports ``module`` (the experiment's module, so experiments outside the package work in
    worker processes), builds the typed config, seeds ``random``/``numpy``/``torch`` with
    ``config["seed"]`` and calls ``run_cell(cfg, RunContext(device, progress))``. ``threads``:
    torch intra-op threads during the cell (restored afterwards; None = leave as is).
    """
    import random

    import numpy as np
    import torch

    from lazylab.lab.config import make_config
    from lazylab.lab.registry import RunContext, get_experiment

    if module and module not in ("__main__", "__mp_main__"):
        importlib.import_module(module)
    exp = get_experiment(experiment)
    cfg = make_config(exp.config, config)
    seed = int(cfg.seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    tune_malloc()  # reuse freed tensor memory instead of fresh page faults (lazylab.lab.memory)
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    started = time.time()
    try:
        records = exp.run_cell(cfg, RunContext(device=device, progress=progress))
    finally:
        if threads is not None:
            torch.set_num_threads(old_threads)
    records = validate_records(records, experiment)
    return {"records": records, "started": started, "finished": time.time(),
            "pid": os.getpid(), "host": socket.gethostname()}


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
WATCHDOG_PERIOD_S = 1.0


def _die_with_parent(parent_pid: int) -> str:
    """Make this worker process exit when the process ``parent_pid`` (the lab client) dies.

    Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` through ctypes: the kernel kills the worker the
    moment its parent exits, even on ``kill -9``. Elsewhere (or if prctl fails): a daemon
    thread polls ``os.getppid()`` every :data:`WATCHDOG_PERIOD_S` seconds and calls ``os._exit``
    once the worker has been re-parented. Returns ``"prctl"`` or ``"watchdog"``.
    """
    import signal
    import sys
    import threading

    how = "watchdog"
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0:
                how = "prctl"
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before the handler was in place
        os._exit(1)
    if how == "watchdog":
        def watch() -> None:
            while os.getppid() == parent_pid:
                time.sleep(WATCHDOG_PERIOD_S)
            os._exit(1)

        threading.Thread(target=watch, name="lazylab-parent-watchdog", daemon=True).start()
    return how


_STARTED: Any = None  # in a pool worker: the shared "cell started" flags (LocalExecutor)


def _worker_init(parent_pid: int | None = None, started: Any = None) -> None:
    global _STARTED
    import torch

    if parent_pid is not None:
        _die_with_parent(parent_pid)
    _STARTED = started
    torch.set_num_threads(1)


def _pool_cell(pos: int, *args: Any) -> dict[str, Any]:
    """:func:`execute_cell` in a pool worker, after flagging cell ``pos`` as started."""
    if _STARTED is not None:
        _STARTED[pos] = 1
    return execute_cell(*args)


class Executor:
    """Base class: ``run(...)`` yields ``(cell, result)`` as cells complete."""

    name = "executor"
    workers = 1

    def run(self, experiment: str, module: str | None, cells: Sequence[Cell], device: str,
            progress: bool) -> Iterator[tuple[Cell, dict[str, Any]]]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class LocalExecutor(Executor):
    """In-process (``workers=1``) or a spawn-context process pool (``workers>1``).

    ``threads``: torch threads per cell (default 1: N workers use N cores, and every executor
    computes with the same thread count, hence bit-identical reductions).
    """

    def __init__(self, workers: int = 1, threads: int | None = 1):
        self.workers = positive_int(workers, "--workers")
        self.threads = _check_threads(threads)
        self.name = "local" if workers == 1 else f"local x{workers} processes"
        self._pool = None

    def run(self, experiment, module, cells, device, progress):
        if self.workers == 1:
            for cell in cells:
                try:
                    res = execute_cell(experiment, module, cell.config, device, progress,
                                       self.threads or 1)
                except Exception as e:
                    raise CellError(cell, e) from e
                yield cell, res
            return
        yield from self._run_pool(experiment, module, list(cells), device)

    def _new_pool(self, started: Any) -> Any:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(max_workers=self.workers, mp_context=mp.get_context("spawn"),
                                   initializer=_worker_init, initargs=(os.getpid(), started))

    def _run_pool(self, experiment: str, module: str | None, cells: list[Cell],
                  device: str) -> Iterator[tuple[Cell, dict[str, Any]]]:
        """Run ``cells`` on a process pool with at most ``workers`` cells in flight; survive
        workers that die.

        A dead worker breaks the whole pool, so every cell in flight fails with it. Each worker
        flags a cell as started in a shared array before running it; after a break, cells that
        had not started go back to the queue. If exactly one cell had started, the death is its
        own (attributed); if several had, the death is ambiguous and each of them reruns ALONE
        in a fresh pool, where a death is attributed exactly. A cell's first attributed death gets
        one retry (alone); the second makes it failed: yielded as ``{"error": ...}`` while the
        other cells go on.
        """
        import multiprocessing as mp
        from concurrent.futures.process import BrokenProcessPool

        pos = {c.id: i for i, c in enumerate(cells)}
        started = mp.get_context("spawn").Array("b", max(len(cells), 1), lock=False)
        queue, alone_q, deaths = list(cells), [], dict.fromkeys(pos, 0)
        idle_breaks = 0  # consecutive pool breaks with no cell started
        while queue or alone_q:
            alone = bool(alone_q)
            todo = alone_q if alone else queue
            self._pool = self._new_pool(started)
            in_flight: dict[Any, Cell] = {}
            try:
                yield from self._drain(todo, in_flight, 1 if alone else self.workers, pos,
                                       experiment, module, device)
            except BrokenProcessPool:
                lost = list(in_flight.values())
                ran = [c for c in lost if started[pos[c.id]]]
                (alone_q if alone else queue)[:0] = [c for c in lost if not started[pos[c.id]]]
                idle_breaks = 0 if ran else idle_breaks + 1
                if idle_breaks >= 3:
                    raise RuntimeError("--workers: the worker processes died 3 times before "
                                       "starting a cell (out of memory at start-up? a broken "
                                       "installation?); try --workers 1") from None
                for c in ran:
                    started[pos[c.id]] = 0
                    if len(ran) > 1:  # ambiguous: rerun alone, nothing counted
                        alone_q.append(c)
                        continue
                    deaths[c.id] += 1
                    if deaths[c.id] >= 2:
                        yield c, {"error": "its worker process died twice (killed, or it "
                                           "crashed: out of memory, segfault)"}
                    else:
                        alone_q.append(c)
            finally:
                self.close()

    def _drain(self, todo: list[Cell], in_flight: dict[Any, Cell], width: int,
               pos: dict[str, int], experiment: str, module: str | None,
               device: str) -> Iterator[tuple[Cell, dict[str, Any]]]:
        """Submit from ``todo`` keeping ``width`` cells in flight; yield results as they come.
        Raises BrokenProcessPool (``in_flight`` then holds the lost cells) or CellError."""
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool

        while todo or in_flight:
            while todo and len(in_flight) < width:
                c = todo[0]  # submit raises BrokenProcessPool on a broken pool: c stays queued
                fut = self._pool.submit(_pool_cell, pos[c.id], experiment, module, c.config,
                                        device, False, self.threads or 1)
                in_flight[fut] = todo.pop(0)
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            # finished cells first: a result must not be lost to a death in the same batch
            for fut in sorted(done, key=lambda f: f.exception() is not None):
                cell = in_flight.pop(fut)
                try:
                    res = fut.result()
                except BrokenProcessPool:
                    in_flight[fut] = cell
                    raise
                except Exception as e:
                    raise CellError(cell, e) from e
                yield cell, res

    def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.shutdown(wait=True, cancel_futures=True)


class DaskExecutor(Executor):
    """A Dask ``LocalCluster`` (``address=None``) or an existing scheduler at ``address``.

    The connection (or cluster start) happens in ``__init__``, so a bad address fails before
    anything is written. ``timeout`` (s) bounds the connection attempt.
    """

    def __init__(self, address: str | None = None, workers: int = 1,
                 timeout: float = DASK_CONNECT_TIMEOUT_S, threads: int | None = 1):
        from distributed import Client

        self.threads = _check_threads(threads)
        self.address = address
        self.cluster = None
        if address is None:
            from lazylab.ntk.distributed import local_cluster

            workers = positive_int(workers, "--workers")
            self.client, self.cluster = local_cluster(workers)
            self.workers = workers
            self.name = f"dask LocalCluster x{workers}"
        else:
            try:
                self.client = Client(address, timeout=timeout)
            except Exception as e:  # OSError / TimeoutError / CommClosedError ...
                raise ConnectionError(f"--executor: could not connect to the Dask scheduler at "
                                      f"{address} within {timeout:g} s ({type(e).__name__}: "
                                      f"{e}); start one with `dask scheduler` and "
                                      f"`dask worker {address}`") from None
            self.workers = max(1, len(self.client.scheduler_info().get("workers", {})))
            self.name = f"dask {address} ({self.workers} workers)"

    def run(self, experiment, module, cells, device, progress):
        from distributed import as_completed

        futs = {}
        for c in cells:
            key = f"lazylab-{experiment}-{c.id}-{time.time_ns()}"
            f = self.client.submit(execute_cell, experiment, module, c.config, device, False,
                                   self.threads or 1, key=key, pure=False)
            futs[f.key] = (f, c)
        try:
            for fut in as_completed([f for f, _ in futs.values()]):
                cell = futs[fut.key][1]
                try:
                    res = fut.result()
                except Exception as e:
                    if type(e).__name__ == "KilledWorker":  # Dask retried it on other workers
                        yield cell, {"error": f"its Dask workers died ({e})"}
                        continue
                    raise CellError(cell, e) from e
                yield cell, res
        finally:
            for f, _ in futs.values():
                if not f.done():
                    f.cancel()

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            if self.cluster is not None:
                self.cluster.close()


def _check_threads(threads: int | None) -> int | None:
    return None if threads is None else positive_int(threads, "--threads")


def make_executor(spec: str = "local", workers: int = 1,
                  timeout: float = DASK_CONNECT_TIMEOUT_S, threads: int | None = 1) -> Executor:
    """``"local"`` | ``"dask"`` | ``"dask://HOST:PORT"`` (also ``tcp://HOST:PORT``) -> Executor."""
    if spec == "local":
        return LocalExecutor(workers, threads)
    if spec == "dask":
        return DaskExecutor(None, workers, timeout, threads)
    if spec.startswith("dask://") or spec.startswith("tcp://"):
        hostport = spec.split("://", 1)[1]
        host, _, port = hostport.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--executor: expected dask://HOST:PORT, got {spec!r}")
        return DaskExecutor(f"tcp://{hostport}", workers, timeout, threads)
    raise ValueError(f"--executor: expected 'local', 'dask' or 'dask://HOST:PORT', got {spec!r}")

