"""Matrix-free kernel ridge regression at scale: CG on NTK-vector products, never forming K.

The traced NTK of MLP ``d``-128-128-1 (float64) on ``N`` inputs ``x ~ N(0, I_d)`` with targets
``sin(x_1) + 0.1 noise``; ridge ``--ridge-factor`` (1e-4) times the mean of ``diag K``
(per-example gradient norms of the first 1000 inputs).
``kernel_regression_cg(NTKOperator(model, x), y, NTKOperator(model, x_test, x))`` with a
rank-``r`` Nyström preconditioner, and without one for ``--compare-plain``. Printed: CG iterations,
kernel-vector products, final relative residual, wall time, peak RSS (``ru_maxrss``) and the
test-set relative error of the predictions; with ``--dense`` (small ``N``) also the relative
difference from the dense Cholesky solve.

Usage: ``python benchmarks/bench_kernel_solvers.py --n 50000 [--rank 200] [--dense]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import lazylab  # noqa: E402
from lazylab.kernel_solvers import NTKOperator, kernel_regression_cg  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--d", type=int, default=10)
    ap.add_argument("--rank", type=int, default=200)
    ap.add_argument("--tol", type=float, default=1e-8)
    ap.add_argument("--ridge-factor", type=float, default=1e-4, help="ridge / mean diag K")
    ap.add_argument("--max-iter", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dense", action="store_true", help="also the dense solve (small N only)")
    ap.add_argument("--compare-plain", action="store_true", help="also CG without preconditioner")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = lazylab.MLP([args.d, 128, 128, 1]).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.n, args.d, generator=g, dtype=torch.float64)
    xt = torch.randn(1000, args.d, generator=g, dtype=torch.float64)
    y = torch.sin(x[:, 0]) + 0.1 * torch.randn(args.n, generator=g, dtype=torch.float64)
    yt = torch.sin(xt[:, 0])
    op, op_t = NTKOperator(net, x), NTKOperator(net, xt, x)
    t = time.perf_counter()
    ridge = args.ridge_factor * float(NTKOperator(net, x[:1000]).diagonal().mean())
    t_diag = time.perf_counter() - t
    print(f"N={args.n}, MLP {args.d}-128-128-1 float64, ridge {ridge:.3g} "
          f"(mean diag on 1000: {t_diag:.1f} s)")
    runs = [("nystrom", args.rank)] + ([(None, 0)] if args.compare_plain else [])
    preds = {}
    for pre, rank in runs:
        t = time.perf_counter()
        pred, info = kernel_regression_cg(op, y, op_t, ridge=ridge, tol=args.tol,
                                          preconditioner=pre, rank=rank, max_iter=args.max_iter)
        sec = time.perf_counter() - t
        preds[pre] = pred
        err = float((pred - yt).norm() / yt.norm())
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"  preconditioner {pre} (rank {rank}): {info.iterations} CG iterations, "
              f"{info.matvecs} products, residual {info.residual:.1e}, {sec:.1f} s, "
              f"test rel err {err:.3f}, peak RSS so far {rss:.2f} GiB")
    if args.dense:
        k, kt = lazylab.ntk(net, x), lazylab.ntk(net, xt, x)
        ref = lazylab.kernel_regression(k, y, kt, ridge=ridge)
        for pre, p in preds.items():
            print(f"  vs dense Cholesky ({pre}): rel diff {float((p - ref).norm() / ref.norm()):.2e}")


if __name__ == "__main__":
    main()
