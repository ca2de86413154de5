"""Fit a rank-2 symmetric 3-tensor with m components: lazy (NTK) fit vs plain GD vs our variant.

T* = u1^{(x)3} + u2^{(x)3} (orthonormal u_k in R^d). The lazy fit is the exact least-squares fit in
the tangent space at the random init (what training ``lazylab.linearize(model)`` converges to): it
can only succeed once m*d >= dim Sym^3(R^d) = C(d+2, 3). Plain GD and the beyond-lazy variant move
the components and need only a few more than r = 2. Prints the relative errors ||T - T*|| / ||T*||.

    python examples/tensor_decomposition.py [--d 15] [--m 4 8 64]
"""

from __future__ import annotations

import argparse

import torch

from lazylab.tensor import (
    TensorModel,
    dim_sym,
    fit_gd,
    fit_lazy,
    fit_variant,
    random_ground_truth,
)


def main(argv: list[str] | None = None) -> dict[int, dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d", type=int, default=15)
    ap.add_argument("--m", type=int, nargs="+", default=[4, 8, 64])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    d, dim = args.d, dim_sym(args.d, 3)
    target = random_ground_truth(d, 2, 3, generator=torch.Generator().manual_seed(args.seed),
                                 dtype=torch.float64)
    print(f"d={d}, dim Sym^3={dim}; lazy needs m >= {dim / d:.1f}")
    print(f"{'m':>5s} {'m*d/dim':>8s} {'lazy':>10s} {'plain GD':>10s} {'variant':>10s}")
    out = {}
    for m in args.m:
        g = torch.Generator().manual_seed(args.seed + 1)
        model = TensorModel(d, m, 3, coef_scale=m ** -0.5, generator=g, dtype=torch.float64)
        lazy = fit_lazy(model, target).rel_error           # the model is not modified
        gd = fit_gd(model, target, steps=args.steps, lr=0.1, tol=0.01).rel_error
        hom = TensorModel(d, m, 3, "homogeneous", init_scale=0.01, generator=g,
                          dtype=torch.float64)
        var = fit_variant(hom, target, steps=args.steps, lr=0.1, tol=0.01, generator=g).rel_error
        out[m] = {"lazy": lazy, "gd": gd, "variant": var}
        print(f"{m:5d} {m * d / dim:8.2f} {lazy:10.3g} {gd:10.3g} {var:10.3g}")
    return out


if __name__ == "__main__":
    main()
