"""How lazy is my run? Diagnose a two-layer ReLU net at two scales alpha.

Teacher f*(x) = sum_{j<3} a_j relu(<b_j, x>) on the sphere of radius sqrt(d) in R^d. The student is
TwoLayerNet(d, m) (NTK scaling) trained as lazy(net, alpha) with gradient descent next to its
linearization; lazylab.diagnose tracks the tangent kernel, the weights, the distance to the
linearized twin and the ReLU activation patterns, and gives a verdict.

    python examples/diagnose_two_layer.py [--m 1000] [--steps 300] [--out runs/diagnose-example]
"""

from __future__ import annotations

import argparse

import lazylab


def main(argv: list[str] | None = None) -> dict[str, lazylab.diagnosis.DiagnosisReport]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d", type=int, default=10)
    ap.add_argument("--m", type=int, default=1000, help="width of the wide net (the narrow one has 20)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--probe", type=int, default=32)
    ap.add_argument("--out", default=None, help="folder for the two reports (default: do not save)")
    args = ap.parse_args(argv)

    f_star, _, _ = lazylab.data.teacher_two_layer(args.d, m0=3, seed=0)
    X = lazylab.data.sphere(200, args.d, radius=args.d**0.5, seed=1)
    Xt = lazylab.data.sphere(200, args.d, radius=args.d**0.5, seed=2)
    reports = {}
    for name, m, alpha in (("wide, alpha=100", args.m, 100.0), ("narrow, alpha=0.1", 20, 0.1)):
        rep = lazylab.diagnose(lazylab.TwoLayerNet(args.d, m), (X, f_star(X)), test_data=(Xt, f_star(Xt)),
                               alpha=alpha, steps=args.steps, lr=1.0, n_probe=args.probe)
        n = rep.numbers
        print(f"{name:>18}: {rep.verdict:<16} kernel change {n['kernel_rel_change']:.3g}  "
              f"linearization gap {n['lin_gap_rel']:.3g}  weight change {n['rel_weight_change']:.3g}  "
              f"ReLU stability {n['activation_stability']:.3f}  kappa {n['kappa']:.3g}  "
              f"test loss {n['test_loss']:.3g} (linearized {n['lin_test_loss']:.3g})")
        if args.out:
            from lazylab.lab.diagnosis_render import save

            print("   report:", save(rep, f"{args.out}/{name.split(',')[0]}"))
        reports[name] = rep
    return reports


if __name__ == "__main__":
    main()
