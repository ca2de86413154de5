"""Train one two-layer ReLU net lazily and fully, and compare.

A teacher f*(x) = sum_{j<3} a_j relu(<b_j, x>) on the unit sphere of R^20; student width 200 in
mean-field scaling. "full" trains the net as is; "lazy" trains lazy(net, alpha) (output
alpha*(h(w)-h(w0)), loss / alpha^2). Prints test loss and the relative weight change of each.

    python examples/lazy_vs_full.py [--alpha 100] [--steps 2000]
"""

from __future__ import annotations

import argparse
import copy

import torch

import lazylab
from lazylab.track import WeightChange


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--alpha", type=float, default=100.0)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--d", type=int, default=20)
    ap.add_argument("--m", type=int, default=200)
    args = ap.parse_args(argv)

    f_star, _, _ = lazylab.data.teacher_two_layer(args.d, m0=3, seed=0)
    X = lazylab.data.sphere(200, args.d, seed=1)
    X_test = lazylab.data.sphere(1000, args.d, seed=2)
    data, test = (X, f_star(X)), (X_test, f_star(X_test))

    torch.manual_seed(0)
    net = lazylab.TwoLayerNet(args.d, args.m, scaling="mean_field", input_scale=1.0)
    results = {}
    for name, model, lr in [("full", copy.deepcopy(net), 2.0 * args.m / 10),
                            (f"lazy (alpha={args.alpha:g})", lazylab.lazy(copy.deepcopy(net), args.alpha),
                             2.0 * args.m / 10)]:
        h = lazylab.train(model, data, lr=lr, steps=args.steps, test_data=test,
                          trackers=[WeightChange()])
        results[name] = {"test_loss": h.final["test_loss"], "train_loss": h.final["train_loss"],
                         "rel_weight_change": h.final["rel_weight_change"]}
    print(f"{'regime':22s} {'train loss':>11s} {'test loss':>11s} {'||w-w0||/||w0||':>16s}")
    for name, r in results.items():
        print(f"{name:22s} {r['train_loss']:11.4g} {r['test_loss']:11.4g} {r['rel_weight_change']:16.3g}")
    return results


if __name__ == "__main__":
    main()
