"""GPU suite: one command, one table (target <= 8 minutes on one CUDA GPU).

Rows:

1. Empirical NTK on neural-tangents' published cases (their paper's benchmark, Novak et al. 2022,
   "Fast finite width neural tangent kernel"): a fully connected net 3072-2048-2048-2048-8 (ReLU),
   N = 16, the full ``(16, 16, 8, 8)`` kernel (their structured method: 3.46 ms on a T4); and a
   ResNet-18 (ImageNet layout: 7x7 stride-2 stem, max-pool, four stages, BatchNorm in eval mode)
   on 224 x 224 inputs with 8 outputs, N = 8. lazylab's methods (``structured``, ``jacobian``,
   ``ntvp``, ``auto``) against the torch.func baseline (the tutorial's Jacobian contraction, full
   kernel ``einsum('Naf,Mbf->NMab')``) in the same process, same weights and inputs; the relative
   error against the baseline is printed.
2. Training step (forward, backward, SGD update; batch 128, MSE) of the FC net: standard vs
   ``lazylab.linearize`` (the tangent model, one ``jvp``) vs ``lazylab.lazy`` at ``alpha = 1e5``
   (its float64 path: ``alpha eps32 > 1e-4``, so the difference ``h(w) - h(w0)`` runs in
   float64). The lazy row also prints ``max |w - w0| / max |w0|`` after the step (``O(1/alpha)``).

Timings: CUDA events are not needed; ``torch.cuda.synchronize()`` around each run, median of
``--repeats`` after a warm-up.

Usage: ``python benchmarks/gpu_suite.py`` (CUDA), ``python benchmarks/gpu_suite.py --device cpu
--small`` (a smoke run of every row in seconds; tests/test_gpu_suite.py runs it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/baselines.py
from baselines import tutorial_ntk  # noqa: E402

import lazylab  # noqa: E402
from lazylab.ntk import ntk  # noqa: E402
from lazylab.regimes import weights  # noqa: E402


def fc_net(d_in: int, width: int, out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, width), nn.ReLU(), nn.Linear(width, out))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(c_out)
        self.c2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(c_out)
        self.short = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.short = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                       nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.b1(self.c1(x)))
        return torch.relu(self.b2(self.c2(h)) + self.short(x))


def resnet18_imagenet(out: int = 8, width: int = 64) -> nn.Module:
    """ResNet-18 in the ImageNet layout (torchvision's architecture, written out here)."""
    layers: list[nn.Module] = [nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
                               nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    c = width
    for i, mult in enumerate((1, 2, 4, 8)):
        layers += [BasicBlock(c, width * mult, 1 if i == 0 else 2),
                   BasicBlock(width * mult, width * mult, 1)]
        c = width * mult
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, out)]
    return nn.Sequential(*layers).eval()


def baseline_full(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """torch.func tutorial, Jacobian contraction, full kernel ``(N1, N2, O, O)``."""
    return tutorial_ntk(model, x1, x2, output="full")


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, object]:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def ntk_rows(case: str, model: nn.Module, x: torch.Tensor, device: torch.device, repeats: int,
             methods: tuple[str, ...]) -> list[dict]:
    model = model.to(device).eval()
    x = x.to(device)
    x2 = x.clone()  # distinct tensor, as in neural-tangents' K(x1, x2) benchmark
    base_t, ref = timed(lambda: baseline_full(model, x, x2), device, repeats)
    rows = [{"case": case, "method": "torch.func baseline", "ms": 1e3 * base_t, "speedup": 1.0,
             "rel_err": 0.0}]
    for m in methods:
        try:
            t, k = timed(lambda m=m: ntk(model, x, x2, method=m, output="full", progress=False),
                         device, repeats)
        except Exception as err:  # e.g. out of memory: report, keep going
            rows.append({"case": case, "method": m, "note": f"{type(err).__name__}: {err}"[:60]})
            continue
        err = float((k - ref).abs().max() / ref.abs().max())
        rows.append({"case": case, "method": m, "ms": 1e3 * t, "speedup": base_t / t,
                     "rel_err": err})
    return rows


def _step(model: nn.Module, opt: torch.optim.Optimizer, scale: float, x: torch.Tensor,
          y: torch.Tensor) -> None:
    """One SGD step on ``scale * mean ||f(x) - y||^2 / 2``."""
    opt.zero_grad()
    loss = scale * 0.5 * ((model(x).to(y.dtype) - y) ** 2).mean()
    loss.backward()
    opt.step()


def train_rows(d_in: int, width: int, out: int, batch: int, device: torch.device,
               repeats: int) -> list[dict]:
    torch.manual_seed(0)
    x = torch.randn(batch, d_in, device=device)
    y = torch.randn(batch, out, device=device)
    rows = []
    variants = {
        "standard": lambda m: m,
        "linearize": lambda m: lazylab.linearize(m),
        "lazy alpha=1e5 (float64 path)": lambda m: lazylab.lazy(m, 1e5),
    }
    base = None
    for name, wrap in variants.items():
        torch.manual_seed(1)
        model = wrap(fc_net(d_in, width, out).to(device))
        scale = getattr(model, "loss_scale", 1.0)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        w0 = {k: v.detach().clone() for k, v in weights(model).items()}

        t, _ = timed(lambda m=model, o=opt, s=scale: _step(m, o, s, x, y), device, repeats)
        base = t if base is None else base
        row = {"case": f"train step FC {d_in}-{width}x3-{out}, batch {batch}", "method": name,
               "ms": 1e3 * t, "speedup": base / t}
        if name.startswith("lazy"):
            w = weights(model)
            move = max(float((w[k].detach() - w0[k]).abs().max()) for k in w)
            row["note"] = f"max|w-w0|/max|w0| = {move / max(float(v.abs().max()) for v in w0.values()):.1e}"
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true", help="tiny sizes: a smoke run of every row")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: use --device cpu --small for the smoke run")
    warnings.filterwarnings("ignore", message=".*batching rule.*")
    import pandas as pd

    repeats = 1 if args.small else args.repeats
    d_in, width, out, n_fc = (48, 32, 8, 4) if args.small else (3072, 2048, 8, 16)
    img, rwidth, n_res = (16, 4, 2) if args.small else (224, 64, 8)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    rows = ntk_rows(f"FC {d_in}-{width}x3-{out}, N={n_fc}, full", fc_net(d_in, width, out),
                    torch.randn(n_fc, d_in), device, repeats,
                    ("structured", "jacobian", "ntvp", "auto"))
    torch.manual_seed(0)
    rows += ntk_rows(f"ResNet-18 {img}x{img}, 8 outputs, N={n_res}, full",
                     resnet18_imagenet(8, rwidth), torch.randn(n_res, 3, img, img), device,
                     repeats, ("structured", "jacobian", "auto"))
    rows += train_rows(d_in, width, out, 128, device, repeats)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, {time.perf_counter() - t0:.0f} s in all")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    return rows


if __name__ == "__main__":
    main()
