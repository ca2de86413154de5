"""NTK tiles on a Dask cluster: ``ntk(model, x, client=...)``.

The engine (model, parameters, method state) and the inputs are sent to the workers once
(``client.scatter(..., broadcast=True)``: every worker holds a copy, so losing one worker loses no
data). Each tile pair ``(i, j)`` is one task reading those scattered objects; tasks keep the tile
features they prepare in a per-worker :class:`~lazylab.ntk.tile_jobs.FeatureCache` (at most 1 GiB
per worker, dropped at the end) and run a per-worker copy of the engine, so a worker prepares a row
or column tile at most once while it fits. A worker that sees the result's file (the ``out=`` file,
or for an in-RAM kernel a ``/dev/shm`` file the client maps: workers on the client's machine)
writes its tiles into it and returns only their indices; others return the tile and the client
writes it. The client records finished tiles as they arrive (``as_completed``; resumable for
``out=``). On this 2-core machine the client's receiving and copying of 25 MB tiles took CPU from
the two workers; writing in place removes it (benchmarks/bench_ntk_dask.py).
A worker that dies mid-run costs only the tiles it was computing or holding:
the scheduler reruns those tasks on the remaining or restarted workers (Dask's
``distributed.scheduler.allowed-failures``, default 3, bounds the reruns of one task).

``client``: a ``distributed.Client``; ``"dask://HOST:PORT"`` or ``"tcp://HOST:PORT"`` (an existing
``dask scheduler``); or an int ``n`` for a fresh ``LocalCluster`` of ``n`` single-threaded worker
processes (:func:`local_cluster`, Dask's bookkeeping slowed by :data:`QUIET`), closed at the end.
dask/distributed are imported only here, only when used.
"""

from __future__ import annotations

import threading
import uuid

from torch import Tensor

from lazylab.ntk.tile_jobs import FeatureCache, TilePlan, compute_tile

_STATE: dict[str, tuple[object, FeatureCache]] = {}  # per worker: token -> (engine copy, cache)
_LOCK = threading.Lock()


def _local(token: str, engine: object) -> tuple[object, FeatureCache]:
    """This worker's private copy of the scattered engine, and its feature cache.

    Tasks never run the scattered object itself: ``functional_call`` and the layer hooks modify
    the module while a tile runs, and the worker may at that moment be serializing the scattered
    object for another worker (e.g. one restarted after a crash).
    """
    import cloudpickle  # a deep copy that handles what Dask's serialization handles

    with _LOCK:
        if token not in _STATE:
            _STATE[token] = (cloudpickle.loads(cloudpickle.dumps(engine)), FeatureCache())
        return _STATE[token]


def _drop(token: str) -> None:
    with _LOCK:
        _STATE.pop(token, None)


def _tile_task(engine: object, x1: Tensor, x2: Tensor, plan: TilePlan, i: int, j: int,
               token: str, target: object | None) -> tuple[int, int, Tensor | None]:
    """One tile on a worker: written into ``target`` (a :class:`~lazylab.ntk.out_of_core.TileFile`)
    when this worker sees that file -> ``(i, j, None)``; else ``(i, j, K[rows[i], cols[j]])``."""
    mine, cache = _local(token, engine)
    blk = compute_tile(mine, x1, x2, plan, i, j, cache).cpu()
    if target is not None and target.visible():
        target.put(i, j, blk)
        return i, j, None
    return i, j, blk


# Wake-ups of Dask's own bookkeeping, every 10-100 ms in each worker and in the scheduler's
# process: on a machine with no idle core each one preempts a tile task (tile tasks lost 0.26-0.38 s
# of 6 s to waiting on 2 busy cores; 0.1 s with these; benchmarks/bench_ntk_dask.py). They feed
# the dashboard (none here), the statistical profiler (off) and the memory monitor (spilling,
# pausing, and restarting a worker near its memory limit: still on, polled once a second).
QUIET = {
    "distributed.worker.profile.enabled": False,             # stack sampling every 10 ms
    "distributed.admin.tick.interval": "1s",                 # event-loop lag check, 20 ms
    "distributed.worker.memory.monitor-interval": "1s",      # RSS poll, 100 ms (worker, nanny)
    "distributed.admin.system-monitor.interval": "2s",       # dashboard counters, 500 ms
    "distributed.admin.system-monitor.gil.enabled": False,   # GIL sampling (if gilknocker), 1 ms
}


def local_cluster(workers: int) -> tuple[object, object]:
    """``(Client, LocalCluster)`` of ``workers`` single-threaded processes, no dashboard, with the
    :data:`QUIET` settings.

    Dask's nannies export ``MALLOC_TRIM_THRESHOLD_=65536`` to workers, which makes every MB-sized
    tensor a fresh mmap (2x the CPU time of a regimes-demo cell); it is dropped. Also used by the
    lab's :class:`~lazylab.lab.executors.DaskExecutor`.
    """
    import logging

    import dask
    from distributed import Client, LocalCluster

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"client: a LocalCluster needs a positive number of workers, got {workers!r}")
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    # QUIET is set around the constructor (scheduler and nannies read it there) and also passed
    # as the workers' config, so a worker that a nanny restarts after a crash gets it too: the
    # nanny's copy of the config shares nested dicts that `dask.config.set` restores on exit.
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ, **QUIET}):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=logging.ERROR,
                               config=dict(QUIET))
    return Client(cluster), cluster


def connect(client: object) -> tuple[object, list[object]]:
    """``(Client, things to close afterwards)`` for the ``client`` argument of :func:`ntk`."""
    from distributed import Client

    if isinstance(client, Client):
        return client, []
    if isinstance(client, int) and not isinstance(client, bool):
        c, cluster = local_cluster(client)
        return c, [c, cluster]
    if isinstance(client, str) and client.split("://", 1)[0] in ("dask", "tcp"):
        hostport = client.split("://", 1)[1]
        host, _, port = hostport.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"client: expected 'dask://HOST:PORT', got {client!r}")
        try:
            c = Client(f"tcp://{hostport}", timeout=30)
        except Exception as e:  # OSError / TimeoutError ...
            raise ConnectionError(f"client: no Dask scheduler at {client} ({type(e).__name__}: {e})"
                                  ) from None
        return c, [c]
    raise TypeError("client must be a distributed.Client, 'dask://HOST:PORT' or an int number of "
                    f"local workers, got {client!r}")


def _placement(c: object, n: int) -> list[list[str] | None]:
    """Preferred worker of each of ``n`` tile tasks (in row-major order): contiguous runs of equal
    length, so a worker touches fewer row tiles and prepares fewer features (for 4 x 4 tiles on 2
    workers, 7 preparations instead of 8). Only a preference: idle workers still take (steal) them."""
    workers = sorted(c.scheduler_info()["workers"])
    if len(workers) < 2:
        return [None] * n
    return [[workers[k * len(workers) // n]] for k in range(n)]


def run_on_dask(engine: object, x1: Tensor, x2: Tensor, plan: TilePlan,
                todo: list[tuple[int, int]], sink: object, client: object, bar: object) -> None:
    """Submit one task per tile pair in ``todo``; write each result into ``sink`` as it arrives."""
    from distributed import as_completed

    c, to_close = connect(client)
    token = uuid.uuid4().hex
    pending: dict[str, object] = {}
    try:
        e_f, x1_f = c.scatter([engine, x1], broadcast=True, hash=False)
        x2_f = x1_f if plan.symmetric else c.scatter(x2, broadcast=True, hash=False)
        sink.ready()  # a ShmSink's space reservation ran during the scatter
        target = getattr(sink, "file", None)
        for (i, j), where in zip(todo, _placement(c, len(todo))):
            f = c.submit(_tile_task, e_f, x1_f, x2_f, plan, i, j, token, target, pure=False,
                         key=f"lazylab-ntk-{token}-{i}-{j}", workers=where,
                         allow_other_workers=where is not None)
            pending[f.key] = f
        done = as_completed(list(pending.values()))
        for fut in done:
            i, j, blk = fut.result()
            if blk is None:  # the worker wrote it into the sink's file
                sink.mark(i, j)
            else:
                sink.write(i, j, blk)
            del pending[fut.key], fut, blk  # the tile is freed on the worker
            if bar is not None:
                bar.update(1)
    finally:
        for f in pending.values():
            f.cancel()
        try:
            c.run(_drop, token)
        except Exception:  # a worker gone at shutdown has no cache to drop
            pass
        for obj in to_close:
            obj.close()


__all__ = ["run_on_dask", "connect", "local_cluster"]
