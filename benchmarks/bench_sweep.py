"""Speed-up of a sweep with 2 workers: local process pool and Dask LocalCluster vs in-process.

Question: does an 8-cell CPU-bound sweep run ~2x faster on 2 workers? Target: >= 1.8x.

Workload: ``lazylab run regimes-demo`` with 8 cells (alpha in {1, 4, 16, 64} x seed in {0, 1}),
each a full-batch GD run of a width-2000 two-layer net (one torch thread per cell everywhere,
so 1 worker = 1 core). Every configuration runs the same cells in this process's timer:

* ``wall``: the whole ``run_experiment`` call (pool / cluster start, imports in the workers,
  store writes and the report included) — what a user waits for;
* ``cells``: the makespan of the cells, from the first cell start to the last cell end as
  recorded in the store (excludes process start-up);
* ``in flight``: the sum of the cells' own wall times divided by the makespan — how many cells the
  executor kept running at once on average (2 workers should give ~2 whatever the load; the
  speed-up is this times the per-cell slowdown from sharing the cores).

A control runs first and last: the speed-up of 2 processes over 1 on pure-Python work, i.e. the
ceiling the machine allows this session at the moment.
The machine may be shared: the load average is printed before and after; read the ratios with it.
With Linux's autogroup scheduling (``/proc/sys/kernel/sched_autogroup_enabled`` = 1) every session
gets an equal CPU share when the machine is oversubscribed, so the workers of one sweep then split
one share among themselves and no executor can show a speed-up: measure on an idle machine.
Run: ``.venv/bin/python benchmarks/bench_sweep.py [--steps 600] [--repeat 1]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from lazylab.lab.runner import run_experiment
from lazylab.lab.store import Store, load_results


def _burn(n: int) -> float:
    """Pure-Python CPU work (no torch, no lazylab): the control for what 2 processes can gain."""
    t0 = time.perf_counter()
    x = 0
    for i in range(n):
        x += i * i
    return time.perf_counter() - t0


def control_speedup(n: int = 10_000_000) -> float:
    """Speed-up of 2 spawned processes over 1 on the same pure-Python work: the ceiling that the
    machine (cores actually available to this session) allows right now."""
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(2) as pool:
        pool.map(_burn, [1000, 1000])  # start-up outside the timings
        t0 = time.perf_counter()
        pool.map(_burn, [n], chunksize=1)
        pool.map(_burn, [n], chunksize=1)
        serial = time.perf_counter() - t0
        t0 = time.perf_counter()
        pool.map(_burn, [n, n], chunksize=1)
        parallel = time.perf_counter() - t0
    return serial / parallel


def one(out: Path, executor: str, workers: int,
        steps: int) -> tuple[float, float, float, object]:
    t0 = time.perf_counter()
    run_experiment("regimes-demo", set={"m": 2000, "n_train": 256, "n_test": 256, "d": 20,
                                        "steps": steps, "n_track": 5},
                   sweep={"alpha": [1.0, 4.0, 16.0, 64.0], "seed": [0, 1]}, out=out,
                   executor=executor, workers=workers, threads=1, progress=False, echo=False)
    wall = time.perf_counter() - t0
    with Store.open_readonly(out) as st:
        cells = st.cells()
    makespan = max(c["finished"] for c in cells) - min(c["started"] for c in cells)
    in_flight = sum(c["wall_s"] for c in cells) / makespan
    df = load_results(out).sort_values(["cell_id", "step"]).reset_index(drop=True)
    return wall, makespan, in_flight, df


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=600, help="GD steps per cell (cell cost)")
    ap.add_argument("--repeat", type=int, default=1, help="repeats; the best time is kept")
    args = ap.parse_args()
    print(f"cpus: {os.cpu_count()}, load average before: {os.getloadavg()}", flush=True)
    try:
        ag = Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip()
        print(f"sched_autogroup_enabled: {ag} (1: an oversubscribed machine gives this session "
              "one share, whatever the number of workers)", flush=True)
    except OSError:
        pass
    print(f"control: 2 processes vs 1 on pure-Python work: {control_speedup():.2f}x "
          "(the most any executor can gain here now)", flush=True)
    configs = [("in-process (local, 1 worker)", "local", 1), ("local, 2 processes", "local", 2),
               ("dask LocalCluster, 1 worker", "dask", 1),
               ("dask LocalCluster, 2 workers", "dask", 2)]
    res: dict[str, tuple[float, float]] = {}
    ref = None
    with tempfile.TemporaryDirectory() as tmp:
        for label, ex, w in configs:
            best = (float("inf"), float("inf"))
            for r in range(args.repeat):
                wall, span, flight, df = one(Path(tmp) / f"{ex}{w}-{r}", ex, w, args.steps)
                best = (min(best[0], wall), min(best[1], span))
                if ref is None:
                    ref = df
                else:  # same seeds -> same records on every executor
                    assert df.equals(ref), f"{label}: records differ"
            res[label] = best
            print(f"{label:32s} wall {best[0]:7.2f} s   cells {best[1]:7.2f} s   "
                  f"in flight {flight:4.2f}", flush=True)
    print(f"load average after: {os.getloadavg()}; control again: {control_speedup():.2f}x")
    b_wall, b_cells = res[configs[0][0]]
    d1_wall, d1_cells = res[configs[2][0]]
    print("speed-ups (ratio of times; target >= 1.8 on 2 workers):")
    for label, base_wall, base_cells, key in (
            ("local 2 processes vs in-process", b_wall, b_cells, configs[1][0]),
            ("dask 2 workers vs in-process", b_wall, b_cells, configs[3][0]),
            ("dask 2 workers vs dask 1 worker", d1_wall, d1_cells, configs[3][0])):
        w, c = res[key]
        print(f"  {label:34s} wall {base_wall / w:5.2f}x   cells {base_cells / c:5.2f}x")
    print("records identical across all executors: yes")


if __name__ == "__main__":
    main()
