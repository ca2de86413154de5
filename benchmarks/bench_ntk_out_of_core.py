"""A kernel larger than RAM: ``ntk(model, x, out=PATH)``, killed mid-way, resumed; time and peak RSS.

The traced float32 NTK of MLP 784-512-512-1 on ``N`` random inputs (``N = 50000``: a 10 GB file)
is written by a child process that is SIGKILLed once ``--kill-after`` tiles are recorded; this
process then calls ``ntk(..., out=PATH)`` again, which computes only the missing tiles. Printed:
the tiles recorded at the kill, the tiles computed on resume, wall time of both phases, peak RSS
of each (``ru_maxrss`` of the child and of this process), and a spot check of random sub-blocks
against a direct in-memory ``ntk`` of those rows and columns. The file is deleted afterwards
unless ``--keep``.

Usage: ``nice -n 10 python benchmarks/bench_ntk_out_of_core.py --n 50000 --out /tmp/k.npy``
(check free disk first: ``df -h /tmp``; ``--n 4000`` is a quick run).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import signal
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import lazylab  # noqa: E402
from lazylab.ntk.out_of_core import record_path  # noqa: E402


def problem(n: int) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return lazylab.MLP([784, 512, 512, 1]), torch.randn(n, 784)


def child(n: int, out: str, threads: int) -> None:
    torch.set_num_threads(threads)
    model, x = problem(n)
    lazylab.ntk(model, x, out=out, progress=False)


def done_tiles(out: str) -> int:
    try:
        return len(json.loads(record_path(out).read_text())["done"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--out", required=True)
    ap.add_argument("--kill-after", type=int, default=8, help="tiles recorded before the kill")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    for p in (args.out, str(record_path(args.out))):
        if os.path.exists(p):
            os.remove(p)
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    proc = mp.get_context("spawn").Process(target=child, args=(args.n, args.out, args.threads))
    proc.start()
    while proc.is_alive() and done_tiles(args.out) < args.kill_after:
        time.sleep(0.5)
    if proc.is_alive():
        os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    t1 = time.perf_counter() - t0
    at_kill = done_tiles(args.out)
    rss_child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20

    model, x = problem(args.n)
    rec = json.loads(record_path(args.out).read_text())
    t0 = time.perf_counter()
    k = lazylab.ntk(model, x, out=args.out, progress=True)
    t2 = time.perf_counter() - t0
    rec2 = json.loads(record_path(args.out).read_text())
    rss_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    b = rec["block"]
    total = len(rec2["done"])
    print(f"N={args.n}: file {k.numel() * k.element_size() / 1e9:.2f} GB, tile {b}, {total} tiles; "
          f"killed with {at_kill} recorded after {t1:.1f} s (child peak RSS {rss_child:.2f} GiB); "
          f"resume computed {total - at_kill} tiles in {t2:.1f} s (peak RSS {rss_self:.2f} GiB)")

    g = torch.Generator().manual_seed(1)
    worst = 0.0
    for _ in range(3):
        r = torch.randint(args.n, (64,), generator=g)
        c = torch.randint(args.n, (64,), generator=g)
        ref = lazylab.ntk(model, x[r], x[c])
        got = k[r][:, c]
        worst = max(worst, float((got - ref).abs().max() / ref.abs().max()))
    print(f"spot check, 3 random 64x64 sub-blocks vs in-memory ntk: max rel err {worst:.2e}")
    if not args.keep:
        del k
        os.remove(args.out)
        os.remove(record_path(args.out))


if __name__ == "__main__":
    main()
