"""Time per training step of each regime, as a ratio to the full regime (same process).

Cases (issue 2): MLP 784-1024-1024-10 with batch 256, and a small CNN (3 conv layers, 32 channels) on
32x32x3 inputs with batch 128. One step = forward + backward + SGD update on a fixed batch.
Target: linearized <= 2.5x a full step.

    python benchmarks/bench_train.py [--device cuda] [--reps 20] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import lazylab


def _step_time(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, reps: int) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3)
    scale = getattr(model, "loss_scale", 1.0)
    crit = lazylab.trainer.LOSSES["mse"]

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        (scale * crit(model(x), y)).backward()
        opt.step()

    for _ in range(3):
        step()
    times = []
    for _ in range(reps):
        if x.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    torch.manual_seed(0)
    cases = {
        "MLP 784-1024-1024-10, batch 256": (
            lambda: lazylab.MLP([784, 1024, 1024, 10]), torch.randn(256, 784), 256),
        "CNN 3x(3x3 conv, 32 ch), 32x32x3, batch 128": (
            lambda: lazylab.SmallCNN(3, 10, width=32, depth=3), torch.randn(128, 3, 32, 32), 128),
    }
    regimes = {
        "full": lambda m: m,
        "lazy (copy, alpha=100)": lambda m: lazylab.lazy(m, 100.0),
        "lazy (copy, alpha=1e5, float64 eval)": lambda m: lazylab.lazy(m, 1e5),
        "linearized": lambda m: lazylab.linearize(m),
        "random features": lambda m: lazylab.random_features(m),
    }
    print(f"device={dev}, torch {torch.__version__}, threads={torch.get_num_threads()}")
    print(f"{'case':46s} {'regime':38s} {'ms/step':>9s} {'x full':>7s}")
    for cname, (make, x, n) in cases.items():
        x = x.to(dev)
        y = torch.randint(0, 10, (n,), device=dev)
        base = make().to(dev)
        full_t = None
        for rname, wrap in regimes.items():
            model = wrap(copy.deepcopy(base)).to(dev)
            t = _step_time(model, x, y, args.reps)
            full_t = full_t or t
            print(f"{cname:46s} {rname:38s} {1e3 * t:9.2f} {t / full_t:7.2f}")


if __name__ == "__main__":
    main()
