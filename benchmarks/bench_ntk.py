"""Empirical NTK speed and memory: lazylab's three methods vs the torch.func tutorial baseline.

Baseline = the torch.func "Neural Tangent Kernels" tutorial's ``empirical_ntk_jacobian_contraction``:
``vmap(jacrev(f_single))`` Jacobians of ``x1`` and ``x2`` contracted with ``einsum('Naf,Maf->NM')``
per parameter (trace NTK). All methods run in this one process on the same weights and inputs; the
kernel is the symmetric ``K(X, X)`` (lazylab gets ``x2=None`` and uses the symmetry; the tutorial
code is called with ``x1 = x2 = X`` as written). Every result is checked against the baseline.

Printed per case and method: median seconds over ``--repeats`` runs, peak memory, ratio
``baseline time / method time``, and the FLOP floors (multiply-adds) of the case:
``explicit = N^2 P`` (contracting per-example gradients) and ``structured = N^2 sum_l O (d_in +
d_out)`` (the per-layer Gram rule, ``d_in = C_in k^2`` for convolutions), plus ``passes = 3 N O F``
(forward + backward passes, ``F`` = forward multiply-adds per example). ``floor_s`` converts
``max(structured, passes)`` to seconds with the measured matmul throughput of this machine.

Peak memory: CUDA: ``torch.cuda.max_memory_allocated`` (reset before each run). CPU: peak resident
set size above the level before the run, sampled from ``/proc/self/statm`` every 2 ms by a thread
("RSS delta"; glibc's mmap threshold is fixed at 64 KiB so freed tensors go back to the OS and
each run's allocations show up; peers run in a forked child, measured the same way).

Optional peers (``pip install -e .[bench]``), timed when importable and checked against the
baseline: nngeometry (``GramMatrix``, its per-layer hook rules, dense ``(O, N, O, N)``) and BackPACK
(``BatchGrad`` per-example gradients, one backward per output, contracted).

Usage: ``python benchmarks/bench_ntk.py [--quick] [--big] [--repeats R] [--device cuda] [--busy]``.
``--busy``: a competing 2-thread torch training job runs in another process during the
measurements (the "busy machine" case: OpenMP regions of small ops stall when a core is taken).
``--big``: a 20000 x 20000 traced NTK of the MLP with tiling, reporting time and peak RSS (not
delta) — the 4 GB target.
"""

from __future__ import annotations

import argparse
import copy
import gc
import multiprocessing as mp
import os
import resource
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable

import pandas as pd
import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/baselines.py
from baselines import tutorial_ntk  # noqa: E402

from lazylab.ntk import ntk  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


# ---- the baseline: torch.func tutorial ----------------------------------------------------------

# ---- models ------------------------------------------------------------------------------------

def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                         nn.Linear(512, 1))


def cnn(out: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(32, out))


def two_layer() -> nn.Module:
    return nn.Sequential(nn.Linear(100, 4096), nn.ReLU(), nn.Linear(4096, 1))


def floors(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """FLOP floors in multiply-adds, from the layer shapes seen in one forward pass."""
    n = x.shape[0]
    p = sum(q.numel() for q in model.parameters())
    widths, fwd, hooks = [], [0.0], []

    def hook(m, inp, out):
        if isinstance(m, nn.Linear):
            widths.append(m.in_features + m.out_features)
            fwd[0] += m.in_features * m.out_features
        else:
            k = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
            widths.append(k + m.out_channels)
            fwd[0] += k * m.out_channels * out[0, 0].numel()

    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        o = model(x[:1]).reshape(1, -1).shape[1]
    for h in hooks:
        h.remove()
    return {"P": p, "O": o, "explicit": n * n * p * o, "structured": n * n * o * sum(widths),
            "passes": 3 * n * o * fwd[0]}


# ---- measurement -------------------------------------------------------------------------------

def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakRSS:
    """Peak RSS above the starting level, sampled by a background thread."""

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = _rss()
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop:
            self.peak = max(self.peak, _rss())
            time.sleep(0.002)

    def __exit__(self, *a) -> None:
        self._stop = True
        self._t.join()
        self.peak = max(self.peak, _rss())
        self.delta = self.peak - self.start


def measure(fn: Callable[[], torch.Tensor], repeats: int, device: torch.device,
            budget_s: float = 20.0) -> tuple[float, float, torch.Tensor]:
    """Median time / max peak memory over ``repeats`` runs (fewer once ``budget_s`` is spent, more
    for sub-second cases)."""
    times, mems, out = [], [], None
    for i in range(max(repeats, 20)):
        if sum(times) > budget_s or (i >= repeats and sum(times) > 1.0):
            break  # at least `repeats` runs, more (up to 20) while under a second in total
        out = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            t = time.perf_counter()
            out = fn()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
            mems.append(torch.cuda.max_memory_allocated() - base)
        else:
            with PeakRSS() as pr:
                t = time.perf_counter()
                out = fn()
                times.append(time.perf_counter() - t)
            mems.append(pr.delta)
    return statistics.median(times), max(mems), out


def matmul_throughput(device: torch.device) -> float:
    """Multiply-adds per second of a 2048^2 float32 matmul on this device."""
    a = torch.randn(2048, 2048, device=device)
    a @ a
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(5):
        a @ a
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 5 * 2048**3 / (time.perf_counter() - t)


def peers(model: nn.Module, x: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    """Optional peers, each returning the traced NTK (N, N); absent ones are skipped."""
    out = {}
    try:  # nngeometry: dense Gram matrix (O, N, O, N) from its per-layer hook rules
        from nngeometry import GramMatrix

        def ng() -> torch.Tensor:
            loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x),
                                                 batch_size=len(x))
            g = GramMatrix(model, loader, function=lambda *d: model(d[0])).data
            return torch.einsum("anam->nm", g)

        out["nngeometry"] = ng
    except ImportError:
        pass
    try:  # BackPACK: per-example gradients (BatchGrad), one backward per output, contracted
        from backpack import backpack, extend
        from backpack.extensions import BatchGrad

        def bp() -> torch.Tensor:
            m = extend(copy.deepcopy(model))
            k = None
            o = m(x[:1]).reshape(1, -1).shape[1]
            for a in range(o):
                m.zero_grad()
                with backpack(BatchGrad()):
                    m(x).reshape(len(x), -1)[:, a].sum().backward()
                g = torch.cat([p.grad_batch.flatten(1) for p in m.parameters()], 1)
                k = g @ g.T if k is None else k + g @ g.T
            return k

        out["backpack"] = bp
    except ImportError:
        pass
    return out


def auto_choice(model: nn.Module, x: torch.Tensor) -> str:
    """What ``method="auto"`` picks for the symmetric traced kernel (its cost model)."""
    from lazylab.ntk.api import _choose
    from lazylab.ntk.problem import build_problem
    from lazylab.ntk.structured import StructuredEngine

    pb = build_problem(model)
    with pb.eval_mode():
        st = StructuredEngine(pb, "trace", None, x[:2], len(x))
        o = pb.f(pb.params, x[:1]).shape[1]
        return _choose(pb, st, len(x), len(x), o, "trace", True)


def measure_forked(fn: Callable[[], torch.Tensor], repeats: int, device: torch.device,
                   timeout: float) -> tuple[float, float, torch.Tensor]:
    """:func:`measure` in a forked child (same weights and data), killed after ``timeout`` s."""
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)

    def child() -> None:
        try:
            t, mem, k = measure(fn, repeats, device)
            send.send((t, mem, k.detach().cpu().numpy()))  # by value, not via shared memory
        except Exception as err:  # report, do not hang the parent
            send.send(RuntimeError(f"{type(err).__name__}: {err}"))

    proc = ctx.Process(target=child, daemon=True)
    proc.start()
    ready = recv.poll(timeout)
    if not ready:
        proc.kill()
        proc.join()
        raise TimeoutError(f"timeout > {timeout:.0f} s")
    res = recv.recv()
    proc.join()
    if isinstance(res, Exception):
        raise res
    return res[0], res[1], torch.from_numpy(res[2])


def run_case(name: str, model: nn.Module, x: torch.Tensor, repeats: int, device: torch.device,
             thr: float, baseline: bool, peer_timeout: float = 300.0) -> list[dict]:
    model = model.to(device)
    x = x.to(device)
    fl = floors(model, x)
    rows: list[dict] = []
    ref = None
    methods: dict[str, Callable[[], torch.Tensor]] = {}
    if baseline:
        methods["torch.func tutorial"] = lambda: tutorial_ntk(model, x, x)
    for m in ("structured", "jacobian", "ntvp", "auto"):
        methods[m] = lambda m=m: ntk(model, x, method=m, progress=False)
    x2 = x.clone()  # a distinct tensor: no symmetry shortcut, like the tutorial's two Jacobians
    methods["structured (x2 given)"] = lambda: ntk(model, x, x2, method="structured")
    peer_fns = peers(model, x)
    peer_names = set(peer_fns)
    methods.update(peer_fns)
    base_t = None
    for mname, fn in methods.items():
        if mname == "ntvp" and fl["passes"] * len(x) > 3e11:
            rows.append({"case": name, "method": mname,
                         "note": "skipped: N^2 O F products too costly here"})
            continue
        reps = repeats
        print(f"  {name}: {mname} ...", file=sys.stderr, flush=True)
        try:
            if mname in peer_names and device.type == "cpu":
                t, mem, k = measure_forked(fn, reps, device, peer_timeout)
            else:
                t, mem, k = measure(fn, reps, device)
        except Exception as err:  # a peer failing must not stop the table
            rows.append({"case": name, "method": mname, "note": f"{type(err).__name__}: {err}"[:70]})
            continue
        ref = k if ref is None else ref
        err = ((k - ref).abs().max() / ref.abs().max()).item()
        base_t = t if mname == "torch.func tutorial" else base_t
        if mname == "auto":
            mname = f"auto -> {auto_choice(model, x)}"
        rows.append({
            "case": name, "method": mname, "seconds": t, "peak_MB": mem / 2**20,
            "speedup_vs_baseline": (base_t / t) if base_t else float("nan"),
            "rel_err_vs_first": err,
            "floor_s": max(fl["structured"], fl["passes"]) / thr,
        })
        del k
    rows.append({"case": name, "method": "(floors, MACs)", "note":
                 f"P={fl['P']:,} O={fl['O']} N^2P={fl['explicit']:.3g} "
                 f"structured={fl['structured']:.3g} passes={fl['passes']:.3g}"})
    return rows


def big(device: torch.device, n: int, block: int) -> None:
    torch.manual_seed(0)
    model = mlp().to(device)
    x = torch.randn(n, 784, device=device)
    rss0 = _rss()
    with PeakRSS() as pr:
        t = time.perf_counter()
        k = ntk(model, x, method="structured", block_size=block, progress=True)
        t = time.perf_counter() - t
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\n--big: {n}x{n} traced NTK of MLP 784-512-512-1, block {block}: {t:.1f} s; "
          f"kernel {k.numel() * k.element_size() / 2**30:.2f} GiB; peak RSS {pr.peak / 2**30:.2f} "
          f"GiB (sampled; before {rss0 / 2**30:.2f} GiB; ru_maxrss {ru:.2f} GiB)")
    if device.type == "cuda":
        print(f"  cuda max_memory_allocated {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


def _fixed_mmap_threshold() -> None:
    """glibc raises its mmap threshold after large frees, so later big tensors come from the
    retained heap and never show up in RSS; a fixed 64 KiB threshold makes RSS deltas honest."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 64 * 1024)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc: deltas may under-report
        pass


def _busy_job(threads: int) -> None:
    """A competing multi-threaded torch job: an MLP trained with SGD on random data, forever."""
    torch.set_num_threads(threads)
    net = nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 10))
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    x, y = torch.randn(256, 512), torch.randint(0, 10, (256,))
    while True:
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()


def start_busy(threads: int = 2) -> mp.Process:
    """Start :func:`_busy_job` in a separate process (terminate it when done)."""
    proc = mp.get_context("spawn").Process(target=_busy_job, args=(threads,), daemon=True)
    proc.start()
    time.sleep(2.0)  # let it start computing
    return proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes only (a few minutes on CPU)")
    ap.add_argument("--big", action="store_true", help="also the 20000^2 tiled MLP kernel")
    ap.add_argument("--cases", default="", help="only cases whose name contains this")
    ap.add_argument("--big-only", action="store_true", help="only the --big measurement")
    ap.add_argument("--big-n", type=int, default=20000)
    ap.add_argument("--big-block", type=int, default=2500)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--peer-timeout", type=float, default=300.0,
                    help="seconds before an optional peer is stopped (CPU)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--busy", action="store_true",
                    help="run a competing 2-thread torch training job during the measurements")
    args = ap.parse_args()
    busy = start_busy() if args.busy else None
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cpu":
        _fixed_mmap_threshold()
    warnings.filterwarnings("ignore", message="Full backward hook")  # BackPACK's hooks
    torch.manual_seed(0)
    thr = matmul_throughput(device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"matmul {thr / 1e9:.1f} GMAC/s")
    cases = [("MLP N=256", mlp, lambda: torch.randn(256, 784)),
             ("CNN N=128", cnn, lambda: torch.randn(128, 3, 32, 32)),
             ("2-layer w4096 N=1000", two_layer, lambda: torch.randn(1000, 100))]
    if not args.quick:
        cases[1:1] = [("MLP N=1024", mlp, lambda: torch.randn(1024, 784))]
        cases[3:3] = [("CNN N=256", cnn, lambda: torch.randn(256, 3, 32, 32))]
    cases = [c for c in cases if args.cases in c[0]]
    rows = []
    if args.big_only:
        cases, args.big = [], True
    for name, make, data in cases:
        torch.manual_seed(0)
        model, x = make(), data()
        rows += run_case(name, model, x, args.repeats, device, thr, not args.no_baseline,
                         args.peer_timeout)
        print(pd.DataFrame([r for r in rows if r["case"] == name]).to_string(
            index=False, float_format=lambda v: f"{v:.4g}"), flush=True)
    if args.big:
        big(device, args.big_n, args.big_block)
    if busy is not None:
        busy.terminate()


if __name__ == "__main__":
    main()
