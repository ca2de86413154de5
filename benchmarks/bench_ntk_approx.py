"""Approximate NTKs on a ResNet-18-sized CNN: error vs k and time vs k.

Model: ``lazylab.resnet18`` (11.2M parameters, 10 outputs) on small random inputs (``--size``,
default 8 x 8), N = ``--n`` examples. Reference: the exact trace NTK ``lazylab.ntk`` (timed on
all N) and, for the pseudo-NTK, the full ``(s, s, 10, 10)`` kernel on a checked block of ``s``
examples. Rows:

- ``projected_ntk`` (countsketch, k = 64 ... 4096; rademacher for the smaller k, whose dense
  sketch costs ``N O P k``): seconds, relative Frobenius error vs the exact trace kernel (mean
  over ``--seeds`` sketches), and ``error * sqrt(k)`` (constant if the error is ~ 1/sqrt(k));
- ``pseudo_ntk``: seconds, relative error of ``pNTK (x) I_O`` vs the full eNTK and of ``pNTK``
  vs ``trace / O``.

Usage: ``python benchmarks/bench_ntk_approx.py [--n 16] [--size 8] [--threads 1] [--small]
[--rademacher-k 64 256] [--batch-size 2]``. The full-width run recorded in docs/ntk.md:
``--threads 1 --rademacher-k 64 --batch-size 4`` (the dense sketch regenerates its ``P x k`` signs
for every batch: at P = 11.2M and k = 256 that alone is 2.9e9 draws per batch).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from lazylab.models import resnet18  # noqa: E402
from lazylab.ntk import ntk  # noqa: E402
from lazylab.ntk.approx import projected_ntk, pseudo_ntk  # noqa: E402


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--size", type=int, default=8)
    ap.add_argument("--check", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--small", action="store_true", help="width 1/8, smoke run")
    ap.add_argument("--rademacher-k", type=int, nargs="*", default=[64, 256],
                    help="k values for the dense sketch (its cost N O P k dominates at full width)")
    ap.add_argument("--batch-size", type=int, default=2,
                    help="examples per batch of per-example gradients (B O P floats held at once)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import pandas as pd

    torch.manual_seed(0)
    model = resnet18(10, width_mult=0.125 if args.small else 1.0).eval()
    x = torch.randn(args.n, 3, args.size, args.size)
    p = sum(q.numel() for q in model.parameters())
    t = time.perf_counter()
    exact = ntk(model, x, progress=False)
    t_exact = time.perf_counter() - t
    rows = [{"method": "exact trace NTK (lazylab.ntk)", "k": p, "seconds": t_exact,
             "rel_err": 0.0}]
    projected_ntk(model, x[:2], k=8)  # warm-up (first vmap call)
    plan = [("countsketch", k) for k in (64, 256, 1024, 4096)]
    plan += [("rademacher", k) for k in args.rademacher_k]
    for sketch, k in plan:
        errs, times = [], []
        for s in range(args.seeds):
            t = time.perf_counter()
            res = projected_ntk(model, x, k=k, sketch=sketch, seed=s,
                                batch_size=args.batch_size)
            times.append(time.perf_counter() - t)
            errs.append(_rel(res.kernel, exact))
        err = sum(errs) / len(errs)
        rows.append({"method": f"projected_ntk ({sketch})", "k": k,
                     "seconds": sum(times) / len(times), "rel_err": err,
                     "err_sqrt_k": err * k ** 0.5})
    t = time.perf_counter()
    res = pseudo_ntk(model, x)
    t_p = time.perf_counter() - t
    chk = pseudo_ntk(model, x[: args.check], check=args.check)
    rows.append({"method": "pseudo_ntk (sum of logits)", "k": 1, "seconds": t_p,
                 "rel_err": chk.rel_error, "note": f"vs trace/O: {chk.info['rel_error_trace']:.3g}"
                 f" (checked {args.check})"})
    print(f"resnet18 P={p:,}, N={args.n}, inputs {args.size}x{args.size}, "
          f"threads {torch.get_num_threads()}")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    return rows


if __name__ == "__main__":
    main()
