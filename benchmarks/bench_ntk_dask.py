"""NTK tiles on Dask: in-process vs a LocalCluster of 1 and of 2 workers, one run, same weights.

The traced float32 NTK ``K(X, X)`` of MLP 784-512-512-1 on ``N`` random inputs (default
``N = 10000``): ``lazylab.ntk(model, x)`` in this process (1 torch thread), then
``lazylab.ntk(model, x, client=c)`` on a fresh ``LocalCluster`` of 1 and of 2 single-threaded
workers (default tiles: ``N / 4`` per side, 10 tile tasks). Cluster start-up and the workers' first
import of torch are excluded (a small warm-up call); scattering the model and inputs is included.
Printed: seconds (median of ``--repeat`` calls, default 3: the VM's cores are shared with other
machines, single calls vary by +-10 %), speed-up over in-process, the 2-over-1-worker ratio, the
largest relative difference from the in-process kernel, and a reference for that ratio on this
machine: two independent processes computing half the rows each in the same tiles, at once, over
one of them alone (what two cores give two processes with no scheduler between them; shared memory
bandwidth and cache can make it less than 2).

Usage: ``python benchmarks/bench_ntk_dask.py [--n 10000] [--block B] [--repeat 3]
[--widths 784 512 512 1] [--method auto]``.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import lazylab  # noqa: E402
from lazylab.ntk.distributed import local_cluster  # noqa: E402


def _problem(widths: list[int], n: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """The benchmark's MLP and inputs (seed 0): the same in every process."""
    torch.manual_seed(0)
    return lazylab.MLP(widths), torch.randn(n, widths[0])


def _half(n: int, half: int, block: int, repeat: int, widths: list[int], method: str,
          start: object, q: object) -> None:
    """One independent process: the rows ``half`` of ``K(X, X)`` (half the work) in tiles of
    ``block`` (the Dask run's tile side), timed ``repeat`` times, each start synchronised."""
    torch.set_num_threads(1)
    model, x = _problem(widths, n)
    rows = x[: n // 2] if half == 0 else x[n // 2:]
    lazylab.ntk(model, rows[:64], x[:64], method=method, progress=False)
    for _ in range(repeat):
        start.wait()
        t = time.perf_counter()
        lazylab.ntk(model, rows, x, method=method, block_size=block, progress=False)
        q.put(time.perf_counter() - t)


def reference(n: int, block: int, repeat: int, widths: list[int], method: str) -> float:
    """What 2 cores give to 2 independent processes: ``2 * t(one half alone) / t(both halves at
    once)``, each half ``K(X[half], X)`` computed in-process in the Dask run's tiles, each time the
    median of ``repeat``. Memory bandwidth and cache shared by the two cores can make this less than
    2; it is a reference for the 2-over-1 ratio measured on the same tiles, not a strict bound (the
    machine's load from other VMs changes between the two measurements)."""
    ctx = mp.get_context("spawn")
    times = []
    for halves in ([0], [0, 1]):
        start, q = ctx.Barrier(len(halves) + 1), ctx.Queue()
        procs = [ctx.Process(target=_half, args=(n, h, block, repeat, widths, method, start, q))
                 for h in halves]
        for p in procs:
            p.start()
        runs = []
        for _ in range(repeat):
            start.wait()
            runs.append(max(q.get() for _ in procs))
        for p in procs:
            p.join()
        times.append(sorted(runs)[len(runs) // 2])
    return 2 * times[0] / times[1]


def _timed(call: object, repeat: int) -> tuple[float, torch.Tensor]:
    """Median wall time of ``repeat`` calls, and the last result (earlier ones freed first)."""
    times, out = [], None
    for _ in range(repeat):
        out = None
        t = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2], out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--block", type=int, default=None, help="tile side (default: N / 4)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=3, help="timed calls per row; the median is shown")
    ap.add_argument("--widths", type=int, nargs="+", default=[784, 512, 512, 1], help="MLP widths")
    ap.add_argument("--method", default="auto", help="ntk method (auto, structured, jacobian, ntvp)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, x = _problem(args.widths, args.n)
    kw = dict(method=args.method, progress=False)

    sec, ref = _timed(lambda: lazylab.ntk(model, x, **kw), args.repeat)
    rows = [("in-process (1 thread)", sec, 0.0)]
    for w in args.workers:
        c, cluster = local_cluster(w)
        try:
            lazylab.ntk(model, x[:64], client=c, **kw)  # workers import torch, lazylab
            sec, k = _timed(lambda c=c: lazylab.ntk(model, x, client=c, block_size=args.block,
                                                    **kw), args.repeat)
        finally:
            c.close()
            cluster.close()
        err = float((k - ref).abs().max() / ref.abs().max())
        rows.append((f"Dask LocalCluster, {w} worker{'s' if w > 1 else ''}", sec, err))
        del k
    base = rows[0][1]
    print(f"\nTraced NTK of MLP {'-'.join(map(str, args.widths))} (method {args.method}), "
          f"N={args.n} ({args.n}x{args.n} float32); "
          f"loadavg {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'run':<32}{'seconds':>10}{'vs in-process':>15}{'max rel diff':>14}")
    for name, sec, err in rows:
        print(f"{name:<32}{sec:>10.2f}{base / sec:>14.2f}x{err:>14.1e}")
    by = {name: sec for name, sec, _ in rows}
    one, two = by.get("Dask LocalCluster, 1 worker"), by.get("Dask LocalCluster, 2 workers")
    if one and two:
        print(f"2 workers over 1 worker: {one / two:.2f}x")
        block = args.block or math.ceil(args.n / 4)
        print(f"reference (2 independent processes, half the rows each in the same tiles, over 1): "
              f"{reference(args.n, block, args.repeat, args.widths, args.method):.2f}x")


if __name__ == "__main__":
    main()
